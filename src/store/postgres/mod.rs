//! The production authoritative store: PostgreSQL.
//!
//! - [`migrate`]: the schema (plain SQL files in `migrations/`, applied in
//!   order, each once, recorded in `schema_migrations`).
//! - [`load`]: fills the tables from a CSV export with binary COPY.
//! - [`export`]: streams every qualification with binary COPY into the
//!   snapshot builder: three ordered streams on follower connections that
//!   share one exported REPEATABLE READ, read-only snapshot, so they read
//!   one state of the database; also the current rows of a few persons.
//! - [`changes`]: the change feed (the change log after a position, with
//!   the changed persons' rows, in one view; `LISTEN`; pruning).
//!
//! All objects live in one PostgreSQL schema ([`PgSource::schema`],
//! `qualcache` by default); every connection sets `search_path` to it.
//!
//! Errors never carry row values: a database error is reported by its
//! message, SQLSTATE, table and constraint, never its DETAIL (which quotes
//! the failing row).

pub mod changes;
mod copy;
pub mod export;
pub mod load;
pub mod migrate;
mod types;

use std::fmt::Write as _;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

/// The schema used when none is given.
pub const DEFAULT_SCHEMA: &str = "qualcache";

/// Environment variable read for the password when none is configured.
pub const PASSWORD_ENV: &str = "QUALCACHE_PG_PASSWORD";

/// Why a database operation failed. Messages never include row values.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL or schema name is not usable.
    #[error("{0}")]
    Config(String),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The server, without credentials.
        target: String,
        /// Why (the driver's error and its causes).
        reason: String,
    },
    /// A statement failed.
    #[error("{during}: {reason}")]
    Query {
        /// What was being done.
        during: &'static str,
        /// The server's message, SQLSTATE, table and constraint.
        reason: String,
    },
    /// The database's schema is not one this build knows.
    #[error("{0}")]
    Schema(String),
    /// Reading the CSV file failed.
    #[error(transparent)]
    Csv(#[from] crate::store::csv::CsvError),
}

/// The error of a failed statement, without the row values a database
/// error's DETAIL quotes.
pub(crate) fn query_error(during: &'static str, e: &tokio_postgres::Error) -> PgError {
    PgError::Query {
        during,
        reason: describe_error(e),
    }
}

/// A driver error as text that is safe to log.
pub(crate) fn describe_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(t) = db.table() {
            let _ = write!(s, ", table {t}");
        }
        if let Some(c) = db.column() {
            let _ = write!(s, ", column {c}");
        }
        if let Some(c) = db.constraint() {
            let _ = write!(s, ", constraint {c}");
        }
        return s;
    }
    // Driver-side errors: the kind, then the causes (I/O errors and the like).
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let _ = write!(s, ": {c}");
        cause = c.source();
    }
    s
}

/// Where to connect and which schema to use.
#[derive(Clone)]
pub struct PgSource {
    config: tokio_postgres::Config,
    schema: String,
    target: String,
}

impl std::fmt::Debug for PgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("PgSource")
            .field("target", &self.target)
            .field("schema", &self.schema)
            .finish()
    }
}

impl PartialEq for PgSource {
    fn eq(&self, other: &PgSource) -> bool {
        self.target == other.target && self.schema == other.schema
    }
}

impl Eq for PgSource {}

impl PgSource {
    /// A source from a `postgres://` URL (or key=value string), a schema
    /// name and an optional password that overrides the URL's.
    pub fn new(url: &str, schema: &str, password: Option<&str>) -> Result<PgSource, PgError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            PgError::Config(
                "invalid PostgreSQL URL (expected postgres://USER@HOST:PORT/DATABASE)".into(),
            )
        })?;
        check_schema_name(schema).map_err(PgError::Config)?;
        if let Some(p) = password {
            config.password(p);
        }
        if config.get_user().is_none() {
            config.user("postgres");
        }
        config.application_name("qualcache");
        config.connect_timeout(Duration::from_secs(10));
        // A server or network that goes silent mid-export is noticed
        // within about a minute instead of TCP's two hours, so the build
        // fails (and is retried) rather than hanging the rebuilds.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(60));
        let target = describe_target(&config);
        Ok(PgSource {
            config,
            schema: schema.to_string(),
            target,
        })
    }

    /// The schema holding qualcache's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// `postgres://user@host:port/db?schema=...`, without the password; safe
    /// to log and to record in snapshot headers.
    pub fn describe(&self) -> String {
        format!("{}?schema={}", self.target, self.schema)
    }

    /// Connects and sets `search_path` to the schema. The connection is
    /// driven by a task on the current tokio runtime.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let (client, connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|e| PgError::Connect {
                    target: self.target.clone(),
                    reason: describe_error(&e),
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %describe_error(&e), "PostgreSQL connection ended");
            }
        });
        client
            .batch_execute(&format!("SET search_path TO \"{}\"", self.schema))
            .await
            .map_err(|e| query_error("setting search_path", &e))?;
        Ok(client)
    }

    /// The change counter now (see `migrations/0001_init.sql`).
    pub async fn change_counter(&self) -> Result<u64, PgError> {
        let client = self.connect().await?;
        read_change_counter(&client).await
    }
}

