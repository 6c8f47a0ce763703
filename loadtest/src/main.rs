//! `qualcache-loadtest`: reception terminals at check-in peak against
//! qualcached (or the echo ceiling), with every answer checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use qualcache_loadtest::plot::{Curves, Figure, Step};
use qualcache_loadtest::redis_peer::RedisUrl;
use qualcache_loadtest::run::{run, Profile, Report, RunOptions, Target};
use qualcache_loadtest::workload::{Mix, Workload};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for qualcached.
#[derive(Debug, Parser)]
#[command(name = "qualcache-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store the answers to every probe in Redis (one key per lookup key) for --target redis://.
    RedisLoad {
        /// Redis URL.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// The snapshot the daemon serves (file, or directory: its current generation).
        #[arg(long)]
        snapshot: PathBuf,
        /// probes.jsonl.
        #[arg(long)]
        probes: PathBuf,
        /// Card key file [default: $QUALCACHE_CARD_KEY, else the demo key].
        #[arg(long)]
        card_key_file: Option<PathBuf>,
    },
    /// Run terminals against a target and report latency, throughput and errors.
    Run(Box<RunArgs>),
    /// Plot several runs' latency side by side (SVG), from their --json reports.
    Plot {
        /// The SVG file to write.
        #[arg(long, value_name = "FILE.svg")]
        out: PathBuf,
        /// Above the plots.
        #[arg(long, default_value = "latency side by side")]
        title: String,
        /// NAME=REPORT.json for each run, in the order of the legend.
        #[arg(required = true, value_name = "NAME=REPORT.json", value_parser = parse_named)]
        runs: Vec<(String, PathBuf)>,
    },
    /// Time changes committed in PostgreSQL until qualcached answers them: commit-to-answer latency of single-person changes, then the change throughput of one large transaction.
    Freshness {
        /// The daemon, qualcache://ADDR; its [source] must be this database.
        #[arg(long, default_value = "qualcache://127.0.0.1:4433")]
        target: String,
        /// Output of `qualcache certs` (the first terminal certificate is used).
        #[arg(long, default_value = "data/demo-daemon/certs")]
        certs: PathBuf,
        /// The database the daemon follows (postgres://USER@HOST:PORT/DATABASE; password from $QUALCACHE_PG_PASSWORD).
        #[arg(long)]
        pg_url: String,
        /// Its qualcache schema.
        #[arg(long, default_value = qualcache::store::postgres::DEFAULT_SCHEMA)]
        schema: String,
        /// probes.jsonl of the data loaded (the card serials changed come from it).
        #[arg(long)]
        probes: PathBuf,
        /// Card key file [default: $QUALCACHE_CARD_KEY, else the demo key].
        #[arg(long)]
        card_key_file: Option<PathBuf>,
        /// Single-person changes to time, one after another.
        #[arg(long, default_value_t = 1000, value_parser = parse_count)]
        changes: usize,
        /// Persons changed in the one large transaction timed after them (0: none).
        #[arg(long, default_value_t = 100_000)]
        batch: u64,
        /// Commit the large transaction first, so the single-person changes are timed with its persons in the overlay.
        #[arg(long)]
        batch_first: bool,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Serve the plain-quinn echo ceiling (same TLS, the daemon's answer size per lookup).
    EchoServer {
        /// UDP address.
        #[arg(long, default_value = "127.0.0.1:4434")]
        listen: SocketAddr,
        /// Output of `qualcache certs` (server.pem/.key, ca.pem).
        #[arg(long)]
        certs: PathBuf,
        /// Reply size in bytes per lookup, 1 to 65536 (the daemon's answer to a card hit is about 136); a batch of N gets N times this.
        #[arg(long, default_value_t = 136, value_parser = clap::value_parser!(u32).range(1..=65_536))]
        reply_bytes: u32,
        /// UDP sockets sharing the port with SO_REUSEPORT, as the daemon's server.endpoints [default: one per core].
        #[arg(long, value_parser = parse_count)]
        endpoints: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileKind {
    /// Ramp up, plateau, ramp down.
    Peak,
    /// One rate throughout.
    Constant,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// qualcache://ADDR (the daemon), echo://ADDR (the echo ceiling) or redis://ADDR (the Redis peer, after redis-load).
    #[arg(long, default_value = "qualcache://127.0.0.1:4433")]
    target: String,
    /// Output of `qualcache certs` with at least --terminals terminal certificates (the demo daemon's by default).
    #[arg(long, default_value = "data/demo-daemon/certs")]
    certs: PathBuf,
    /// probes.jsonl of the data the server holds (the demo daemon's by default).
    #[arg(
        long,
        default_value = "data/demo-daemon/snapshots/.synthetic/probes.jsonl"
    )]
    probes: PathBuf,
    /// Simulated reception terminals (one connection and certificate each).
    #[arg(long, default_value_t = 1000, value_parser = parse_count)]
    terminals: usize,
    /// Client UDP endpoints the connections are spread over (at least one per thread: fewer are raised to --threads).
    #[arg(long, default_value_t = 8, value_parser = parse_count)]
    endpoints: usize,
    /// Generator threads, each with its own runtime and its share of the terminals and endpoints [default: one per core].
    #[arg(long, value_parser = parse_count)]
    threads: Option<usize>,
    /// Load shape [default: peak; --find-max: constant, the only shape it takes].
    #[arg(long, value_enum)]
    profile: Option<ProfileKind>,
    /// Requests per second at the plateau (peak) or throughout (constant), up to 10,000,000.
    #[arg(long, default_value_t = 2000.0, value_parser = parse_rate)]
    rate: f64,
    /// Constant profile (and each --find-max step): seconds, up to 86400 [default: 30].
    #[arg(long, value_parser = parse_seconds)]
    seconds: Option<f64>,
    /// Peak profile: ramp-up seconds, up to 86400 [default: 10].
    #[arg(long, value_parser = parse_duration)]
    ramp_up: Option<f64>,
    /// Peak profile: plateau seconds, up to 86400 [default: 30].
    #[arg(long, value_parser = parse_seconds)]
    plateau: Option<f64>,
    /// Peak profile: ramp-down seconds, up to 86400 [default: 10].
    #[arg(long, value_parser = parse_duration)]
    ramp_down: Option<f64>,
    /// Share of single lookups made by card (the rest by insurance numbers), 0 to 1.
    #[arg(long, default_value_t = 0.37, value_parser = parse_share)]
    card_share: f64,
    /// Share of requests that are batches, 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    batch_share: f64,
    /// Lookups per batch, 1 to 1000 (the daemon's default max_batch). A batch's lookups share one as-of day, the first lookup's; where that day has no probe of the class drawn, another of that day is used.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch_size: u16,
    /// Share of lookups that miss (unknown key, wrong birth date, unregistered card), 0 to 1.
    #[arg(long, default_value_t = 0.05, value_parser = parse_share)]
    miss_share: f64,
    /// Share of lookups of lost qualifications, 0 to 1 (with --miss-share at most 1).
    #[arg(long, default_value_t = 0.03, value_parser = parse_share)]
    lost_share: f64,
    /// A request not answered within this many milliseconds is an error (1 to 600000). Its latency is still recorded.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    /// SLO: p99 latency, milliseconds (above 0).
    #[arg(long, default_value_t = 5.0, value_parser = parse_positive)]
    slo_p99_ms: f64,
    /// SLO: errors plus mismatches over requests sent, 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    slo_error_rate: f64,
    /// Step the rate up from --rate (times --step each step, constant-rate steps of --seconds) until the SLO breaks (or the rate would pass 10,000,000/s); report the highest rate held. Exits 0 when some step held, 3 when the first already broke.
    #[arg(long, conflicts_with_all = ["ramp_up", "plateau", "ramp_down"])]
    find_max: bool,
    /// --find-max: rate factor from one step to the next.
    #[arg(long, default_value_t = 1.25, value_parser = parse_step)]
    step: f64,
    /// --find-max: runs of a step before it counts as broken (a single
    /// stall of this shared machine can break a step that holds).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
    tries: u32,
    /// Seed of the random streams (one per generator thread: a run repeats for the same seed and --threads).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report as JSON here (--find-max: the highest step held, else the first step).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also plot the run as SVG here: latency by percentile (per kind), answers/s and p99 second by second; --find-max adds each step's p99 against its rate (and plots the highest step held).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Name the server certificate must carry (QUIC targets).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Card key file (64 hex digits) for Redis keys [default: $QUALCACHE_CARD_KEY, else the demo key].
    #[arg(long)]
    card_key_file: Option<PathBuf>,
}

impl RunArgs {
    /// The profile run: as given, else constant for --find-max, else peak.
    fn profile_kind(&self) -> ProfileKind {
        match (self.profile, self.find_max) {
            (Some(p), _) => p,
            (None, true) => ProfileKind::Constant,
            (None, false) => ProfileKind::Peak,
        }
    }

    /// Options that do not go together (clap checks the rest).
    fn clash(&self) -> Option<&'static str> {
        let ramp = self.ramp_up.is_some() || self.plateau.is_some() || self.ramp_down.is_some();
        match self.profile_kind() {
            ProfileKind::Peak if self.find_max => {
                Some("--find-max steps a constant rate: it cannot be used with --profile peak")
            }
            ProfileKind::Peak if self.seconds.is_some() => Some(
                "--seconds is the constant profile's length; the peak profile (the default) lasts --ramp-up + --plateau + --ramp-down (or use --profile constant)",
            ),
            ProfileKind::Constant if ramp => Some(
                "--ramp-up, --plateau and --ramp-down shape the peak profile; the constant profile lasts --seconds",
            ),
            _ => None,
        }
    }
}

