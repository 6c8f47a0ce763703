//! The change feed: what changed after a position, read with the changed
//! persons' current rows in one consistent view (migration 3,
//! `migrations/0003_change_log.sql`).
//!
//! The position is the change counter: every writing statement bumps it
//! and logs the persons it touched under the new value, and writers
//! serialise on the counter until they commit, so a reader that sees
//! value V has seen every change up to V and none after. A snapshot built
//! from the database records the counter it read at (its header's source
//! version); [`read_changes`] after that position gives exactly what the
//! snapshot does not have.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, IsolationLevel, NoTls};

use super::export::export_persons;
use super::{describe_error, query_error, read_counter, PgError, PgSource};
use crate::model::EnrolleeRecord;
use crate::store::csv::RowError;

/// The channel the change triggers notify on; the payload is
/// `"<schema> <version>"`.
pub const CHANNEL: &str = "qualcache_changes";

/// One changed person, as of the read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The person's store id.
    pub person_id: u64,
    /// The newest change of this person in the read (change counter).
    pub version: u64,
    /// When the oldest change of this person in the read was committed
    /// (its statement ran), Unix microseconds: the freshness lag is
    /// measured from it.
    pub changed_at_micros: i64,
}

/// What changed after a position, and the changed persons' rows now.
#[derive(Debug, Default)]
pub struct ChangeRead {
    /// The position after this read: the change counter it saw.
    pub position: u64,
    /// The log's pruned-through mark: a position below it cannot be
    /// replayed (`gap`).
    pub pruned_through: u64,
    /// The asked-for position lies below the pruned mark: the log rows
    /// after it are gone and only a new snapshot can catch up. Nothing
    /// else is read.
    pub gap: bool,
    /// The newest change in the read that cannot be applied person by
    /// person (a TRUNCATE, an insurer renamed, a bulk load): a snapshot
    /// at or above it is needed to be current for everyone.
    pub whole: Option<u64>,
    /// The changed persons, ascending by id.
    pub persons: Vec<Changed>,
    /// Their current records with their qualification ids, in person
    /// order (a person with none was deleted or lost all qualifications).
    pub records: Vec<(u64, EnrolleeRecord)>,
    /// The rows that failed the checks, with their person where the row
    /// still names one.
    pub failed: Vec<(Option<u64>, RowError)>,
}

/// Reads what changed after `since`, at most `max_persons` persons (the
/// rest stay for the next read: `position` is then the newest version
/// whose persons were all read), and the current rows of those persons,
/// in one REPEATABLE READ, read-only transaction.
pub async fn read_changes(
    client: &mut Client,
    since: u64,
    max_persons: usize,
) -> Result<ChangeRead, PgError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| query_error("starting the change read", &e))?;
    let (position, pruned_through) = read_counter(&tx).await?;
    let mut out = ChangeRead {
        position,
        pruned_through,
        ..ChangeRead::default()
    };
    if since < out.pruned_through {
        out.gap = true;
        out.position = since;
        return Ok(out);
    }
    if out.position <= since {
        out.position = since;
        return Ok(out);
    }
    // One row per (person, version) at most; the newest versions of a
    // read beyond `max_persons` are left for the next one.
    let rows = tx
        .query(
            "SELECT version, person_id,
                    (extract(epoch FROM min(changed_at)) * 1000000)::bigint
               FROM change_log WHERE version > $1
              GROUP BY version, person_id ORDER BY version",
            &[&(since as i64)],
        )
        .await
        .map_err(|e| query_error("reading the change log", &e))?;
    let mut persons: BTreeMap<u64, Changed> = BTreeMap::new();
    let mut i = 0;
    while i < rows.len() {
        let version: i64 = rows[i].get(0);
        // All rows of one version, or none of them.
        let mut j = i;
        while j < rows.len() && rows[j].get::<_, i64>(0) == version {
            j += 1;
        }
        let new = rows[i..j]
            .iter()
            .filter_map(|r| r.get::<_, Option<i64>>(1))
            .filter(|id| !persons.contains_key(&(*id as u64)))
            .count();
        if !persons.is_empty() && persons.len() + new > max_persons {
            out.position = rows[i - 1].get::<_, i64>(0) as u64;
            break;
        }
        for r in &rows[i..j] {
            let at: i64 = r.get(2);
            match r.get::<_, Option<i64>>(1) {
                None => out.whole = Some(version as u64),
                Some(id) => {
                    let e = persons.entry(id as u64).or_insert(Changed {
                        person_id: id as u64,
                        version: version as u64,
                        changed_at_micros: at,
                    });
                    e.version = version as u64;
                    e.changed_at_micros = e.changed_at_micros.min(at);
                }
            }
        }
        i = j;
    }
    out.persons = persons.into_values().collect();
    let ids: Vec<u64> = out.persons.iter().map(|p| p.person_id).collect();
    let mut failed = Vec::new();
    let mut records = Vec::new();
    export_persons(&tx, &ids, |r| match r {
        Ok(r) => records.push(r),
        Err(e) => failed.push(e),
    })
    .await?;
    out.records = records;
    if !failed.is_empty() {
        // A row error names its qualification; find its person.
        let rows: Vec<i64> = failed.iter().map(|e| e.line as i64).collect();
        let owners: std::collections::HashMap<u64, u64> = tx
            .query(
                "SELECT qualification_id, person_id FROM qualifications
                  WHERE qualification_id = ANY($1)",
                &[&rows],
            )
            .await
            .map_err(|e| query_error("finding the persons of rows that failed", &e))?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
            .collect();
        out.failed = failed
            .into_iter()
            .map(|e| (owners.get(&e.line).copied(), e))
            .collect();
    }
    tx.commit()
        .await
        .map_err(|e| query_error("ending the change read", &e))?;
    Ok(out)
}

