//! The timer of the send schedule.
//!
//! Tokio's timers tick in whole milliseconds. Driven by them, a shard would
//! release its arrivals in bursts at each tick, not as the Poisson process
//! it draws, and every latency measured from the scheduled time would carry
//! up to two milliseconds of the generator's own lateness. On Linux a
//! timerfd wakes the shard within microseconds of the next arrival;
//! elsewhere tokio's timer is used.

use std::io;

use tokio::time::Instant;

/// A one-shot timer that is armed for an instant and then awaited.
#[derive(Debug)]
pub struct Pacer {
    #[cfg(target_os = "linux")]
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    #[cfg(not(target_os = "linux"))]
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

#[cfg(target_os = "linux")]
impl Pacer {
    /// A disarmed timer. Needs a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<Pacer> {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // Deprecated (tokio#8587) because an arbitrary `T` may hand out a
        // different or closed descriptor later; an `OwnedFd` owned by the
        // `AsyncFd` is the same open descriptor for the `AsyncFd`'s whole
        // life, which is what the unsafe replacement would require of us.
        #[allow(deprecated)]
        let fd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?;
        Ok(Pacer { fd })
    }

    /// Arms the timer for `at`, replacing any earlier time; an instant
    /// that has passed fires at once.
    pub fn arm(&mut self, at: Instant) -> io::Result<()> {
        use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
        // A zero time would disarm the timer: the earliest is 1 ns.
        let d = at
            .saturating_duration_since(Instant::now())
            .max(std::time::Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos().into(),
            },
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    /// Waits until the armed time has come. Cancel safe: a wait dropped
    /// before the time loses nothing.
    pub async fn wait(&mut self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                Ok(result) => return result.map(|_| ()),
                // Re-armed after an earlier expiry was signalled, or a
                // spurious wake-up: wait on.
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl Pacer {
    /// A timer that has not been armed yet.
    pub fn new() -> io::Result<Pacer> {
        Ok(Pacer {
            sleep: Box::pin(tokio::time::sleep_until(
                Instant::now() + std::time::Duration::from_secs(86_400 * 365),
            )),
        })
    }

    /// Arms the timer for `at`, replacing any earlier time.
    pub fn arm(&mut self, at: Instant) -> io::Result<()> {
        self.sleep.as_mut().reset(at);
        Ok(())
    }

    /// Waits until the armed time has come.
    pub async fn wait(&mut self) -> io::Result<()> {
        (&mut self.sleep).await;
        self.sleep
            .as_mut()
            .reset(Instant::now() + std::time::Duration::from_secs(86_400 * 365));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn fires_at_the_armed_time_and_not_before() {
        let mut pacer = Pacer::new().unwrap();
        let t0 = Instant::now();
        pacer.arm(t0 + Duration::from_millis(30)).unwrap();
        pacer.wait().await.unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(30),
            "{:?}",
            t0.elapsed()
        );
        // Re-arming replaces the earlier time: the later one wins.
        let t1 = Instant::now();
        pacer.arm(t1 + Duration::from_millis(5)).unwrap();
        pacer.arm(t1 + Duration::from_millis(40)).unwrap();
        pacer.wait().await.unwrap();
        assert!(
            t1.elapsed() >= Duration::from_millis(40),
            "{:?}",
            t1.elapsed()
        );
        // A time that has passed fires at once.
        pacer.arm(t1).unwrap();
        tokio::time::timeout(Duration::from_secs(5), pacer.wait())
            .await
            .expect("fires at once")
            .unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_wait_loses_nothing() {
        let mut pacer = Pacer::new().unwrap();
        pacer
            .arm(Instant::now() + Duration::from_millis(20))
            .unwrap();
        // Cancelled before the time comes...
        assert!(tokio::time::timeout(Duration::from_millis(1), pacer.wait())
            .await
            .is_err());
        // ...the next wait still sees it.
        tokio::time::timeout(Duration::from_secs(5), pacer.wait())
            .await
            .expect("the armed time came")
            .unwrap();
    }
}
