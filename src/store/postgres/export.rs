//! Streams every qualification out of the database, one consistent view,
//! into the snapshot builder.
//!
//! One `COPY (SELECT ...) TO STDOUT (FORMAT binary)` joins the tables and
//! orders rows by (person, qualification id), as the builder needs a
//! person's rows adjacent. It runs in a REPEATABLE READ, read-only
//! transaction that also reads the change counter, so the snapshot and the
//! counter recorded in its header describe the same state of the database.

use std::pin::pin;
use std::str::FromStr;

use futures_util::TryStreamExt;
use tokio_postgres::binary_copy::{BinaryCopyOutRow, BinaryCopyOutStream};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::IsolationLevel;

use super::types::PgDate;
use super::{query_error, read_change_counter, PgError, PgSource};
use crate::model::{
    CardDigest, CardLink, Certificate, ElderlyCertificate, EnrolleeRecord, KeyText, Loss,
    PublicExpense, Qualification, SpecificDisease,
};
use crate::store::csv::{RowError, RowUnit};

/// The export query. Column order matches [`COLUMN_TYPES`] and the `col::`
/// constants below.
const QUERY: &str = "COPY (
    SELECT q.qualification_id, q.person_id, c.digest, c.status,
           q.insurer_number, i.name, q.card_class, q.symbol, q.number, q.branch, q.relation,
           p.name, p.name_kana, p.sex, p.birth_date,
           q.acquired_date, q.lost_date, q.loss_reason,
           q.cert_issued, q.cert_valid_from, q.cert_valid_until,
           q.copay_percent, q.preschool,
           e.valid_from, e.valid_until, e.percent,
           l.category, d.disease, d.monthly_cap_yen,
           x.payer, x.recipient, x.welfare_office, x.registered
      FROM qualifications q
      JOIN persons p ON p.person_id = q.person_id
      JOIN insurers i ON i.insurer_number = q.insurer_number
      LEFT JOIN card_links c ON c.person_id = q.person_id
      LEFT JOIN elderly_certificates e ON e.qualification_id = q.qualification_id
      LEFT JOIN limit_certificates l ON l.qualification_id = q.qualification_id
      LEFT JOIN disease_certificates d ON d.qualification_id = q.qualification_id
      LEFT JOIN public_expenses x ON x.qualification_id = q.qualification_id
     ORDER BY q.person_id, q.qualification_id
) TO STDOUT (FORMAT binary)";

