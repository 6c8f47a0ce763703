//! The `qualcache` command line: argument types (clap) and what each
//! subcommand does. The binary only parses and maps errors to exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::answer::AnswerJson;
use crate::build::{build_from_csv, build_from_postgres, BuildFailure, BuildOptions};
use crate::gen::{generate, GenOptions};
use crate::model::{CardKey, Date};
use crate::probe::{check, read_probes, ProbeLookup};
use crate::progress::{Progress, Unit};
use crate::snapshot::{BuildError, Snapshot};
use crate::store::csv::RowError;
use crate::store::postgres::{self, load::LoadError, PgSource};

pub use crate::model::card::CARD_KEY_ENV;

/// qualcache: memory-mapped qualification-lookup cache.
#[derive(Debug, Parser)]
#[command(name = "qualcache", version, about, long_about = None)]
pub struct Cli {
    /// No progress bars (they are drawn on stderr, and only when it is a terminal).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate synthetic enrollees (DIR/enrollees.csv) and probes (DIR/probes.jsonl).
    Gen(GenArgs),
    /// Build, inspect and verify snapshot files.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Look one patient up in a snapshot and print the answer as JSON.
    Lookup(LookupArgs),
    /// Run every probe of a probes.jsonl file against a snapshot.
    Check(CheckArgs),
    /// Demo: generate data, build a snapshot, check the probes, show a few answers.
    Demo(DemoArgs),
    /// Make development certificates: a CA, a server certificate and terminal certificates.
    Certs(CertsArgs),
    /// Ask a running qualcached over QUIC and print the response as JSON.
    Query(QueryArgs),
    /// Set up and fill the PostgreSQL store.
    #[command(subcommand)]
    Db(DbCommand),
    /// Check and search the audit trail of who looked up whom.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The fleet: move the pointer replicas serve from, and see their reports.
    #[command(subcommand)]
    Fleet(FleetCommand),
}

/// How to reach the fleet's store: the URL, and the rest of `[fleet]` from
/// a configuration file or the environment (AWS conventions).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store: s3://bucket/prefix or file:///directory [default: [fleet] url of --config].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// A qualcached configuration whose [fleet] section says how to reach the store.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl StoreArgs {
    /// The store opened, and `[fleet]`'s poll interval and replica minimum.
    fn open(&self) -> Result<(crate::fleet::Fleet, std::time::Duration, usize)> {
        let (settings, poll, min_ready) = self.settings()?;
        Ok((crate::fleet::Fleet::open(&settings)?, poll, min_ready))
    }

    /// The settings, and `[fleet]`'s poll interval and replica minimum.
    fn settings(&self) -> Result<(crate::fleet::StoreSettings, std::time::Duration, usize)> {
        let fleet = match &self.config {
            Some(path) => crate::config::Config::load(path)?.fleet,
            None => None,
        };
        let (mut settings, poll, min_ready) = match fleet {
            Some(f) => (f.store, f.poll_interval, f.min_ready_replicas),
            None => (
                crate::fleet::StoreSettings::default(),
                std::time::Duration::from_secs(2),
                1,
            ),
        };
        if let Some(url) = &self.url {
            settings.url = url.clone();
        }
        if settings.url.is_empty() {
            anyhow::bail!(
                "no fleet store: give --url s3://bucket/prefix, or --config with a [fleet] url"
            );
        }
        settings.check()?;
        Ok((settings, poll, min_ready))
    }
}

