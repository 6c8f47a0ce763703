//! One lookup round trip over loopback QUIC with mutual TLS, beside a
//! minimal plain-quinn echo server with the same TLS setup and the same
//! message sizes (the ceiling: everything but the lookup). Also: a reload
//! (`Snapshot::open` with its checks, then the swap) of the 10 M-record
//! snapshot while a client keeps querying, beside reading the same file
//! into memory while it queries (the baseline: the bytes touched once,
//! nothing checked).
//!
//! `QUALCACHE_BENCH_SIZES=1000000` skips the 10 M reload.

#[path = "common.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use prost::Message;
use qualcache::certs;
use qualcache::client::Client;
use qualcache::model::CardKey;
use qualcache::probe::{read_probes, ProbeLookup};
use qualcache::protocol::{pb, Limits};
use qualcache::server::{self, Shared};
use qualcache::snapshot::Snapshot;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Answers every stream with `reply`, after reading the request.
async fn echo(endpoint: quinn::Endpoint, reply: Arc<Vec<u8>>) {
    while let Some(incoming) = endpoint.accept().await {
        let reply = reply.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    // As the daemon does outside shutdown: finish the
                    // stream and let the connection deliver it.
                    if recv.read_to_end(1 << 20).await.is_ok()
                        && send.write_all(&reply).await.is_ok()
                    {
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

fn roundtrip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = certs::generate(dir.path(), 1).unwrap();
    let data = common::data(1_000_000);
    let snap = Arc::new(Snapshot::open(&common::snapshot_file(&data)).unwrap());
    let probe = read_probes(&data.join("probes.jsonl"))
        .unwrap()
        .into_iter()
        .find(|p| p.case == "card_hit")
        .unwrap();
    let ProbeLookup::Card { serial } = &probe.lookup else {
        unreachable!()
    };
    let request = pb::Request {
        as_of: probe.as_of.to_string().parse().unwrap(),
        kind: Some(pb::request::Kind::Card(pb::CardLookup {
            serial: serial.clone(),
        })),
    };

    let shared = Arc::new(Shared::new(CardKey::demo(), Limits::default()));
    shared.swap(snap);
    let server_cfg = || {
        qualcache::tls::server_config(
            &creds.server_cert,
            &creds.server_key,
            &creds.ca,
            Default::default(),
        )
        .unwrap()
    };
    let t = &creds.terminals[0];
    let client_cfg = || qualcache::tls::client_config(&creds.ca, &t.cert, &t.key).unwrap();

    let (daemon, echo_client, reply_len) = rt.block_on(async {
        let ep = server::bind("127.0.0.1:0".parse().unwrap(), server_cfg(), 4 << 20).unwrap();
        let addr = ep.local_addr().unwrap();
        tokio::spawn(server::serve(
            ep,
            shared.clone(),
            std::future::pending(),
            Duration::from_secs(1),
        ));
        let daemon = Client::connect(addr, "localhost", client_cfg())
            .await
            .unwrap();
        // The echo answers with bytes of the daemon's answer size.
        let reply = daemon.request(&request).await.unwrap().encode_to_vec();
        assert!(reply.len() > 100);
        let len = reply.len();
        let ep = server::bind("127.0.0.1:0".parse().unwrap(), server_cfg(), 4 << 20).unwrap();
        let addr = ep.local_addr().unwrap();
        tokio::spawn(echo(ep, Arc::new(reply)));
        let echo_client = Client::connect(addr, "localhost", client_cfg())
            .await
            .unwrap();
        (daemon, echo_client, len)
    });
    eprintln!(
        "request {} bytes, response {reply_len} bytes",
        request.encoded_len()
    );
    let bytes = request.encode_to_vec();

    let mut g = c.benchmark_group("roundtrip");
    g.bench_function("qualcached_card_hit", |b| {
        b.iter(|| rt.block_on(daemon.request_bytes(&bytes)).unwrap())
    });
    g.bench_function("quinn_echo_same_sizes", |b| {
        // The echo's reply is not a Response; what must not fail is the
        // round trip itself, or the baseline would time failures.
        b.iter(|| rt.block_on(echo_client.request_raw(&bytes)).unwrap())
    });
    g.finish();

    if std::env::var("QUALCACHE_BENCH_SIZES").is_ok_and(|s| !s.contains("10000000")) {
        return;
    }
    // Reload of a 10 M-record snapshot while a client queries.
    let big = common::snapshot_file(&common::data(10_000_000));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, bytes) = (stop.clone(), bytes.clone());
        rt.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if daemon.request_bytes(&bytes).await.is_ok() {
                    n += 1;
                }
            }
            n
        })
    };
    let mut g = c.benchmark_group("reload");
    g.sample_size(10);
    g.bench_function("open_verify_swap_10M_while_serving", |b| {
        b.iter(|| shared.swap(Arc::new(Snapshot::open(&big).unwrap())))
    });
    // Baseline: bring the same bytes through memory once, checking nothing.
    g.bench_function("read_file_10M_while_serving", |b| {
        b.iter(|| std::hint::black_box(std::fs::read(&big).unwrap().len()))
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    let served = rt.block_on(load).unwrap();
    eprintln!("requests served during the reload benchmark: {served}");
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