fn card_key(file: Option<&std::path::Path>) -> Result<qualcache::model::CardKey> {
    if let Some(f) = file {
        return std::fs::read_to_string(f)
            .with_context(|| format!("reading card key file {}", f.display()))?
            .parse()
            .with_context(|| format!("card key file {}", f.display()));
    }
    match std::env::var("QUALCACHE_CARD_KEY") {
        Ok(v) => v.parse().context("$QUALCACHE_CARD_KEY"),
        Err(_) => Ok(qualcache::model::CardKey::demo()),
    }
}

/// Cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

/// A number for which `ok` holds, else `expected` as the error.
fn number(s: &str, ok: impl Fn(f64) -> bool, expected: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if ok(f) => Ok(f),
        _ => Err(expected.into()),
    }
}

fn parse_positive(s: &str) -> Result<f64, String> {
    number(s, |f| f.is_finite() && f > 0.0, "expected a number above 0")
}

/// The highest --rate, and where --find-max stops stepping.
const MAX_RATE: f64 = 10_000_000.0;

/// The longest a profile's phase may be, seconds.
const MAX_SECONDS: f64 = 86_400.0;

fn parse_rate(s: &str) -> Result<f64, String> {
    number(
        s,
        |f| f > 0.0 && f <= MAX_RATE,
        "expected requests per second above 0 and at most 10000000",
    )
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    number(
        s,
        |f| f > 0.0 && f <= MAX_SECONDS,
        "expected seconds above 0 and at most 86400",
    )
}

