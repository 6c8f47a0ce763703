//! `qualcache db load`: fills the tables from a CSV export (the format of
//! `qualcache gen` and README.md) in one transaction.
//!
//! Rows are parsed and checked exactly as `snapshot build` checks them (the
//! same parser and the same [`Builder`], so a load that succeeds always
//! builds), streamed with binary COPY into a temporary staging table, then
//! split into the normalised tables by SQL. Any bad row fails the whole
//! load and nothing is written. A row's qualification id is its CSV line,
//! so errors from later builds point back at the file.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::Instant;

use serde::Serialize;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;

use super::types::PgDate;
use super::{query_error, PgError, PgSource};
use crate::model::EnrolleeRecord;
use crate::progress::{Progress, Unit};
use crate::snapshot::{BuildError, Builder, WarningCount};
use crate::store::chunks::{read_parallel, Batch};
use crate::store::csv::RowError;
use tokio_postgres::types::Type;

/// Types of the staging table's columns.
const COLUMN_TYPES: [Type; 33] = [
    Type::INT8,
    Type::INT8,
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::DATE,
    Type::DATE,
    Type::DATE,
    Type::TEXT,
    Type::DATE,
    Type::DATE,
    Type::DATE,
    Type::TEXT,
    Type::BOOL,
    Type::DATE,
    Type::DATE,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BOOL,
];

/// The staging table: one column per CSV column, plus the qualification id.
const STAGING: &str = "CREATE TEMPORARY TABLE staging (
    qualification_id bigint, person_id bigint, card_digest bytea, card_status text,
    insurer_number text, insurer_name text, card_class text, symbol text, number text,
    branch text, relation text, name text, name_kana text, sex text, birth_date date,
    acquired_date date, lost_date date, loss_reason text,
    cert_issued date, cert_valid_from date, cert_valid_until date,
    copay_percent text, preschool boolean,
    elderly_valid_from date, elderly_valid_until date, elderly_percent text,
    limit_category text, disease text, disease_cap_yen integer,
    public_payer text, public_recipient text, welfare_office text, aid_registered boolean
) ON COMMIT DROP";

/// Staging rows into the tables. Rows were checked by the builder, so one
/// row per person and per insurer is as good as any other.
const SPLIT: &[(&str, &str)] = &[
    (
        "filling insurers",
        "INSERT INTO insurers (insurer_number, name)
         SELECT insurer_number, min(insurer_name) FROM staging GROUP BY insurer_number",
    ),
    (
        "filling persons",
        "INSERT INTO persons (person_id, name, name_kana, sex, birth_date)
         SELECT DISTINCT ON (person_id) person_id, name, name_kana, sex, birth_date FROM staging",
    ),
    (
        "filling card_links",
        "INSERT INTO card_links (person_id, digest, status)
         SELECT DISTINCT ON (person_id) person_id, card_digest, card_status FROM staging
          WHERE card_digest IS NOT NULL",
    ),
    (
        "filling qualifications",
        "INSERT INTO qualifications (qualification_id, person_id, insurer_number, card_class,
             symbol, number, branch, relation, acquired_date, lost_date, loss_reason,
             cert_issued, cert_valid_from, cert_valid_until, copay_percent, preschool)
         SELECT qualification_id, person_id, insurer_number, card_class,
             symbol, number, branch, relation, acquired_date, lost_date, loss_reason,
             cert_issued, cert_valid_from, cert_valid_until, copay_percent, preschool
           FROM staging",
    ),
    (
        "filling elderly_certificates",
        "INSERT INTO elderly_certificates (qualification_id, valid_from, valid_until, percent)
         SELECT qualification_id, elderly_valid_from, elderly_valid_until, elderly_percent
           FROM staging WHERE elderly_valid_from IS NOT NULL",
    ),
    (
        "filling limit_certificates",
        "INSERT INTO limit_certificates (qualification_id, category)
         SELECT qualification_id, limit_category FROM staging WHERE limit_category IS NOT NULL",
    ),
    (
        "filling disease_certificates",
        "INSERT INTO disease_certificates (qualification_id, disease, monthly_cap_yen)
         SELECT qualification_id, disease, disease_cap_yen FROM staging WHERE disease IS NOT NULL",
    ),
    (
        "filling public_expenses",
        "INSERT INTO public_expenses (qualification_id, payer, recipient, welfare_office, registered)
         SELECT qualification_id, public_payer, public_recipient, welfare_office, aid_registered
           FROM staging WHERE public_payer IS NOT NULL",
    ),
    (
        "moving the qualification id sequence past the loaded ids",
        "SELECT setval(pg_get_serial_sequence('qualifications', 'qualification_id'),
                       (SELECT coalesce(max(qualification_id), 0) + 1 FROM qualifications), false)",
    ),
];