/// The log's size and span, for `qualcache db status`.
#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq)]
pub struct LogStatus {
    /// Rows in the change log.
    pub rows: u64,
    /// The oldest version still logged (0 when empty).
    pub oldest: u64,
    /// The highest version whose rows may have been pruned.
    pub pruned_through: u64,
}

/// The change log's size and span.
pub async fn log_status(client: &impl tokio_postgres::GenericClient) -> Result<LogStatus, PgError> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(min(version), 0),
                    (SELECT pruned_through FROM change_counter)
               FROM change_log",
            &[],
        )
        .await
        .map_err(|e| query_error("reading the change log's size", &e))?;
    Ok(LogStatus {
        rows: row.get::<_, i64>(0) as u64,
        oldest: row.get::<_, i64>(1) as u64,
        pruned_through: row.get::<_, i64>(2) as u64,
    })
}

/// Deletes the log rows at or below `through` and raises the pruned
/// mark to it (never lowers it); returns the rows deleted. The rule the
/// daemon follows: `through` is the oldest position among the snapshots
/// it keeps, so each of them can still be caught up by replay.
pub async fn prune(client: &mut Client, through: u64) -> Result<u64, PgError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| query_error("starting the prune", &e))?;
    let deleted = tx
        .execute(
            "DELETE FROM change_log WHERE version <= $1",
            &[&(through as i64)],
        )
        .await
        .map_err(|e| query_error("pruning the change log", &e))?;
    // Not through the triggers: the counter does not move, so a prune
    // does not look like a change.
    tx.execute(
        "UPDATE change_counter SET pruned_through = greatest(pruned_through, $1)",
        &[&(through as i64)],
    )
    .await
    .map_err(|e| query_error("raising the pruned mark", &e))?;
    tx.commit()
        .await
        .map_err(|e| query_error("ending the prune", &e))?;
    Ok(deleted)
}

/// A connection that `LISTEN`s on [`CHANNEL`]: the client (for reads) and
/// the versions notified for this source's schema. The channel closes
/// when the connection ends.
#[derive(Debug)]
pub struct Listener {
    /// The connection's client (search_path set to the schema).
    pub client: Client,
    /// Versions notified for this schema, as they arrive.
    pub notified: mpsc::UnboundedReceiver<u64>,
}

impl PgSource {
    /// Connects, sets the search path and listens on [`CHANNEL`]; the
    /// connection's notifications for this schema arrive on
    /// [`Listener::notified`].
    pub async fn listen(&self) -> Result<Listener, PgError> {
        let (client, mut connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|e| PgError::Connect {
                    target: self.target.clone(),
                    reason: describe_error(&e),
                })?;
        let (tx, notified) = mpsc::unbounded_channel();
        let schema = self.schema.clone();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) if n.channel() == CHANNEL => {
                        let mut parts = n.payload().split(' ');
                        if parts.next() == Some(schema.as_str()) {
                            if let Some(v) = parts.next().and_then(|v| v.parse().ok()) {
                                let _ = tx.send(v);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %describe_error(&e), "PostgreSQL listener connection ended");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!(
                "SET search_path TO \"{}\"; LISTEN {CHANNEL}",
                self.schema
            ))
            .await
            .map_err(|e| query_error("listening for changes", &e))?;
        Ok(Listener { client, notified })
    }
}