fn parse_duration(s: &str) -> Result<f64, String> {
    number(
        s,
        |f| (0.0..=MAX_SECONDS).contains(&f),
        "expected seconds from 0 to 86400",
    )
}

fn parse_share(s: &str) -> Result<f64, String> {
    number(
        s,
        |f| (0.0..=1.0).contains(&f),
        "expected a share from 0 to 1, e.g. 0.05",
    )
}

fn parse_step(s: &str) -> Result<f64, String> {
    number(
        s,
        |f| f > 1.0 && f <= 4.0,
        "expected a factor above 1 and at most 4, e.g. 1.25",
    )
}

fn parse_named(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err("expected NAME=REPORT.json, e.g. qualcached=/tmp/q.json".into()),
    }
}

fn parse_target(s: &str) -> Result<Target> {
    let (scheme, addr) = s
        .split_once("://")
        .context("target must be scheme://host:port")?;
    if scheme == "redis" {
        return Ok(Target::Redis(RedisUrl::new(s)));
    }
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("target address {addr:?}"))?;
    match scheme {
        "qualcache" => Ok(Target::Qualcache(addr)),
        "echo" => Ok(Target::Echo(addr)),
        other => bail!("unknown target scheme {other:?} (qualcache, echo, redis)"),
    }
}

/// Whether a run met the SLO; a run that sent nothing proves nothing and
/// does not.
fn slo_met(r: &Report, a: &RunArgs) -> bool {
    r.sent > 0 && r.latency.p99_ms <= a.slo_p99_ms && r.error_rate() <= a.slo_error_rate
}

fn write_json(path: &std::path::Path, r: &Report) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(r)?)
        .with_context(|| format!("writing the report to {}", path.display()))
}

/// Writes `--plot`: the run, and the `--find-max` steps if any.
fn write_plot(path: &std::path::Path, r: &Report, a: &RunArgs, steps: Vec<Step>) -> Result<()> {
    let what = match &steps[..] {
        [] => format!("{:.0} requests/s offered", r.profile.rate()),
        _ => format!("highest rate held, {:.0}/s", r.profile.rate()),
    };
    let mut figure = Figure::of_run(
        format!("{}: {} terminals, {what}", r.target, r.terminals),
        r,
    );
    figure.slo_p99_ms = Some(a.slo_p99_ms);
    figure.steps = steps;
    figure.write_svg(path)?;
    println!("plot written to {}", path.display());
    Ok(())
}

