//! qualcache: a memory-mapped, zero-copy qualification-lookup cache for
//! Japan's online qualification confirmation.
//!
//! # Layout
//!
//! Every module, in the order of ARCHITECTURE.md's code map:
//!
//! - [`model`]: value types that can only hold valid values (insurer,
//!   institution and payer numbers with their check digits, normalised
//!   insurance keys, the card key and card digests, dates), the code
//!   tables, and owned qualification records.
//! - [`store`]: authoritative stores snapshots are built from: the CSV
//!   export ([`store::csv`], the embedded default, read in parallel chunks
//!   by [`store::chunks`]) and PostgreSQL ([`store::postgres`]: migrations,
//!   `db load`, the consistent binary-COPY export).
//! - [`snapshot`]: the snapshot file (header + rkyv archive), its builder,
//!   atomic writer, memory-mapped reader (the crate's only `unsafe`),
//!   verifier, and the pure lookup functions over the archive.
//! - [`build`]: the `snapshot build` pipelines, store to snapshot file.
//! - [`gen`]: deterministic synthetic national-scale data and probes.
//! - [`probe`]: the `probes.jsonl` format and the code that checks a probe's
//!   answer.
//! - [`answer`]: JSON rendering of lookup answers.
//! - [`progress`]: how far long tasks are (a silent handle by default; the
//!   CLI draws a bar, the daemon logs every tenth of a long build).
//! - [`cli`]: the `qualcache` command line (the binary only parses and maps
//!   errors to exit codes).
//! - [`protocol`]: the wire messages (`proto/qualcache.proto`) and the pure
//!   request handler.
//! - [`server`]: the QUIC driver: endpoints bound with `SO_REUSEPORT`, one
//!   request per stream, the shared snapshot, graceful drain.
//! - [`metrics`]: what the daemon counts about itself (builds, reloads,
//!   refused handshakes, requests by kind and status with their latency).
//! - [`admin`]: the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`).
//! - [`audit`]: the audit trail of who looked up whom (hash-chained hourly
//!   files, their writer thread, `verify` and `query`).
//! - [`tls`]: rustls configurations with client certificates required, and
//!   the institution code of a peer certificate.
//! - [`certs`]: development certificates (a CA, the server's, terminals').
//! - [`config`]: `qualcached`'s TOML configuration, raw and validated.
//! - [`daemon`]: `qualcached`: the snapshot directory (`generations`:
//!   initial snapshot, builds, reloads, pruning, rollback pin), the reload
//!   loop (`reload`), the change follower (`follower`), a fleet replica's
//!   and publisher's tasks (`replica`), the signals (`signals`) and `run`.
//! - [`fleet`]: snapshots published to an object store (S3 or a local
//!   directory), the pointer replicas switch by, their reports, and the
//!   verified download.
//! - [`client`]: the QUIC client used by `qualcache query` and the load
//!   generator.
//!
//! Start reading at [`snapshot::Snapshot`]; ARCHITECTURE.md has the map and
//! the invariants.

pub mod admin;
pub mod answer;
pub mod audit;
pub mod build;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod gen;
pub mod metrics;
pub mod model;
pub mod overlay;
pub mod overload;
pub mod probe;
pub mod progress;
pub mod protocol;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod tls;
