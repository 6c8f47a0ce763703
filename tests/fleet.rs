//! The fleet against a real S3 server on loopback (`s3s-fs`: S3 over
//! HTTP with SigV4, multipart uploads and conditional writes): a
//! publisher (the command line), three replica daemons and a fourth that
//! joins late.
//!
//! The server is found as `$QUALCACHE_S3S_FS`, on `PATH`, or in
//! `~/.cargo/bin` (`cargo install s3s-fs --features binary`); without it
//! the test says so in one line and passes, unless `QUALCACHE_REQUIRE_S3`
//! is set (`.ci/run` sets it after installing the server).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use qualcache::client::Client;
use qualcache::fleet::{Fleet, Report, StoreSettings};
use qualcache::model::CardKey;
use qualcache::probe::{read_probes, Probe};
use time::OffsetDateTime;

mod util;
use util::wire::{check, request};
use util::{http_get, sample};

/// The whole scenario's bound.
const LIMIT: Duration = Duration::from_secs(240);
const KEY: &str = "qualcache-test";
const SECRET: &str = "qualcache-test-secret";
const BUCKET: &str = "fleet";

fn s3s_fs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QUALCACHE_S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The S3 server: `root` holds the buckets.
struct S3 {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
    child: Option<Killed>,
}

impl S3 {
    fn start(bin: PathBuf, root: PathBuf) -> S3 {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s3 = S3 {
            bin,
            root,
            port,
            child: None,
        };
        s3.up();
        s3
    }

