//! `qualcached` configuration, in two stages: [`RawConfig`] is what the TOML
//! file says (unknown keys are errors, every key has a default), and
//! [`Config`] is the validated form the daemon runs on. Relative paths are
//! relative to the daemon's working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::CardKey;
use crate::protocol::Limits;
use crate::tls::Transport;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml says, with the line and the key.
        message: String,
    },
    /// A value out of range or inconsistent with another.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `server.max_batch`.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[server]`.
    pub server: RawServer,
    /// `[tls]`.
    pub tls: RawTls,
    /// `[snapshots]`.
    pub snapshots: RawSnapshots,
    /// `[source]` (absent: CSV at `data/enrollees.csv`; a replica has none).
    pub source: Option<RawSource>,
    /// `[card_key]`.
    pub card_key: RawCardKey,
    /// `[admin]`.
    pub admin: RawAdmin,
    /// `[audit]`.
    pub audit: RawAudit,
    /// `[fleet]`.
    pub fleet: Option<RawFleet>,
}

/// `[fleet]`: the object store snapshots are published to and pulled
/// from. With `replica_id` this daemon is a replica (no `[source]`: it
/// serves the generation `current.json` names); with `publish = true`
/// (and a `[source]`) it publishes each generation it builds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFleet {
    /// `s3://bucket/prefix` or `file:///directory`.
    pub url: String,
    /// An S3-compatible endpoint; else `$AWS_ENDPOINT_URL`, else AWS.
    pub endpoint: Option<String>,
    /// The region; else `$AWS_REGION`.
    pub region: Option<String>,
    /// Allow an `http://` endpoint (default false: HTTPS).
    pub allow_http: bool,
    /// The AWS shared credentials file (when the environment has no keys).
    pub credentials_file: Option<PathBuf>,
    /// This replica's id (letters, digits, `-`, `_`, `.`).
    pub replica_id: Option<String>,
    /// Publish each generation built here.
    pub publish: bool,
    /// Seconds between reads of the pointer and the manifests (default 2).
    pub poll_interval_secs: Option<u64>,
    /// Replicas that must report a generation ready before
    /// `qualcache fleet activate` moves the pointer to it (default 1).
    pub min_ready_replicas: Option<usize>,
}

/// `[fleet]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The store.
    pub store: crate::fleet::StoreSettings,
    /// This daemon's part.
    pub role: FleetRole,
    /// How often the store is read.
    pub poll_interval: Duration,
    /// Replicas that must report ready before an activation.
    pub min_ready_replicas: usize,
}

/// A daemon's part in the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetRole {
    /// Serves what the pointer names, pulled from the store.
    Replica {
        /// `replica_id`.
        id: String,
    },
    /// Builds from its source and publishes each generation.
    Publisher,
    /// Neither (the section is read by `qualcache fleet` only).
    None,
}

/// `[audit]`: the trail of who looked up whom.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAudit {
    /// Directory of the hourly files.
    pub dir: PathBuf,
    /// `required`, `best_effort` or `off`.
    pub mode: String,
    /// Days a file is kept.
    pub retention_days: u32,
    /// Records that may wait for the writer.
    pub queue: usize,
}

impl Default for RawAudit {
    fn default() -> RawAudit {
        RawAudit {
            dir: "data/audit".into(),
            mode: "required".into(),
            retention_days: crate::audit::DEFAULT_RETENTION_DAYS,
            queue: crate::audit::DEFAULT_QUEUE,
        }
    }
}

/// `[admin]`: the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// TCP address; empty disables the listener (and request metrics).
    pub listen: String,
}

impl Default for RawAdmin {
    fn default() -> RawAdmin {
        RawAdmin {
            listen: DEFAULT_ADMIN_LISTEN.into(),
        }
    }
}