/// Types of the export's columns (the staging table of `load` has the same).
pub(crate) const COLUMN_TYPES: [Type; 33] = [
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

/// Export columns: (position, name used in errors). The names are the CSV
/// columns of the same fields, so errors read alike for both stores.
mod col {
    pub type Col = (usize, &'static str);
    pub const QUALIFICATION_ID: Col = (0, "qualification_id");
    pub const PERSON_ID: Col = (1, "person_id");
    pub const CARD_DIGEST: Col = (2, "card_digest");
    pub const CARD_STATUS: Col = (3, "card_status");
    pub const INSURER_NUMBER: Col = (4, "insurer_number");
    pub const INSURER_NAME: Col = (5, "insurer_name");
    pub const CARD_CLASS: Col = (6, "card_class");
    pub const SYMBOL: Col = (7, "symbol");
    pub const NUMBER: Col = (8, "number");
    pub const BRANCH: Col = (9, "branch");
    pub const RELATION: Col = (10, "relation");
    pub const NAME: Col = (11, "name");
    pub const NAME_KANA: Col = (12, "name_kana");
    pub const SEX: Col = (13, "sex");
    pub const BIRTH_DATE: Col = (14, "birth_date");
    pub const ACQUIRED_DATE: Col = (15, "acquired_date");
    pub const LOST_DATE: Col = (16, "lost_date");
    pub const LOSS_REASON: Col = (17, "loss_reason");
    pub const CERT_ISSUED: Col = (18, "cert_issued");
    pub const CERT_VALID_FROM: Col = (19, "cert_valid_from");
    pub const CERT_VALID_UNTIL: Col = (20, "cert_valid_until");
    pub const COPAY_PERCENT: Col = (21, "copay_percent");
    pub const PRESCHOOL: Col = (22, "preschool");
    pub const ELDERLY_VALID_FROM: Col = (23, "elderly_valid_from");
    pub const ELDERLY_VALID_UNTIL: Col = (24, "elderly_valid_until");
    pub const ELDERLY_PERCENT: Col = (25, "elderly_percent");
    pub const LIMIT_CATEGORY: Col = (26, "limit_category");
    pub const DISEASE: Col = (27, "disease");
    pub const DISEASE_CAP_YEN: Col = (28, "disease_cap_yen");
    pub const PUBLIC_PAYER: Col = (29, "public_payer");
    pub const PUBLIC_RECIPIENT: Col = (30, "public_recipient");
    pub const WELFARE_OFFICE: Col = (31, "welfare_office");
    pub const AID_REGISTERED: Col = (32, "aid_registered");
}
use col::Col;

/// What an export read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// The change counter the rows were read at.
    pub change_counter: u64,
    /// Rows streamed.
    pub rows: u64,
}

/// The planner's estimate of the qualification count (for reserving memory).
pub async fn estimated_rows(source: &PgSource) -> Result<u64, PgError> {
    let client = source.connect().await?;
    let row = client
        .query_one(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'qualifications'::regclass",
            &[],
        )
        .await
        .map_err(|e| query_error("estimating the row count", &e))?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Streams every qualification to `sink`, in (person, qualification id)
/// order, with its qualification id (used as the row's position in
/// errors). A row that cannot be read as a record reaches `sink` as an
/// error and the export goes on; a database failure ends it.
pub async fn export(
    source: &PgSource,
    mut sink: impl FnMut(Result<(u64, EnrolleeRecord), RowError>),
) -> Result<Exported, PgError> {
    let mut client = source.connect().await?;
    super::migrate::schema_version(&client).await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| query_error("starting the export transaction", &e))?;
    let change_counter = read_change_counter(&tx).await?;
    // Room for the joins' hash tables, so they do not spill to disk.
    tx.batch_execute("SET LOCAL work_mem = '256MB'")
        .await
        .map_err(|e| query_error("setting work_mem", &e))?;
    let stream = tx
        .copy_out(QUERY)
        .await
        .map_err(|e| query_error("starting the export", &e))?;
    let mut rows = pin!(BinaryCopyOutStream::new(stream, &COLUMN_TYPES));
    let mut count = 0u64;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| query_error("reading the export", &e))?
    {
        count += 1;
        sink(record(&row));
    }
    tx.commit()
        .await
        .map_err(|e| query_error("ending the export transaction", &e))?;
    Ok(Exported {
        change_counter,
        rows: count,
    })
}

