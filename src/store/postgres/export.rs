//! Streams every qualification out of the database, one consistent view,
//! into the snapshot builder.
//!
//! PostgreSQL spends most of an export formatting values, one core per
//! connection, so the export reads the tables on several connections at
//! once and joins them here:
//!
//! - a leader connection opens a REPEATABLE READ, read-only transaction,
//!   exports its snapshot (`pg_export_snapshot`), reads the change counter
//!   and the small tables (insurers, certificates, public expense) into
//!   maps;
//! - three follower connections import that snapshot (`SET TRANSACTION
//!   SNAPSHOT`) and stream, with binary COPY, `qualifications` ordered by
//!   (person, id), `persons` ordered by person and `card_links` ordered by
//!   person;
//! - the caller's thread merges the three ordered streams (a person's rows
//!   come out adjacent, as the builder needs) and hands each record over.
//!
//! Every stream sees the same snapshot, so the records and the change
//! counter recorded in the snapshot header describe one state of the
//! database.

use std::collections::HashMap;
use std::str::FromStr;

use tokio::sync::mpsc;
use tokio_postgres::{Client, IsolationLevel};

use super::copy::{parse_message, CopyRows, RawRow};
use super::types::date_from_pg;
use super::{query_error, read_change_counter, PgError, PgSource};
use crate::model::name::{parse_kana, parse_name, NameError};
use crate::model::rules;
use crate::model::{
    Branch, CardClass, CardDigest, CardLink, Certificate, Date, ElderlyCertificate, EnrolleeRecord,
    InsurerNumber, KeyText, LimitCategory, Loss, Percent, PublicExpense, Qualification, Relation,
    Sex, SpecificDisease,
};
use crate::snapshot::builder::IntHash;
use crate::store::csv::{RowError, RowUnit};

/// A column of an export stream: (position, name used in errors). The
/// names are the CSV columns of the same fields, so errors read alike for
/// both stores.
type Col = (usize, &'static str);

/// Rows sent from a stream to the merge at a time.
const BATCH: usize = 1024;

/// Batches buffered per stream.
const QUEUE: usize = 16;

const QUALIFICATIONS: &str = "
    SELECT qualification_id, person_id, insurer_number, card_class, symbol, number, branch,
           relation, acquired_date, lost_date, loss_reason,
           cert_issued, cert_valid_from, cert_valid_until, copay_percent, preschool
      FROM qualifications";
const QUALIFICATION_ORDER: &str = "ORDER BY person_id, qualification_id";
const QUALIFICATION_COLUMNS: usize = 16;

const PERSONS: &str = "SELECT person_id, name, name_kana, sex, birth_date FROM persons";
const PERSON_COLUMNS: usize = 5;

const CARDS: &str = "SELECT person_id, digest, status FROM card_links";
const CARD_COLUMNS: usize = 3;

/// Which persons an export reads.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    /// Everyone (a snapshot build).
    All,
    /// These persons (the daemon's overlay of changed persons).
    Persons(&'a [u64]),
}

impl Scope<'_> {
    /// `query` (a SELECT of a table with a `person_id` column) limited to
    /// the scope, as a binary COPY in person order.
    fn copy(&self, query: &str, order: &str) -> String {
        format!(
            "COPY ({query}{} {order}) TO STDOUT (FORMAT binary)",
            self.filter("person_id")
        )
    }

    /// A WHERE clause limiting `column` (a person id) to the scope; empty
    /// for everyone. The ids are integers, so the literal is safe.
    fn filter(&self, column: &str) -> String {
        match self {
            Scope::All => String::new(),
            Scope::Persons(ids) => {
                let mut list = String::with_capacity(ids.len() * 8);
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        list.push(',');
                    }
                    list.push_str(&id.to_string());
                }
                format!(" WHERE {column} = ANY('{{{list}}}'::bigint[])")
            }
        }
    }

    /// An attachment table's COPY (first column: the qualification id),
    /// limited to the qualifications of the scope's persons.
    fn attached(&self, table: &str, columns: &str) -> String {
        match self {
            Scope::All => format!("COPY {table} ({columns}) TO STDOUT (FORMAT binary)"),
            Scope::Persons(_) => format!(
                "COPY (SELECT {columns} FROM {table} WHERE qualification_id IN \
                 (SELECT qualification_id FROM qualifications{})) TO STDOUT (FORMAT binary)",
                self.filter("person_id")
            ),
        }
    }
}

