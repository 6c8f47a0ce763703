//! The generator against an in-process daemon on loopback: a short run
//! where every answer must come back and match its probe.

use std::sync::Arc;
use std::time::Duration;

use qualcache::model::CardKey;
use qualcache::probe::ProbeLookup;
use qualcache::protocol::Limits;
use qualcache::server::{self, Shared};
use qualcache::snapshot::Snapshot;
use qualcache_loadtest::plot::Figure;
use qualcache_loadtest::redis_peer::RedisUrl;
use qualcache_loadtest::run::{run, Profile, RunOptions, Target};
use qualcache_loadtest::workload::{Mix, Workload};

/// Synthetic data (CSV and probes) of `records` enrollees under `dir/data`.
fn data(
    dir: &std::path::Path,
    records: u64,
    seed: u64,
    probes: usize,
) -> qualcache::gen::GenSummary {
    qualcache::gen::generate(&qualcache::gen::GenOptions {
        progress: Default::default(),
        records,
        seed,
        out: dir.join("data"),
        probes,
        as_of: "20261101".parse().unwrap(),
        card_key: CardKey::demo(),
    })
    .unwrap()
}

/// The daemon's TLS set-up from development certificates.
fn server_tls(certs: &qualcache::certs::DevCerts) -> quinn::ServerConfig {
    qualcache::tls::server_config(
        &certs.server_cert,
        &certs.server_key,
        &certs.ca,
        Default::default(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_answers_everything_correctly() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let certs = qualcache::certs::generate(&dir.path().join("certs"), 20).unwrap();
        let g = data(dir.path(), 5_000, 3, 500);
        let opts = qualcache::build::BuildOptions {
            progress: Default::default(),
            skip_invalid: false,
            card_key_id: CardKey::demo().id(),
        };
        let built =
            qualcache::build::build_from_csv(&g.csv, &dir.path().join("snap"), &opts, |_| {})
                .unwrap();
        let shared = Arc::new(Shared::new(CardKey::demo(), Limits::default()));
        shared.swap(Arc::new(Snapshot::open(&built.path).unwrap()));
        let config = server_tls(&certs);
        let endpoint = server::bind("127.0.0.1:0".parse().unwrap(), config, 1 << 20).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            endpoint,
            shared,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(1),
        ));

        let probes = qualcache::probe::read_probes(&g.probes).unwrap();
        let mix = Mix {
            card: 0.4,
            batch: 0.1,
            batch_size: 20,
            miss: 0.1,
            lost: 0.1,
        };
        let workload = Arc::new(Workload::new(probes, mix).unwrap());
        let report = run(
            &RunOptions {
                target: Target::Qualcache(addr),
                certs: dir.path().join("certs"),
                terminals: 20,
                endpoints: 2,
                // Uneven shards (7, 7 and 6 terminals), one more than the
                // endpoints: each shard still gets an endpoint.
                threads: 3,
                profile: Profile::Constant {
                    rate: 400.0,
                    seconds: 1.5,
                },
                timeout: Duration::from_secs(5),
                seed: 7,
                server_name: "localhost".into(),
                progress: false,
                card_key: CardKey::demo(),
            },
            workload,
        )
        .await
        .unwrap();
        assert!(report.sent > 300, "sent {}", report.sent);
        assert_eq!(report.answered, report.sent);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.mismatches, 0);
        assert_eq!(report.connect.count, 20);
        assert_eq!((report.threads, report.endpoints), (3, 3));
        // Every request's send lag was recorded.
        assert_eq!(report.send_lag.count, report.sent);
        assert!(
            report.by_kind.len() == 3,
            "card, insurance and batch requests: {:?}",
            report.by_kind.keys()
        );
        // The terminals' QUIC traffic during the schedule was counted:
        // requests went out, answers and acknowledgements came back.
        let quic = report.quic.expect("QUIC traffic of the terminals");
        assert!(
            quic.datagrams_sent > 0 && quic.datagrams_received > 0,
            "{quic:?}"
        );
        assert!(quic.acks_received > 0, "{quic:?}");

        // The figures to plot: each kind's distribution, rising, and the
        // run second by second (1.5 s: two seconds), every answer in one.
        for kind in ["all", "card", "insurance", "batch"] {
            let d = &report.distribution[kind];
            assert!(d.len() > 20, "{kind}: {d:?}");
            assert_eq!(d[0].percentile, 0.0);
            assert!(d
                .windows(2)
                .all(|w| w[0].percentile < w[1].percentile && w[0].ms <= w[1].ms));
        }
        assert_eq!(report.timeline.len(), 2, "{:?}", report.timeline);
        let answered: f64 = report.timeline.iter().map(|s| s.answered_per_s).sum();
        assert_eq!(answered as u64, report.answered);

        // --plot: an SVG that parses, with a line per kind named.
        let svg = dir.path().join("run.svg");
        Figure::of_run("the smoke run".into(), &report)
            .write_svg(&svg)
            .unwrap();
        let texts = svg_texts(&svg);
        for name in [
            "the smoke run",
            "latency by percentile",
            "all",
            "card",
            "insurance",
            "batch",
            "99.9",
        ] {
            assert!(texts.iter().any(|t| t == name), "no {name:?} in {texts:?}");
        }

        // `plot`: runs side by side from their --json reports.
        let json = serde_json::to_string(&report).unwrap();
        for name in ["first", "second"] {
            std::fs::write(dir.path().join(format!("{name}.json")), &json).unwrap();
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qualcache-loadtest"))
            .current_dir(dir.path())
            .args([
                "plot",
                "--out",
                "both.svg",
                "--title",
                "two runs",
                "qualcached=first.json",
                "redis=second.json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let texts = svg_texts(&dir.path().join("both.svg"));
        for name in [
            "two runs",
            "qualcached",
            "redis",
            "answers per second",
            "p99 latency per second",
        ] {
            assert!(texts.iter().any(|t| t == name), "no {name:?} in {texts:?}");
        }
        // A report that is not one is refused by name.
        std::fs::write(dir.path().join("bad.json"), "{}").unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qualcache-loadtest"))
            .current_dir(dir.path())
            .args(["plot", "--out", "bad.svg", "x=bad.json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bad.json: not a qualcache-loadtest report"),
            "{err}"
        );

        let _ = tx.send(());
        task.await.unwrap();
    })
    .await
    .expect("bounded");
}

