//! `qualcache db migrate`: creates the schema and applies the SQL files in
//! `migrations/` that it has not applied yet, in order, each in its own
//! transaction together with its row in `schema_migrations`. Concurrent
//! runs wait for each other on an advisory lock.

use serde::Serialize;
use tokio_postgres::Client;

use super::{query_error, PgError, PgSource};

/// The migrations this build knows: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (
        2,
        "repeated_keys",
        include_str!("migrations/0002_repeated_keys.sql"),
    ),
    (
        3,
        "change_log",
        include_str!("migrations/0003_change_log.sql"),
    ),
];

/// What a migrate run did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MigrateReport {
    /// The schema migrated.
    pub schema: String,
    /// Versions applied by this run.
    pub applied: Vec<i32>,
    /// The schema's version now.
    pub version: i32,
}

/// Key of the advisory lock migrations take (an arbitrary constant).
const LOCK_KEY: i64 = 0x7175_616c_6361_6368; // "qualcach"

/// Brings `source`'s schema up to the newest version.
pub async fn migrate(source: &PgSource) -> Result<MigrateReport, PgError> {
    let mut client = source.connect().await?;
    // For the whole session, before anything is created: two first runs
    // on an empty database would otherwise race on CREATE ... IF NOT
    // EXISTS. The lock goes with the connection.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| query_error("waiting for other migrations", &e))?;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"",
            source.schema()
        ))
        .await
        .map_err(|e| query_error("creating the schema", &e))?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(|e| query_error("creating schema_migrations", &e))?;
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        let tx = client
            .transaction()
            .await
            .map_err(|e| query_error("starting a migration", &e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(|e| query_error("waiting for other migrations", &e))?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .await
            .map_err(|e| query_error("reading schema_migrations", &e))?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| query_error("applying a migration", &e))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(|e| query_error("recording a migration", &e))?;
        tx.commit()
            .await
            .map_err(|e| query_error("committing a migration", &e))?;
        tracing::info!(version, name, schema = source.schema(), "migration applied");
        applied.push(version);
    }
    let version = schema_version(&client).await?;
    Ok(MigrateReport {
        schema: source.schema().to_string(),
        applied,
        version,
    })
}

/// The newest version applied to the schema `client` uses; an error when
/// the schema is missing or newer than this build.
pub async fn schema_version(client: &Client) -> Result<i32, PgError> {
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
                PgError::Schema(
                    "the schema has no qualcache tables: run `qualcache db migrate` first".into(),
                )
            } else {
                query_error("reading schema_migrations", &e)
            }
        })?;
    let version: i32 = row.get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if version > known {
        return Err(PgError::Schema(format!(
            "the schema is at version {version}, newer than this qualcache knows ({known}): upgrade qualcache"
        )));
    }
    if version < known {
        return Err(PgError::Schema(format!(
            "the schema is at version {version}, older than this qualcache needs ({known}): run `qualcache db migrate`"
        )));
    }
    Ok(version)
}
