//! `qualcached`: answers qualification lookups over QUIC with mutual TLS.
//! Signals: SIGHUP reloads the snapshot, SIGTERM / SIGINT drain and exit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// qualcached: qualification lookups over QUIC (ALPN qualcache/1) with mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "qualcached", version, about)]
struct Args {
    /// Configuration file (TOML; see config/qualcache.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration, load the card key and TLS files it names
    /// (unless development certificates are still to be created), and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUALCACHE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match qualcache::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qualcached: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        return match config.check_files() {
            Ok(notes) => {
                for note in notes {
                    println!("{}: note: {note}", args.config.display());
                }
                println!("{}: ok", args.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("qualcached: error: {}: {e:#}", args.config.display());
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qualcached: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(qualcache::daemon::run(config));
    // Do not wait for an abandoned build (its temporary file is never linked in).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qualcached: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
