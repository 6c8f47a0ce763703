//! `qualcache-loadtest`: the bundled load generator.
//!
//! The generator itself (terminals over QUIC, open-loop arrivals, HDR
//! histograms) arrives with the load-generator issue, once the daemon and
//! `qualcache::client` exist. Until then the binary says so and fails, so no
//! script mistakes it for a passing load test.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "qualcache-loadtest {}: the load generator is not built yet (it needs the QUIC daemon); \
         see the open load-generator issue",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