/// Where the admin listener listens unless configured otherwise.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// UDP address to listen on.
    pub listen: String,
    /// Largest request, bytes.
    pub max_request_bytes: usize,
    /// Most items in one batch.
    pub max_batch: usize,
    /// Concurrent request streams per connection.
    pub max_streams_per_connection: u32,
    /// Seconds of silence before a connection is closed.
    pub idle_timeout_secs: u64,
    /// Seconds given to requests in flight at shutdown.
    pub shutdown_grace_secs: u64,
    /// UDP socket receive and send buffer, bytes.
    pub udp_buffer_bytes: usize,
    /// Requests in flight above which new ones are answered OVERLOADED.
    pub max_in_flight: u64,
    /// Connections one terminal (institution code) may hold at once.
    pub max_connections_per_terminal: u32,
    /// Requests in flight one terminal may have across its connections;
    /// past it its own new requests are answered OVERLOADED.
    pub max_in_flight_per_terminal: u64,
    /// UDP sockets (QUIC endpoints) sharing `listen` with SO_REUSEPORT;
    /// 0 means one per CPU core.
    pub endpoints: usize,
    /// Handshakes in progress (connections that have not yet presented a
    /// valid client certificate) at most; past half of it, new ones must
    /// prove their address first (QUIC Retry).
    pub max_handshakes: u32,
    /// Seconds a handshake may take before it is dropped.
    pub handshake_timeout_secs: u64,
    /// Lower each connection's stream credit while the server is short
    /// of CPU (`overload`), so excess requests are not sent at all.
    pub adaptive_stream_credit: bool,
    /// Adaptive credit: halve it while the runtime wakes timers this many
    /// milliseconds late (default 3).
    pub shed_lag_ms: u64,
    /// Adaptive credit: halve it while more than this many KiB wait in
    /// the server's UDP receive queues (default 256).
    pub shed_queue_kib: u64,
}

impl Default for RawServer {
    fn default() -> RawServer {
        let limits = Limits::default();
        RawServer {
            listen: "127.0.0.1:4433".into(),
            max_request_bytes: limits.max_request_bytes,
            max_batch: limits.max_batch,
            max_streams_per_connection: 64,
            idle_timeout_secs: 60,
            shutdown_grace_secs: 10,
            udp_buffer_bytes: 8 << 20,
            max_in_flight: crate::server::DEFAULT_MAX_IN_FLIGHT,
            max_connections_per_terminal: crate::server::DEFAULT_MAX_CONNECTIONS_PER_TERMINAL,
            max_in_flight_per_terminal: crate::server::DEFAULT_MAX_IN_FLIGHT_PER_TERMINAL,
            endpoints: 0,
            max_handshakes: crate::server::DEFAULT_MAX_HANDSHAKES,
            handshake_timeout_secs: crate::server::DEFAULT_HANDSHAKE_TIMEOUT.as_secs(),
            adaptive_stream_credit: true,
            shed_lag_ms: crate::overload::HIGH_LAG.as_millis() as u64,
            shed_queue_kib: crate::overload::HIGH_QUEUED >> 10,
        }
    }
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// CA that signs terminal certificates, PEM.
    pub client_ca: PathBuf,
    /// Create development certificates (`qualcache certs`) in the
    /// certificate's folder at start if they are missing.
    pub dev_certs: bool,
}

impl Default for RawTls {
    fn default() -> RawTls {
        RawTls {
            cert: "certs/server.pem".into(),
            key: "certs/server.key".into(),
            client_ca: "certs/ca.pem".into(),
            dev_certs: false,
        }
    }
}

/// `[snapshots]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSnapshots {
    /// The snapshot directory (`<generation>.qcs` files).
    pub dir: PathBuf,
    /// Snapshots kept for rollback, the current one included.
    pub keep: usize,
    /// Seconds between checks for a newer snapshot or a changed source.
    pub reload_interval_secs: u64,
}

impl Default for RawSnapshots {
    fn default() -> RawSnapshots {
        RawSnapshots {
            dir: "data/snapshots".into(),
            keep: 3,
            reload_interval_secs: 60,
        }
    }
}

/// `[source]`: where snapshots are built from when the directory has none
/// (and again when it changes: a `csv` file's fingerprint, a `postgres`
/// database's change counter). A key of another kind than `kind` is an
/// error, not ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSource {
    /// `csv`, `postgres` or `synthetic`.
    pub kind: String,
    /// `csv`: the export (default `data/enrollees.csv`).
    pub path: Option<PathBuf>,
    /// `synthetic`: records to generate (default 1,000,000).
    pub records: Option<u64>,
    /// `synthetic`: seed (default 1).
    pub seed: Option<u64>,
    /// `postgres`: `postgres://USER@HOST:PORT/DATABASE`.
    pub url: Option<String>,
    /// `postgres`: the schema holding qualcache's tables.
    pub schema: Option<String>,
    /// `postgres`: file holding the password.
    pub password_file: Option<PathBuf>,
    /// `postgres`: environment variable holding the password (when no file).
    pub password_env: Option<String>,
    /// `postgres`: seconds between checks of the change counter (default 60).
    pub rebuild_interval_secs: Option<u64>,
    /// `postgres`: most changed persons the overlay holds before a
    /// snapshot is built early (default 1,000,000; 0: no overlay, changes
    /// are answered after the next snapshot only).
    pub overlay_max_persons: Option<u64>,
}