/// What an export read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// The change counter the rows were read at.
    pub change_counter: u64,
    /// Rows streamed.
    pub rows: u64,
}

/// The planner's estimate of the qualification count (for reserving
/// memory). Checks the schema version first, so an unmigrated database
/// gets the "run `qualcache db migrate`" answer, not a missing relation.
pub async fn estimated_rows(source: &PgSource) -> Result<u64, PgError> {
    let client = source.connect().await?;
    super::migrate::schema_version(&client).await?;
    let row = client
        .query_one(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'qualifications'::regclass",
            &[],
        )
        .await
        .map_err(|e| query_error("estimating the row count", &e))?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// A qualification row without its person, insurer name and attachments.
struct QualRow {
    id: u64,
    person_id: u64,
    insurer_number: InsurerNumber,
    card_class: CardClass,
    symbol: Option<KeyText>,
    number: KeyText,
    branch: Option<Branch>,
    relation: Relation,
    acquired_date: Date,
    loss: Option<Loss>,
    certificate: Option<Certificate>,
    copay_percent: Percent,
    preschool: bool,
}

/// A person row; a bad one is kept as its error until a qualification
/// of the person reports it.
struct PersonRow {
    person_id: u64,
    fields: Result<PersonFields, FieldError>,
}

struct PersonFields {
    name: String,
    name_kana: String,
    sex: Sex,
    birth_date: Date,
}

struct CardRow {
    person_id: u64,
    link: Result<CardLink, FieldError>,
}

/// The attachments of qualifications, read on the leader.
#[derive(Default)]
struct Attachments {
    /// Insurer names by raw insurer number; a name that failed its
    /// checks is kept as its error, which each of the insurer's
    /// qualifications reports.
    insurers: HashMap<u32, Result<String, FieldError>, IntHash>,
    elderly: Attached<ElderlyCertificate>,
    limit: Attached<LimitCategory>,
    disease: Attached<SpecificDisease>,
    public: Attached<PublicExpense>,
}

/// Rows of one attachment table, sorted by qualification id. Lookups come
/// in qualification-stream order, which is ascending id for data loaded
/// in person order, so they walk the rows front to back (cache-friendly);
/// an id behind the walk is found by binary search.
struct Attached<T> {
    rows: Vec<(u64, Result<T, FieldError>)>,
    pos: usize,
}

impl<T> Default for Attached<T> {
    fn default() -> Self {
        Attached {
            rows: Vec::new(),
            pos: 0,
        }
    }
}

impl<T: Clone> Attached<T> {
    fn push(&mut self, id: u64, row: Result<T, FieldError>) {
        self.rows.push((id, row));
    }

    fn sort(&mut self) {
        self.rows.sort_unstable_by_key(|r| r.0);
    }

    /// The attachment of qualification `id`, if any.
    fn get(&mut self, id: u64) -> Result<Option<T>, FieldError> {
        let rows = &self.rows;
        let found = if self.pos > 0 && rows[self.pos - 1].0 >= id {
            rows[..self.pos]
                .binary_search_by_key(&id, |r| r.0)
                .ok()
                .map(|i| &rows[i].1)
        } else {
            while self.pos < rows.len() && rows[self.pos].0 < id {
                self.pos += 1;
            }
            if self.pos < rows.len() && rows[self.pos].0 == id {
                self.pos += 1;
                Some(&rows[self.pos - 1].1)
            } else {
                None
            }
        };
        found.cloned().transpose()
    }
}

/// Streams every qualification to `sink`, in (person, qualification id)
/// order, with its qualification id (used as the row's position in
/// errors). A row that cannot be read as a record reaches `sink` as an
/// error and the export goes on; a database failure ends it.
pub async fn export(
    source: &PgSource,
    mut sink: impl FnMut(Result<(u64, EnrolleeRecord), RowError>),
) -> Result<Exported, PgError> {
    let mut leader = source.connect().await?;
    super::migrate::schema_version(&leader).await?;
    let tx = leader
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| query_error("starting the export transaction", &e))?;
    let snapshot: String = tx
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| query_error("exporting the snapshot", &e))?
        .get(0);
    let change_counter = read_change_counter(&tx).await?;

    // The big tables stream on their own connections while the leader
    // reads the small ones.
    let all = Scope::All;
    let quals = follow(
        source,
        &snapshot,
        all.copy(QUALIFICATIONS, QUALIFICATION_ORDER),
        QUALIFICATION_COLUMNS,
        qual_row,
    )
    .await?;
    let persons = follow(
        source,
        &snapshot,
        all.copy(PERSONS, "ORDER BY person_id"),
        PERSON_COLUMNS,
        person_row,
    )
    .await?;
    let cards = follow(
        source,
        &snapshot,
        all.copy(CARDS, "ORDER BY person_id"),
        CARD_COLUMNS,
        card_row,
    )
    .await?;
    let attachments = attachments(&tx, all).await?;
    let rows = merge(quals, persons, cards, attachments, &mut sink).await?;
    tx.commit()
        .await
        .map_err(|e| query_error("ending the export transaction", &e))?;
    Ok(Exported {
        change_counter,
        rows,
    })
}