/// Every table, for `--replace`.
const TABLES: &str = "insurers, persons, card_links, qualifications, elderly_certificates, \
                      limit_certificates, disease_certificates, public_expenses";

/// What a load did.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    /// The CSV file read.
    pub csv: PathBuf,
    /// The database and schema written.
    pub target: String,
    /// Qualification rows loaded.
    pub records: u64,
    /// The change counter after the load.
    pub change_counter: u64,
    /// Rows loaded that break a warning rule (`model::rules`), by rule.
    pub warnings: Vec<WarningCount>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Seconds of each step: reading, checking and copying the rows,
    /// then each table filled from them, the commit and ANALYZE.
    pub steps: Vec<(&'static str, f64)>,
}

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The database or the file failed.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The file has rows a snapshot could not be built from.
    #[error(transparent)]
    Rows(#[from] BuildError),
    /// The tables already hold data and `replace` was not asked for.
    #[error("the schema already holds qualifications: pass --replace to empty it first")]
    NotEmpty,
}

/// Loads `csv` into `source`'s schema, emptying the tables first when
/// `replace` (in the same transaction: readers see the old data or the new).
pub async fn load(
    source: &PgSource,
    csv: &Path,
    replace: bool,
    progress: &Progress,
) -> Result<LoadSummary, LoadError> {
    let started = Instant::now();
    let mut client = source.connect().await?;
    super::migrate::schema_version(&client).await?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| query_error("starting the load transaction", &e))?;
    tx.batch_execute("SET LOCAL work_mem = '512MB'")
        .await
        .map_err(|e| query_error("setting work_mem", &e))?;
    // One whole-table row in the change log for the load, not one per
    // person (migration 3): a daemon builds a snapshot for it.
    tx.batch_execute("SELECT set_config('qualcache.whole_change', 'bulk', true)")
        .await
        .map_err(|e| query_error("marking the load as a whole-table change", &e))?;
    if replace {
        tx.batch_execute(&format!("TRUNCATE {TABLES}"))
            .await
            .map_err(|e| query_error("emptying the tables", &e))?;
    } else {
        let any = tx
            .query_opt("SELECT 1 FROM qualifications LIMIT 1", &[])
            .await
            .map_err(|e| query_error("checking the tables are empty", &e))?;
        if any.is_some() {
            return Err(LoadError::NotEmpty);
        }
    }
    tx.batch_execute(STAGING)
        .await
        .map_err(|e| query_error("creating the staging table", &e))?;
    let sink = tx
        .copy_in("COPY staging FROM STDIN (FORMAT binary)")
        .await
        .map_err(|e| query_error("starting COPY", &e))?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &COLUMN_TYPES));

    // Parse on other threads; check and copy here, in file order.
    let size = std::fs::metadata(csv).map_or(0, |m| m.len());
    let mut builder = Builder::with_capacity_for(size);
    let (tx_batches, mut batches) = tokio::sync::mpsc::channel::<Batch>(4);
    let path = csv.to_path_buf();
    let reading = progress.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_parallel(&path, 2, &reading, |batch| {
            // The receiver only goes away when the load failed already
            // (the database refused a row): stop reading the file.
            match tx_batches.blocking_send(batch) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        })
    });
    let mut bad = Vec::new();
    let mut bad_count = 0u64;
    let mut records = 0u64;
    let mut copy_failed = None;
    'batches: while let Some(batch) = batches.recv().await {
        for row in batch {
            // Copied before the check so the builder can take the record;
            // any bad row rolls the whole load back, copied or not.
            let checked = match row {
                Ok((line, rec)) => {
                    if bad_count == 0 {
                        if let Err(e) = write_row(writer.as_mut(), line, &rec).await {
                            copy_failed = Some(e);
                            break 'batches;
                        }
                        records += 1;
                    }
                    builder.push(line, rec)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = checked {
                bad_count += 1;
                if bad.len() < 100 {
                    bad.push(e);
                }
            }
        }
    }
    // After a COPY failure this stops the reader at its next batch rather
    // than letting it parse the rest of the file first.
    drop(batches);
    let read = match reader.await {
        Ok(result) => result.map_err(PgError::from),
        Err(e) => Err(PgError::Config(format!(
            "the CSV reader thread failed: {e}"
        ))),
    };
    if let Some(e) = copy_failed {
        return Err(e.into());
    }
    read?;
    if bad_count > 0 {
        return Err(rows_error(bad, bad_count).into());
    }
    // Overlapping keys, shared cards, scattered persons: all refused here.
    let warnings = builder.warnings();
    drop(builder.finish()?);
    writer
        .as_mut()
        .finish()
        .await
        .map_err(|e| query_error("finishing COPY", &e))?;
    let mut steps = vec![(
        "reading, checking and copying rows",
        started.elapsed().as_secs_f64(),
    )];
    let deferred = Deferred::take_down(&tx).await?;
    for (during, sql) in SPLIT {
        progress.stage(during, None, Unit::Rows);
        let t = Instant::now();
        tx.batch_execute(sql)
            .await
            .map_err(|e| query_error(during, &e))?;
        steps.push((during, t.elapsed().as_secs_f64()));
    }
    progress.stage("building indexes, checking keys", None, Unit::Rows);
    let t = Instant::now();
    deferred.put_back(&tx).await?;
    steps.push(("building indexes, checking keys", t.elapsed().as_secs_f64()));
    let change_counter = super::read_change_counter(&tx).await?;
    progress.stage("committing", None, Unit::Rows);
    let t = Instant::now();
    tx.commit()
        .await
        .map_err(|e| query_error("committing the load", &e))?;
    steps.push(("committing", t.elapsed().as_secs_f64()));
    progress.stage("analysing the tables", None, Unit::Rows);
    let t = Instant::now();
    client
        .batch_execute(&format!("ANALYZE {TABLES}"))
        .await
        .map_err(|e| query_error("analysing the tables", &e))?;
    steps.push(("analysing the tables", t.elapsed().as_secs_f64()));
    Ok(LoadSummary {
        csv: csv.to_path_buf(),
        target: source.describe(),
        records,
        change_counter,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
        steps,
    })
}