/// Every text of an SVG file, which must parse as XML.
fn svg_texts(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG parses as XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect()
}

/// A server that takes every request and never answers: each request must
/// come back as a timeout, and the run must still end, one timeout after
/// the schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_are_counted_as_timeouts() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let certs = qualcache::certs::generate(&dir.path().join("certs"), 4).unwrap();
        let g = data(dir.path(), 2_000, 5, 100);
        let config = server_tls(&certs);
        let endpoint = server::bind("127.0.0.1:0".parse().unwrap(), config, 1 << 20).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(incoming) = endpoint.accept().await {
                let conn = incoming.await.unwrap();
                held.push(tokio::spawn(async move {
                    let mut streams = Vec::new();
                    while let Ok(s) = conn.accept_bi().await {
                        streams.push(s);
                    }
                }));
            }
        });
        let probes = qualcache::probe::read_probes(&g.probes).unwrap();
        let mix = Mix {
            card: 0.5,
            batch: 0.0,
            batch_size: 1,
            miss: 0.0,
            lost: 0.0,
        };
        let t0 = std::time::Instant::now();
        let report = run(
            &RunOptions {
                target: Target::Qualcache(addr),
                certs: dir.path().join("certs"),
                terminals: 4,
                endpoints: 1,
                threads: 2,
                profile: Profile::Constant {
                    rate: 100.0,
                    seconds: 0.5,
                },
                timeout: Duration::from_millis(300),
                seed: 9,
                server_name: "localhost".into(),
                progress: false,
                card_key: CardKey::demo(),
            },
            Arc::new(Workload::new(probes, mix).unwrap()),
        )
        .await
        .unwrap();
        assert!(report.sent > 10, "sent {}", report.sent);
        assert_eq!(report.answered, 0);
        assert_eq!(
            report.errors.get("timeout"),
            Some(&report.sent),
            "{:?}",
            report.errors
        );
        assert!(report.error_rate() >= 1.0);
        // Each is in its kind's latency too, at its own deadline.
        let by_kind: u64 = report.by_kind.values().map(|l| l.count).sum();
        assert_eq!(by_kind, report.sent, "{:?}", report.by_kind);
        assert_eq!(report.latency.count, report.sent);
        assert!(
            (300.0..1000.0).contains(&report.latency.p50_ms),
            "{:?}",
            report.latency
        );
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
        silent.abort();
    })
    .await
    .expect("bounded");
}