fn print(r: &Report, a: &RunArgs) {
    let over = match r.endpoints {
        0 => String::new(),
        n => format!(" over {n} endpoints"),
    };
    println!(
        "target {}, {} terminals{over} on {} threads, {:?}",
        r.target, r.terminals, r.threads, r.profile
    );
    println!(
        "sent {}  answered {}  throughput {:.0}/s  errors {:?}  mismatches {}",
        r.sent, r.answered, r.throughput_rps, r.errors, r.mismatches
    );
    for (kind, why) in &r.error_examples {
        println!("  first {kind} error: {why}");
    }
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "kind", "count", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms"
    );
    let row = |name: &str, l: &qualcache_loadtest::run::Latency| {
        println!(
            "{name:<10} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
    };
    row("all", &r.latency);
    for (k, l) in &r.by_kind {
        row(&format!("{k:?}").to_lowercase(), l);
    }
    row("connect", &r.connect);
    row("send lag", &r.send_lag);
    println!(
        "UDP receive-buffer drops during the run: {:?}",
        r.udp_rcvbuf_errors
    );
    if let Some(q) = &r.quic {
        let per = |n: u64| n as f64 / r.sent.max(1) as f64;
        println!(
            "QUIC per request: datagrams {:.2} sent, {:.2} received; ACK frames {:.2} sent, {:.2} received; PINGs received {:.3}; MAX_STREAMS received {:.3}; packets lost {}",
            per(q.datagrams_sent),
            per(q.datagrams_received),
            per(q.acks_sent),
            per(q.acks_received),
            per(q.pings_received),
            per(q.max_streams_received),
            q.lost_packets
        );
    }
    println!(
        "SLO p99 <= {} ms and error rate <= {}: {}",
        a.slo_p99_ms,
        a.slo_error_rate,
        match (r.sent, slo_met(r, a)) {
            (0, _) => "MISSED (no request was sent: raise --rate or --seconds)",
            (_, true) => "met",
            (_, false) => "MISSED",
        }
    );
}