/// Reads the current rows of the persons `ids` (ascending, distinct)
/// inside `tx`, which the caller opened (REPEATABLE READ, so they are one
/// consistent view with whatever else it reads there), decoded and
/// checked exactly as [`export`] does, and hands them to `sink` in
/// (person, qualification id) order. A person without qualifications
/// (deleted, or never given one) yields no record. Returns the rows read.
pub async fn export_persons(
    tx: &tokio_postgres::Transaction<'_>,
    ids: &[u64],
    mut sink: impl FnMut(Result<(u64, EnrolleeRecord), RowError>),
) -> Result<u64, PgError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let scope = Scope::Persons(ids);
    let quals = collected(
        tx,
        &scope.copy(QUALIFICATIONS, QUALIFICATION_ORDER),
        QUALIFICATION_COLUMNS,
        qual_row,
    )
    .await?;
    let persons = collected(
        tx,
        &scope.copy(PERSONS, "ORDER BY person_id"),
        PERSON_COLUMNS,
        person_row,
    )
    .await?;
    let cards = collected(
        tx,
        &scope.copy(CARDS, "ORDER BY person_id"),
        CARD_COLUMNS,
        card_row,
    )
    .await?;
    let attachments = attachments(tx, scope).await?;
    merge(quals, persons, cards, attachments, &mut sink).await
}

/// Merges the three ordered streams with the attachments into records.
async fn merge(
    quals: Stream<Result<QualRow, RowError>>,
    persons: Stream<PersonRow>,
    cards: Stream<CardRow>,
    attachments: Attachments,
    sink: &mut impl FnMut(Result<(u64, EnrolleeRecord), RowError>),
) -> Result<u64, PgError> {
    let mut merge = Merge {
        quals,
        persons: Cursor::new(persons),
        cards: Cursor::new(cards),
        attachments,
    };
    let mut rows = 0u64;
    while let Some(batch) = merge.quals.next().await? {
        for q in batch {
            rows += 1;
            let record = match q {
                Ok(q) => merge.record(q).await?,
                Err(e) => Err(e),
            };
            sink(record);
        }
    }
    // Streams that ended early or failed surface here.
    merge.persons.finish().await?;
    merge.cards.finish().await?;
    Ok(rows)
}

