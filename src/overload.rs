//! Overload control by QUIC stream credit.
//!
//! A request is one stream, and a terminal may open a new stream only
//! while it holds stream credit from the server (QUIC flow control,
//! `MAX_STREAMS`). When the server is short of CPU, requests wait where
//! nothing counts them (the UDP receive queue, the endpoint's packet
//! queue) and answering them OVERLOADED would cost as much as answering
//! them. So the server grants less credit instead: past its credit a
//! terminal cannot send a request at all, and learns so at once, without
//! costing the server anything.
//!
//! [`Credit`] measures how late the runtime wakes a timer (its scheduling
//! lag: ready work waiting for a worker), and sets the credit per
//! connection by additive-increase, multiplicative-decrease: halved while
//! the lag stays above [`HIGH_LAG`], grown back by a quarter (at least
//! one) every [`GROW_EVERY`] while it is below [`LOW_LAG`]. Connections
//! apply the current credit when they accept their next stream (credit
//! already granted cannot be taken back; a lower limit stops new credit
//! until the terminal's open streams fall under it).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

/// How often the lag is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Lag above which the credit is halved.
pub const HIGH_LAG: Duration = Duration::from_millis(3);
/// Lag below which the credit may grow.
pub const LOW_LAG: Duration = Duration::from_millis(1);
/// The least time between two halvings (the last one must show first).
pub const SHRINK_EVERY: Duration = Duration::from_millis(50);
/// How often the credit grows while the lag stays low.
pub const GROW_EVERY: Duration = Duration::from_millis(100);

/// The stream credit each connection gets now.
#[derive(Debug)]
pub struct Credit {
    /// Requests in flight one connection may have now, 1 to `max`.
    now: AtomicU32,
    /// The configured credit (`server.max_streams_per_connection`).
    max: u32,
    /// The last lag measured, microseconds.
    lag_micros: AtomicU64,
    /// Times the credit was halved.
    shrinks: AtomicU64,
}

impl Credit {
    /// Full credit, `max` streams per connection.
    pub fn new(max: u32) -> Credit {
        let max = max.max(1);
        Credit {
            now: AtomicU32::new(max),
            max,
            lag_micros: AtomicU64::new(0),
            shrinks: AtomicU64::new(0),
        }
    }

    /// Streams one connection may have open now.
    #[inline]
    pub fn now(&self) -> u32 {
        self.now.load(Relaxed)
    }

    /// The configured credit.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The last scheduling lag measured.
    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_micros.load(Relaxed))
    }

    /// Times the credit was halved since start.
    pub fn shrinks(&self) -> u64 {
        self.shrinks.load(Relaxed)
    }

    /// Folds one lag measurement taken at `at` into the credit;
    /// `last_change` is when it last changed (updated here).
    pub fn observe(&self, lag: Duration, at: Instant, last_change: &mut Instant) {
        self.lag_micros.store(lag.as_micros() as u64, Relaxed);
        let now = self.now();
        let since = at.saturating_duration_since(*last_change);
        if lag > HIGH_LAG && now > 1 && since >= SHRINK_EVERY {
            self.now.store((now / 2).max(1), Relaxed);
            self.shrinks.fetch_add(1, Relaxed);
            *last_change = at;
        } else if lag < LOW_LAG && now < self.max && since >= GROW_EVERY {
            self.now
                .store((now + (now / 4).max(1)).min(self.max), Relaxed);
            *last_change = at;
        }
    }

    /// Probes the runtime's scheduling lag every [`PROBE_EVERY`] and sets
    /// the credit, until the task is dropped.
    pub async fn run(&self) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_change = Instant::now();
        loop {
            let due = tick.tick().await;
            let now = Instant::now();
            // The timer wheel has a 1 ms grain: up to that is not lag.
            let lag = now
                .saturating_duration_since(due)
                .saturating_sub(Duration::from_millis(1));
            self.observe(lag, now, &mut last_change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_under_lag_and_grows_back_when_it_is_gone() {
        let credit = Credit::new(64);
        let start = Instant::now();
        let mut last = start;
        let at = |ms: u64| start + Duration::from_millis(ms);
        // Lag, but too soon after the last change: nothing yet.
        credit.observe(Duration::from_millis(10), at(10), &mut last);
        assert_eq!(credit.now(), 64);
        credit.observe(Duration::from_millis(10), at(60), &mut last);
        assert_eq!(credit.now(), 32);
        credit.observe(Duration::from_millis(10), at(80), &mut last);
        assert_eq!(credit.now(), 32, "one halving per 50 ms");
        for i in 0..10 {
            credit.observe(Duration::from_millis(10), at(120 + 50 * i), &mut last);
        }
        assert_eq!(credit.now(), 1, "never below one stream");
        assert_eq!(credit.shrinks(), 6);
        // Between the thresholds: no change.
        credit.observe(Duration::from_millis(2), at(2000), &mut last);
        assert_eq!(credit.now(), 1);
        // No lag: back to full within seconds.
        let mut t = 2000;
        while credit.now() < 64 {
            t += 100;
            credit.observe(Duration::ZERO, at(t), &mut last);
            assert!(t < 5000, "credit {} after {} ms", credit.now(), t - 2000);
        }
        assert_eq!(credit.now(), 64);
        assert_eq!(credit.lag(), Duration::ZERO);
    }
}
