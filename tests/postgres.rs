//! The PostgreSQL store against a real server: migrations, COPY load, the
//! consistent binary-COPY export into snapshots (equivalent to the CSV
//! path), and the daemon rebuilding after updates and surviving the loss
//! of the database during a rebuild.
//!
//! The server is `$QUALCACHE_TEST_PG_URL` (default
//! postgres://postgres@127.0.0.1:5432/test). Each test works in a fresh
//! schema of its own and drops it. Without a reachable server the tests
//! print one line and pass, unless `$QUALCACHE_REQUIRE_PG` is set (as
//! `.ci/run` does), which makes them fail.

mod util;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qualcache::client::Client;
use qualcache::model::{CardKey, Status};
use qualcache::probe::{check, read_probes, Probe, ProbeLookup};
use qualcache::protocol::pb;
use qualcache::snapshot::Snapshot;
use qualcache::store::postgres::PgSource;

const LIMIT: Duration = Duration::from_secs(120);

fn url() -> String {
    std::env::var("QUALCACHE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema on the test server, dropped with the value; `None` (after
/// one line on stderr) when there is no server and none is required.
struct Schema {
    name: String,
    source: PgSource,
}

impl Schema {
    async fn fresh() -> Option<Schema> {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "qct_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let source = PgSource::new(&url(), &name, None).unwrap();
        match connect(&url()).await {
            Ok(c) => {
                c.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .unwrap();
            }
            Err(e) => {
                let why = match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                };
                if std::env::var_os("QUALCACHE_REQUIRE_PG").is_some() {
                    panic!(
                        "QUALCACHE_REQUIRE_PG is set but PostgreSQL at {} is unreachable: {why}",
                        url()
                    );
                }
                // Once per run, and past the test harness's capture.
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "skipping the PostgreSQL tests: no server at {} ({why}); see README.md",
                        url()
                    );
                });
                return None;
            }
        }
        Some(Schema { name, source })
    }

    /// A client whose search_path is this schema.
    async fn client(&self) -> tokio_postgres::Client {
        self.source.connect().await.unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Its own thread and runtime: drop may run inside an async test.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(c) = connect(&url()).await {
                    let _ = c
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(3));
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long")
}

fn generate(dir: &Path, records: u64) -> qualcache::gen::GenSummary {
    qualcache::gen::generate(&qualcache::gen::GenOptions {
        progress: Default::default(),
        records,
        seed: 21,
        out: dir.to_path_buf(),
        probes: 1_000,
        as_of: "20261101".parse().unwrap(),
        card_key: CardKey::demo(),
    })
    .unwrap()
}

/// Runs the `qualcache` binary against the schema; returns (ok, stdout, stderr).
fn cli(schema: &Schema, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--schema", &schema.name]);
    util::run(&all)
}

/// `qualcache snapshot build --source URL --out DIR` in `schema`.
fn build_from_db(schema: &Schema, url: &str, out: &Path) -> (bool, String, String) {
    cli(
        schema,
        &[
            "snapshot",
            "build",
            "--source",
            url,
            "--out",
            out.to_str().unwrap(),
        ],
    )
}