/// Runs `query` to its end on `tx` and makes its decoded rows a stream
/// of one batch (for the few rows of a scoped export).
async fn collected<T>(
    tx: &tokio_postgres::Transaction<'_>,
    query: &str,
    columns: usize,
    decode: fn(&RawRow) -> T,
) -> Result<Stream<T>, PgError> {
    let mut rows = Vec::new();
    read_all(tx, query, columns, |row| rows.push(decode(row))).await?;
    let (tx, rx) = mpsc::channel(1);
    // The channel has room for this one batch; the sender is dropped, so
    // the stream ends after it.
    let _ = tx.try_send(Ok(rows));
    Ok(Stream { rx })
}

/// One follower stream: rows decoded on a task, sent in batches.
struct Stream<T> {
    rx: mpsc::Receiver<Result<Vec<T>, PgError>>,
}

impl<T> Stream<T> {
    /// The next batch; `None` at the end.
    async fn next(&mut self) -> Result<Option<Vec<T>>, PgError> {
        self.rx.recv().await.transpose()
    }
}

/// Opens a follower connection on `snapshot` and streams `query` through
/// `decode` on a task of its own.
async fn follow<T: Send + 'static>(
    source: &PgSource,
    snapshot: &str,
    query: String,
    columns: usize,
    decode: fn(&RawRow) -> T,
) -> Result<Stream<T>, PgError> {
    let mut client = source.connect().await?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let snapshot = snapshot.to_string();
    tokio::spawn(async move {
        if let Err(e) = stream(&mut client, &snapshot, &query, columns, decode, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(Stream { rx })
}

async fn stream<T>(
    client: &mut Client,
    snapshot: &str,
    query: &str,
    columns: usize,
    decode: fn(&RawRow) -> T,
    out: &mpsc::Sender<Result<Vec<T>, PgError>>,
) -> Result<(), PgError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| query_error("starting an export stream", &e))?;
    tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .await
        .map_err(|e| query_error("joining the export snapshot", &e))?;
    let copy = tx
        .copy_out(query)
        .await
        .map_err(|e| query_error("starting the export", &e))?;
    let mut rows = CopyRows::new(copy, columns);
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(row) = rows.next().await? {
        batch.push(decode(&row));
        if batch.len() == BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            if out.send(Ok(full)).await.is_err() {
                return Ok(()); // The merge stopped.
            }
        }
    }
    if !batch.is_empty() {
        let _ = out.send(Ok(batch)).await;
    }
    tx.commit()
        .await
        .map_err(|e| query_error("ending an export stream", &e))
}

/// Rows that belong to a person.
trait OfPerson {
    fn person_id(&self) -> u64;
}

impl OfPerson for PersonRow {
    fn person_id(&self) -> u64 {
        self.person_id
    }
}

impl OfPerson for CardRow {
    fn person_id(&self) -> u64 {
        self.person_id
    }
}

/// An ascending stream of person rows, read as the qualifications ask.
struct Cursor<T> {
    stream: Stream<T>,
    batch: std::vec::IntoIter<T>,
    current: Option<T>,
    ended: bool,
}

impl<T: OfPerson> Cursor<T> {
    fn new(stream: Stream<T>) -> Cursor<T> {
        Cursor {
            stream,
            batch: Vec::new().into_iter(),
            current: None,
            ended: false,
        }
    }

    async fn next_row(&mut self) -> Result<Option<T>, PgError> {
        loop {
            if let Some(row) = self.batch.next() {
                return Ok(Some(row));
            }
            if self.ended {
                return Ok(None);
            }
            match self.stream.next().await? {
                Some(batch) => self.batch = batch.into_iter(),
                None => self.ended = true,
            }
        }
    }

    /// The row of `person_id`, if there is one. Calls come in ascending
    /// person order (rows of persons without qualifications are passed).
    async fn seek(&mut self, person_id: u64) -> Result<Option<&T>, PgError> {
        loop {
            if self
                .current
                .as_ref()
                .is_some_and(|r| r.person_id() >= person_id)
            {
                break;
            }
            match self.next_row().await? {
                Some(row) => self.current = Some(row),
                None => {
                    self.current = None;
                    break;
                }
            }
        }
        Ok(self.current.as_ref().filter(|r| r.person_id() == person_id))
    }