impl Default for RawSource {
    fn default() -> RawSource {
        RawSource {
            kind: "csv".into(),
            path: None,
            records: None,
            seed: None,
            url: None,
            schema: None,
            password_file: None,
            password_env: None,
            rebuild_interval_secs: None,
            overlay_max_persons: None,
        }
    }
}

impl RawSource {
    /// Each key: its name, whether the file gives it, the kind it is for.
    fn given(&self) -> [(&'static str, bool, &'static str); 9] {
        [
            ("source.path", self.path.is_some(), "csv"),
            ("source.records", self.records.is_some(), "synthetic"),
            ("source.seed", self.seed.is_some(), "synthetic"),
            ("source.url", self.url.is_some(), "postgres"),
            ("source.schema", self.schema.is_some(), "postgres"),
            (
                "source.password_file",
                self.password_file.is_some(),
                "postgres",
            ),
            (
                "source.password_env",
                self.password_env.is_some(),
                "postgres",
            ),
            (
                "source.rebuild_interval_secs",
                self.rebuild_interval_secs.is_some(),
                "postgres",
            ),
            (
                "source.overlay_max_persons",
                self.overlay_max_persons.is_some(),
                "postgres",
            ),
        ]
    }
}

/// `[card_key]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCardKey {
    /// File holding the key (64 hex digits). Without it, `$QUALCACHE_CARD_KEY`,
    /// else the public demo key (logged as a warning).
    pub file: Option<PathBuf>,
}

/// Where snapshots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A CSV export, rebuilt when the file changes.
    Csv(PathBuf),
    /// Generated data (demo).
    Synthetic {
        /// Records.
        records: u64,
        /// Seed.
        seed: u64,
    },
    /// None: a fleet replica serves what the fleet's pointer names,
    /// downloaded from the store; it builds nothing.
    Fleet,
    /// A PostgreSQL store, rebuilt when its change counter moves.
    Postgres {
        /// Where, which schema, and the password.
        pg: Box<crate::store::postgres::PgSource>,
        /// How often the change counter is checked.
        rebuild_interval: Duration,
        /// Most changed persons answered from the overlay before a
        /// snapshot is built early; 0: no overlay.
        overlay_max_persons: usize,
    },
}

impl Source {
    /// Where snapshots come from, for logs and manifests (no password).
    pub fn describe(&self) -> String {
        match self {
            Source::Csv(path) => format!("csv {}", path.display()),
            Source::Synthetic { records, seed } => {
                format!("synthetic {records} records, seed {seed}")
            }
            Source::Fleet => "fleet".into(),
            Source::Postgres { pg, .. } => pg.describe(),
        }
    }
}