#[test]
fn peak_profile_ramps() {
    let p = Profile::Peak {
        rate: 1000.0,
        ramp_up: 10.0,
        plateau: 20.0,
        ramp_down: 10.0,
    };
    assert_eq!(p.seconds(), 40.0);
    assert!((p.rate_at(5.0) - 500.0).abs() < 1e-9);
    assert_eq!(p.rate_at(15.0), 1000.0);
    assert!((p.rate_at(35.0) - 500.0).abs() < 1e-9);
}

/// The Redis peer: the same answers stored in Redis, then a short run of
/// GETs and MGETs, every one checked. Needs Redis on 127.0.0.1:6379 (CI
/// starts it); elsewhere it says why it is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_peer_answers_like_the_daemon() {
    let reachable = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:6379".parse().unwrap(),
        Duration::from_millis(500),
    )
    .is_ok();
    if !reachable {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide Redis on 127.0.0.1:6379"
        );
        eprintln!("skipping the Redis peer test: no Redis on 127.0.0.1:6379");
        return;
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let g = data(dir.path(), 5_000, 4, 500);
        let opts = qualcache::build::BuildOptions {
            progress: Default::default(),
            skip_invalid: false,
            card_key_id: CardKey::demo().id(),
        };
        let built =
            qualcache::build::build_from_csv(&g.csv, &dir.path().join("snap"), &opts, |_| {})
                .unwrap();
        // A database of its own (the load replaces only `qc:` keys).
        let url = RedisUrl::new("redis://127.0.0.1:6379/9");
        let client = redis::Client::open(url.expose()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        // An answer left by an earlier load must not survive this one.
        redis::cmd("SET")
            .arg("qc:20000101:c:stale")
            .arg("x")
            .query_async::<()>(&mut con)
            .await
            .unwrap();
        let probes = qualcache::probe::read_probes(&g.probes).unwrap();
        let stored =
            qualcache_loadtest::redis_peer::load(&url, &built.path, &probes, &CardKey::demo())
                .await
                .unwrap();
        assert!(
            stored > 100 && stored < probes.len(),
            "{stored} of {}",
            probes.len()
        );
        let stale: Option<String> = redis::cmd("GET")
            .arg("qc:20000101:c:stale")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(stale, None, "redis-load kept an earlier answer");
        // A probe whose numbers do not parse is refused by its line, and
        // the answers stored stay.
        let mut bad = probes.clone();
        let mut broken = bad[0].clone();
        broken.lookup = ProbeLookup::Insurance {
            insurer: "not-a-number".into(),
            symbol: None,
            number: "1".into(),
            branch: None,
            birth: qualcache::model::Date::from_ymd(1980, 1, 1).unwrap(),
        };
        bad.push(broken);
        let err = qualcache_loadtest::redis_peer::load(&url, &built.path, &bad, &CardKey::demo())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("probe {}", bad.len())), "{err}");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("qc:*")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(keys.len(), stored, "a refused load changed Redis");
        let mix = Mix {
            card: 0.4,
            batch: 0.1,
            batch_size: 20,
            miss: 0.1,
            lost: 0.1,
        };
        let report = run(
            &RunOptions {
                target: Target::Redis(url.clone()),
                certs: dir.path().to_path_buf(),
                terminals: 10,
                endpoints: 1,
                threads: 2,
                profile: Profile::Constant {
                    rate: 300.0,
                    seconds: 1.0,
                },
                timeout: Duration::from_secs(5),
                seed: 5,
                server_name: "localhost".into(),
                progress: false,
                card_key: CardKey::demo(),
            },
            Arc::new(Workload::new(probes, mix).unwrap()),
        )
        .await
        .unwrap();
        assert!(report.sent > 150, "sent {}", report.sent);
        assert_eq!(report.answered, report.sent);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.mismatches, 0);
        assert!(report.quic.is_none(), "Redis has no QUIC traffic");
    })
    .await
    .expect("bounded");
}