/// What moving the pointer takes (`fleet activate`, `fleet rollback`).
#[derive(Debug, Args)]
pub struct PointerArgs {
    /// When replicas switch, RFC 3339 [default: now + [fleet] poll_interval_secs + 2 s].
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Move it even if fewer replicas than [fleet] min_ready_replicas report the generation ready.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl PointerArgs {
    /// The store opened, the activation time, and the replicas needed
    /// ready (0 with `--force`).
    fn open(&self) -> Result<(crate::fleet::Fleet, time::OffsetDateTime, usize)> {
        let (fleet, poll, min_ready) = self.store.open()?;
        let at = match &self.at {
            Some(t) => crate::fleet::parse_time(t).map_err(anyhow::Error::msg)?,
            None => time::OffsetDateTime::now_utc() + poll + std::time::Duration::from_secs(2),
        };
        Ok((fleet, at, if self.force { 0 } else { min_ready }))
    }
}

/// `fleet` subcommands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Point the fleet at a published generation from a time on (current.json, conditional write).
    Activate {
        /// The generation.
        generation: u64,
        #[command(flatten)]
        pointer: PointerArgs,
    },
    /// Point the fleet back at the generation it served before.
    Rollback {
        #[command(flatten)]
        pointer: PointerArgs,
    },
    /// Print the pointer, the generations published, and each replica's report as JSON.
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every file's hash chain; prints a JSON report, or names the first broken file and byte offset and exits 1.
    Verify {
        /// The audit directory ([audit] dir).
        dir: PathBuf,
    },
    /// Print the records of one person or one facility as JSON lines (run `audit verify` to trust them).
    #[command(group(clap::ArgGroup::new("whose").required(true).args(["person", "institution"])))]
    Query {
        /// The audit directory ([audit] dir).
        dir: PathBuf,
        /// Who looked this person up (the store's person_id).
        #[arg(long)]
        person: Option<u64>,
        /// Whom this facility looked up (its 10-digit medical institution code).
        #[arg(long, value_parser = clap::value_parser!(crate::model::InstitutionCode))]
        institution: Option<crate::model::InstitutionCode>,
        /// From this time: RFC 3339 (2026-12-04T09:00:00Z) or a day YYYYMMDD (from its start, Japan time).
        #[arg(long, value_parser = time_arg)]
        from: Option<u64>,
        /// Up to this time (excluded), as --from.
        #[arg(long, value_parser = time_arg)]
        to: Option<u64>,
    },
}

fn time_arg(s: &str) -> Result<u64, String> {
    crate::audit::parse_time(s)
}

/// `db` subcommands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create the schema and its tables, or bring them up to date; prints a JSON report.
    Migrate(DbArgs),
    /// Fill the tables from a CSV export with COPY, in one transaction; prints a JSON summary.
    Load {
        #[command(flatten)]
        db: DbArgs,
        /// The CSV export (the format of `gen` and README.md).
        #[arg(long, value_name = "FILE.csv")]
        csv: PathBuf,
        /// Empty the tables first (in the same transaction); without it the tables must be empty.
        #[arg(long)]
        replace: bool,
    },
    /// Print the schema version and the change counter as JSON.
    Status(DbArgs),
}

/// Where the database is.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// postgres://USER@HOST:PORT/DATABASE (the password: --password-file or $QUALCACHE_PG_PASSWORD).
    #[arg(long, value_name = "URL")]
    pub url: String,
    #[command(flatten)]
    pub pg: PgArgs,
}

/// Schema and password of a PostgreSQL store.
#[derive(Debug, Args, Clone)]
pub struct PgArgs {
    /// PostgreSQL schema holding qualcache's tables.
    #[arg(long, default_value = crate::store::postgres::DEFAULT_SCHEMA)]
    pub schema: String,
    /// File holding the database password [default: $QUALCACHE_PG_PASSWORD, else none].
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl PgArgs {
    /// The source at `url`.
    pub fn source(&self, url: &str) -> Result<PgSource> {
        let password =
            postgres::read_password(self.password_file.as_deref(), postgres::PASSWORD_ENV)?;
        Ok(PgSource::new(url, &self.schema, password.as_deref())?)
    }
}

/// `certs` arguments.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Output directory (ca.pem, server.pem/.key, terminals/<institution code>.pem/.key).
    #[arg(long)]
    pub out: PathBuf,
    /// Terminal certificates to make, each with its own institution code.
    #[arg(long, default_value_t = 4)]
    pub terminals: usize,
}

/// `query` arguments.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Server address (UDP), e.g. 127.0.0.1:4433.
    #[arg(long)]
    pub server: std::net::SocketAddr,
    /// Name the server certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Terminal certificate (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// Terminal key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// CA certificate that signed the server's (PEM).
    #[arg(long)]
    pub ca: PathBuf,
    /// Day of the lookup, YYYYMMDD [default: the server's today in Japan time].
    #[arg(long)]
    pub as_of: Option<Date>,
    #[command(subcommand)]
    pub what: QueryWhat,
}

/// What to ask.
#[derive(Debug, Subcommand)]
pub enum QueryWhat {
    #[command(flatten)]
    Lookup(LookupBy),
    /// Many lookups in one request: a JSON-lines file of lookups in the
    /// probes.jsonl format (other fields are ignored).
    Batch {
        /// The file.
        file: PathBuf,
    },
    /// The server's state.
    Status,
}