    /// Reads to the end, so a failure of the stream is reported.
    async fn finish(&mut self) -> Result<(), PgError> {
        while self.next_row().await?.is_some() {}
        Ok(())
    }
}

/// The merge of the three ordered streams and the attachments.
struct Merge {
    quals: Stream<Result<QualRow, RowError>>,
    persons: Cursor<PersonRow>,
    cards: Cursor<CardRow>,
    attachments: Attachments,
}

impl Merge {
    /// The full record of one qualification row.
    async fn record(
        &mut self,
        q: QualRow,
    ) -> Result<Result<(u64, EnrolleeRecord), RowError>, PgError> {
        let err = |(column, reason): (&'static str, String)| RowError {
            line: q.id,
            column: Some(column),
            reason,
            unit: RowUnit::Qualification,
        };
        let person = match self.persons.seek(q.person_id).await? {
            Some(PersonRow { fields: Ok(f), .. }) => f,
            Some(PersonRow { fields: Err(e), .. }) => return Ok(Err(err(e.clone()))),
            None => return Ok(Err(err(("person_id", "no such person".into())))),
        };
        let (name, name_kana, sex, birth_date) = (
            person.name.clone(),
            person.name_kana.clone(),
            person.sex,
            person.birth_date,
        );
        let card = match self.cards.seek(q.person_id).await? {
            Some(CardRow { link: Ok(l), .. }) => Some(*l),
            Some(CardRow { link: Err(e), .. }) => return Ok(Err(err(e.clone()))),
            None => None,
        };
        let a = &mut self.attachments;
        let insurer_name = match a.insurers.get(&q.insurer_number.to_raw()) {
            Some(Ok(name)) => name.clone(),
            Some(Err(e)) => return Ok(Err(err(e.clone()))),
            None => return Ok(Err(err(("insurer_number", "no such insurer".into())))),
        };
        let elderly = match a.elderly.get(q.id) {
            Ok(v) => v,
            Err(e) => return Ok(Err(err(e))),
        };
        let limit_category = match a.limit.get(q.id) {
            Ok(v) => v,
            Err(e) => return Ok(Err(err(e))),
        };
        let specific_disease = match a.disease.get(q.id) {
            Ok(v) => v,
            Err(e) => return Ok(Err(err(e))),
        };
        let public_expense = match a.public.get(q.id) {
            Ok(v) => v,
            Err(e) => return Ok(Err(err(e))),
        };
        let qualification = Qualification {
            insurer_number: q.insurer_number,
            insurer_name,
            card_class: q.card_class,
            symbol: q.symbol,
            number: q.number,
            branch: q.branch,
            relation: q.relation,
            name,
            name_kana,
            sex,
            birth_date,
            acquired_date: q.acquired_date,
            loss: q.loss,
            certificate: q.certificate,
            copay_percent: q.copay_percent,
            preschool: q.preschool,
            elderly,
            limit_category,
            specific_disease,
            public_expense,
        };
        if let Some((column, reason)) = rules::row_error(&qualification) {
            return Ok(Err(err((column, reason.to_string()))));
        }
        Ok(Ok((
            q.id,
            EnrolleeRecord {
                person_id: q.person_id,
                card,
                qualification,
            },
        )))
    }
}