    /// Starts the server (again) on its port and waits until it accepts.
    fn up(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(Killed(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        self.child = None;
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The AWS environment a publisher or replica process gets.
fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ("AWS_ENDPOINT_URL", endpoint.into()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// `qualcache ARGS` with the store's environment: (success, stdout, stderr).
fn qualcache(s3: &S3, args: &[&str]) -> (bool, String, String) {
    util::outcome(
        Command::new(env!("CARGO_BIN_EXE_qualcache"))
            .args(args)
            .env_remove("QUALCACHE_CARD_KEY")
            .envs(aws_env(&s3.endpoint())),
    )
}

/// A TCP relay in front of the S3 server that can hold back what a
/// download reads: while `hold` is set, each connection passes one more
/// MiB from the server and then nothing (the pointer and manifests pass;
/// a snapshot's bytes stop midway) until `hold` is cleared.
struct Relay {
    addr: SocketAddr,
    hold: Arc<AtomicBool>,
}

impl Relay {
    async fn start(port: u16) -> Relay {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = Arc::new(AtomicBool::new(false));
        let h = hold.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let hold = h.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    // Bytes passed since `hold` was last seen set.
                    let (mut held, mut buf) = (0usize, vec![0u8; 16 * 1024]);
                    loop {
                        while held > (1 << 20) && hold.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        held = if hold.load(Ordering::SeqCst) {
                            held + n
                        } else {
                            0
                        };
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Relay { addr, hold }
    }
}

/// A replica daemon.
struct Replica {
    id: String,
    /// Killed when the replica is dropped.
    _child: Killed,
    log: PathBuf,
}

impl Replica {
    fn config(dir: &Path, id: &str, certs: &Path, endpoint: &str) -> PathBuf {
        let config = dir.join("qualcached.toml");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\nmode = \"off\"\n\
                 [tls]\ncert = \"{c}/server.pem\"\nkey = \"{c}/server.key\"\nclient_ca = \"{c}/ca.pem\"\n\
                 [snapshots]\ndir = \"{d}/snapshots\"\nkeep = 3\n\
                 [fleet]\nurl = \"s3://{BUCKET}/prod\"\nendpoint = \"{endpoint}\"\nallow_http = true\nreplica_id = \"{id}\"\npoll_interval_secs = 1\n",
                c = certs.display(),
                d = dir.display(),
            ),
        )
        .unwrap();
        config
    }

    fn start(dir: &Path, id: &str, certs: &Path, s3: &S3, endpoint: &str) -> Replica {
        let config = Replica::config(dir, id, certs, endpoint);
        let log = dir.join(format!("log-{}", unique()));
        let child = Command::new(env!("CARGO_BIN_EXE_qualcached"))
            .args(["--config", config.to_str().unwrap()])
            .env_remove("QUALCACHE_CARD_KEY")
            .env_remove("NOTIFY_SOCKET")
            .env("QUALCACHE_LOG", "info")
            .envs(aws_env(&s3.endpoint()))
            .env_remove("AWS_ENDPOINT_URL")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Replica {
            id: id.into(),
            _child: Killed(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address from the log line that `field=` starts, once it is there.
    async fn addr(&self, what: &str, field: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = self.log().lines().find_map(|l| {
                l.contains(what)
                    .then(|| {
                        l.split(field)
                            .nth(1)?
                            .split_whitespace()
                            .next()?
                            .parse()
                            .ok()
                    })
                    .flatten()
            });
            if let Some(a) = found {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never logged {what}:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metric(&self, series: &str) -> f64 {
        let admin = self.addr("admin listener", "admin=").await;
        let (status, text) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200);
        sample(&text, series).unwrap_or_else(|| panic!("{}: no {series}", self.id))
    }

    /// Asks the replica the first probes; every answer must hold and come
    /// from `generation`.
    async fn answers(&self, certs: &qualcache::certs::DevCerts, probes: &[Probe], generation: u64) {
        let addr = self.addr("serving", "listen=").await;
        let t = &certs.terminals[0];
        let config = qualcache::tls::client_config(&certs.ca, &t.cert, &t.key).unwrap();
        let client = Client::connect(addr, "localhost", config).await.unwrap();
        for p in probes.iter().take(150) {
            let r = client.request(&request(p)).await.unwrap();
            assert_eq!(r.generation, generation, "{}", self.id);
            check(p, r.answer.as_ref().unwrap(), &self.id);
        }
        client.close().await;
    }
}

/// A daemon with a CSV source that publishes each generation it builds
/// (killed when dropped).
struct Publisher(Child);

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Publisher {
    fn start(d: &Path, snapshots: &Path, csv: &Path, s3: &S3) -> Publisher {
        let dir = d.join("publisher");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("qualcached.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\nmode = \"off\"\n\
                 [tls]\ncert = \"{c}/server.pem\"\nkey = \"{c}/server.key\"\nclient_ca = \"{c}/ca.pem\"\n\
                 [snapshots]\ndir = \"{s}\"\nkeep = 5\n\
                 [source]\nkind = \"csv\"\npath = \"{csv}\"\n\
                 [fleet]\nurl = \"s3://{BUCKET}/prod\"\npublish = true\npoll_interval_secs = 1\n",
                c = d.join("certs").display(),
                s = snapshots.display(),
                csv = csv.display(),
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_qualcached"))
            .args(["--config", config.to_str().unwrap()])
            .env_remove("QUALCACHE_CARD_KEY")
            .env_remove("NOTIFY_SOCKET")
            .envs(aws_env(&s3.endpoint()))
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .unwrap();
        Publisher(child)
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Waits (bounded) until every replica's report satisfies `pred`.
async fn reports_until(
    fleet: &Fleet,
    ids: &[&str],
    what: &str,
    pred: impl Fn(&Report) -> bool,
) -> Vec<Report> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reports = fleet.reports().await.unwrap_or_default();
        let ok = ids
            .iter()
            .all(|id| reports.iter().any(|r| r.replica_id == *id && pred(r)));
        if ok {
            return reports
                .into_iter()
                .filter(|r| ids.contains(&r.replica_id.as_str()))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "replicas never reported {what}: {reports:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn parse_time(t: &str) -> OffsetDateTime {
    qualcache::fleet::parse_time(t).unwrap()
}

/// Every replica switched to `generation` within one second after `at`.
fn switched_on_time(reports: &[Report], generation: u64, at: OffsetDateTime) {
    for r in reports {
        assert_eq!(r.serving, Some(generation), "{r:?}");
        let since = parse_time(r.serving_since.as_deref().unwrap());
        let late = since - at;
        assert!(
            !late.is_negative() && late < time::Duration::seconds(1),
            "{} switched {late} after the activation time",
            r.replica_id
        );
    }
}

fn activate_at(s3: &S3, generation: u64, in_secs: i64) -> OffsetDateTime {
    let at = OffsetDateTime::now_utc() + time::Duration::seconds(in_secs);
    let at_text = qualcache::fleet::rfc3339(at);
    let url = format!("s3://{BUCKET}/prod");
    let (ok, out, err) = qualcache(
        s3,
        &[
            "fleet",
            "activate",
            &generation.to_string(),
            "--at",
            &at_text,
            "--url",
            &url,
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("\"generation\": {generation}")),
        "{out}"
    );
    parse_time(&at_text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_pull_verify_and_switch_together() {
    let Some(bin) = s3s_fs() else {
        assert!(
            std::env::var_os("QUALCACHE_REQUIRE_S3").is_none(),
            "QUALCACHE_REQUIRE_S3 is set but s3s-fs is not installed"
        );
        eprintln!("skipped: no s3s-fs (cargo install s3s-fs --features binary)");
        return;
    };
    tokio::time::timeout(LIMIT, scenario(bin))
        .await
        .expect("the fleet scenario took too long");
}

async fn scenario(bin: PathBuf) {
    let tmp = util::tempdir();
    let d = tmp.path();
    let certs = qualcache::certs::generate(&d.join("certs"), 2).unwrap();
    let g = qualcache::gen::generate(&qualcache::gen::GenOptions {
        progress: Default::default(),
        records: 20_000,
        seed: 5,
        out: d.join("data"),
        probes: 500,
        as_of: "20261101".parse().unwrap(),
        card_key: CardKey::demo(),
    })
    .unwrap();
    let probes = read_probes(&g.probes).unwrap();
    // Four generations of the same data (2.6 MB each).
    let built = d.join("built");
    let opts = qualcache::build::BuildOptions {
        progress: Default::default(),
        skip_invalid: false,
        card_key_id: CardKey::demo().id(),
    };
    for _ in 0..4 {
        qualcache::build::build_from_csv(&g.csv, &built, &opts, |_| {}).unwrap();
    }
    let file = |g: u64| built.join(format!("{g}.qcs")).display().to_string();
    let mut s3 = S3::start(bin, d.join("s3"));
    let url = format!("s3://{BUCKET}/prod");
    let creds = d.join("aws-credentials");
    std::fs::write(
        &creds,
        format!("[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    // The test reads the store with the credentials file (the processes
    // get the environment).
    let fleet = Fleet::open(&StoreSettings {
        url: url.clone(),
        endpoint: Some(s3.endpoint()),
        region: Some("us-east-1".into()),
        allow_http: true,
        credentials_file: Some(creds.clone()),
    })
    .unwrap();

    // Publish: once; never again over the same generation.
    let (ok, out, err) = qualcache(&s3, &["snapshot", "publish", "--to", &url, &file(1)]);
    assert!(ok, "{err}");
    assert!(out.contains("\"checksum\": \"blake3:"), "{out}");
    let (ok, _, err) = qualcache(&s3, &["snapshot", "publish", "--to", &url, &file(1)]);
    assert!(
        !ok && err.contains("generation 1 is published already"),
        "{err}"
    );

    // Three replicas; the third reads the store through a relay.
    let relay = Relay::start(s3.port).await;
    let relay_endpoint = format!("http://{}", relay.addr);
    let ids = ["r1", "r2", "r3"];
    let mut replicas: Vec<Replica> = ids
        .iter()
        .map(|id| {
            let endpoint = if *id == "r3" {
                relay_endpoint.clone()
            } else {
                s3.endpoint()
            };
            Replica::start(&d.join(id), id, &d.join("certs"), &s3, &endpoint)
        })
        .collect();
    reports_until(&fleet, &ids, "generation 1 ready", |r| r.ready.contains(&1)).await;
    assert!(
        replicas
            .iter()
            .all(|r| !r.log().contains("serving listen=")),
        "nothing is served before the pointer"
    );

    // Activate at T: each switches within a second of T.
    let at = activate_at(&s3, 1, 3);
    let reports = reports_until(&fleet, &ids, "serving 1", |r| r.serving == Some(1)).await;
    switched_on_time(&reports, 1, at);
    for r in &replicas {
        r.answers(&certs, &probes, 1).await;
    }

    // Two operators read the pointer, then both write: one is refused.
    let (p, version) = fleet.pointer().await.unwrap().unwrap();
    let mut first = p.clone();
    first.written_at = "2026-12-05T00:00:01Z".into();
    let mut second = p.clone();
    second.written_at = "2026-12-05T00:00:02Z".into();
    fleet.set_pointer(&first, Some(&version)).await.unwrap();
    let raced = fleet
        .set_pointer(&second, Some(&version))
        .await
        .unwrap_err();
    assert!(
        raced
            .to_string()
            .contains("the pointer changed since it was read"),
        "{raced}"
    );
    let (ok, _, err) = qualcache(&s3, &["fleet", "activate", "9", "--url", &url]);
    assert!(
        !ok && err.contains("generation 9 is not published"),
        "{err}"
    );

    // A flipped byte in generation 2's object: every replica refuses it
    // and keeps serving 1; the pointer will not move to it.
    let (ok, _, err) = qualcache(
        &s3,
        &[
            "snapshot",
            "publish",
            "--to",
            &format!("s3://{BUCKET}/staging"),
            &file(2),
        ],
    );
    assert!(ok, "{err}");
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(s3.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(KEY)
        .with_secret_access_key(SECRET)
        .build()
        .unwrap();
    let mut bytes = std::fs::read(file(2)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    raw.put(&"prod/generations/2.qcs".into(), bytes.into())
        .await
        .unwrap();
    let manifest = raw
        .get(&"staging/generations/2.json".into())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    raw.put(&"prod/generations/2.json".into(), manifest.into())
        .await
        .unwrap();
    let reports = reports_until(&fleet, &ids, "generation 2 refused", |r| {
        r.refused.iter().any(|f| f.generation == 2)
    })
    .await;
    for r in &reports {
        assert!(!r.ready.contains(&2), "{r:?}");
        let why = &r.refused.iter().find(|f| f.generation == 2).unwrap().reason;
        assert!(why.contains("checksum"), "{why}");
    }
    for r in &replicas {
        assert!(r.metric("qualcache_fleet_refused_total").await >= 1.0);
        r.answers(&certs, &probes, 1).await;
    }
    let (ok, _, err) = qualcache(&s3, &["fleet", "activate", "2", "--url", &url]);
    assert!(
        !ok && err.contains("0 of 3 replicas report it ready"),
        "{err}"
    );

    // A replica killed in the middle of a download starts again and
    // completes it (the relay holds r3's download back meanwhile).
    relay.hold.store(true, Ordering::SeqCst);
    let (ok, _, err) = qualcache(&s3, &["snapshot", "publish", "--to", &url, &file(3)]);
    assert!(ok, "{err}");
    reports_until(&fleet, &["r1", "r2"], "generation 3 ready", |r| {
        r.ready.contains(&3)
    })
    .await;
    let r3_dir = d.join("r3/snapshots");
    let partial = || {
        std::fs::read_dir(&r3_dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !partial() {
        assert!(
            Instant::now() < deadline,
            "r3 never started downloading generation 3"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r3 = replicas.pop().unwrap();
    drop(r3); // SIGKILL
    assert!(!r3_dir.join("3.qcs").exists());
    relay.hold.store(false, Ordering::SeqCst);
    replicas.push(Replica::start(
        &d.join("r3"),
        "r3",
        &d.join("certs"),
        &s3,
        &relay_endpoint,
    ));
    reports_until(
        &fleet,
        &["r3"],
        "generation 3 ready after the restart",
        |r| r.ready.contains(&3) && r.serving == Some(1),
    )
    .await;
    assert!(
        !partial(),
        "the killed download's temporary file is removed"
    );
    replicas[2].answers(&certs, &probes, 1).await;

    // Activate 3, then roll back to 1: no download.
    let at = activate_at(&s3, 3, 3);
    let reports = reports_until(&fleet, &ids, "serving 3", |r| r.serving == Some(3)).await;
    switched_on_time(&reports, 3, at);
    let mut downloads = Vec::new();
    for r in &replicas {
        downloads.push(r.metric("qualcache_fleet_downloads_total").await);
    }
    let (ok, out, err) = qualcache(&s3, &["fleet", "rollback", "--url", &url]);
    assert!(ok, "{err}");
    let pointer: qualcache::fleet::Pointer = serde_json::from_str(&out).unwrap();
    assert_eq!(pointer.generation, 1);
    let reports = reports_until(&fleet, &ids, "serving 1 again", |r| r.serving == Some(1)).await;
    switched_on_time(&reports, 1, parse_time(&pointer.activate_at));
    for (r, before) in replicas.iter().zip(downloads) {
        assert_eq!(
            r.metric("qualcache_fleet_downloads_total").await,
            before,
            "{}",
            r.id
        );
        r.answers(&certs, &probes, 1).await;
    }

    // The store goes away: replicas keep serving, count the errors, and
    // catch up once it is back.
    s3.down();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in &replicas {
        r.answers(&certs, &probes, 1).await;
        assert!(
            r.metric("qualcache_fleet_store_errors_total").await >= 1.0,
            "{}",
            r.id
        );
    }
    s3.up();

    // A publisher daemon over the directory the generations were built
    // in publishes its newest (4); r3's download of it is held back.
    relay.hold.store(true, Ordering::SeqCst);
    let publisher = Publisher::start(d, &built, &g.csv, &s3);
    reports_until(&fleet, &["r1", "r2"], "generation 4 ready", |r| {
        r.ready.contains(&4) && r.last_error.is_none()
    })
    .await;

    // A replica that joins late catches up to the pointer (1).
    replicas.push(Replica::start(
        &d.join("r4"),
        "r4",
        &d.join("certs"),
        &s3,
        &s3.endpoint(),
    ));
    reports_until(&fleet, &["r4"], "r4 serving 1", |r| r.serving == Some(1)).await;
    replicas[3].answers(&certs, &probes, 1).await;
    let all = ["r1", "r2", "r3", "r4"];
    let with_4 = ["r1", "r2", "r4"];
    reports_until(&fleet, &with_4, "generation 4 ready", |r| {
        r.ready.contains(&4)
    })
    .await;

    // Activated while r3 still lacks it: the others switch on time; r3
    // keeps serving 1, says it waits, and switches once it has it.
    let at = activate_at(&s3, 4, 3);
    let reports = reports_until(&fleet, &with_4, "serving 4", |r| r.serving == Some(4)).await;
    switched_on_time(&reports, 4, at);
    reports_until(&fleet, &["r3"], "r3 waiting for 4", |r| {
        r.waiting_for == Some(4) && r.serving == Some(1)
    })
    .await;
    assert_eq!(replicas[2].metric("qualcache_fleet_waiting").await, 1.0);
    replicas[2].answers(&certs, &probes, 1).await;
    relay.hold.store(false, Ordering::SeqCst);
    reports_until(&fleet, &["r3"], "r3 serving 4", |r| {
        r.serving == Some(4) && r.waiting_for.is_none()
    })
    .await;
    assert_eq!(replicas[2].metric("qualcache_fleet_waiting").await, 0.0);
    for r in &replicas {
        r.answers(&certs, &probes, 4).await;
    }

    // Each generation the publisher builds is published: a new export
    // renamed over the source and a SIGHUP build generation 5.
    let export = d.join("export.csv");
    std::fs::copy(&g.csv, &export).unwrap();
    std::fs::rename(&export, &g.csv).unwrap();
    util::signal(&publisher.0.id().to_string(), "-HUP");
    reports_until(&fleet, &all, "generation 5 ready", |r| r.ready.contains(&5)).await;
    let (ok, out, err) = qualcache(&s3, &["fleet", "status", "--url", &url]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["pointer"]["generation"], 4);
    assert_eq!(status["replicas"].as_array().unwrap().len(), 4);
    assert_eq!(status["generations"].as_array().unwrap().len(), 5);
    assert!(
        status["generations"][4]["source"]
            .as_str()
            .unwrap()
            .starts_with("csv "),
        "{status}"
    );
    // No log line carries the credentials.
    for r in &replicas {
        assert!(!r.log().contains(SECRET), "{}", r.id);
    }
}