/// Where the card key comes from (default: the public demo key).
#[derive(Debug, Args, Clone)]
pub struct KeyArgs {
    /// File holding the card key as 64 hex digits [default: $QUALCACHE_CARD_KEY, else the demo key].
    #[arg(long, value_name = "FILE", global = true)]
    pub card_key_file: Option<PathBuf>,
}

impl KeyArgs {
    /// Loads the key: file, environment, or the demo key.
    pub fn load(&self) -> Result<CardKey> {
        if let Some(path) = &self.card_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading card key file {}", path.display()))?;
            return text
                .parse()
                .with_context(|| format!("card key file {}", path.display()));
        }
        match std::env::var(CARD_KEY_ENV) {
            Ok(v) => v.parse().with_context(|| format!("${CARD_KEY_ENV}")),
            Err(_) => Ok(CardKey::demo()),
        }
    }
}

/// `gen` arguments.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Qualification records (CSV rows) to write.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Seed: the same seed writes the same files.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory.
    #[arg(long, default_value = "data/demo")]
    pub out: PathBuf,
    /// Probes to write (spread over every case).
    #[arg(long, default_value_t = 2_000)]
    pub probes: usize,
    /// Reference day of the data (YYYYMMDD); probes are made as of it.
    #[arg(long, default_value = "20261101")]
    pub as_of: Date,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// `snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Build a snapshot from a CSV export or PostgreSQL into DIR/<generation>.qcs; prints a JSON summary.
    Build(BuildArgs),
    /// Print a snapshot's header as JSON.
    Inspect {
        /// The snapshot file (or a directory: the generation its CURRENT file pins, else its newest).
        file: PathBuf,
    },
    /// Fully validate a snapshot (checksum, bytecheck, every record and index); non-zero exit on corruption.
    Verify {
        /// The snapshot file (or a directory: the generation its CURRENT file pins, else its newest).
        file: PathBuf,
    },
    /// Make the generation before the served one current (writes DIR/CURRENT); then send SIGHUP.
    Rollback {
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// Upload a snapshot to the fleet's store (then its manifest; a generation is never replaced); prints the manifest.
    Publish {
        /// The snapshot file (or a directory: the generation its CURRENT file pins, else its newest).
        file: PathBuf,
        /// The store: s3://bucket/prefix or file:///directory [default: [fleet] url of --config].
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// A qualcached configuration whose [fleet] section says how to reach the store.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where the snapshot was built from, for the manifest.
        #[arg(
            long,
            value_name = "TEXT",
            default_value = "qualcache snapshot publish"
        )]
        source: String,
    },
}

/// `snapshot build` arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The CSV export (see README.md for its columns), or a postgres://USER@HOST:PORT/DATABASE URL.
    #[arg(long, value_name = "FILE.csv|URL")]
    pub source: String,
    /// Snapshot directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Build without invalid rows (each is reported on stderr) instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
    /// With a postgres:// source: its schema and password.
    #[command(flatten)]
    pub pg: PgArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// `lookup` arguments.
#[derive(Debug, Args)]
pub struct LookupArgs {
    /// The snapshot file (or a directory: the generation its CURRENT file pins, else its newest).
    #[arg(long)]
    pub snapshot: PathBuf,
    /// Day of the lookup, YYYYMMDD [default: today in Japan time].
    #[arg(long)]
    pub as_of: Option<Date>,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(subcommand)]
    pub by: LookupBy,
}

/// The two lookup paths.
#[derive(Debug, Subcommand)]
pub enum LookupBy {
    /// By My Number Card certificate serial.
    Card {
        /// The card certificate serial.
        serial: String,
    },
    /// By insurance numbers and birth date.
    Insurance {
        /// Insurer number (6 or 8 digits).
        #[arg(long)]
        insurer: String,
        /// Symbol (記号), if the card has one.
        #[arg(long)]
        symbol: Option<String>,
        /// Number (番号).
        #[arg(long)]
        number: String,
        /// Branch (枝番, 2 digits); without it a family may match.
        #[arg(long)]
        branch: Option<String>,
        /// Birth date, YYYYMMDD.
        #[arg(long, value_parser = BirthParser)]
        birth: Date,
    },
}

