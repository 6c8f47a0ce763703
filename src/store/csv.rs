//! The embedded default authoritative store: a UTF-8 CSV export with a
//! header row, one row per qualification. README.md documents the columns.
//!
//! [`CsvReader`] streams rows (one reused record buffer, nothing else held),
//! and [`CsvWriter`] writes them; the column list lives only here.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::Path;
use std::str::FromStr;

pub use crate::model::row::{RowError, RowUnit};

use crate::model::name::{parse_kana, parse_name, NameError};
use crate::model::normalize::to_full_width;
use crate::model::rules;
use crate::model::{
    CardClass, CardDigest, CardLink, CardStatus, Certificate, Date, DiseaseKind,
    ElderlyCertificate, EnrolleeRecord, LimitCategory, Loss, LossReason, Percent, PublicExpense,
    Qualification, Relation, Sex, SpecificDisease,
};

/// A fingerprint of a source file's state (size and modification time),
/// recorded in snapshot headers to tell whether the source changed; 0 if
/// the file cannot be read.
pub fn file_fingerprint(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| fingerprint(&m))
}

/// The fingerprint of a file with metadata `m` (see [`file_fingerprint`]);
/// never 0.
pub fn fingerprint(m: &std::fs::Metadata) -> u64 {
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    crate::snapshot::body::fmix64(mtime ^ m.len().rotate_left(32)).max(1)
}

/// The columns, in the order [`CsvWriter`] writes them. A reader accepts
/// them in any order but requires every one, exactly once.
pub const COLUMNS: [&str; 32] = [
    "person_id",
    "card_digest",
    "card_status",
    "insurer_number",
    "insurer_name",
    "card_class",
    "symbol",
    "number",
    "branch",
    "relation",
    "name",
    "name_kana",
    "sex",
    "birth_date",
    "acquired_date",
    "lost_date",
    "loss_reason",
    "cert_issued",
    "cert_valid_from",
    "cert_valid_until",
    "copay_percent",
    "preschool",
    "elderly_valid_from",
    "elderly_valid_until",
    "elderly_percent",
    "limit_category",
    "disease",
    "disease_cap_yen",
    "public_payer",
    "public_recipient",
    "welfare_office",
    "aid_registered",
];

