//! The daemon's signal handlers, turned into a small closed set of
//! [`Signal`]s consumed by one loop (README: the table of what each does).

use anyhow::{Context, Result};

/// What the signal handlers ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload now.
    Reload,
    /// SIGTERM or SIGINT: stop accepting, drain, exit 0.
    Shutdown,
    /// SIGIO: another process wants to write to or truncate the served
    /// snapshot file, whose read lease the kernel is breaking.
    LeaseBreak,
}

/// The daemon's SIGHUP, SIGTERM, SIGINT and SIGIO handlers.
#[derive(Debug)]
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    /// Lease breaks: installed before any lease is taken, since SIGIO's
    /// default action ends the process.
    io: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (from then on the signals are queued for
    /// the daemon instead of killing the process); failing to is an error.
    /// Call it first thing, within a Tokio runtime: a signal that arrives
    /// before is handled by its default action (SIGHUP, SIGTERM and SIGIO
    /// end the process).
    pub fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot install the {name} handler"))
        };
        Ok(Signals {
            hup: install(SignalKind::hangup(), "SIGHUP")?,
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            io: install(SignalKind::io(), "SIGIO")?,
        })
    }

    /// The next signal.
    pub(super) async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => Signal::Reload,
            _ = self.term.recv() => Signal::Shutdown,
            _ = self.int.recv() => Signal::Shutdown,
            _ = self.io.recv() => Signal::LeaseBreak,
        }
    }
}

/// Turns SIGHUP into [`Signal::Reload`], SIGTERM / SIGINT into
/// [`Signal::Shutdown`] and SIGIO into [`Signal::LeaseBreak`].
pub(super) async fn forward_signals(mut signals: Signals, tx: tokio::sync::mpsc::Sender<Signal>) {
    loop {
        let s = signals.next().await;
        if tx.send(s).await.is_err() || s == Signal::Shutdown {
            return;
        }
    }
}