/// `--birth`: a date, refused without repeating it (clap's own message
/// for a bad value quotes it, and this one is personal data).
#[derive(Debug, Clone, Copy)]
struct BirthParser;

impl clap::builder::TypedValueParser for BirthParser {
    type Value = Date;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Date, clap::Error> {
        value.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
            let name = arg.map_or_else(|| "--birth".to_string(), |a| a.to_string());
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{name} expects a date YYYYMMDD (the value given is not repeated)\n"),
            )
            .with_cmd(cmd)
        })
    }
}

impl From<LookupBy> for ProbeLookup {
    fn from(by: LookupBy) -> ProbeLookup {
        match by {
            LookupBy::Card { serial } => ProbeLookup::Card { serial },
            LookupBy::Insurance {
                insurer,
                symbol,
                number,
                branch,
                birth,
            } => ProbeLookup::Insurance {
                insurer,
                symbol,
                number,
                branch,
                birth,
            },
        }
    }
}

/// `check` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The snapshot file (or a directory: the generation its CURRENT file pins, else its newest).
    #[arg(long)]
    pub snapshot: PathBuf,
    /// The probes file.
    #[arg(long)]
    pub probes: PathBuf,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// `demo` arguments.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Records to generate.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Working directory for data and snapshots.
    #[arg(long, default_value = "data/demo")]
    pub dir: PathBuf,
}

/// A progress bar on stderr for a person watching a terminal.
struct Bar(indicatif::ProgressBar);

impl Bar {
    /// A bar on stderr; nothing (silent) with `quiet` or when stderr is
    /// not a terminal, so scripts and logs see only the JSON on stdout.
    fn stderr(quiet: bool) -> Progress {
        use std::io::IsTerminal;
        if quiet || !std::io::stderr().is_terminal() {
            return Progress::none();
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Progress::to(Bar(bar))
    }
}

impl crate::progress::Watch for Bar {
    fn stage(&self, what: &str, total: Option<u64>, unit: Unit) {
        let template = match (total, unit) {
            (None, _) => "{spinner} {msg} {elapsed}",
            (Some(_), Unit::Bytes) => {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left"
            }
            (Some(_), _) => "{msg} [{bar:30}] {human_pos}/{human_len} {rate}, {eta} left",
        };
        let style = indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}/s", crate::progress::thousands(s.per_sec() as u64));
                },
            )
            .progress_chars("=> ");
        self.0.set_message(what.to_string());
        self.0.set_style(style);
        match total {
            Some(t) => self.0.set_length(t),
            None => self.0.unset_length(),
        }
        // Position and elapsed time are the stage's own.
        self.0.reset();
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Runs `task` with a progress bar (see [`Bar::stderr`]), cleared after.
fn with_progress<T>(quiet: bool, task: impl FnOnce(&Progress) -> Result<T>) -> Result<T> {
    let progress = Bar::stderr(quiet);
    let result = task(&progress);
    progress.finish();
    result
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Gen(a) => {
            let card_key = a.key.load()?;
            let summary = with_progress(quiet, |progress| {
                generate(&GenOptions {
                    progress: progress.clone(),
                    records: a.records,
                    seed: a.seed,
                    out: a.out,
                    probes: a.probes,
                    as_of: a.as_of,
                    card_key,
                })
            })?;
            print_json(&summary)
        }
        Command::Snapshot(SnapshotCommand::Build(a)) => {
            let key = a.key.load()?;
            let source = if postgres::is_url(&a.source) {
                BuildSource::Postgres(Box::new(a.pg.source(&a.source)?))
            } else {
                BuildSource::Csv(PathBuf::from(&a.source))
            };
            let summary = with_progress(quiet, |progress| {
                build(&source, &a.out, a.skip_invalid, &key, progress)
            })?;
            print_json(&summary)
        }
        Command::Db(c) => db(c, quiet),
        Command::Snapshot(SnapshotCommand::Inspect { file }) => {
            let snap = open(&file)?;
            print_json(&Inspected::of(snap.header()))
        }
        Command::Snapshot(SnapshotCommand::Verify { file }) => {
            let report = with_progress(quiet, |progress| {
                progress.stage(
                    &format!("opening {} (checksum, bytecheck)", file.display()),
                    None,
                    Unit::Bytes,
                );
                let snap = open(&file)?;
                snap.verify_reporting(progress)
                    .with_context(|| format!("verifying {}", snap.path().display()))
            })?;
            print_json(&report)
        }
        Command::Lookup(a) => lookup(a),
        Command::Check(a) => {
            let snap = open(&a.snapshot)?;
            let report = check_probes(&snap, &a.key.load()?, &a.probes)?;
            print_json(&report)?;
            if report.failed > 0 {
                bail!("{} of {} probes failed", report.failed, report.total);
            }
            Ok(())
        }
        Command::Demo(a) => demo(a, quiet),
        Command::Certs(a) => print_json(&crate::certs::generate(&a.out, a.terminals)?),
        Command::Query(a) => query(a),
        Command::Audit(AuditCommand::Verify { dir }) => {
            let report = crate::audit::verify(&dir)?;
            print_json(&report)
        }
        Command::Audit(AuditCommand::Query {
            dir,
            person,
            institution,
            from,
            to,
        }) => {
            let filter = crate::audit::QueryFilter {
                person,
                institution: institution.map(|i| i.to_string()),
                from_ns: from,
                to_ns: to,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            crate::audit::query(&dir, &filter, |v| writeln!(out, "{v}"))?;
            out.flush()?;
            Ok(())
        }
        Command::Snapshot(SnapshotCommand::Rollback { dir }) => {
            let (from, to) = crate::daemon::rollback(&dir)?;
            print_json(&serde_json::json!({ "from": from, "to": to }))
        }
        Command::Snapshot(SnapshotCommand::Publish {
            file,
            to,
            config,
            source,
        }) => {
            let (fleet, _, _) = StoreArgs { url: to, config }.open()?;
            let file = resolve_snapshot(&file)?;
            let published =
                fleet_runtime()?.block_on(crate::fleet::publish(&fleet, &file, &source))?;
            print_json(&published)
        }
        Command::Fleet(c) => fleet(c),
    }
}