/// What `qualcache db status` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// The database and schema.
    pub target: String,
    /// The schema's migration version.
    pub schema_version: i32,
    /// The change counter now.
    pub change_counter: u64,
    /// Qualification rows (exact count).
    pub qualifications: u64,
    /// The change log: its rows, oldest version and pruned mark.
    pub change_log: changes::LogStatus,
}

/// The schema version, change counter and row count of `source`.
pub async fn status(source: &PgSource) -> Result<Status, PgError> {
    let client = source.connect().await?;
    let schema_version = migrate::schema_version(&client).await?;
    let change_counter = read_change_counter(&client).await?;
    let row = client
        .query_one("SELECT count(*) FROM qualifications", &[])
        .await
        .map_err(|e| query_error("counting qualifications", &e))?;
    Ok(Status {
        target: source.describe(),
        schema_version,
        change_counter,
        qualifications: row.get::<_, i64>(0) as u64,
        change_log: changes::log_status(&client).await?,
    })
}

/// The change counter as `client`'s transaction sees it.
pub(crate) async fn read_change_counter(
    client: &impl tokio_postgres::GenericClient,
) -> Result<u64, PgError> {
    Ok(read_counter(client).await?.0)
}

/// The change counter and its pruned-through mark (migration 3), as
/// `client`'s transaction sees them.
pub(crate) async fn read_counter(
    client: &impl tokio_postgres::GenericClient,
) -> Result<(u64, u64), PgError> {
    let row = client
        .query_one("SELECT value, pruned_through FROM change_counter", &[])
        .await
        .map_err(|e| {
            query_error(
                "reading the change counter (run `qualcache db migrate`?)",
                &e,
            )
        })?;
    let (value, pruned): (i64, i64) = (row.get(0), row.get(1));
    Ok((value as u64, pruned as u64))
}

/// A runtime for running database work from synchronous code (the CLI,
/// the daemon's blocking build thread). The future given to `block_on`
/// runs on the calling thread; connections and export streams run on two
/// workers, so decoding overlaps with building.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("qualcache-pg")
        .enable_all()
        .build()
}

/// Accepts only a plain lower-case SQL identifier as a schema name (safe
/// to quote into statements).
pub fn check_schema_name(s: &str) -> Result<(), String> {
    let mut bytes = s.bytes();
    let plain = matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && s.len() <= 63;
    if plain {
        Ok(())
    } else {
        Err(format!(
            "schema name {s:?}: expected lower-case letters, digits and _, starting with a letter or _, at most 63 bytes"
        ))
    }
}

fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// The password to use: the file's contents (trailing newline removed)
/// when a file is given, else the environment variable `env` when set.
pub fn read_password(file: Option<&std::path::Path>, env: &str) -> Result<Option<String>, PgError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PgError::Config(format!("reading password file {}: {e}", path.display()))
        })?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
    }
    Ok(std::env::var(env).ok())
}

/// Whether a `snapshot build --source` value names a database.
pub fn is_url(source: &str) -> bool {
    source.starts_with("postgres://") || source.starts_with("postgresql://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_never_holds_the_password() {
        let s = PgSource::new(
            "postgres://app:s3cret@db.example:6543/records",
            "qualcache",
            None,
        )
        .unwrap();
        assert_eq!(
            s.describe(),
            "postgres://app@db.example:6543/records?schema=qualcache"
        );
        assert!(!format!("{s:?}").contains("s3cret"));
        let s = PgSource::new("postgres://127.0.0.1/test", "q1", Some("pw")).unwrap();
        assert_eq!(
            s.describe(),
            "postgres://postgres@127.0.0.1:5432/test?schema=q1"
        );
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["qualcache", "_x", "t_1"] {
            assert!(PgSource::new("postgres://h/db", ok, None).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "Upper", "a-b", "a\"b", &"a".repeat(64)] {
            let e = PgSource::new("postgres://h/db", bad, None).unwrap_err();
            assert!(e.to_string().contains("schema name"), "{bad}: {e}");
        }
        let e = PgSource::new("postgres://h:notaport/db", "q", None).unwrap_err();
        assert!(e.to_string().contains("invalid PostgreSQL URL"), "{e}");
    }
}