/// Reads the insurers and the qualifications' attachments on the leader.
async fn attachments(
    tx: &tokio_postgres::Transaction<'_>,
    scope: Scope<'_>,
) -> Result<Attachments, PgError> {
    let mut a = Attachments::default();
    read_all(
        tx,
        "COPY insurers (insurer_number, name) TO STDOUT (FORMAT binary)",
        2,
        |row| {
            let r = Fields(row);
            // An insurer number that does not parse is reported by every
            // qualification that uses it ("no such insurer"); a name that
            // does not, by its own column.
            if let Ok(n) = r.parsed::<InsurerNumber>(INS_NUMBER) {
                a.insurers.insert(n.to_raw(), r.text(INS_NAME));
            }
        },
    )
    .await?;
    a.elderly = read_attached(
        tx,
        &scope.attached(
            "elderly_certificates",
            "qualification_id, valid_from, valid_until, percent",
        ),
        4,
        |r| {
            Ok(ElderlyCertificate {
                valid_from: r.date((1, "elderly_valid_from"))?,
                valid_until: r.date((2, "elderly_valid_until"))?,
                percent: r.parsed((3, "elderly_percent"))?,
            })
        },
    )
    .await?;
    a.limit = read_attached(
        tx,
        &scope.attached("limit_certificates", "qualification_id, category"),
        2,
        |r| r.parsed((1, "limit_category")),
    )
    .await?;
    a.disease = read_attached(
        tx,
        &scope.attached(
            "disease_certificates",
            "qualification_id, disease, monthly_cap_yen",
        ),
        3,
        |r| {
            Ok(SpecificDisease {
                kind: r.parsed((1, "disease"))?,
                monthly_cap_yen: u32::try_from(r.int4((2, "disease_cap_yen"))?)
                    .map_err(|_| ("disease_cap_yen", "negative".to_string()))?,
            })
        },
    )
    .await?;
    a.public = read_attached(
        tx,
        &scope.attached(
            "public_expenses",
            "qualification_id, payer, recipient, welfare_office, registered",
        ),
        5,
        |r| {
            Ok(PublicExpense {
                payer: r.parsed((1, "public_payer"))?,
                recipient: r.parsed((2, "public_recipient"))?,
                welfare_office: r.text((3, "welfare_office"))?,
                registered: r.boolean((4, "aid_registered"))?,
            })
        },
    )
    .await?;
    Ok(a)
}