/// Foreign keys, unique constraints (other than primary keys) and plain
/// indexes of the schema, taken down while the tables are filled and put
/// back after, in the load's transaction: a foreign key is then checked by
/// one join instead of a locking lookup per row, and an index is built
/// once from sorted data instead of row by row. Their definitions come
/// from the catalog, so they always match the migrations.
struct Deferred {
    /// (table, constraint name, definition): foreign keys first, then
    /// unique constraints (the order they are dropped in).
    constraints: Vec<(String, String, String)>,
    /// (index name, CREATE INDEX statement).
    indexes: Vec<(String, String)>,
}

impl Deferred {
    async fn take_down(tx: &tokio_postgres::Transaction<'_>) -> Result<Deferred, PgError> {
        let constraints = tx
            .query(
                "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid)
                   FROM pg_constraint
                  WHERE contype IN ('f', 'u') AND connamespace = current_schema()::regnamespace
                    AND conrelid <> 'schema_migrations'::regclass
                  ORDER BY contype, conname",
                &[],
            )
            .await
            .map_err(|e| query_error("reading the constraints", &e))?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect::<Vec<(String, String, String)>>();
        let indexes = tx
            .query(
                "SELECT c.relname::text, pg_get_indexdef(i.indexrelid)
                   FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                  WHERE c.relnamespace = current_schema()::regnamespace
                    AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
                &[],
            )
            .await
            .map_err(|e| query_error("reading the indexes", &e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect::<Vec<(String, String)>>();
        for (table, name, _) in &constraints {
            tx.batch_execute(&format!(
                "ALTER TABLE {table} DROP CONSTRAINT {}",
                quote_ident(name)
            ))
            .await
            .map_err(|e| query_error("setting constraints aside", &e))?;
        }
        for (name, _) in &indexes {
            tx.batch_execute(&format!("DROP INDEX {}", quote_ident(name)))
                .await
                .map_err(|e| query_error("setting indexes aside", &e))?;
        }
        Ok(Deferred {
            constraints,
            indexes,
        })
    }

    async fn put_back(self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), PgError> {
        for (_, definition) in &self.indexes {
            tx.batch_execute(definition)
                .await
                .map_err(|e| query_error("building an index", &e))?;
        }
        // Unique constraints before the foreign keys that may need them.
        for (table, name, definition) in self.constraints.iter().rev() {
            tx.batch_execute(&format!(
                "ALTER TABLE {table} ADD CONSTRAINT {} {definition}",
                quote_ident(name)
            ))
            .await
            .map_err(|e| query_error("checking a constraint", &e))?;
        }
        Ok(())
    }
}

fn rows_error(errors: Vec<RowError>, count: u64) -> BuildError {
    BuildError::Rows { errors, count }
}

/// One staging row, in [`COLUMN_TYPES`] order.
async fn write_row(
    writer: std::pin::Pin<&mut BinaryCopyInWriter>,
    line: u64,
    r: &EnrolleeRecord,
) -> Result<(), PgError> {
    let q = &r.qualification;
    let qualification_id = line as i64;
    let person_id = r.person_id as i64;
    let digest = r.card.map(|c| c.digest.0);
    let digest = digest.as_ref().map(|d| &d[..]);
    let card_status = r.card.map(|c| c.status.code());
    let insurer_number = q.insurer_number.to_string();
    let symbol = q.symbol.as_ref().map(|s| s.as_str());
    let branch = q.branch.map(|b| b.to_string());
    let lost_date = q.loss.map(|l| PgDate(l.date));
    let loss_reason = q.loss.map(|l| l.reason.code());
    let cert = q.certificate;
    let elderly = q.elderly;
    let disease = q.specific_disease;
    let aid = q.public_expense.as_ref();
    let cap = match disease {
        Some(d) => Some(
            i32::try_from(d.monthly_cap_yen).map_err(|_| PgError::Query {
                during: "copying rows",
                reason: format!("line {line}, column disease_cap_yen: above 2,147,483,647"),
            })?,
        ),
        None => None,
    };
    let payer = aid.map(|a| a.payer.to_string());
    let recipient = aid.map(|a| a.recipient.to_string());
    let values: [&(dyn ToSql + Sync); 33] = [
        &qualification_id,
        &person_id,
        &digest,
        &card_status,
        &insurer_number,
        &q.insurer_name,
        &q.card_class.code(),
        &symbol,
        &q.number.as_str(),
        &branch,
        &q.relation.code(),
        &q.name,
        &q.name_kana,
        &q.sex.code(),
        &PgDate(q.birth_date),
        &PgDate(q.acquired_date),
        &lost_date,
        &loss_reason,
        &cert.map(|c| PgDate(c.issued)),
        &cert.map(|c| PgDate(c.valid_from)),
        &cert.map(|c| PgDate(c.valid_until)),
        &q.copay_percent.code(),
        &q.preschool,
        &elderly.map(|e| PgDate(e.valid_from)),
        &elderly.map(|e| PgDate(e.valid_until)),
        &elderly.map(|e| e.percent.code()),
        &q.limit_category.map(|l| l.code()),
        &disease.map(|d| d.kind.code()),
        &cap,
        &payer,
        &recipient,
        &aid.map(|a| a.welfare_office.as_str()),
        &aid.map(|a| a.registered),
    ];
    writer
        .write(&values)
        .await
        .map_err(|e| query_error("copying rows", &e))
}

/// `name` as a quoted SQL identifier: names read from the catalog may hold
/// any character, a `"` included.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod quote_tests {
    #[test]
    fn a_quote_in_a_name_cannot_end_the_identifier() {
        assert_eq!(super::quote_ident("plain"), "\"plain\"");
        assert_eq!(
            super::quote_ident("x\"; DROP TABLE persons; --"),
            "\"x\"\"; DROP TABLE persons; --\""
        );
    }
}