/// Builds generation 1 from the schema into `dir/pg` and from `csv` into
/// `dir/csv`, and checks that the two hold the same bytes past their
/// headers; returns the two folders.
fn build_both(schema: &Schema, csv: &str, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (pg_dir, csv_dir) = (dir.join("pg"), dir.join("csv"));
    let (ok, _, err) = build_from_db(schema, &url(), &pg_dir);
    assert!(ok, "{err}");
    let csv_out = csv_dir.to_str().unwrap();
    let (ok, _, err) = util::run(&["snapshot", "build", "--source", csv, "--out", csv_out]);
    assert!(ok, "{err}");
    let body = |p: &Path| std::fs::read(p).unwrap()[512..].to_vec();
    assert!(
        body(&pg_dir.join("1.qcs")) == body(&csv_dir.join("1.qcs")),
        "the PostgreSQL and CSV snapshots differ"
    );
    (pg_dir, csv_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_then_build_answers_every_probe_as_the_csv_path_does() {
    bounded(async {
        let Some(schema) = Schema::fresh().await else {
            return;
        };
        let dir = util::tempdir();
        let g = generate(dir.path(), 20_000);
        let csv = g.csv.to_str().unwrap();
        let url = url();

        let (ok, out, err) = cli(&schema, &["db", "migrate", "--url", &url]);
        assert!(ok, "{err}");
        assert!(
            out.contains("\"applied\": [\n    1,\n    2,\n    3\n  ]"),
            "{out}"
        );
        let (ok, out, err) = cli(&schema, &["db", "load", "--url", &url, "--csv", csv]);
        assert!(ok, "{err}");
        assert!(out.contains("\"records\": 20000"), "{out}");

        let (pg_dir, csv_dir) = build_both(&schema, csv, dir.path());

        let from_pg = Snapshot::open(&pg_dir.join("1.qcs")).unwrap();
        let from_csv = Snapshot::open(&csv_dir.join("1.qcs")).unwrap();
        // The header records the change counter the rows were read at.
        let counter = schema.source.change_counter().await.unwrap();
        assert_eq!(from_pg.header().source_version, counter);
        assert!(from_pg.header().source.contains(&schema.name));
        // Every probe answers the same through both paths...
        let probes = read_probes(&g.probes).unwrap();
        for (what, snap) in [("postgres", &from_pg), ("csv", &from_csv)] {
            for p in &probes {
                if let Err(e) = check(snap, &CardKey::demo(), p) {
                    panic!("{what}: probe {}: {e}", p.case);
                }
            }
        }
        // ...because the snapshots hold the same bytes past their headers
        // (`build_both` checks it).

        // A build reports the rows read against the expected count (the
        // planner's, exact after the load's ANALYZE).
        let tape = std::sync::Arc::new(util::Tape::default());
        let opts = qualcache::build::BuildOptions {
            progress: qualcache::progress::Progress::to(tape.clone()),
            skip_invalid: false,
            card_key_id: CardKey::demo().id(),
        };
        let (source, out) = (schema.source.clone(), dir.path().join("watched"));
        tokio::task::spawn_blocking(move || {
            qualcache::build::build_from_postgres(&source, &out, &opts, |_| {}).unwrap()
        })
        .await
        .unwrap();
        let stages = tape.stages();
        assert_eq!(
            stages[0],
            (
                format!("reading {}", schema.source.describe()),
                Some(20_000),
                20_000
            )
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_constraints_and_bad_loads() {
    bounded(async {
        let Some(schema) = Schema::fresh().await else { return };
        let url = url();
        // A schema that was never migrated is reported as such.
        let (ok, _, err) = cli(&schema, &["db", "status", "--url", &url]);
        assert!(!ok);
        assert!(err.contains("qualcache db migrate"), "{err}");
        // So it is by a snapshot build from it.
        let out_dir = tempfile::tempdir().unwrap();
        let (ok, _, err) = build_from_db(&schema, &url, out_dir.path());
        assert!(!ok);
        assert!(err.contains("qualcache db migrate"), "{err}");
        // Migrating twice applies once.
        assert!(cli(&schema, &["db", "migrate", "--url", &url]).0);
        let (ok, out, _) = cli(&schema, &["db", "migrate", "--url", &url]);
        assert!(ok && out.contains("\"applied\": []"), "{out}");

        // A CSV with one bad row loads nothing and names the line and column.
        let dir = util::tempdir();
        let g = generate(dir.path(), 500);
        let text = std::fs::read_to_string(&g.csv).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let header: Vec<&str> = lines[0].split(',').collect();
        let birth = header.iter().position(|c| *c == "birth_date").unwrap();
        let mut fields: Vec<String> = lines[7].split(',').map(str::to_string).collect();
        let name_col = header.iter().position(|c| *c == "name").unwrap();
        let name = fields[name_col].clone();
        fields[birth] = "19991399".into();
        lines[7] = fields.join(",");
        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
        let (ok, _, err) = cli(&schema, &["db", "load", "--url", &url, "--csv", bad.to_str().unwrap()]);
        assert!(!ok);
        assert!(err.contains("line 8, column birth_date"), "{err}");
        assert!(err.contains("nothing loaded"), "{err}");
        assert!(!err.contains("19991399") && !err.contains(&name), "personal data in: {err}");
        let status = qualcache::store::postgres::status(&schema.source).await.unwrap();
        assert_eq!(status.qualifications, 0);

        // A row the CSV parser takes but the table cannot (a disease cap
        // beyond int4) fails the COPY: reported by line and column, the
        // rest of the file unread, nothing loaded.
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let column = |name: &str| lines[0].split(',').position(|c| c == name).unwrap();
        let (cap, disease) = (column("disease_cap_yen"), column("disease"));
        let row = 12;
        let mut fields: Vec<String> = lines[row].split(',').map(str::to_string).collect();
        fields[disease] = "1".into();
        fields[cap] = "3000000000".into();
        lines[row] = fields.join(",");
        std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
        let (ok, _, err) = cli(&schema, &["db", "load", "--url", &url, "--csv", bad.to_str().unwrap()]);
        assert!(!ok);
        assert!(
            err.contains(&format!("line {}, column disease_cap_yen", row + 1)),
            "{err}"
        );
        assert!(!err.contains("3000000000"), "the value in: {err}");
        let status = qualcache::store::postgres::status(&schema.source).await.unwrap();
        assert_eq!(status.qualifications, 0);

        // A good load, then a second one needs --replace.
        let csv = g.csv.to_str().unwrap();
        assert!(cli(&schema, &["db", "load", "--url", &url, "--csv", csv]).0);
        let (ok, _, err) = cli(&schema, &["db", "load", "--url", &url, "--csv", csv]);
        assert!(!ok && err.contains("--replace"), "{err}");
        let before = schema.source.change_counter().await.unwrap();
        let (ok, out, err) =
            cli(&schema, &["db", "load", "--url", &url, "--csv", csv, "--replace"]);
        assert!(ok, "{err}");
        assert!(out.contains("\"records\": 500"), "{out}");
        assert!(schema.source.change_counter().await.unwrap() > before);

        // Constraints hold the formats; errors name the constraint, never the row.
        let c = schema.client().await;
        for (sql, constraint) in [
            ("UPDATE qualifications SET card_class = '99' WHERE qualification_id = (SELECT min(qualification_id) FROM qualifications)", "card_class_code"),
            ("INSERT INTO insurers VALUES ('12a456', 'x')", "insurer_number_format"),
            ("UPDATE card_links SET digest = '\\x00' WHERE person_id = (SELECT min(person_id) FROM card_links)", "card_digest_length"),
            ("UPDATE qualifications SET lost_date = acquired_date + 1, loss_reason = NULL WHERE qualification_id = (SELECT min(qualification_id) FROM qualifications)", "loss_complete"),
            ("UPDATE qualifications SET lost_date = acquired_date, loss_reason = '01' WHERE qualification_id = (SELECT min(qualification_id) FROM qualifications)", "loss_after_acquired"),
            // Keys the load sets aside while filling are back.
            ("UPDATE qualifications SET person_id = -5 WHERE qualification_id = (SELECT min(qualification_id) FROM qualifications)", "qualifications_person_id_fkey"),
            ("UPDATE card_links SET digest = (SELECT digest FROM card_links ORDER BY person_id DESC LIMIT 1) WHERE person_id = (SELECT min(person_id) FROM card_links)", "card_links_digest_key"),
            ("INSERT INTO qualifications SELECT * FROM qualifications WHERE qualification_id = (SELECT min(qualification_id) FROM qualifications)", "qualifications_pkey"),
        ] {
            let e = c.batch_execute(sql).await.unwrap_err();
            assert_eq!(e.as_db_error().unwrap().constraint(), Some(constraint), "{sql}");
        }
        // A value the constraints let through but a snapshot must not hold
        // fails the build, naming the qualification and the column only.
        c.batch_execute(
            "UPDATE persons SET name = name || chr(7) WHERE person_id = (SELECT person_id FROM qualifications ORDER BY qualification_id LIMIT 1)",
        )
        .await
        .unwrap();
        let first: i64 = c
            .query_one("SELECT min(qualification_id) FROM qualifications", &[])
            .await
            .unwrap()
            .get(0);
        let out_dir = dir.path().join("snap");
        let out = out_dir.to_str().unwrap();
        let (ok, _, err) = cli(&schema, &["snapshot", "build", "--source", &url, "--out", out]);
        assert!(!ok);
        assert!(
            err.contains(&format!("qualification_id {first}, column name: contains a control character")),
            "{err}"
        );
        assert!(!err.contains('\u{7}'), "{err}");
        assert!(!out_dir.join("1.qcs").exists());
        let (ok, out_json, err) = cli(
            &schema,
            &["snapshot", "build", "--source", &url, "--out", out, "--skip-invalid"],
        );
        assert!(ok, "{err}");
        assert!(out_json.contains("\"skipped_rows\": 1"), "{out_json}");
        // So does an insurer name, reported by its own column on the
        // insurer's qualifications (not as a missing insurer).
        c.batch_execute(
            "UPDATE persons SET name = replace(name, chr(7), '');
             UPDATE insurers SET name = name || chr(7) WHERE insurer_number =
                 (SELECT insurer_number FROM qualifications ORDER BY qualification_id LIMIT 1)",
        )
        .await
        .unwrap();
        let (ok, _, err) = cli(&schema, &["snapshot", "build", "--source", &url, "--out", out]);
        assert!(!ok);
        assert!(
            err.contains(&format!("qualification_id {first}, column insurer_name: contains a control character")),
            "{err}"
        );
        assert!(!err.contains("no such insurer"), "{err}");
        c.batch_execute("UPDATE insurers SET name = replace(name, chr(7), '')")
            .await
            .unwrap();

        // Every write moves the change counter, visible once committed.
        let before = schema.source.change_counter().await.unwrap();
        c.batch_execute("UPDATE persons SET sex = '3' WHERE person_id = (SELECT min(person_id) FROM persons)")
            .await
            .unwrap();
        assert!(schema.source.change_counter().await.unwrap() > before);
    })
    .await;
}

/// A TCP relay in front of PostgreSQL that can cut connections, standing
/// in for a database that goes away in the middle of a rebuild.
struct Relay {
    addr: SocketAddr,
    /// [`PASS`] or [`CUT`].
    mode: Arc<AtomicU8>,
}

const PASS: u8 = 0;
/// Each connection carries the first [`CUT_AFTER`] bytes from the server,
/// then both ends are closed: small queries pass, an export dies midway.
const CUT: u8 = 1;
const CUT_AFTER: u64 = 32 * 1024;
/// The database is down: new connections are closed at once, and live
/// ones are closed when the server next sends anything.
const DOWN: u8 = 2;

impl Relay {
    /// A relay in front of the test server.
    async fn to_database() -> Relay {
        let u: tokio_postgres::Config = url().parse().unwrap();
        let host = match &u.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = u.get_ports().first().copied().unwrap_or(5432);
        let mut addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap();
        Relay::start(addrs.next().unwrap()).await
    }

    /// The test server's URL through the relay.
    fn url(&self) -> String {
        let u: tokio_postgres::Config = url().parse().unwrap();
        format!(
            "postgres://{}@{}/{}",
            u.get_user().unwrap_or("postgres"),
            self.addr,
            u.get_dbname().unwrap_or("postgres")
        )
    }

    async fn start(upstream: SocketAddr) -> Relay {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let m = mode.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let live = m.clone();
                let mode = m.load(Ordering::SeqCst);
                if mode == DOWN {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut passed = 0u64;
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        passed += n as u64;
                        if (mode == CUT && passed > CUT_AFTER)
                            || live.load(Ordering::SeqCst) == DOWN
                        {
                            break;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Relay { addr, mode }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

/// `records` generated records under `d/data`, migrated and loaded into
/// `schema`.
async fn loaded(schema: &Schema, d: &Path, records: u64) -> qualcache::gen::GenSummary {
    let g = generate(&d.join("data"), records);
    qualcache::store::postgres::migrate::migrate(&schema.source)
        .await
        .unwrap();
    qualcache::store::postgres::load::load(&schema.source, &g.csv, false, &Default::default())
        .await
        .unwrap();
    g
}

/// Writes `d/qualcached.toml` for a daemon following `schema` at `db`
/// (ports chosen by the system, dev certificates in `d/certs`, snapshots
/// in `d/snap`): `audit` is the `[audit]` section's body, `source` more
/// `[source]` keys.
fn daemon_config(
    d: &Path,
    db: &str,
    schema: &str,
    audit: &str,
    source: &str,
) -> std::path::PathBuf {
    let config = d.join("qualcached.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\n{audit}\n\
             [tls]\ncert = \"{0}/certs/server.pem\"\nkey = \"{0}/certs/server.key\"\n\
             client_ca = \"{0}/certs/ca.pem\"\ndev_certs = true\n\
             [snapshots]\ndir = \"{0}/snap\"\nreload_interval_secs = 3600\n\
             [source]\nkind = \"postgres\"\nurl = \"{db}\"\nschema = \"{schema}\"\n{source}",
            d.display()
        ),
    )
    .unwrap();
    config
}

/// The daemon's stderr, line by line.
struct Log(std::sync::mpsc::Receiver<String>);

impl Log {
    /// Waits (bounded) for a line matching `pred`; returns it.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("qualcached never logged {what}"),
            }
        }
    }
}

async fn ask(client: &Client, p: &Probe) -> pb::Answer {
    let r = client
        .request(&pb::Request {
            as_of: qualcache::protocol::day(p.as_of),
            kind: Some(qualcache::protocol::request_kind(&p.lookup)),
        })
        .await
        .unwrap();
    r.answer.unwrap()
}

async fn server_status(client: &Client) -> pb::ServerStatus {
    let r = client
        .request(&pb::Request {
            as_of: 0,
            kind: Some(pb::request::Kind::Status(pb::StatusRequest {})),
        })
        .await
        .unwrap();
    r.server.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_rebuilds_after_updates_and_keeps_serving_when_the_database_is_lost() {
    bounded(async {
        let Some(schema) = Schema::fresh().await else { return };
        let dir = util::tempdir();
        let d = dir.path();
        let g = loaded(&schema, d, 5_000).await;

        let relay = Relay::to_database().await;
        let db = relay.url();
        let audit = format!("dir = \"{}/audit\"", d.display());
        // Rebuilds are what this test is about.
        let source = "rebuild_interval_secs = 1\noverlay_max_persons = 0\n";
        let config = daemon_config(d, &db, &schema.name, &audit, source);
        let daemon = Daemon::start(&config, &d.join("certs")).await;
        let (client, log) = (&daemon.client, &daemon.log);
        assert_eq!(server_status(client).await.generation, 1);

        // Pick a valid insurance lookup and a valid card lookup.
        let probes = read_probes(&g.probes).unwrap();
        let valid = |card: bool| {
            probes
                .iter()
                .filter(|p| p.expect == Status::Valid)
                .filter(move |p| matches!(p.lookup, ProbeLookup::Card { .. }) == card)
        };
        let c = schema.client().await;
        // Lose the first valid insurance qualification that can be lost on its probe's day.
        let mut lost_probe = None;
        for p in valid(false) {
            let key = p.expect_key.as_ref().unwrap();
            let k: Vec<&str> = key.split(':').collect();
            let day = p.as_of.to_string();
            let n = c
                .execute(
                    "UPDATE qualifications SET lost_date = to_date($1, 'YYYYMMDD'), loss_reason = '03'
                      WHERE insurer_number = $2 AND coalesce(symbol, '') = $3 AND number = $4
                        AND coalesce(branch, '') = $5 AND acquired_date < to_date($1, 'YYYYMMDD')",
                    &[&day, &k[0], &k[1], &k[2], &k[3]],
                )
                .await
                .unwrap();
            if n == 1 {
                lost_probe = Some(p.clone());
                break;
            }
        }
        let lost_probe = lost_probe.expect("no valid insurance probe could be made lost");
        // A card of another person (whose valid qualification is another one).
        let card_probe = valid(true)
            .find(|p| p.expect_key != lost_probe.expect_key)
            .unwrap()
            .clone();
        assert_eq!(ask(client, &lost_probe).await.status, Status::Valid.code() as i32);
        assert_eq!(ask(client, &card_probe).await.status, Status::Valid.code() as i32);
        let ProbeLookup::Card { serial } = &card_probe.lookup else { unreachable!() };
        let digest = CardKey::demo().digest(&serial.parse().unwrap());
        let n = c
            .execute(
                "UPDATE card_links SET status = 'withdrawn' WHERE digest = $1",
                &[&&digest.as_bytes()[..]],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);

        // The change counter moved: the daemon rebuilds and answers anew.
        let mut status = server_status(client).await;
        for _ in 0..200 {
            if status.generation == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = server_status(client).await;
        }
        assert_eq!(status.generation, 2, "no rebuild after the updates");
        assert_eq!(status.source_version, schema.source.change_counter().await.unwrap());
        assert!(status.builds >= 1);
        let a = ask(client, &lost_probe).await;
        assert!(
            a.status == Status::Lost.code() as i32 || a.status == Status::LostWithNewer.code() as i32,
            "after losing the qualification: status {}",
            a.status
        );
        assert_eq!(
            a.qualification.unwrap().lost_date,
            lost_probe.as_of.to_string().parse::<u32>().unwrap()
        );
        assert_eq!(ask(client, &card_probe).await.status, Status::CardNotRegistered.code() as i32);

        // The database goes away in the middle of the next rebuild.
        relay.set(CUT);
        c.batch_execute(&format!(
            "UPDATE card_links SET status = 'registered' WHERE digest = '\\x{}'",
            digest
        ))
        .await
        .unwrap();
        let failed = log.wait_for("a failed rebuild", |l| l.contains("reload failed"));
        assert!(failed.contains("building a snapshot from"), "{failed}");
        assert!(failed.contains("retry_in_secs"), "{failed}");
        assert!(!failed.contains(serial.as_str()), "card serial in the log: {failed}");
        // The old snapshot keeps answering, and the failure is counted.
        let status = server_status(client).await;
        assert_eq!(status.generation, 2);
        assert!(status.build_failures >= 1);
        assert_eq!(ask(client, &card_probe).await.status, Status::CardNotRegistered.code() as i32);

        // The database is back: the retry rebuilds.
        relay.set(PASS);
        let mut generation = 2;
        for _ in 0..200 {
            generation = server_status(client).await.generation;
            if generation == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(generation, 3, "no rebuild after the database came back");
        assert_eq!(ask(client, &card_probe).await.status, Status::Valid.code() as i32);

        daemon.stop().await;
    })
    .await;
}

/// The hand-made history (`util::history`, repeated keys included) loaded
/// into PostgreSQL builds the same snapshot bytes as its CSV, answers
/// every case, and a row the database takes but a snapshot must not hold
/// (a half-width name, overlapping periods of one key) fails the build by
/// qualification id and column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_made_history_builds_the_same_from_postgres() {
    use util::history::{cases, csv, Seen};
    bounded(async {
        let Some(schema) = Schema::fresh().await else {
            return;
        };
        let dir = util::tempdir();
        let csv_path = dir.path().join("history.csv");
        std::fs::write(&csv_path, csv()).unwrap();
        let csv_path = csv_path.to_str().unwrap();
        let url = url();
        assert!(cli(&schema, &["db", "migrate", "--url", &url]).0);
        let (ok, out, err) = cli(&schema, &["db", "load", "--url", &url, "--csv", csv_path]);
        assert!(ok, "{err}");
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary["warnings"][0]["count"], 1, "{out}");

        let (pg_dir, _) = build_both(&schema, csv_path, dir.path());
        let snap = Snapshot::open(&pg_dir.join("1.qcs")).unwrap();
        for c in cases() {
            let answer = c
                .lookup
                .run(&snap, &CardKey::demo(), c.as_of.parse().unwrap())
                .unwrap();
            let msg = qualcache::protocol::answer(&answer, &snap);
            c.expect.check(&Seen::from_answer(&msg), c.what, "postgres");
        }

        let c = schema.client().await;
        let out = dir.path().join("bad");
        let out = out.to_str().unwrap();
        // Person 22's name with an ASCII space (qualification 5, line 5).
        c.batch_execute("UPDATE persons SET name = replace(name, '　', ' ') WHERE person_id = 22")
            .await
            .unwrap();
        let (ok, _, err) = cli(
            &schema,
            &["snapshot", "build", "--source", &url, "--out", out],
        );
        assert!(!ok);
        assert!(
            err.contains(
                "qualification_id 5, column name: parts must be separated by exactly one U+3000"
            ),
            "{err}"
        );
        c.batch_execute("UPDATE persons SET name = replace(name, ' ', '　') WHERE person_id = 22")
            .await
            .unwrap();
        // Person 20's first period made to overlap the second.
        c.batch_execute(
            "UPDATE qualifications SET lost_date = '2015-04-02' WHERE qualification_id = 2",
        )
        .await
        .unwrap();
        let (ok, _, err) = cli(
            &schema,
            &["snapshot", "build", "--source", &url, "--out", out],
        );
        assert!(!ok);
        assert!(
            err.contains("qualification_id 3, column number: the same insurance key")
                && err.contains("as qualification_id 2 in an overlapping period"),
            "{err}"
        );
    })
    .await;
}

/// A person picked for the freshness test: one registered card, one
/// qualification holding today.
#[derive(Debug, Clone)]
struct Picked {
    id: i64,
    serial: String,
    insurer: String,
    symbol: String,
    number: String,
    branch: String,
    birth: u32,
}

fn card_request(serial: &str, as_of: u32) -> pb::Request {
    pb::Request {
        as_of,
        kind: Some(pb::request::Kind::Card(pb::CardLookup {
            serial: serial.into(),
        })),
    }
}

fn key_request(p: &Picked, number: &str, as_of: u32) -> pb::Request {
    pb::Request {
        as_of,
        kind: Some(pb::request::Kind::Insurance(pb::InsuranceLookup {
            insurer: p.insurer.clone(),
            symbol: p.symbol.clone(),
            number: number.into(),
            branch: p.branch.clone(),
            birth: p.birth,
        })),
    }
}

/// The status a request is answered with (a lookup's, else the response's).
async fn status_of(client: &Client, req: &pb::Request) -> (i32, Option<pb::Answer>) {
    let r = client.request(req).await.unwrap();
    match r.answer {
        Some(a) => (a.status, Some(a)),
        None => (r.status, None),
    }
}

/// Waits (bounded: the latency is measured by a benchmark, not here) until
/// `req` is answered `want`; returns the answer.
async fn eventually(client: &Client, req: &pb::Request, want: Status, what: &str) -> pb::Answer {
    eventually_code(client, req, want.code() as i32, what)
        .await
        .unwrap()
}

/// [`eventually`] for any wire status; the answer, if it has one.
async fn eventually_code(
    client: &Client,
    req: &pb::Request,
    want: i32,
    what: &str,
) -> Option<pb::Answer> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, answer) = status_of(client, req).await;
        if status == want {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still answered {status}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running qualcached with its log and client.
struct Daemon {
    child: Killed,
    log: Log,
    client: Client,
    admin: SocketAddr,
}

impl Daemon {
    async fn start(config: &Path, certs: &Path) -> Daemon {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qualcached"))
            .args(["--config", config.to_str().unwrap()])
            .env_remove("QUALCACHE_CARD_KEY")
            .env("QUALCACHE_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let log = Log(rx);
        let line = log.wait_for("the admin listener", |l| l.contains("admin listener"));
        let admin: SocketAddr = line
            .split("admin=")
            .nth(1)
            .and_then(|a| a.split_whitespace().next()?.parse().ok())
            .unwrap();
        let line = log.wait_for("serving", |l| {
            util::listen_addr(l).is_some() && l.contains("serving")
        });
        let addr = util::listen_addr(&line).unwrap();
        let client = Client::connect(addr, "localhost", util::first_terminal(certs))
            .await
            .unwrap();
        Daemon {
            child: Killed(child),
            log,
            client,
            admin,
        }
    }

    async fn stop(self) {
        self.client.close().await;
        util::signal(&self.child.0.id().to_string(), "-TERM");
        let mut child = self.child;
        let code = tokio::task::spawn_blocking(move || child.0.wait().unwrap())
            .await
            .unwrap();
        assert!(code.success(), "exit status {code:?}");
    }
}

/// A child process killed when dropped, so a test that failed leaves no
/// daemon behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Changes committed in PostgreSQL are answered between snapshots, from
/// the overlay: a loss, a new job, a card restricted and withdrawn, a new
/// person, a person deleted, a key changed, 10,000 persons in one
/// transaction; after a restart (replayed before serving), after the
/// database was unreachable (caught up), and after a rebuild that
/// retires the overlay (answers unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_are_answered_between_snapshots() {
    bounded(async {
        let Some(schema) = Schema::fresh().await else { return };
        let dir = util::tempdir();
        let d = dir.path();
        let g = loaded(&schema, d, 5_000).await;
        let relay = Relay::to_database().await;
        let db = relay.url();
        let source = "rebuild_interval_secs = 3600\n";
        let config = daemon_config(d, &db, &schema.name, "mode = \"off\"", source);
        let certs = d.join("certs");
        let daemon = Daemon::start(&config, &certs).await;
        let c = schema.client().await;

        // Persons with one registered card whose serial a probe knows and
        // one qualification holding today, without public expense.
        let today = qualcache::model::Date::today_jst();
        let day = qualcache::protocol::day(today);
        let iso = today.to_string();
        let serials: std::collections::HashMap<Vec<u8>, String> = read_probes(&g.probes)
            .unwrap()
            .into_iter()
            .filter_map(|p| match p.lookup {
                ProbeLookup::Card { serial } => Some((
                    CardKey::demo().digest(&serial.parse().unwrap()).as_bytes().to_vec(),
                    serial,
                )),
                _ => None,
            })
            .collect();
        let rows = c
            .query(
                "SELECT p.person_id, k.digest, q.insurer_number, coalesce(q.symbol, ''), q.number,
                        coalesce(q.branch, ''), to_char(p.birth_date, 'YYYYMMDD')::int
                   FROM persons p JOIN card_links k USING (person_id) JOIN qualifications q USING (person_id)
                  WHERE k.status = 'registered' AND q.lost_date IS NULL
                    AND q.acquired_date < $1::text::date
                    AND NOT EXISTS (SELECT 1 FROM public_expenses e WHERE e.qualification_id = q.qualification_id)
                    AND (SELECT count(*) FROM qualifications o WHERE o.person_id = p.person_id) = 1
                  ORDER BY p.person_id",
                &[&iso],
            )
            .await
            .unwrap();
        let picked: Vec<Picked> = rows
            .iter()
            .filter_map(|r| {
                Some(Picked {
                    id: r.get(0),
                    serial: serials.get(&r.get::<_, Vec<u8>>(1))?.clone(),
                    insurer: r.get(2),
                    symbol: r.get(3),
                    number: r.get(4),
                    branch: r.get(5),
                    birth: r.get::<_, i32>(6) as u32,
                })
            })
            .take(9)
            .collect();
        assert_eq!(picked.len(), 9, "not enough persons to change");
        let client = &daemon.client;
        for p in &picked {
            assert_eq!(status_of(client, &card_request(&p.serial, day)).await.0, Status::Valid.code() as i32);
            assert_eq!(status_of(client, &key_request(p, &p.number, day)).await.0, Status::Valid.code() as i32);
        }
        let [lost, job, restricted, withdrawn, deleted, rekeyed, restarted, outage, bad] = &picked[..]
        else {
            unreachable!()
        };
        // What each change must be answered with, checked again later.
        let mut expect: Vec<(pb::Request, Status, &str)> = Vec::new();

        // A qualification lost today.
        c.execute(
            "UPDATE qualifications SET lost_date = $1::text::date, loss_reason = '03' WHERE person_id = $2",
            &[&iso, &lost.id],
        )
        .await
        .unwrap();
        expect.push((key_request(lost, &lost.number, day), Status::Lost, "lost today, by key"));
        expect.push((card_request(&lost.serial, day), Status::Lost, "lost today, by card"));

        // A new job: the old qualification lost, a new one under another insurer.
        let other: String = c
            .query_one("SELECT insurer_number FROM insurers WHERE insurer_number <> $1 ORDER BY 1 LIMIT 1", &[&job.insurer])
            .await
            .unwrap()
            .get(0);
        c.batch_execute(&format!(
            "BEGIN;
             UPDATE qualifications SET lost_date = '{iso}', loss_reason = '03' WHERE person_id = {id};
             INSERT INTO qualifications (person_id, insurer_number, card_class, number, branch, relation,
                                         acquired_date, copay_percent, preschool)
                  SELECT {id}, '{other}', card_class, '77000001', '00', relation, '{iso}', copay_percent, preschool
                    FROM qualifications WHERE person_id = {id};
             COMMIT;",
            id = job.id
        ))
        .await
        .unwrap();
        let new_job = Picked {
            insurer: other.clone(),
            symbol: String::new(),
            branch: "00".into(),
            ..job.clone()
        };
        expect.push((key_request(job, &job.number, day), Status::LostWithNewer, "the old job's key"));
        expect.push((key_request(&new_job, "77000001", day), Status::Valid, "the new job's key"));
        expect.push((card_request(&job.serial, day), Status::Valid, "the card after a new job"));

        // A card restricted (the numbers still answer), a card withdrawn.
        c.execute("UPDATE card_links SET status = 'restricted' WHERE person_id = $1", &[&restricted.id])
            .await
            .unwrap();
        expect.push((card_request(&restricted.serial, day), Status::CardRestricted, "a restricted card"));
        expect.push((key_request(restricted, &restricted.number, day), Status::Valid, "the restricted card's holder by key"));
        c.execute("UPDATE card_links SET status = 'withdrawn' WHERE person_id = $1", &[&withdrawn.id])
            .await
            .unwrap();
        expect.push((card_request(&withdrawn.serial, day), Status::CardNotRegistered, "a withdrawn card"));

        // A person deleted; a key changed.
        c.execute("DELETE FROM persons WHERE person_id = $1", &[&deleted.id]).await.unwrap();
        expect.push((key_request(deleted, &deleted.number, day), Status::NotFound, "a deleted person by key"));
        expect.push((card_request(&deleted.serial, day), Status::CardNotRegistered, "a deleted person's card"));
        c.execute("UPDATE qualifications SET number = '66000001' WHERE person_id = $1", &[&rekeyed.id])
            .await
            .unwrap();
        expect.push((key_request(rekeyed, &rekeyed.number, day), Status::NotFound, "the old key of a changed key"));
        expect.push((key_request(rekeyed, "66000001", day), Status::Valid, "the new key"));

        // A new person with a new card.
        let serial = "A1B2C3D4E5F60718";
        let digest = CardKey::demo().digest(&serial.parse().unwrap());
        c.batch_execute(&format!(
            "BEGIN;
             INSERT INTO persons SELECT 900000000, name, name_kana, sex, birth_date FROM persons WHERE person_id = {id};
             INSERT INTO qualifications (person_id, insurer_number, card_class, symbol, number, branch, relation,
                                         acquired_date, copay_percent, preschool)
                  SELECT 900000000, insurer_number, card_class, symbol, '55000001', branch, relation,
                         acquired_date, copay_percent, preschool
                    FROM qualifications WHERE person_id = {id};
             INSERT INTO card_links VALUES (900000000, '\\x{digest}', 'registered');
             COMMIT;",
            id = restarted.id
        ))
        .await
        .unwrap();
        expect.push((card_request(serial, day), Status::Valid, "a new person's card"));
        expect.push((key_request(restarted, "55000001", day), Status::Valid, "a new person's key"));

        // 10,000 persons in one transaction.
        c.batch_execute(&format!(
            "BEGIN;
             INSERT INTO persons SELECT 800000000 + g, name, name_kana, sex, birth_date
               FROM persons, generate_series(1, 10000) g WHERE person_id = {id};
             INSERT INTO qualifications (person_id, insurer_number, card_class, symbol, number, branch, relation,
                                         acquired_date, copay_percent, preschool)
                  SELECT 800000000 + g, insurer_number, card_class, symbol, (44000000 + g)::text, branch, relation,
                         acquired_date, copay_percent, preschool
                    FROM qualifications, generate_series(1, 10000) g WHERE person_id = {id};
             COMMIT;",
            id = restarted.id
        ))
        .await
        .unwrap();
        for n in [1, 5_000, 10_000] {
            expect.push((key_request(restarted, &(44_000_000 + n).to_string(), day), Status::Valid, "one of 10,000 new persons"));
        }
        for (req, want, what) in &expect {
            eventually(client, req, *want, what).await;
        }
        // A change that fails the checks (a half-width space in the name):
        // the person is answered UNAVAILABLE, not from the old snapshot,
        // until a good change of the person.
        c.execute("UPDATE persons SET name = replace(name, '　', ' ') WHERE person_id = $1", &[&bad.id])
            .await
            .unwrap();
        eventually_code(
            client,
            &card_request(&bad.serial, day),
            pb::Status::Unavailable as i32,
            "a change that fails the checks",
        )
        .await;
        assert_eq!(
            status_of(client, &key_request(bad, &bad.number, day)).await.0,
            pb::Status::Unavailable as i32
        );
        let line = daemon.log.wait_for("the unreadable change", |l| l.contains("fails the checks"));
        assert!(line.contains(&format!("person_id={}", bad.id)), "{line}");
        assert!(!line.contains(&bad.serial) && !line.contains('　'), "personal data in the log: {line}");
        c.execute("UPDATE persons SET name = replace(name, ' ', '　') WHERE person_id = $1", &[&bad.id])
            .await
            .unwrap();
        eventually(client, &card_request(&bad.serial, day), Status::Valid, "a good change after a bad one").await;
        let a = eventually(client, &card_request(&job.serial, day), Status::Valid, "new job").await;
        assert_eq!(a.qualification.unwrap().number, "77000001");
        let status = server_status(client).await;
        assert_eq!(status.generation, 1, "answered by a rebuild, not the overlay");
        assert_eq!(status.change_position, schema.source.change_counter().await.unwrap());
        // lost, job, restricted, withdrawn, deleted, rekeyed, bad, a new
        // person and 10,000.
        assert_eq!(status.overlay_persons, 10_008);

        // Restarted between changes: the log is replayed before serving.
        daemon.stop().await;
        c.execute("UPDATE card_links SET status = 'restricted' WHERE person_id = $1", &[&restarted.id])
            .await
            .unwrap();
        let daemon = Daemon::start(&config, &certs).await;
        let client = &daemon.client;
        assert_eq!(server_status(client).await.generation, 1);
        assert_eq!(
            status_of(client, &card_request(&restarted.serial, day)).await.0,
            Status::CardRestricted.code() as i32,
            "a change made while the daemon was down is answered from the first request"
        );
        expect.push((card_request(&restarted.serial, day), Status::CardRestricted, "restricted while down"));
        for (req, want, what) in &expect {
            assert_eq!(status_of(client, req).await.0, want.code() as i32, "after a restart: {what}");
        }

        // The database unreachable: the snapshot and overlay keep serving;
        // once it is back, the follower catches up.
        relay.set(DOWN);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.execute("UPDATE card_links SET status = 'withdrawn' WHERE person_id = $1", &[&outage.id])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(status_of(client, &card_request(&outage.serial, day)).await.0, Status::Valid.code() as i32);
        assert_eq!(status_of(client, &expect[0].0).await.0, expect[0].1.code() as i32);
        daemon.log.wait_for("the outage", |l| l.contains("change feed is unreachable") || l.contains("connection ended"));
        relay.set(PASS);
        eventually(client, &card_request(&outage.serial, day), Status::CardNotRegistered, "a change made while the database was unreachable").await;
        expect.push((card_request(&outage.serial, day), Status::CardNotRegistered, "withdrawn during the outage"));
        let (_, metrics) = util::http_get(daemon.admin, "/metrics").await;
        assert!(util::sample(&metrics, "qualcache_change_listener_reconnects_total").unwrap() >= 1.0, "{metrics}");
        assert!(util::sample(&metrics, "qualcache_changes_applied_total").unwrap() >= 10_010.0);
        assert!(util::sample(&metrics, "qualcache_freshness_lag_seconds_count").unwrap() >= 1.0);

        // A rebuild covers every change: the overlay empties, answers stay.
        util::signal(&daemon.child.0.id().to_string(), "-HUP");
        let mut status = server_status(client).await;
        for _ in 0..600 {
            if status.generation == 2 && status.overlay_persons == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = server_status(client).await;
        }
        assert_eq!((status.generation, status.overlay_persons), (2, 0), "the rebuild did not retire the overlay");
        for (req, want, what) in &expect {
            assert_eq!(status_of(client, req).await.0, want.code() as i32, "after the rebuild: {what}");
        }
        // The log is pruned up to the oldest snapshot kept (generation 1).
        let log = qualcache::store::postgres::status(&schema.source).await.unwrap().change_log;
        let first = Snapshot::open(&d.join("snap/1.qcs")).unwrap().header().source_version;
        assert_eq!(log.pruned_through, first);
        assert!(log.oldest > first, "{log:?}");

        // A rollback to the older snapshot replays the log from its
        // position: the changes stay answered.
        let (ok, _, err) = util::run(&["snapshot", "rollback", d.join("snap").to_str().unwrap()]);
        assert!(ok, "{err}");
        util::signal(&daemon.child.0.id().to_string(), "-HUP");
        let mut status = server_status(client).await;
        for _ in 0..600 {
            if status.generation == 1 && status.overlay_persons >= 10_009 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = server_status(client).await;
        }
        assert_eq!(status.generation, 1, "the rollback was not served");
        assert!(status.overlay_persons >= 10_009, "not replayed: {status:?}");
        for (req, want, what) in &expect {
            assert_eq!(status_of(client, req).await.0, want.code() as i32, "after a rollback: {what}");
        }
        daemon.stop().await;
    })
    .await;
}

/// The overlay is bounded: past `overlay_max_persons` changed persons the
/// daemon builds a snapshot at once (no timer, no SIGHUP), and a change
/// that cannot be applied person by person (an insurer renamed) does the
/// same; each new snapshot retires the overlay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_overlay_or_a_whole_table_change_builds_a_snapshot_early() {
    bounded(async {
        let Some(schema) = Schema::fresh().await else { return };
        let dir = util::tempdir();
        let d = dir.path();
        loaded(&schema, d, 2_000).await;
        let source = "rebuild_interval_secs = 3600\noverlay_max_persons = 5\n";
        let config = daemon_config(d, &url(), &schema.name, "mode = \"off\"", source);
        let daemon = Daemon::start(&config, &d.join("certs")).await;
        let client = &daemon.client;
        let c = schema.client().await;
        let wait_for = |generation: u64| async move {
            let mut status = server_status(client).await;
            for _ in 0..600 {
                if status.generation == generation && status.overlay_persons == 0 {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                status = server_status(client).await;
            }
            panic!("no generation {generation} with an empty overlay: {status:?}");
        };
        assert_eq!(server_status(client).await.generation, 1);

        // Four persons fit; six do not.
        c.execute("UPDATE persons SET sex = sex WHERE person_id IN (SELECT person_id FROM persons ORDER BY 1 LIMIT 4)", &[])
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while server_status(client).await.overlay_persons != 4 {
            assert!(tokio::time::Instant::now() < deadline, "the 4 changes never reached the overlay");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(server_status(client).await.generation, 1);
        c.execute("UPDATE persons SET sex = sex WHERE person_id IN (SELECT person_id FROM persons ORDER BY 1 LIMIT 6)", &[])
            .await
            .unwrap();
        let status = wait_for(2).await;
        assert_eq!(status.change_position, schema.source.change_counter().await.unwrap());
        daemon.log.wait_for("the early build", |l| l.contains("the overlay is full"));

        // An insurer renamed changes every answer of its qualifications.
        c.execute("UPDATE insurers SET name = name || '　改' WHERE insurer_number = (SELECT min(insurer_number) FROM insurers)", &[])
            .await
            .unwrap();
        wait_for(3).await;
        daemon.log.wait_for("the whole-table change", |l| l.contains("touches every person"));
        daemon.stop().await;
    })
    .await;
}