/// Reads an attachment table (first column: the qualification id) into a
/// sorted [`Attached`]. A row whose id cannot be read fails the export: its
/// qualification would otherwise be built without it.
async fn read_attached<T: Clone>(
    tx: &tokio_postgres::Transaction<'_>,
    query: &str,
    columns: usize,
    decode: impl Fn(&Fields<'_>) -> Result<T, FieldError>,
) -> Result<Attached<T>, PgError> {
    let mut attached = Attached::default();
    let mut bad_id = None;
    read_all(tx, query, columns, |row| {
        let r = Fields(row);
        match r.id() {
            Ok(id) => attached.push(id, decode(&r)),
            Err(e) => bad_id = Some(e),
        }
    })
    .await?;
    if let Some((column, reason)) = bad_id {
        return Err(PgError::Query {
            during: "reading the certificates and public expenses",
            reason: format!("column {column}: {reason}"),
        });
    }
    attached.sort();
    Ok(attached)
}

const INS_NUMBER: Col = (0, "insurer_number");
const INS_NAME: Col = (1, "insurer_name");

/// Runs one binary COPY on the leader and hands each row to `each`.
async fn read_all(
    tx: &tokio_postgres::Transaction<'_>,
    query: &str,
    columns: usize,
    mut each: impl FnMut(&RawRow),
) -> Result<(), PgError> {
    let copy = tx
        .copy_out(query)
        .await
        .map_err(|e| query_error("starting the export", &e))?;
    let mut rows = CopyRows::new(copy, columns);
    while let Some(row) = rows.next().await? {
        each(&row);
    }
    Ok(())
}

/// A field that could not be read: (column, reason).
type FieldError = (&'static str, String);

/// Typed access to the fields of one row.
struct Fields<'a>(&'a RawRow);

impl<'a> Fields<'a> {
    /// The raw bytes of a field of `len` bytes (or any length), `None` for NULL.
    fn raw(&self, column: Col, len: Option<usize>) -> Result<Option<&'a [u8]>, FieldError> {
        match self.0.field(column.0) {
            Some(b) if len.is_some_and(|l| l != b.len()) => {
                Err((column.1, format!("expected {} bytes", len.unwrap_or(0))))
            }
            other => Ok(other),
        }
    }

    fn required<T>(column: Col, v: Option<T>) -> Result<T, FieldError> {
        v.ok_or_else(|| (column.1, "required".to_string()))
    }

    fn int8(&self, column: Col) -> Result<i64, FieldError> {
        let b = Self::required(column, self.raw(column, Some(8))?)?;
        Ok(i64::from_be_bytes(b.try_into().unwrap_or_default()))
    }

    fn int4(&self, column: Col) -> Result<i32, FieldError> {
        let b = Self::required(column, self.raw(column, Some(4))?)?;
        Ok(i32::from_be_bytes(b.try_into().unwrap_or_default()))
    }

    fn boolean(&self, column: Col) -> Result<bool, FieldError> {
        let b = Self::required(column, self.raw(column, Some(1))?)?;
        Ok(b[0] != 0)
    }

    fn bytes(&self, column: Col) -> Result<&'a [u8], FieldError> {
        Self::required(column, self.raw(column, None)?)
    }

    fn opt_str(&self, column: Col) -> Result<Option<&'a str>, FieldError> {
        match self.raw(column, None)? {
            Some(b) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| (column.1, "not valid UTF-8".to_string())),
            None => Ok(None),
        }
    }

    fn id(&self) -> Result<u64, FieldError> {
        let id = self.int8((0, "qualification_id"))?;
        u64::try_from(id).map_err(|_| ("qualification_id", "negative".to_string()))
    }

    fn date(&self, column: Col) -> Result<Date, FieldError> {
        Self::required(column, self.opt_date(column)?)
    }

    fn opt_date(&self, column: Col) -> Result<Option<Date>, FieldError> {
        match self.raw(column, Some(4))? {
            Some(b) => date_from_pg(b.try_into().unwrap_or_default())
                .map(Some)
                .ok_or_else(|| (column.1, "date outside the years 1800-2999".to_string())),
            None => Ok(None),
        }
    }

    /// An optional text field parsed as `T` (codes, numbers, key texts).
    fn opt_parsed<T: FromStr>(&self, column: Col) -> Result<Option<T>, FieldError>
    where
        T::Err: std::fmt::Display,
    {
        match self.opt_str(column)? {
            Some(s) => s
                .parse::<T>()
                .map(Some)
                .map_err(|e| (column.1, e.to_string())),
            None => Ok(None),
        }
    }

    fn parsed<T: FromStr>(&self, column: Col) -> Result<T, FieldError>
    where
        T::Err: std::fmt::Display,
    {
        self.opt_parsed(column)?
            .ok_or_else(|| (column.1, "required".to_string()))
    }

    /// A name column, checked by `check` ([`crate::model::name`]).
    fn name(
        &self,
        column: Col,
        check: fn(&str) -> Result<String, NameError>,
    ) -> Result<String, FieldError> {
        let s = Self::required(column, self.opt_str(column)?)?;
        check(s).map_err(|e| (column.1, e.to_string()))
    }

    fn text(&self, column: Col) -> Result<String, FieldError> {
        let s = Self::required(column, self.opt_str(column)?)?;
        if s.is_empty() {
            return Err((column.1, "required".into()));
        }
        if s.chars().any(char::is_control) {
            return Err((column.1, "contains a control character".into()));
        }
        Ok(s.to_string())
    }
}

/// Decodes a `qualifications` row.
fn qual_row(row: &RawRow) -> Result<QualRow, RowError> {
    let r = Fields(row);
    let id = r.id().map_err(|(column, reason)| RowError {
        line: 0,
        column: Some(column),
        reason,
        unit: RowUnit::Qualification,
    })?;
    let fields = || -> Result<QualRow, FieldError> {
        let person_id = u64::try_from(r.int8((1, "person_id"))?)
            .map_err(|_| ("person_id", "negative".to_string()))?;
        let loss = match r.opt_date((9, "lost_date"))? {
            Some(date) => Some(Loss {
                date,
                reason: r.parsed((10, "loss_reason"))?,
            }),
            None => None,
        };
        let certificate = match r.opt_date((11, "cert_issued"))? {
            Some(issued) => Some(Certificate {
                issued,
                valid_from: r.date((12, "cert_valid_from"))?,
                valid_until: r.date((13, "cert_valid_until"))?,
            }),
            None => None,
        };
        Ok(QualRow {
            id,
            person_id,
            insurer_number: r.parsed((2, "insurer_number"))?,
            card_class: r.parsed((3, "card_class"))?,
            symbol: r.opt_parsed((4, "symbol"))?,
            number: r.parsed((5, "number"))?,
            branch: r.opt_parsed((6, "branch"))?,
            relation: r.parsed((7, "relation"))?,
            acquired_date: r.date((8, "acquired_date"))?,
            loss,
            certificate,
            copay_percent: r.parsed((14, "copay_percent"))?,
            preschool: r.boolean((15, "preschool"))?,
        })
    };
    fields().map_err(|(column, reason)| RowError {
        line: id,
        column: Some(column),
        reason,
        unit: RowUnit::Qualification,
    })
}

