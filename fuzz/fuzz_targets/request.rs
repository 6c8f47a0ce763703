//! Request decoding and `protocol::handle` against a small snapshot: any
//! bytes a terminal sends get a response with a status, never a panic.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qualcache::metrics::Metrics;
use qualcache::model::CardKey;
use qualcache::protocol::{self, Context, Limits};
use qualcache::snapshot::Snapshot;

/// 500 generated records, built once per process.
fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<(tempfile::TempDir, Snapshot)> = OnceLock::new();
    &SNAPSHOT
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let g = qualcache::gen::generate(&qualcache::gen::GenOptions {
                progress: Default::default(),
                records: 500,
                seed: 3,
                out: dir.path().join("data"),
                probes: 10,
                as_of: "20261101".parse().unwrap(),
                card_key: CardKey::demo(),
            })
            .unwrap();
            let opts = qualcache::build::BuildOptions {
                progress: Default::default(),
                skip_invalid: false,
                card_key_id: CardKey::demo().id(),
            };
            let built =
                qualcache::build::build_from_csv(&g.csv, &dir.path().join("snap"), &opts, |_| {})
                    .unwrap();
            let snapshot = Snapshot::open(&built.path).unwrap();
            (dir, snapshot)
        })
        .1
}

static METRICS: Metrics = Metrics::new();

fuzz_target!(|data: &[u8]| {
    let key = CardKey::demo();
    let ctx = Context {
        snapshot: Some(snapshot()),
        overlay: None,
        card_key: &key,
        today: "20261204".parse().unwrap(),
        limits: Limits::default(),
        uptime_seconds: 1,
        now_unix: 1_796_398_200,
        connections: 1,
        metrics: &METRICS,
    };
    let mut lookups = Vec::new();
    let (_, response) = protocol::handle_bytes(&ctx, data, Some(&mut lookups));
    assert_ne!(response.status, 0, "every response carries a status");
});