/// A column: its position in [`COLUMNS`] and its name.
type Col = (usize, &'static str);

/// The [`Col`] of a column name, checked and computed at compile time.
macro_rules! col {
    ($name:literal) => {{
        const COL: Col = (column_index($name), $name);
        COL
    }};
}

/// The position of `name` in [`COLUMNS`]; fails compilation (in `col!`) for
/// a name that is not a column.
const fn column_index(name: &str) -> usize {
    let mut i = 0;
    while i < COLUMNS.len() {
        if const_eq(COLUMNS[i].as_bytes(), name.as_bytes()) {
            return i;
        }
        i += 1;
    }
    panic!("not a CSV column")
}

const fn const_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A CSV file that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// Opening or reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// The header row is missing a column, repeats one or has an unknown
    /// one. An unknown one is named by position, and its text is quoted
    /// only when it is 1 to 32 of `a`-`z` and `_` (like a column name): in
    /// an export without a header row it is a data value.
    #[error("{path}: header row: {reason}")]
    Header {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The reason for an unknown header field at 0-based position `pos`.
/// The text is quoted only when it could be a mistyped column name:
/// 1 to 32 of `a`-`z` and `_` (no column name has digits). Anything else
/// (digits, dates, numbers, digests, names, kana) may be the first data
/// row of an export without a header row, so it is not repeated.
fn unknown_column(pos: usize, text: &str) -> String {
    let column = pos + 1;
    let name_like =
        (1..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if name_like {
        format!("unknown column {text:?} (column {column})")
    } else {
        format!(
            "column {column} is not a known column name (not shown: it may be data; \
             is the header row missing?)"
        )
    }
}

/// Streams the rows of a CSV export.
#[derive(Debug)]
pub struct CsvReader<R> {
    inner: csv::Reader<R>,
    /// Position of each of [`COLUMNS`] in the file's rows.
    index: [usize; COLUMNS.len()],
    /// Reused for every row; bytes, so UTF-8 is checked field by field
    /// (most fields are ASCII) rather than for the whole row.
    record: csv::ByteRecord,
}

impl CsvReader<BufReader<File>> {
    /// Opens a CSV file and checks its header row.
    pub fn open(path: &Path) -> Result<Self, CsvError> {
        let file = File::open(path).map_err(|source| CsvError::Io {
            path: path.display().to_string(),
            source,
        })?;
        CsvReader::new(
            BufReader::with_capacity(1 << 20, file),
            &path.display().to_string(),
        )
    }
}

impl<R: io::Read> CsvReader<R> {
    /// Reads the header row of `reader`; `name` is used in errors.
    pub fn new(reader: R, name: &str) -> Result<Self, CsvError> {
        let mut inner = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(reader);
        let header_err = |reason: String| CsvError::Header {
            path: name.to_string(),
            reason,
        };
        let headers = inner
            .headers()
            .map_err(|e| header_err(e.to_string()))?
            .clone();
        let mut index = [usize::MAX; COLUMNS.len()];
        for (pos, h) in headers.iter().enumerate() {
            let h = h.trim_start_matches('\u{feff}').trim();
            let Some(col) = COLUMNS.iter().position(|c| *c == h) else {
                return Err(header_err(unknown_column(pos, h)));
            };
            if index[col] != usize::MAX {
                return Err(header_err(format!("column {h:?} appears twice")));
            }
            index[col] = pos;
        }
        let missing: Vec<&str> = COLUMNS
            .iter()
            .zip(index)
            .filter(|(_, i)| *i == usize::MAX)
            .map(|(c, _)| *c)
            .collect();
        if !missing.is_empty() {
            return Err(header_err(format!(
                "missing columns: {}",
                missing.join(", ")
            )));
        }
        Ok(CsvReader {
            inner,
            index,
            record: csv::ByteRecord::new(),
        })
    }

    /// The next row: `None` at the end, `Some(Err)` for a bad row (reading
    /// continues with the next one).
    pub fn next_record(&mut self) -> Option<Result<(u64, EnrolleeRecord), RowError>> {
        let line = self.inner.position().line() + 1;
        match self.inner.read_byte_record(&mut self.record) {
            Ok(false) => None,
            Ok(true) => {
                let line = self.record.position().map_or(line, |p| p.line());
                Some(self.parse(line).map(|r| (line, r)))
            }
            Err(e) => Some(Err(malformed(&e, line))),
        }
    }

    fn parse(&self, line: u64) -> Result<EnrolleeRecord, RowError> {
        parse_record(&self.record, &self.index, line)
    }

    /// Where each of [`COLUMNS`] is in this file's rows.
    pub(crate) fn column_positions(&self) -> &ColumnIndex {
        &self.index
    }

    /// Byte offset and line number of the first data row.
    pub(crate) fn data_start(&self) -> (u64, u64) {
        let p = self.inner.position();
        (p.byte(), p.line())
    }
}

/// Position of each of [`COLUMNS`] in a file's rows.
pub(crate) type ColumnIndex = [usize; COLUMNS.len()];

/// Parses one data row read at `line`.
pub(crate) fn parse_record(
    record: &csv::ByteRecord,
    index: &ColumnIndex,
    line: u64,
) -> Result<EnrolleeRecord, RowError> {
    if record.len() != COLUMNS.len() {
        return Err(RowError {
            line,
            column: None,
            reason: format!("expected {} fields, found {}", COLUMNS.len(), record.len()),
            unit: RowUnit::Line,
        });
    }
    Row {
        record,
        index,
        line,
    }
    .parse()
}

/// A row the CSV reader itself refused (unbalanced quotes and the like).
pub(crate) fn malformed(e: &csv::Error, line: u64) -> RowError {
    let line = e.position().map_or(line, |p| p.line());
    let reason = match e.kind() {
        csv::ErrorKind::Io(io) => format!("read error: {io}"),
        _ => "malformed CSV".to_string(),
    };
    RowError {
        line,
        column: None,
        reason,
        unit: RowUnit::Line,
    }
}

/// One row being parsed: field access by column name with precise errors.
struct Row<'a> {
    record: &'a csv::ByteRecord,
    index: &'a [usize; COLUMNS.len()],
    line: u64,
}

impl Row<'_> {
    fn bytes(&self, column: Col) -> &[u8] {
        self.record
            .get(self.index[column.0])
            .unwrap_or_default()
            .trim_ascii()
    }

    fn raw(&self, column: Col) -> Result<&str, RowError> {
        std::str::from_utf8(self.bytes(column)).map_err(|_| self.err(column, "not valid UTF-8"))
    }

    fn err(&self, column: Col, reason: impl std::fmt::Display) -> RowError {
        RowError {
            line: self.line,
            column: Some(column.1),
            reason: reason.to_string(),
            unit: RowUnit::Line,
        }
    }

    /// An optional field: empty means absent.
    fn opt<T: FromStr>(&self, column: Col) -> Result<Option<T>, RowError>
    where
        T::Err: std::fmt::Display,
    {
        let s = self.raw(column)?;
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|e| self.err(column, e))
    }

    fn req<T: FromStr>(&self, column: Col) -> Result<T, RowError>
    where
        T::Err: std::fmt::Display,
    {
        self.opt(column)?
            .ok_or_else(|| self.err(column, "required"))
    }

    /// A name column, checked by `check` ([`crate::model::name`]).
    fn name(
        &self,
        column: Col,
        check: fn(&str) -> Result<String, NameError>,
    ) -> Result<String, RowError> {
        check(self.raw(column)?).map_err(|e| self.err(column, e))
    }

    fn text(&self, column: Col) -> Result<String, RowError> {
        let s = self.raw(column)?;
        if s.is_empty() {
            return Err(self.err(column, "required"));
        }
        if s.chars().any(char::is_control) {
            return Err(self.err(column, "contains a control character"));
        }
        Ok(s.to_string())
    }

    fn flag(&self, column: Col) -> Result<bool, RowError> {
        match self.bytes(column) {
            b"0" => Ok(false),
            b"1" => Ok(true),
            _ => Err(self.err(column, "expected 0 or 1")),
        }
    }

    /// A group of columns that are all present or all empty.
    fn group(&self, columns: &[Col]) -> Result<bool, RowError> {
        let present = |c: &Col| !self.bytes(*c).is_empty();
        if !columns.iter().any(present) {
            return Ok(false);
        }
        let Some(missing) = columns.iter().position(|c| !present(c)) else {
            return Ok(true);
        };
        // Only on error: say which columns were given.
        let given: Vec<&str> = columns.iter().filter(|c| present(c)).map(|c| c.1).collect();
        Err(self.err(
            columns[missing],
            format!("required when {} is given", given.join(", ")),
        ))
    }

    fn parse(&self) -> Result<EnrolleeRecord, RowError> {
        let person_id = self.req::<u64>(col!("person_id"))?;
        let card = if self.group(&[col!("card_digest"), col!("card_status")])? {
            Some(CardLink {
                digest: self.req::<CardDigest>(col!("card_digest"))?,
                status: self.req::<CardStatus>(col!("card_status"))?,
            })
        } else {
            None
        };
        let birth_date: Date = self.req(col!("birth_date"))?;
        let acquired_date: Date = self.req(col!("acquired_date"))?;
        let loss = if self.group(&[col!("lost_date"), col!("loss_reason")])? {
            Some(Loss {
                date: self.req(col!("lost_date"))?,
                reason: self.req::<LossReason>(col!("loss_reason"))?,
            })
        } else {
            None
        };
        let certificate = if self.group(&[
            col!("cert_issued"),
            col!("cert_valid_from"),
            col!("cert_valid_until"),
        ])? {
            Some(Certificate {
                issued: self.req(col!("cert_issued"))?,
                valid_from: self.req(col!("cert_valid_from"))?,
                valid_until: self.req(col!("cert_valid_until"))?,
            })
        } else {
            None
        };
        let elderly = if self.group(&[
            col!("elderly_valid_from"),
            col!("elderly_valid_until"),
            col!("elderly_percent"),
        ])? {
            Some(ElderlyCertificate {
                valid_from: self.req(col!("elderly_valid_from"))?,
                valid_until: self.req(col!("elderly_valid_until"))?,
                percent: self.req(col!("elderly_percent"))?,
            })
        } else {
            None
        };
        let specific_disease = if self.group(&[col!("disease"), col!("disease_cap_yen")])? {
            Some(SpecificDisease {
                kind: self.req::<DiseaseKind>(col!("disease"))?,
                monthly_cap_yen: self.req(col!("disease_cap_yen"))?,
            })
        } else {
            None
        };
        let public_expense = if self.group(&[
            col!("public_payer"),
            col!("public_recipient"),
            col!("welfare_office"),
            col!("aid_registered"),
        ])? {
            Some(PublicExpense {
                payer: self.req(col!("public_payer"))?,
                recipient: self.req(col!("public_recipient"))?,
                welfare_office: self.text(col!("welfare_office"))?,
                registered: self.flag(col!("aid_registered"))?,
            })
        } else {
            None
        };
        let qualification = Qualification {
            insurer_number: self.req(col!("insurer_number"))?,
            insurer_name: self.text(col!("insurer_name"))?,
            card_class: self.req::<CardClass>(col!("card_class"))?,
            symbol: self.opt(col!("symbol"))?,
            number: self.req(col!("number"))?,
            branch: self.opt(col!("branch"))?,
            relation: self.req::<Relation>(col!("relation"))?,
            name: self.name(col!("name"), parse_name)?,
            name_kana: self.name(col!("name_kana"), parse_kana)?,
            sex: self.req::<Sex>(col!("sex"))?,
            birth_date,
            acquired_date,
            loss,
            certificate,
            copay_percent: self.req::<Percent>(col!("copay_percent"))?,
            preschool: self.flag(col!("preschool"))?,
            elderly,
            limit_category: self.opt::<LimitCategory>(col!("limit_category"))?,
            specific_disease,
            public_expense,
        };
        if let Some((column, reason)) = rules::row_error(&qualification) {
            return Err(RowError {
                line: self.line,
                column: Some(column),
                reason: reason.to_string(),
                unit: RowUnit::Line,
            });
        }
        Ok(EnrolleeRecord {
            person_id,
            card,
            qualification,
        })
    }
}

