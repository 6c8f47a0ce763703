//! `qualcache`: generate data, build and inspect snapshots, look patients up.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = qualcache::cli::Cli::parse();
    match qualcache::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain, outermost first.
            eprintln!("qualcache: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