/// Decodes a `persons` row (an unreadable id sorts it nowhere: u64::MAX).
fn person_row(row: &RawRow) -> PersonRow {
    let r = Fields(row);
    let person_id = r
        .int8((0, "person_id"))
        .ok()
        .and_then(|id| u64::try_from(id).ok())
        .unwrap_or(u64::MAX);
    let fields = (|| {
        Ok(PersonFields {
            name: r.name((1, "name"), parse_name)?,
            name_kana: r.name((2, "name_kana"), parse_kana)?,
            sex: r.parsed((3, "sex"))?,
            birth_date: r.date((4, "birth_date"))?,
        })
    })();
    PersonRow { person_id, fields }
}

/// Decodes a `card_links` row.
fn card_row(row: &RawRow) -> CardRow {
    let r = Fields(row);
    let person_id = r
        .int8((0, "person_id"))
        .ok()
        .and_then(|id| u64::try_from(id).ok())
        .unwrap_or(u64::MAX);
    let link = (|| {
        let digest = r.bytes((1, "card_digest"))?;
        Ok(CardLink {
            digest: CardDigest(
                digest
                    .try_into()
                    .map_err(|_| ("card_digest", "not 16 bytes".to_string()))?,
            ),
            status: r.parsed((2, "card_status"))?,
        })
    })();
    CardRow { person_id, link }
}

/// Reads `message` as one CopyData message of each of the export's three
/// queries (qualifications, persons, card links), the first of its stream
/// when `first`, and decodes the row as the export does. Whatever the
/// bytes, it returns (a malformed message or a row error), never panics:
/// what the fuzz target `copy_row` checks. Returns how many of the three
/// read as a row.
#[doc(hidden)]
pub fn read_copy_message(message: &[u8], first: bool) -> usize {
    let buf = bytes::Bytes::copy_from_slice(message);
    let mut rows = 0;
    if let Ok(Some(row)) = parse_message(buf.clone(), first, QUALIFICATION_COLUMNS) {
        let _ = qual_row(&row);
        rows += 1;
    }
    if let Ok(Some(row)) = parse_message(buf.clone(), first, PERSON_COLUMNS) {
        let _ = person_row(&row);
        rows += 1;
    }
    if let Ok(Some(row)) = parse_message(buf, first, CARD_COLUMNS) {
        let _ = card_row(&row);
        rows += 1;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_are_found_in_any_lookup_order() {
        let mut a = Attached::<u32>::default();
        for id in [40, 10, 30, 20, 50] {
            a.push(id, Ok(id as u32 * 10));
        }
        a.push(60, Err(("disease", "bad".into())));
        a.sort();
        // Ascending, with misses in between (the common walk).
        assert_eq!(a.get(5), Ok(None));
        assert_eq!(a.get(10), Ok(Some(100)));
        assert_eq!(a.get(15), Ok(None));
        assert_eq!(a.get(30), Ok(Some(300)));
        // Behind the walk: found by binary search.
        assert_eq!(a.get(20), Ok(Some(200)));
        assert_eq!(a.get(25), Ok(None));
        assert_eq!(a.get(50), Ok(Some(500)));
        assert_eq!(a.get(40), Ok(Some(400)));
        assert_eq!(a.get(60), Err(("disease", "bad".to_string())));
        assert_eq!(a.get(70), Ok(None));
    }
}