/// A runtime for the fleet commands (uploads run several parts at once).
fn fleet_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn fleet(c: FleetCommand) -> Result<()> {
    let rt = fleet_runtime()?;
    match c {
        FleetCommand::Activate {
            generation,
            pointer,
        } => {
            let (fleet, at, min_ready) = pointer.open()?;
            let p = rt.block_on(crate::fleet::activate(&fleet, generation, at, min_ready))?;
            print_json(&p)
        }
        FleetCommand::Rollback { pointer } => {
            let (fleet, at, min_ready) = pointer.open()?;
            let p = rt.block_on(crate::fleet::rollback(&fleet, at, min_ready))?;
            print_json(&p)
        }
        FleetCommand::Status { store } => {
            let (fleet, _, _) = store.open()?;
            let (pointer, generations, replicas) = rt.block_on(async {
                Ok::<_, crate::fleet::FleetError>((
                    fleet.pointer().await?.map(|(p, _)| p),
                    fleet.manifests().await?,
                    fleet.reports().await?,
                ))
            })?;
            print_json(&serde_json::json!({
                "store": fleet.url(),
                "pointer": pointer,
                "generations": generations,
                "replicas": replicas,
            }))
        }
    }
}

fn query(a: QueryArgs) -> Result<()> {
    use crate::protocol::pb;
    let as_of = a.as_of.map_or(0, crate::protocol::day);
    let kind = match a.what {
        QueryWhat::Lookup(by) => crate::protocol::request_kind(&ProbeLookup::from(by)),
        QueryWhat::Status => pb::request::Kind::Status(pb::StatusRequest {}),
        QueryWhat::Batch { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let items = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    let lookup: ProbeLookup = crate::probe::json_line(&file, i + 1, l)?;
                    Ok(crate::protocol::batch_item(&lookup))
                })
                .collect::<Result<Vec<_>>>()?;
            pb::request::Kind::Batch(pb::BatchLookup { items })
        }
    };
    let config = crate::tls::client_config(&a.ca, &a.cert, &a.key)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(async {
        let client = crate::client::Client::connect(a.server, &a.server_name, config).await?;
        let response = client
            .request(&pb::Request {
                as_of,
                kind: Some(kind),
            })
            .await?;
        client.close().await;
        Ok::<_, crate::client::ClientError>(response)
    })?;
    print_json(&response)
}

/// What `snapshot inspect` prints: the header, and its creation time
/// for people.
#[derive(Serialize)]
struct Inspected<'a> {
    #[serde(flatten)]
    header: &'a crate::snapshot::Header,
    /// `created_at_unix` in ISO 8601, Japan time.
    created_at: String,
    /// Seconds since `created_at_unix`.
    age_seconds: u64,
}

