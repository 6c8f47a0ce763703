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
    if args.check_config {
        init_logging();
        return check(&args.config);
    }
    // The signal handlers come first (they need the runtime): until they
    // are installed, SIGHUP, SIGTERM and SIGIO end the process.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qualcached: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signals = match runtime.block_on(async { qualcache::daemon::Signals::install() }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("qualcached: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    init_logging();
    let config = match qualcache::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qualcached: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(qualcache::daemon::run(config, signals));
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

/// `--check-config`: what start would check, without serving.
fn check(path: &std::path::Path) -> ExitCode {
    let config = match qualcache::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qualcached: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match config.check_files() {
        Ok(notes) => {
            for note in notes {
                println!("{}: note: {note}", path.display());
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qualcached: error: {}: {e:#}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `$QUALCACHE_LOG` (default `info`).
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUALCACHE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
