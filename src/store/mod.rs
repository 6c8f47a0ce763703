//! Authoritative stores snapshots are built from. The CSV export is the
//! embedded default.

pub mod chunks;
pub mod csv;
pub mod postgres;