const HOUR: u64 = 3_600;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Request limits.
    pub limits: Limits,
    /// QUIC transport limits.
    pub transport: Transport,
    /// Grace period at shutdown.
    pub shutdown_grace: Duration,
    /// UDP socket buffers.
    pub udp_buffer_bytes: usize,
    /// Load-shedding threshold.
    pub max_in_flight: u64,
    /// Connections per terminal.
    pub max_connections_per_terminal: u32,
    /// Requests in flight per terminal.
    pub max_in_flight_per_terminal: u64,
    /// Handshakes in progress at most (see [`RawServer::max_handshakes`]).
    pub max_handshakes: u32,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// Whether stream credit adapts to the server's load.
    pub adaptive_stream_credit: bool,
    /// When the adaptive credit is cut and grown.
    pub shed_thresholds: crate::overload::Thresholds,
    /// QUIC endpoints on the listen address.
    pub endpoints: usize,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
    /// Terminal CA.
    pub client_ca: PathBuf,
    /// Create dev certificates if missing.
    pub dev_certs: bool,
    /// Snapshot directory.
    pub snapshot_dir: PathBuf,
    /// Snapshots kept.
    pub keep: usize,
    /// Reload period.
    pub reload_interval: Duration,
    /// Snapshot source.
    pub source: Source,
    /// Card key file, if configured.
    pub card_key_file: Option<PathBuf>,
    /// The admin HTTP listener's address; `None` when disabled (then
    /// requests are not counted either: nobody could read the counts).
    pub admin_listen: Option<SocketAddr>,
    /// The audit trail; `None` with `mode = "off"`.
    pub audit: Option<crate::audit::AuditConfig>,
    /// `[fleet]`, if given.
    pub fleet: Option<FleetConfig>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates configuration text; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let invalid = |key, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        let s = &raw.server;
        let listen = s
            .listen
            .parse()
            .map_err(|e| invalid("server.listen", format!("not a socket address: {e}")))?;
        let positive = |key, v: u64| {
            if v == 0 {
                Err(invalid(key, "must be at least 1".into()))
            } else {
                Ok(v)
            }
        };
        positive("server.max_request_bytes", s.max_request_bytes as u64)?;
        positive("server.max_batch", s.max_batch as u64)?;
        positive(
            "server.max_streams_per_connection",
            u64::from(s.max_streams_per_connection),
        )?;
        positive("server.max_in_flight", s.max_in_flight)?;
        positive(
            "server.max_connections_per_terminal",
            u64::from(s.max_connections_per_terminal),
        )?;
        positive(
            "server.max_in_flight_per_terminal",
            s.max_in_flight_per_terminal,
        )?;
        positive("snapshots.keep", raw.snapshots.keep as u64)?;
        // Durations are bounded so that adding them to a clock cannot
        // overflow (which would stop the daemon's reload timer).
        let seconds = |key, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(Duration::from_secs(v))
            } else {
                Err(invalid(key, format!("must be between {min} and {max}")))
            }
        };
        let idle_timeout = seconds("server.idle_timeout_secs", s.idle_timeout_secs, 1, DAY)?;
        let handshake_timeout = seconds(
            "server.handshake_timeout_secs",
            s.handshake_timeout_secs,
            1,
            60,
        )?;
        positive("server.max_handshakes", u64::from(s.max_handshakes))?;
        if !(1..=1_000).contains(&s.shed_lag_ms) {
            return Err(invalid(
                "server.shed_lag_ms",
                "must be between 1 and 1000".into(),
            ));
        }
        if !(16..=1 << 20).contains(&s.shed_queue_kib) {
            return Err(invalid(
                "server.shed_queue_kib",
                "must be between 16 and 1048576 (1 GiB)".into(),
            ));
        }
        let shed_thresholds = crate::overload::Thresholds::new(
            Duration::from_millis(s.shed_lag_ms),
            s.shed_queue_kib << 10,
        );
        let shutdown_grace = seconds("server.shutdown_grace_secs", s.shutdown_grace_secs, 0, HOUR)?;
        let reload_interval = seconds(
            "snapshots.reload_interval_secs",
            raw.snapshots.reload_interval_secs,
            1,
            WEEK,
        )?;
        if s.endpoints > 64 {
            return Err(invalid(
                "server.endpoints",
                "must be at most 64 (0 = one per CPU core)".into(),
            ));
        }
        if s.udp_buffer_bytes < 64 * 1024 {
            return Err(invalid(
                "server.udp_buffer_bytes",
                "must be at least 65536".into(),
            ));
        }
        let admin_listen = match raw.admin.listen.trim() {
            "" => None,
            a => Some(a.parse().map_err(|e| {
                invalid(
                    "admin.listen",
                    format!("not a socket address (empty disables the listener): {e}"),
                )
            })?),
        };
        let a = &raw.audit;
        let audit_mode = match a.mode.as_str() {
            "required" => Some(crate::audit::AuditMode::Required),
            "best_effort" => Some(crate::audit::AuditMode::BestEffort),
            "off" => None,
            other => {
                return Err(invalid(
                    "audit.mode",
                    format!("{other:?} is not one of \"required\", \"best_effort\", \"off\""),
                ))
            }
        };
        positive("audit.retention_days", u64::from(a.retention_days))?;
        positive("audit.queue", a.queue as u64)?;
        if a.retention_days > 36_500 {
            return Err(invalid(
                "audit.retention_days",
                "must be at most 36500".into(),
            ));
        }
        let audit = audit_mode.map(|mode| crate::audit::AuditConfig {
            dir: a.dir.clone(),
            mode,
            retention_days: a.retention_days,
            queue: a.queue,
        });
        let fleet = match &raw.fleet {
            Some(f) => Some(fleet_config(f).map_err(|(key, reason)| invalid(key, reason))?),
            None => None,
        };
        let replica = matches!(
            fleet,
            Some(FleetConfig {
                role: FleetRole::Replica { .. },
                ..
            })
        );
        if replica && raw.source.is_some() {
            return Err(invalid(
                "source.kind",
                "a replica ([fleet] replica_id) serves what the fleet publishes and builds nothing: remove [source]".into(),
            ));
        }
        let default_source = RawSource::default();
        let src = raw.source.as_ref().unwrap_or(&default_source);
        let kinds = ["csv", "synthetic", "postgres"];
        if let Some((key, _, kind)) = src
            .given()
            .into_iter()
            .find(|&(_, given, kind)| given && kind != src.kind)
        {
            if kinds.contains(&src.kind.as_str()) {
                return Err(invalid(
                    key,
                    format!(
                        "only for kind = \"{kind}\" (this source is kind = {:?})",
                        src.kind
                    ),
                ));
            }
        }
        let source = match src.kind.as_str() {
            _ if replica => Source::Fleet,
            "csv" => Source::Csv(
                src.path
                    .clone()
                    .unwrap_or_else(|| "data/enrollees.csv".into()),
            ),
            "synthetic" => Source::Synthetic {
                records: positive("source.records", src.records.unwrap_or(1_000_000))?,
                seed: src.seed.unwrap_or(1),
            },
            "postgres" => {
                let url = src.url.as_deref().ok_or_else(|| {
                    invalid("source.url", "required for kind = \"postgres\"".into())
                })?;
                let schema = src
                    .schema
                    .as_deref()
                    .unwrap_or(crate::store::postgres::DEFAULT_SCHEMA);
                crate::store::postgres::check_schema_name(schema)
                    .map_err(|e| invalid("source.schema", e))?;
                let password = crate::store::postgres::read_password(
                    src.password_file.as_deref(),
                    src.password_env
                        .as_deref()
                        .unwrap_or(crate::store::postgres::PASSWORD_ENV),
                )
                .map_err(|e| invalid("source.password_file", e.to_string()))?;
                let pg = crate::store::postgres::PgSource::new(url, schema, password.as_deref())
                    .map_err(|e| invalid("source.url", e.to_string()))?;
                Source::Postgres {
                    pg: Box::new(pg),
                    rebuild_interval: seconds(
                        "source.rebuild_interval_secs",
                        src.rebuild_interval_secs.unwrap_or(60),
                        1,
                        WEEK,
                    )?,
                    overlay_max_persons: match src.overlay_max_persons.unwrap_or(1_000_000) {
                        n @ 0..=100_000_000 => n as usize,
                        n => {
                            return Err(invalid(
                                "source.overlay_max_persons",
                                format!("{n} is more than 100,000,000 (a snapshot is cheaper)"),
                            ))
                        }
                    },
                }
            }
            other => {
                return Err(invalid(
                    "source.kind",
                    format!("{other:?} is not one of \"csv\", \"synthetic\", \"postgres\""),
                ))
            }
        };
        Ok(Config {
            listen,
            limits: Limits {
                max_request_bytes: s.max_request_bytes,
                max_batch: s.max_batch,
            },
            transport: Transport {
                max_streams: s.max_streams_per_connection,
                idle_timeout,
            },
            shutdown_grace,
            udp_buffer_bytes: s.udp_buffer_bytes,
            max_in_flight: s.max_in_flight,
            max_connections_per_terminal: s.max_connections_per_terminal,
            max_in_flight_per_terminal: s.max_in_flight_per_terminal,
            max_handshakes: s.max_handshakes,
            handshake_timeout,
            adaptive_stream_credit: s.adaptive_stream_credit,
            shed_thresholds,
            endpoints: match s.endpoints {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            cert: raw.tls.cert,
            key: raw.tls.key,
            client_ca: raw.tls.client_ca,
            dev_certs: raw.tls.dev_certs,
            snapshot_dir: raw.snapshots.dir,
            keep: raw.snapshots.keep,
            reload_interval,
            source,
            card_key_file: raw.card_key.file,
            admin_listen,
            audit,
            fleet,
        })
    }

    /// The card key: the configured file, else `$QUALCACHE_CARD_KEY`, else
    /// the demo key (`true` in the second field).
    pub fn card_key(&self) -> anyhow::Result<(CardKey, bool)> {
        use anyhow::Context;
        if let Some(f) = &self.card_key_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading card key file {}", f.display()))?;
            return Ok((
                text.parse()
                    .with_context(|| format!("card key file {}", f.display()))?,
                false,
            ));
        }
        match std::env::var(crate::model::card::CARD_KEY_ENV) {
            Ok(v) => Ok((v.parse().context("$QUALCACHE_CARD_KEY")?, false)),
            Err(_) => Ok((CardKey::demo(), true)),
        }
    }

    /// What `qualcached --check-config` checks beyond the file itself,
    /// as the daemon would at start: the card key (its file, or
    /// `$QUALCACHE_CARD_KEY`); the TLS files (server certificate and key,
    /// which must match, and the terminal CA), unless `dev_certs` will
    /// create them; the snapshot directory (a directory this process can
    /// list and write, or one it can create); and, when it holds no
    /// snapshot to serve, a CSV source that opens with a good header row.
    /// The audit directory must be a directory where it exists. Errors
    /// name the file, never a key. Returns notes for the operator (the demo
    /// key, what start will create, what it cannot check).
    pub fn check_files(&self) -> anyhow::Result<Vec<String>> {
        let mut notes = Vec::new();
        let (_, demo) = self.card_key()?;
        if demo {
            notes.push(
                "no card key file or $QUALCACHE_CARD_KEY: the public demo key will be used (synthetic data only)"
                    .to_string(),
            );
        }
        if self.dev_certs && !self.cert.exists() {
            let dir = self.cert.parent().unwrap_or(Path::new("."));
            notes.push(format!(
                "{} is missing: development certificates will be created in {} at start",
                self.cert.display(),
                dir.display()
            ));
        } else {
            crate::tls::server_config(&self.cert, &self.key, &self.client_ca, self.transport)?;
        }
        self.check_snapshots(&mut notes)?;
        if let Some(fleet) = &self.fleet {
            // An S3 client is made as start makes it (the credentials
            // file read, the endpoint parsed); nothing is sent. (A local
            // directory is created at start, not here.)
            if fleet.store.url.starts_with("s3://") {
                crate::fleet::Fleet::open(&fleet.store)?;
            }
            notes.push(format!(
                "fleet store {}: not contacted by this check",
                fleet.store.url
            ));
        }
        if let Some(audit) = &self.audit {
            if audit.dir.exists() && !audit.dir.is_dir() {
                anyhow::bail!("audit directory {}: not a directory", audit.dir.display());
            }
        }
        Ok(notes)
    }

    /// The snapshot directory and, without a snapshot in it, the source.
    fn check_snapshots(&self, notes: &mut Vec<String>) -> anyhow::Result<()> {
        use anyhow::Context;
        let dir = &self.snapshot_dir;
        let shown = dir.display();
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => anyhow::bail!("snapshot directory {shown}: not a directory"),
            Ok(_) => {
                std::fs::read_dir(dir).with_context(|| format!("snapshot directory {shown}"))?;
                // Builds write here: try it as they would.
                let probe = dir.join(format!(".check-config-{}.tmp", std::process::id()));
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&probe)
                    .with_context(|| {
                        format!("snapshot directory {shown}: cannot write a file in it")
                    })?;
                let _ = std::fs::remove_file(&probe);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let existing = dir
                    .ancestors()
                    .skip(1)
                    .find(|a| a.as_os_str().is_empty() || a.exists());
                if let Some(a) = existing.filter(|a| !a.as_os_str().is_empty() && !a.is_dir()) {
                    anyhow::bail!(
                        "snapshot directory {shown}: {} is not a directory",
                        a.display()
                    );
                }
                notes.push(format!(
                    "snapshot directory {shown} will be created at start"
                ));
            }
            Err(e) => return Err(e).with_context(|| format!("snapshot directory {shown}")),
        }
        let have_snapshot = !crate::snapshot::list_generations(dir)?.is_empty();
        match &self.source {
            Source::Csv(path) => match crate::store::csv::CsvReader::open(path) {
                Ok(_) => {}
                Err(e) if have_snapshot => notes.push(format!(
                    "{e}: the newest snapshot in {shown} is served until the source can be read"
                )),
                Err(e) => anyhow::bail!(
                    "{e}, and there is no snapshot in {shown} to serve until it can be read"
                ),
            },
            Source::Synthetic { .. } => {}
            Source::Fleet if !have_snapshot => notes.push(format!(
                "no snapshot in {shown}: start waits for the fleet's pointer and downloads its generation"
            )),
            Source::Fleet => {}
            Source::Postgres { .. } if !have_snapshot => notes.push(format!(
                "no snapshot in {shown}: start builds one from PostgreSQL (not connected by this check)"
            )),
            Source::Postgres { .. } => {}
        }
        Ok(())
    }
}