/// Writes rows in [`COLUMNS`] order.
#[derive(Debug)]
pub struct CsvWriter<W: Write> {
    inner: csv::Writer<W>,
}

impl CsvWriter<BufWriter<File>> {
    /// Creates (or truncates) a CSV file and writes the header row.
    ///
    /// A new file gets mode 0640 (owner read-write, group read; less what
    /// the umask clears): the rows are personal data.
    pub fn create(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(path)?;
        CsvWriter::new(BufWriter::with_capacity(1 << 20, file))
    }
}

impl<W: Write> CsvWriter<W> {
    /// Wraps a writer and writes the header row.
    pub fn new(writer: W) -> io::Result<Self> {
        let mut inner = csv::WriterBuilder::new().from_writer(writer);
        inner.write_record(COLUMNS)?;
        Ok(CsvWriter { inner })
    }

    /// Writes one row.
    pub fn write(&mut self, r: &EnrolleeRecord) -> io::Result<()> {
        self.write_styled(r, false)
    }

    /// Writes one row; with `full_width_symbol`, the symbol's letters and
    /// digits are written full-width, as some insurers' exports do.
    pub fn write_styled(&mut self, r: &EnrolleeRecord, full_width_symbol: bool) -> io::Result<()> {
        fn s<T: ToString>(v: Option<T>) -> String {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        let q = &r.qualification;
        let fields: [String; COLUMNS.len()] = [
            r.person_id.to_string(),
            s(r.card.map(|c| c.digest)),
            s(r.card.map(|c| c.status)),
            q.insurer_number.to_string(),
            q.insurer_name.clone(),
            q.card_class.to_string(),
            match q.symbol {
                Some(sym) if full_width_symbol => to_full_width(sym.as_str()),
                sym => s(sym),
            },
            q.number.to_string(),
            s(q.branch),
            q.relation.to_string(),
            q.name.clone(),
            q.name_kana.clone(),
            q.sex.to_string(),
            q.birth_date.to_string(),
            q.acquired_date.to_string(),
            s(q.loss.map(|l| l.date)),
            s(q.loss.map(|l| l.reason)),
            s(q.certificate.map(|c| c.issued)),
            s(q.certificate.map(|c| c.valid_from)),
            s(q.certificate.map(|c| c.valid_until)),
            q.copay_percent.to_string(),
            u8::from(q.preschool).to_string(),
            s(q.elderly.map(|e| e.valid_from)),
            s(q.elderly.map(|e| e.valid_until)),
            s(q.elderly.map(|e| e.percent)),
            s(q.limit_category),
            s(q.specific_disease.map(|d| d.kind)),
            s(q.specific_disease.map(|d| d.monthly_cap_yen)),
            s(q.public_expense.as_ref().map(|p| p.payer)),
            s(q.public_expense.as_ref().map(|p| p.recipient)),
            s(q.public_expense.as_ref().map(|p| p.welfare_office.clone())),
            s(q.public_expense.as_ref().map(|p| u8::from(p.registered))),
        ];
        self.inner.write_record(&fields).map_err(io::Error::other)
    }

    /// Flushes and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        self.inner
            .into_inner()
            .map_err(|e| io::Error::other(e.to_string()))
    }
}
