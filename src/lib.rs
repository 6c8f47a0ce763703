//! qualcache: a memory-mapped, zero-copy qualification-lookup cache for
//! Japan's online qualification confirmation.
//!
//! # Layout
//!
//! - [`model`]: value types that can only hold valid values (insurer
//!   numbers, normalised insurance keys, card digests, dates), the code
//!   tables, and owned qualification records.
//! - [`store`]: authoritative stores snapshots are built from; the CSV
//!   export is the embedded default.
//! - [`snapshot`]: the snapshot file (header + rkyv archive), its builder,
//!   atomic writer, memory-mapped reader, verifier, and the pure lookup
//!   functions over the archive.
//! - [`build`]: the `snapshot build` pipeline, store to snapshot file.
//! - [`gen`]: deterministic synthetic national-scale data and probes.
//! - [`probe`]: the `probes.jsonl` format and the code that checks a probe's
//!   answer.
//! - [`answer`]: JSON rendering of lookup answers.
//!
//! Start reading at [`snapshot::Snapshot`]; ARCHITECTURE.md has the map and
//! the invariants.

pub mod answer;
pub mod build;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod gen;
pub mod model;
pub mod probe;
pub mod protocol;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod tls;