impl Inspected<'_> {
    fn of(header: &crate::snapshot::Header) -> Inspected<'_> {
        Inspected {
            header,
            created_at: crate::model::date::iso_jst(header.created_at_unix),
            age_seconds: crate::model::date::unix_now().saturating_sub(header.created_at_unix),
        }
    }
}

/// What `snapshot build` reads.
enum BuildSource {
    Csv(PathBuf),
    Postgres(Box<PgSource>),
}

fn build(
    source: &BuildSource,
    out: &Path,
    skip_invalid: bool,
    key: &CardKey,
    progress: &Progress,
) -> Result<crate::build::BuildSummary> {
    let opts = BuildOptions {
        progress: progress.clone(),
        skip_invalid,
        card_key_id: key.id(),
    };
    let stderr = std::io::stderr();
    // Temporary files of builds killed before they finished (never those
    // of a build still running: see `remove_stale_builds`).
    let removed = crate::snapshot::write::remove_stale_builds(out)?;
    if removed > 0 {
        let _ = writeln!(
            stderr.lock(),
            "removed {removed} temporary files of abandoned builds in {}",
            out.display()
        );
    }
    let skipped = |e: &RowError| {
        let _ = writeln!(stderr.lock(), "skipped: {e}");
    };
    let (result, name) = match source {
        BuildSource::Csv(path) => (
            build_from_csv(path, out, &opts, skipped),
            path.display().to_string(),
        ),
        BuildSource::Postgres(pg) => (build_from_postgres(pg, out, &opts, skipped), pg.describe()),
    };
    match result {
        Ok(s) => {
            // New data wins over a rollback pin.
            crate::daemon::unpin(out)?;
            Ok(s)
        }
        Err(BuildFailure::Build(BuildError::Rows { errors, count })) => {
            let mut err = stderr.lock();
            for e in &errors {
                let _ = writeln!(err, "{name}: {e}");
            }
            if count > errors.len() as u64 {
                let _ = writeln!(err, "... and {} more", count - errors.len() as u64);
            }
            let hint = if skip_invalid {
                ""
            } else {
                " (--skip-invalid builds without them)"
            };
            bail!("{count} invalid rows in {name}; nothing written{hint}")
        }
        Err(e) => Err(e.into()),
    }
}

fn db(command: DbCommand, quiet: bool) -> Result<()> {
    let runtime = postgres::runtime()?;
    match command {
        DbCommand::Migrate(a) => {
            let source = a.pg.source(&a.url)?;
            print_json(&runtime.block_on(postgres::migrate::migrate(&source))?)
        }
        DbCommand::Load { db, csv, replace } => {
            let source = db.pg.source(&db.url)?;
            let progress = Bar::stderr(quiet);
            let loaded = runtime.block_on(postgres::load::load(&source, &csv, replace, &progress));
            progress.finish();
            match loaded {
                Ok(summary) => print_json(&summary),
                Err(LoadError::Rows(BuildError::Rows { errors, count })) => {
                    let mut err = std::io::stderr().lock();
                    for e in &errors {
                        let _ = writeln!(err, "{}: {e}", csv.display());
                    }
                    if count > errors.len() as u64 {
                        let _ = writeln!(err, "... and {} more", count - errors.len() as u64);
                    }
                    bail!("{count} invalid rows in {}; nothing loaded", csv.display())
                }
                Err(e) => Err(e).with_context(|| {
                    format!("loading {} into {}", csv.display(), source.describe())
                }),
            }
        }
        DbCommand::Status(a) => {
            let source = a.pg.source(&a.url)?;
            let status = runtime.block_on(postgres::status(&source))?;
            print_json(&status)
        }
    }
}

/// A snapshot file, or a directory's current generation: the one its
/// `CURRENT` file pins, else the newest.
fn resolve_snapshot(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let gen = crate::daemon::target_generation(path)?
            .with_context(|| format!("no snapshot (<generation>.qcs) in {}", path.display()))?;
        Ok(crate::snapshot::write::snapshot_path(path, gen))
    } else {
        Ok(path.to_path_buf())
    }
}

