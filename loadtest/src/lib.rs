//! The bundled load generator for `qualcached`.
//!
//! # Layout
//! - [`workload`]: requests drawn from `probes.jsonl` with a configurable
//!   mix, each with the answer it must get.
//! - [`run`]: terminals (one QUIC connection and certificate each, spread
//!   over several client endpoints), open-loop Poisson arrivals, latency
//!   from the scheduled send time (so coordinated omission cannot hide it),
//!   HDR histograms, and the report.
//! - [`pacer`]: the schedule's timer, with the kernel's precision rather
//!   than tokio's millisecond ticks.
//! - [`echo`]: the plain-quinn echo server, the QUIC ceiling.
//! - [`plot`]: SVG latency plots of runs, alone or side by side.
//!
//! It talks to the daemon only through `qualcache::client`.

pub mod echo;
pub mod freshness;
pub mod pacer;
pub mod plot;
pub mod redis_peer;
pub mod run;
pub mod workload;