async fn main_run(a: RunArgs) -> Result<bool> {
    let target = parse_target(&a.target)?;
    let card_key = card_key(a.card_key_file.as_deref())?;
    let probes = qualcache::probe::read_probes(&a.probes)?;
    if a.miss_share + a.lost_share > 1.0 {
        bail!(
            "--miss-share {} and --lost-share {} add up to more than 1",
            a.miss_share,
            a.lost_share
        );
    }
    let mix = Mix {
        card: a.card_share,
        batch: a.batch_share,
        batch_size: usize::from(a.batch_size),
        miss: a.miss_share,
        lost: a.lost_share,
    };
    let workload = Arc::new(Workload::new(probes, mix)?);
    let seconds = a.seconds.unwrap_or(30.0);
    let profile = match a.profile_kind() {
        ProfileKind::Constant => Profile::Constant {
            rate: a.rate,
            seconds,
        },
        ProfileKind::Peak => Profile::Peak {
            rate: a.rate,
            ramp_up: a.ramp_up.unwrap_or(10.0),
            plateau: a.plateau.unwrap_or(30.0),
            ramp_down: a.ramp_down.unwrap_or(10.0),
        },
    };
    let opts = |profile| RunOptions {
        target: target.clone(),
        certs: a.certs.clone(),
        terminals: a.terminals,
        endpoints: a.endpoints,
        threads: a.threads.unwrap_or_else(cores),
        profile,
        timeout: Duration::from_millis(a.timeout_ms),
        seed: a.seed,
        server_name: a.server_name.clone(),
        progress: !a.quiet,
        card_key: card_key.clone(),
    };
    if !a.find_max {
        let report = run(&opts(profile), workload).await?;
        print(&report, &a);
        if let Some(path) = &a.json {
            write_json(path, &report)?;
        }
        if let Some(path) = &a.plot {
            write_plot(path, &report, &a, Vec::new())?;
        }
        return Ok(slo_met(&report, &a));
    }
    let mut rate = a.rate;
    let mut held: Option<Report> = None;
    let mut first_broken: Option<Report> = None;
    let mut tries = 0;
    let mut steps = Vec::new();
    loop {
        let report = run(&opts(Profile::Constant { rate, seconds }), workload.clone()).await?;
        let ok = slo_met(&report, &a);
        steps.push(Step {
            rate,
            p99_ms: report.latency.p99_ms,
            held: ok,
        });
        tries += 1;
        let verdict = match (ok, tries < a.tries) {
            (true, _) => "held",
            (false, true) => "broken; trying again",
            (false, false) => "broken",
        };
        println!(
            "rate {rate:.0}/s: p99 {:.3} ms, error rate {:.5}: {verdict}",
            report.latency.p99_ms,
            report.error_rate(),
        );
        if !ok {
            if tries < a.tries {
                continue;
            }
            if held.is_none() {
                first_broken = Some(report);
            }
            break;
        }
        held = Some(report);
        if rate * a.step > MAX_RATE {
            println!("the next step would pass the generator's limit of {MAX_RATE:.0}/s");
            break;
        }
        rate *= a.step;
        tries = 0;
    }
    match held {
        Some(r) => {
            println!("highest rate held: {:.0}/s", r.profile.rate());
            print(&r, &a);
            if let Some(path) = &a.json {
                write_json(path, &r)?;
            }
            if let Some(path) = &a.plot {
                write_plot(path, &r, &a, steps)?;
            }
            Ok(true)
        }
        None => {
            println!("the SLO broke at the first rate ({:.0}/s)", a.rate);
            if let Some(r) = first_broken {
                print(&r, &a);
                if let Some(path) = &a.json {
                    write_json(path, &r)?;
                }
                if let Some(path) = &a.plot {
                    write_plot(path, &r, &a, steps)?;
                }
            }
            Ok(false)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run(a) = &cli.command {
        if let Some(clash) = a.clash() {
            use clap::CommandFactory;
            let mut cli = Cli::command();
            cli.build();
            let run = cli
                .find_subcommand_mut("run")
                .expect("the run subcommand exists");
            run.error(clap::error::ErrorKind::ArgumentConflict, clash)
                .exit();
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qualcache-loadtest: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(a) => main_run(*a).await,
            Command::RedisLoad {
                redis,
                snapshot,
                probes,
                card_key_file,
            } => {
                let snapshot = if snapshot.is_dir() {
                    let g = qualcache::daemon::target_generation(&snapshot)?
                        .context("no snapshot in that directory")?;
                    qualcache::snapshot::write::snapshot_path(&snapshot, g)
                } else {
                    snapshot
                };
                let probes = qualcache::probe::read_probes(&probes)?;
                let key = card_key(card_key_file.as_deref())?;
                let redis = RedisUrl::new(redis);
                let n =
                    qualcache_loadtest::redis_peer::load(&redis, &snapshot, &probes, &key).await?;
                println!("{n} keys stored in {redis}");
                Ok(true)
            }
            Command::Freshness {
                target,
                certs,
                pg_url,
                schema,
                probes,
                card_key_file,
                changes,
                batch,
                batch_first,
                json,
            } => {
                let Target::Qualcache(addr) = parse_target(&target)? else {
                    bail!("--target must be qualcache://ADDR");
                };
                let password = std::env::var(qualcache::store::postgres::PASSWORD_ENV).ok();
                let pg = qualcache::store::postgres::PgSource::new(&pg_url, &schema, password.as_deref())?;
                let report = qualcache_loadtest::freshness::run(&qualcache_loadtest::freshness::FreshnessOptions {
                    addr,
                    certs,
                    pg,
                    probes,
                    card_key: card_key(card_key_file.as_deref())?,
                    changes,
                    batch,
                    batch_first,
                })
                .await?;
                let m = &report.commit_to_answer_ms;
                println!(
                    "commit to answer, {} single-person changes: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    report.changes, m.p50, m.p90, m.p99, m.max
                );
                if report.batch_persons > 0 {
                    println!(
                        "one transaction of {} persons: answered after {:.2} s ({:.0} persons/s)",
                        report.batch_persons, report.batch_seconds, report.batch_persons_per_second
                    );
                }
                if let Some(path) = json {
                    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                Ok(true)
            }
            Command::Plot { out, title, runs } => {
                let curves = runs
                    .into_iter()
                    .map(|(name, path)| Ok((name, Curves::read(&path)?)))
                    .collect::<Result<Vec<_>>>()?;
                Figure::compare(title, &curves).write_svg(&out)?;
                println!("plot written to {}", out.display());
                Ok(true)
            }
            Command::EchoServer {
                listen,
                certs,
                reply_bytes,
                endpoints,
            } => qualcache_loadtest::echo::serve(
                listen,
                &certs,
                reply_bytes as usize,
                endpoints.unwrap_or_else(cores),
            )
            .await
            .map(|()| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("qualcache-loadtest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