/// Opens a snapshot file, or a directory's current generation: the one
/// its `CURRENT` file pins, else the newest.
pub fn open(path: &Path) -> Result<Snapshot> {
    let file = resolve_snapshot(path)?;
    Snapshot::open(&file).with_context(|| format!("opening snapshot {}", file.display()))
}

fn lookup(a: LookupArgs) -> Result<()> {
    let snap = open(&a.snapshot)?;
    let as_of = a.as_of.unwrap_or_else(Date::today_jst);
    let generation = snap.header().generation;
    let key = a.key.load()?;
    if matches!(a.by, LookupBy::Card { .. }) && key.id() != snap.header().card_key_id {
        bail!(
            "the card key differs from the one this snapshot was built with \
             (key id {:016x}, snapshot {:016x})",
            key.id(),
            snap.header().card_key_id
        );
    }
    let lookup = ProbeLookup::from(a.by);
    let answer = lookup.run(&snap, &key, as_of)?;
    print_json(&AnswerJson::new(&answer, generation)?)
}

/// The result of running a probes file.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// Probes run.
    pub total: usize,
    /// Probes answered as expected.
    pub passed: usize,
    /// Probes answered otherwise.
    pub failed: usize,
    /// The first failures: probe line and what differed.
    pub failures: Vec<String>,
}

/// Runs every probe in `probes` against `snap`.
pub fn check_probes(snap: &Snapshot, key: &CardKey, probes: &Path) -> Result<CheckReport> {
    let probes = read_probes(probes)?;
    let by_card = probes
        .iter()
        .any(|p| matches!(p.lookup, ProbeLookup::Card { .. }));
    if by_card && key.id() != snap.header().card_key_id {
        bail!(
            "the card key differs from the one this snapshot was built with \
             (key id {:016x}, snapshot {:016x}); every card probe would miss",
            key.id(),
            snap.header().card_key_id
        );
    }
    let mut report = CheckReport {
        total: probes.len(),
        passed: 0,
        failed: 0,
        failures: Vec::new(),
    };
    for (i, p) in probes.iter().enumerate() {
        match check(snap, key, p) {
            Ok(()) => report.passed += 1,
            Err(why) => {
                report.failed += 1;
                if report.failures.len() < 20 {
                    report
                        .failures
                        .push(format!("line {} ({}): {why}", i + 1, p.case));
                }
            }
        }
    }
    Ok(report)
}

fn demo(a: DemoArgs, quiet: bool) -> Result<()> {
    let key = CardKey::demo();
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(
        out,
        "== generating {} synthetic records into {}",
        a.records,
        a.dir.display()
    )?;
    let as_of = "20261101".parse()?;
    let g = with_progress(quiet, |progress| {
        generate(&GenOptions {
            progress: progress.clone(),
            records: a.records,
            seed: 1,
            out: a.dir.clone(),
            probes: 2_000,
            as_of,
            card_key: key.clone(),
        })
    })?;
    writeln!(out, "{}", serde_json::to_string(&g)?)?;
    let snapshots = a.dir.join("snapshots");
    writeln!(out, "== building a snapshot in {}", snapshots.display())?;
    let b = with_progress(quiet, |progress| {
        build(
            &BuildSource::Csv(g.csv.clone()),
            &snapshots,
            false,
            &key,
            progress,
        )
    })?;
    writeln!(out, "{}", serde_json::to_string(&b)?)?;
    let snap = Snapshot::open(&b.path)?;
    writeln!(out, "== checking {} probes", g.probe_count)?;
    let report = check_probes(&snap, &key, &g.probes)?;
    writeln!(out, "{}", serde_json::to_string(&report)?)?;
    writeln!(out, "== a few answers (one per status)")?;
    let probes = read_probes(&g.probes)?;
    let mut shown = std::collections::HashSet::new();
    for p in &probes {
        if !shown.insert(p.expect) {
            continue;
        }
        let answer = p.lookup.run(&snap, &key, p.as_of)?;
        writeln!(out, "-- probe case {} (as of {}):", p.case, p.as_of)?;
        writeln!(
            out,
            "{}",
            serde_json::to_string(&AnswerJson::new(&answer, b.generation)?)?
        )?;
    }
    if report.failed > 0 {
        bail!("{} of {} probes failed", report.failed, report.total);
    }
    writeln!(
        out,
        "== demo done: try `qualcache lookup --snapshot {} insurance --help`",
        snapshots.display()
    )?;
    Ok(())
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let out = std::io::stdout();
    let mut out = out.lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