/// Runs `qualcache-loadtest run ARGS`; returns its exit code and stderr.
fn loadtest_run(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qualcache-loadtest"))
        .arg("run")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_options_are_refused_with_the_option_named() {
    for (args, named) in [
        (&["--terminals", "0"][..], "--terminals"),
        (&["--endpoints", "0"][..], "--endpoints"),
        (&["--rate=-5"][..], "--rate"),
        (&["--seconds", "0"][..], "--seconds"),
        (&["--ramp-up", "nan"][..], "--ramp-up"),
        (&["--step", "1"][..], "--step"),
        (&["--card-share", "nan"][..], "--card-share"),
        (&["--miss-share", "1.5"][..], "--miss-share"),
        (&["--lost-share=-0.1"][..], "--lost-share"),
        (&["--batch-size", "0"][..], "--batch-size"),
        (&["--batch-size", "1001"][..], "--batch-size"),
        (&["--timeout-ms", "0"][..], "--timeout-ms"),
        (&["--seconds", "1e20"][..], "--seconds"),
        (&["--rate", "1e300"][..], "--rate"),
        (&["--slo-p99-ms", "nan"][..], "--slo-p99-ms"),
        (&["--slo-error-rate=-1"][..], "--slo-error-rate"),
    ] {
        let mut all = vec!["--certs", "certs", "--probes", "probes.jsonl"];
        all.extend_from_slice(args);
        let (code, stderr) = loadtest_run(&all);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("invalid value") && stderr.contains(named),
            "{args:?}: {stderr}"
        );
    }
    // Options that clash are refused by name too.
    let (code, stderr) = loadtest_run(&["--find-max", "--profile", "peak"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--find-max") && stderr.contains("--profile"),
        "{stderr}"
    );
    // An option of the other profile would be ignored: it is refused.
    for (args, named) in [
        (&["--seconds", "10"][..], "--seconds"),
        (&["--profile", "peak", "--seconds", "10"][..], "--seconds"),
        (
            &["--profile", "constant", "--plateau", "10"][..],
            "--plateau",
        ),
        (
            &["--profile", "constant", "--ramp-up", "1"][..],
            "--ramp-up",
        ),
    ] {
        let (code, stderr) = loadtest_run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named) && stderr.contains("qualcache-loadtest run"),
            "{args:?}: {stderr}"
        );
    }
    // The constant profile is the one --find-max steps: naming it is no
    // clash (this run then fails on the missing certificates instead).
    let (code, stderr) = loadtest_run(&[
        "--certs",
        "no-such-dir",
        "--probes",
        "no-such-dir/probes.jsonl",
        "--find-max",
        "--profile",
        "constant",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no-such-dir"), "{stderr}");
}

#[test]
fn shares_that_add_up_to_more_than_one_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let probes = dir.path().join("probes.jsonl");
    std::fs::write(
        &probes,
        "{\"case\":\"c\",\"kind\":\"card\",\"serial\":\"AB\",\"as_of\":\"20261101\",\"expect\":1}\n",
    )
    .unwrap();
    let (code, stderr) = loadtest_run(&[
        "--certs",
        "certs",
        "--probes",
        probes.to_str().unwrap(),
        "--miss-share",
        "0.7",
        "--lost-share",
        "0.4",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("more than 1"), "{stderr}");
}
