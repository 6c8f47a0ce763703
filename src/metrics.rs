//! What the daemon counts about itself, for the status request (and, as
//! they move, its logs).

use std::sync::atomic::AtomicU64;

/// Counters of the snapshot life cycle since start, reported by status
/// requests (and logged as they move).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Snapshots built from the source.
    pub builds: AtomicU64,
    /// Builds that failed (source unreachable, bad rows, disk); the
    /// snapshot served stays.
    pub build_failures: AtomicU64,
    /// Reloads that refused a snapshot (it would not open or verify).
    pub reload_failures: AtomicU64,
}

impl Metrics {
    /// All zero.
    pub const fn new() -> Metrics {
        Metrics {
            builds: AtomicU64::new(0),
            build_failures: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }
}