/// Validates `[fleet]`.
fn fleet_config(f: &RawFleet) -> Result<FleetConfig, (&'static str, String)> {
    let invalid = |key, reason| (key, reason);
    if f.url.is_empty() {
        return Err(invalid(
            "fleet.url",
            "required (s3://bucket/prefix or file:///directory)".into(),
        ));
    }
    let store = crate::fleet::StoreSettings {
        url: f.url.clone(),
        endpoint: f.endpoint.clone(),
        region: f.region.clone(),
        allow_http: f.allow_http,
        credentials_file: f.credentials_file.clone(),
    };
    store
        .check()
        .map_err(|e| invalid("fleet.url", e.to_string()))?;
    if let Some(e) = &f.endpoint {
        if !(e.starts_with("https://") || e.starts_with("http://")) {
            return Err(invalid(
                "fleet.endpoint",
                format!("{e:?} is not an http(s):// URL"),
            ));
        }
        if e.starts_with("http://") && !f.allow_http {
            return Err(invalid(
                "fleet.endpoint",
                "an http:// endpoint needs allow_http = true (HTTPS is the default)".into(),
            ));
        }
    }
    let role =
        match (&f.replica_id, f.publish) {
            (Some(_), true) => return Err(invalid(
                "fleet.publish",
                "a replica does not publish (it has no [source]); the publisher has no replica_id"
                    .into(),
            )),
            (Some(id), false) => {
                crate::fleet::check_replica_id(id).map_err(|e| invalid("fleet.replica_id", e))?;
                FleetRole::Replica { id: id.clone() }
            }
            (None, true) => FleetRole::Publisher,
            (None, false) => FleetRole::None,
        };
    let poll = f.poll_interval_secs.unwrap_or(2);
    if !(1..=3_600).contains(&poll) {
        return Err(invalid(
            "fleet.poll_interval_secs",
            format!("{poll} is not within 1..=3600"),
        ));
    }
    Ok(FleetConfig {
        store,
        role,
        poll_interval: Duration::from_secs(poll),
        min_ready_replicas: f.min_ready_replicas.unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn shipped_configs_parse() {
        for file in ["config/qualcache.toml", "config/demo.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            Config::load(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:4433".parse::<SocketAddr>().unwrap());
        assert_eq!(c.limits.max_batch, 1_000);
        assert_eq!(c.keep, 3);
        assert_eq!(c.shed_thresholds, crate::overload::Thresholds::default());
        assert_eq!(
            parse("[server]\nshed_lag_ms = 9\nshed_queue_kib = 1024")
                .unwrap()
                .shed_thresholds,
            crate::overload::Thresholds::new(Duration::from_millis(9), 1 << 20)
        );
        assert_eq!(c.source, Source::Csv("data/enrollees.csv".into()));
        assert_eq!(c.admin_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse("[admin]\nlisten = \"\"").unwrap().admin_listen, None);
        let audit = c.audit.unwrap();
        assert_eq!(audit.mode, crate::audit::AuditMode::Required);
        assert_eq!(audit.retention_days, 1825);
        assert!(parse("[audit]\nmode = \"off\"").unwrap().audit.is_none());
    }

    #[test]
    fn postgres_source_takes_url_schema_interval_and_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let c = parse(&format!(
            "[source]\nkind = \"postgres\"\nurl = \"postgres://app@db:6543/records\"\n\
             schema = \"q2\"\nrebuild_interval_secs = 7\npassword_file = {:?}",
            pw.display().to_string()
        ))
        .unwrap();
        let Source::Postgres {
            pg,
            rebuild_interval,
            overlay_max_persons,
        } = &c.source
        else {
            panic!("{:?}", c.source);
        };
        assert_eq!(*rebuild_interval, Duration::from_secs(7));
        assert_eq!(*overlay_max_persons, 1_000_000);
        assert_eq!(pg.describe(), "postgres://app@db:6543/records?schema=q2");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn fleet_roles() {
        let c = parse("[fleet]\nurl = \"s3://b/p\"\nreplica_id = \"tokyo-3\"").unwrap();
        assert_eq!(c.source, Source::Fleet);
        let f = c.fleet.unwrap();
        assert_eq!(
            f.role,
            FleetRole::Replica {
                id: "tokyo-3".into()
            }
        );
        assert_eq!(f.poll_interval, Duration::from_secs(2));
        assert_eq!(f.min_ready_replicas, 1);
        let c =
            parse("[fleet]\nurl = \"s3://b/p\"\npublish = true\n[source]\nkind = \"synthetic\"")
                .unwrap();
        assert_eq!(c.fleet.unwrap().role, FleetRole::Publisher);
        assert!(matches!(c.source, Source::Synthetic { .. }));
        assert_eq!(parse("").unwrap().fleet, None);
    }

    #[test]
    fn bad_configs_are_refused_precisely() {
        for (text, expected) in [
            (
                "[server]\nlisten = \"nowhere\"",
                "server.listen: not a socket address",
            ),
            ("[server]\nlistn = \"127.0.0.1:1\"", "unknown field `listn`"),
            ("[bogus]\n", "unknown field `bogus`"),
            (
                "[server]\nmax_batch = 0",
                "server.max_batch: must be at least 1",
            ),
            ("[server]\nmax_batch = \"many\"", "invalid type"),
            (
                "[source]\nkind = \"postgres\"\nurl = \"postgres://a@b/c\"\noverlay_max_persons = 200000000",
                "source.overlay_max_persons: 200000000 is more than 100,000,000",
            ),
            (
                "[source]\nkind = \"csv\"\noverlay_max_persons = 5",
                "source.overlay_max_persons",
            ),
            (
                "[server]\nshed_lag_ms = 0",
                "server.shed_lag_ms: must be between 1 and 1000",
            ),
            (
                "[server]\nshed_queue_kib = 8",
                "server.shed_queue_kib: must be between 16 and 1048576",
            ),
            (
                "[source]\nkind = \"mysql\"",
                "source.kind: \"mysql\" is not one of",
            ),
            (
                "[source]\nkind = \"postgres\"",
                "source.url: required for kind = \"postgres\"",
            ),
            (
                "[source]\nkind = \"postgres\"\nurl = \"postgres://h:port/db\"",
                "source.url: invalid PostgreSQL URL",
            ),
            (
                "[source]\nkind = \"postgres\"\nurl = \"postgres://h/db\"\nschema = \"Bad-Name\"",
                "source.schema",
            ),
            (
                "[source]\nkind = \"postgres\"\nurl = \"postgres://h/db\"\npassword_file = \"/nonexistent/pw\"",
                "source.password_file: reading password file",
            ),
            (
                "[source]\nkind = \"postgres\"\nurl = \"postgres://h/db\"\nrebuild_interval_secs = 0",
                "source.rebuild_interval_secs",
            ),
            (
                "[source]\nkind = \"synthetic\"\nrecords = 0",
                "source.records",
            ),
            ("[snapshots]\nkeep = 0", "snapshots.keep"),
            ("[server]\nendpoints = 65", "server.endpoints"),
            (
                "[server]\nmax_in_flight_per_terminal = 0",
                "server.max_in_flight_per_terminal: must be at least 1",
            ),
            (
                "[admin]\nlisten = \"9464\"",
                "admin.listen: not a socket address (empty disables the listener)",
            ),
            ("[admin]\nport = 1", "unknown field `port`"),
            (
                "[audit]\nmode = \"sometimes\"",
                "audit.mode: \"sometimes\" is not one of",
            ),
            ("[audit]\nretention_days = 0", "audit.retention_days"),
            ("[audit]\nqueue = 0", "audit.queue"),
            (
                "[snapshots]\nreload_interval_secs = 18446744073709551615",
                "snapshots.reload_interval_secs: must be between 1 and 604800",
            ),
            (
                "[server]\nshutdown_grace_secs = 100000",
                "server.shutdown_grace_secs: must be between 0 and 3600",
            ),
            (
                "[server]\nidle_timeout_secs = 0",
                "server.idle_timeout_secs: must be between 1 and 86400",
            ),
            (
                "[server]\nmax_handshakes = 0",
                "server.max_handshakes: must be at least 1",
            ),
            (
                "[server]\nhandshake_timeout_secs = 61",
                "server.handshake_timeout_secs: must be between 1 and 60",
            ),
            (
                "[source]\nkind = \"csv\"\nurl = \"postgres://h/db\"",
                "source.url: only for kind = \"postgres\" (this source is kind = \"csv\")",
            ),
            (
                "[source]\nkind = \"postgres\"\nurl = \"postgres://h/db\"\nrecords = 5",
                "source.records: only for kind = \"synthetic\"",
            ),
            (
                "[source]\nkind = \"synthetic\"\npath = \"x.csv\"",
                "source.path: only for kind = \"csv\"",
            ),
            ("[fleet]\nreplica_id = \"r1\"", "fleet.url: required"),
            ("[fleet]\nurl = \"gs://b\"", "fleet.url"),
            (
                "[fleet]\nurl = \"s3://b/p\"\nreplica_id = \"r1\"\n[source]\nkind = \"csv\"",
                "source.kind: a replica",
            ),
            (
                "[fleet]\nurl = \"s3://b/p\"\nreplica_id = \"r1\"\npublish = true",
                "fleet.publish: a replica does not publish",
            ),
            (
                "[fleet]\nurl = \"s3://b/p\"\nreplica_id = \"../r1\"",
                "fleet.replica_id",
            ),
            (
                "[fleet]\nurl = \"s3://b/p\"\nendpoint = \"http://minio:9000\"",
                "fleet.endpoint: an http:// endpoint needs allow_http = true",
            ),
            (
                "[fleet]\nurl = \"s3://b/p\"\npoll_interval_secs = 0",
                "fleet.poll_interval_secs",
            ),
            ("[fleet]\nurl = \"s3://b/p\"\nregoin = \"x\"", "regoin"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.starts_with("test.toml"), "{err}");
        }
    }
}