/// One exported row as a record.
fn record(row: &BinaryCopyOutRow) -> Result<(u64, EnrolleeRecord), RowError> {
    let id = row
        .try_get::<i64>(col::QUALIFICATION_ID.0)
        .map_err(|_| RowError {
            line: 0,
            column: Some(col::QUALIFICATION_ID.1),
            reason: "unreadable".into(),
            unit: RowUnit::Qualification,
        })? as u64;
    let r = Row { row, id };
    let person_id = r.req::<i64>(col::PERSON_ID)?;
    let person_id = u64::try_from(person_id).map_err(|_| r.err(col::PERSON_ID, "negative"))?;
    let card = match r.opt::<&[u8]>(col::CARD_DIGEST)? {
        Some(digest) => Some(CardLink {
            digest: CardDigest(
                digest
                    .try_into()
                    .map_err(|_| r.err(col::CARD_DIGEST, "not 16 bytes"))?,
            ),
            status: r.parsed(col::CARD_STATUS)?,
        }),
        None => None,
    };
    let date = |c: Col| r.req::<PgDate>(c).map(|d| d.0);
    let opt_date = |c: Col| r.opt::<PgDate>(c).map(|d| d.map(|d| d.0));
    let loss = match opt_date(col::LOST_DATE)? {
        Some(date) => Some(Loss {
            date,
            reason: r.parsed(col::LOSS_REASON)?,
        }),
        None => None,
    };
    let certificate = match opt_date(col::CERT_ISSUED)? {
        Some(issued) => Some(Certificate {
            issued,
            valid_from: date(col::CERT_VALID_FROM)?,
            valid_until: date(col::CERT_VALID_UNTIL)?,
        }),
        None => None,
    };
    let elderly = match opt_date(col::ELDERLY_VALID_FROM)? {
        Some(valid_from) => Some(ElderlyCertificate {
            valid_from,
            valid_until: date(col::ELDERLY_VALID_UNTIL)?,
            percent: r.parsed(col::ELDERLY_PERCENT)?,
        }),
        None => None,
    };
    let specific_disease = match r.opt_parsed(col::DISEASE)? {
        Some(kind) => Some(SpecificDisease {
            kind,
            monthly_cap_yen: u32::try_from(r.req::<i32>(col::DISEASE_CAP_YEN)?)
                .map_err(|_| r.err(col::DISEASE_CAP_YEN, "negative"))?,
        }),
        None => None,
    };
    let public_expense = match r.opt_parsed(col::PUBLIC_PAYER)? {
        Some(payer) => Some(PublicExpense {
            payer,
            recipient: r.parsed(col::PUBLIC_RECIPIENT)?,
            welfare_office: r.text(col::WELFARE_OFFICE)?,
            registered: r.req(col::AID_REGISTERED)?,
        }),
        None => None,
    };
    let qualification = Qualification {
        insurer_number: r.parsed(col::INSURER_NUMBER)?,
        insurer_name: r.text(col::INSURER_NAME)?,
        card_class: r.parsed(col::CARD_CLASS)?,
        symbol: r.opt_parsed::<KeyText>(col::SYMBOL)?,
        number: r.parsed(col::NUMBER)?,
        branch: r.opt_parsed(col::BRANCH)?,
        relation: r.parsed(col::RELATION)?,
        name: r.text(col::NAME)?,
        name_kana: r.text(col::NAME_KANA)?,
        sex: r.parsed(col::SEX)?,
        birth_date: date(col::BIRTH_DATE)?,
        acquired_date: date(col::ACQUIRED_DATE)?,
        loss,
        certificate,
        copay_percent: r.parsed(col::COPAY_PERCENT)?,
        preschool: r.req(col::PRESCHOOL)?,
        elderly,
        limit_category: r.opt_parsed(col::LIMIT_CATEGORY)?,
        specific_disease,
        public_expense,
    };
    if let Some((column, reason)) = qualification.date_order_error() {
        return Err(r.err((0, column), reason));
    }
    Ok((
        id,
        EnrolleeRecord {
            person_id,
            card,
            qualification,
        },
    ))
}

/// Typed access to one exported row, with errors naming the row and column.
struct Row<'a> {
    row: &'a BinaryCopyOutRow,
    id: u64,
}

impl<'a> Row<'a> {
    fn err(&self, column: Col, reason: impl std::fmt::Display) -> RowError {
        RowError {
            line: self.id,
            column: Some(column.1),
            reason: reason.to_string(),
            unit: RowUnit::Qualification,
        }
    }

    fn opt<T: FromSql<'a>>(&self, column: Col) -> Result<Option<T>, RowError> {
        self.row
            .try_get::<Option<T>>(column.0)
            .map_err(|e| self.err(column, super::describe_error(&e)))
    }

    fn req<T: FromSql<'a>>(&self, column: Col) -> Result<T, RowError> {
        self.opt(column)?
            .ok_or_else(|| self.err(column, "required"))
    }

    /// An optional text field parsed as `T` (codes, numbers, key texts).
    fn opt_parsed<T: FromStr>(&self, column: Col) -> Result<Option<T>, RowError>
    where
        T::Err: std::fmt::Display,
    {
        match self.opt::<&str>(column)? {
            Some(s) => s.parse().map(Some).map_err(|e| self.err(column, e)),
            None => Ok(None),
        }
    }

    fn parsed<T: FromStr>(&self, column: Col) -> Result<T, RowError>
    where
        T::Err: std::fmt::Display,
    {
        self.opt_parsed(column)?
            .ok_or_else(|| self.err(column, "required"))
    }

    fn text(&self, column: Col) -> Result<String, RowError> {
        let s = self.req::<&str>(column)?;
        if s.is_empty() {
            return Err(self.err(column, "required"));
        }
        if s.chars().any(char::is_control) {
            return Err(self.err(column, "contains a control character"));
        }
        Ok(s.to_string())
    }
}
