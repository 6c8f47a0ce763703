//! Rows of a binary `COPY ... TO STDOUT` as raw fields, without a heap
//! allocation per row (the export reads tens of millions of them).
//!
//! Format (PostgreSQL docs, "COPY: Binary Format"): an 11-byte signature,
//! a flags word and a header extension, then per row a 16-bit field count
//! and, per field, a 32-bit length (-1 for NULL) and the bytes; a count of
//! -1 ends the data. The server sends one row per CopyData message.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio_postgres::CopyOutStream;

use super::{query_error, PgError};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The most columns a row may have.
pub(crate) const MAX_FIELDS: usize = 16;

/// One row: its message and where each field lies in it.
#[derive(Debug)]
pub(crate) struct RawRow {
    buf: Bytes,
    count: usize,
    /// (start, length) per field; length -1 for NULL.
    spans: [(u32, i32); MAX_FIELDS],
}

impl RawRow {
    /// Field `i`: `None` for NULL (or past the row's end).
    pub(crate) fn field(&self, i: usize) -> Option<&[u8]> {
        if i >= self.count {
            return None;
        }
        let (start, len) = self.spans[i];
        let len = usize::try_from(len).ok()?;
        self.buf.get(start as usize..start as usize + len)
    }
}

/// The rows of a binary COPY.
pub(crate) struct CopyRows {
    stream: Pin<Box<CopyOutStream>>,
    columns: usize,
    header_seen: bool,
}

impl CopyRows {
    /// Rows of `stream`, which must have `columns` fields each.
    pub(crate) fn new(stream: CopyOutStream, columns: usize) -> CopyRows {
        assert!(columns <= MAX_FIELDS, "at most {MAX_FIELDS} columns");
        CopyRows {
            stream: Box::pin(stream),
            columns,
            header_seen: false,
        }
    }

    /// The next row; `None` after the last.
    pub(crate) async fn next(&mut self) -> Result<Option<RawRow>, PgError> {
        let Some(buf) = self
            .stream
            .try_next()
            .await
            .map_err(|e| query_error("reading the export", &e))?
        else {
            return Ok(None);
        };
        let row = parse_message(buf, !self.header_seen, self.columns)?;
        self.header_seen = true;
        Ok(row)
    }
}

/// One CopyData message of a binary COPY whose rows have `columns` fields
/// (at most [`MAX_FIELDS`]); the first message also carries the file
/// header (`first`). `None` for the end-of-data marker.
pub(crate) fn parse_message(
    buf: Bytes,
    first: bool,
    columns: usize,
) -> Result<Option<RawRow>, PgError> {
    let columns = columns.min(MAX_FIELDS);
    let mut at = 0usize;
    if first {
        at = header_len(&buf).ok_or_else(|| malformed("bad header"))?;
    }
    let count = read_i16(&buf, at).ok_or_else(|| malformed("truncated row"))?;
    at += 2;
    if count == -1 {
        return Ok(None);
    }
    if usize::try_from(count).ok() != Some(columns) {
        return Err(malformed("unexpected field count"));
    }
    let mut spans = [(0u32, -1i32); MAX_FIELDS];
    for span in spans.iter_mut().take(columns) {
        let len = read_i32(&buf, at).ok_or_else(|| malformed("truncated row"))?;
        at += 4;
        let start = u32::try_from(at).map_err(|_| malformed("row too long"))?;
        if len >= 0 {
            at = at
                .checked_add(len as usize)
                .filter(|&end| end <= buf.len())
                .ok_or_else(|| malformed("truncated field"))?;
        } else if len != -1 {
            return Err(malformed("bad field length"));
        }
        *span = (start, len);
    }
    Ok(Some(RawRow {
        buf,
        count: columns,
        spans,
    }))
}

fn malformed(why: &str) -> PgError {
    PgError::Query {
        during: "reading the export",
        reason: format!("malformed binary COPY data: {why}"),
    }
}

/// Length of the file header at the start of `buf`.
fn header_len(buf: &[u8]) -> Option<usize> {
    if !buf.starts_with(SIGNATURE) {
        return None;
    }
    let flags = read_i32(buf, SIGNATURE.len())?;
    if flags & (1 << 16) != 0 {
        return None; // OIDs included: never asked for.
    }
    let extension = usize::try_from(read_i32(buf, SIGNATURE.len() + 4)?).ok()?;
    let end = SIGNATURE.len() + 8 + extension;
    (end <= buf.len()).then_some(end)
}

fn read_i16(buf: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_recognised_and_oids_refused() {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&0i32.to_be_bytes());
        h.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(header_len(&h), Some(19));
        h.extend_from_slice(&[0, 1]);
        assert_eq!(header_len(&h), Some(19));
        let mut oids = SIGNATURE.to_vec();
        oids.extend_from_slice(&(1i32 << 16).to_be_bytes());
        oids.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(header_len(&oids), None);
        assert_eq!(header_len(b"PGCOPY\n"), None);
    }
}
