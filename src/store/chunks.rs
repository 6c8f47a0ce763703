//! Reading a CSV export on several threads.
//!
//! One thread reads the file in blocks and cuts them at record boundaries:
//! the last newline outside a quoted field (RFC 4180 quoting keeps `"`
//! parity, so counting quotes is enough). Worker threads parse whole
//! chunks; the caller receives the parsed rows in file order, because chunk
//! `i` always goes to worker `i % workers` and is collected from it in turn.
//! At most two chunks per worker are in flight, so memory stays bounded.

use std::fs::File;
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;

use super::csv::{malformed, parse_record, ColumnIndex, CsvError, CsvReader, RowError};
use crate::model::EnrolleeRecord;
use crate::progress::{Progress, Unit};

/// Bytes read at a time; chunks are about this size.
const BLOCK: usize = 2 << 20;

/// Parsed rows of one chunk, in order.
pub type Batch = Vec<Result<(u64, EnrolleeRecord), RowError>>;

/// A run of whole records and the line the first one starts on.
struct Chunk {
    bytes: Vec<u8>,
    first_line: u64,
}

/// Reads the CSV file at `path` with `workers` parsing threads and hands
/// each batch of parsed rows to `sink`, in file order, until the file ends
/// or `sink` breaks (its consumer failed: the rest is neither read nor
/// parsed). An I/O error stops reading and is returned; bad rows are in
/// the batches. `progress` is told the bytes read, of the file's size.
pub fn read_parallel(
    path: &Path,
    workers: usize,
    progress: &Progress,
    sink: impl FnMut(Batch) -> ControlFlow<()>,
) -> Result<(), CsvError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| CsvError::Io {
        path: name.clone(),
        source,
    })?;
    read_file(&file, &name, workers, progress, sink)
}

/// [`read_parallel`] over a file already open, header included, from
/// wherever its offset is (the start): every byte comes through this one
/// descriptor, so a file renamed over its path meanwhile does not disturb
/// the read. `name` is used in errors. `progress` gets a stage, "reading
/// NAME", sized by the file's length, and the bytes read as they are read.
pub fn read_file(
    file: &File,
    name: &str,
    workers: usize,
    progress: &Progress,
    mut sink: impl FnMut(Batch) -> ControlFlow<()>,
) -> Result<(), CsvError> {
    use std::io::{Seek, SeekFrom};
    let workers = workers.max(1);
    let io_err = |source| CsvError::Io {
        path: name.to_string(),
        source,
    };
    let mut file = file;
    let header = CsvReader::new(io::BufReader::with_capacity(64 << 10, file), name)?;
    let index = *header.column_positions();
    let (start, first_line) = header.data_start();
    drop(header);
    file.seek(SeekFrom::Start(start)).map_err(io_err)?;
    let size = file.metadata().map(|m| m.len()).ok();
    progress.stage(&format!("reading {name}"), size, Unit::Bytes);
    progress.advance(start);

    let failure: Mutex<Option<io::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        let mut to_workers = Vec::new();
        let mut from_workers: Vec<Receiver<Batch>> = Vec::new();
        for _ in 0..workers {
            let (tx, rx) = sync_channel::<Chunk>(2);
            let (btx, brx) = sync_channel::<Batch>(2);
            to_workers.push(tx);
            from_workers.push(brx);
            scope.spawn(move || {
                for chunk in rx {
                    if btx.send(parse_chunk(&chunk, &index)).is_err() {
                        return;
                    }
                }
            });
        }
        let failure = &failure;
        scope.spawn(move || {
            if let Err(e) = cut_chunks(file, first_line, |i, chunk| {
                progress.advance(chunk.bytes.len() as u64);
                to_workers[i % to_workers.len()].send(chunk).is_ok()
            }) {
                *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        });
        // Collect in chunk order; a closed channel means the reader is done.
        for i in 0.. {
            let Ok(batch) = from_workers[i % workers].recv() else {
                break;
            };
            if sink(batch).is_break() {
                break;
            }
        }
        // Closing the channels stops the workers, whose closed channels
        // stop the reader, so the scope ends without reading on.
        drop(from_workers);
    });
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(io_err(e)),
        None => Ok(()),
    }
}

/// Reads `file` to the end and calls `send(i, chunk)` for each chunk of
/// whole records; stops early if `send` returns false.
fn cut_chunks(
    file: &File,
    mut line: u64,
    mut send: impl FnMut(usize, Chunk) -> bool,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(2 * BLOCK);
    let mut i = 0;
    loop {
        let old = buf.len();
        buf.resize(old + BLOCK, 0);
        let n = read_full(file, &mut buf[old..])?;
        buf.truncate(old + n);
        let eof = n == 0;
        let cut = if eof {
            buf.len()
        } else {
            record_boundary(&buf)
        };
        if cut == 0 {
            if eof {
                return Ok(());
            }
            continue; // one record longer than the buffer: read more
        }
        let rest = buf.split_off(cut);
        let chunk = std::mem::replace(&mut buf, rest);
        let lines = memchr::memchr_iter(b'\n', &chunk).count() as u64;
        if !send(
            i,
            Chunk {
                bytes: chunk,
                first_line: line,
            },
        ) {
            return Ok(());
        }
        line += lines;
        i += 1;
        if eof {
            return Ok(());
        }
    }
}

/// Fills `buf` unless the file ends first; returns the bytes read.
fn read_full(mut file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The end of the last whole record in `buf`: one past the last newline
/// that is not inside a quoted field; 0 if there is none.
fn record_boundary(buf: &[u8]) -> usize {
    let mut quoted = false;
    let mut cut = 0;
    for pos in memchr::memchr2_iter(b'"', b'\n', buf) {
        if buf[pos] == b'"' {
            quoted = !quoted;
        } else if !quoted {
            cut = pos + 1;
        }
    }
    cut
}

fn parse_chunk(chunk: &Chunk, index: &ColumnIndex) -> Batch {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&chunk.bytes[..]);
    let mut record = csv::ByteRecord::new();
    let mut out = Vec::with_capacity(chunk.bytes.len() / 150);
    loop {
        let rel = reader.position().line();
        match reader.read_byte_record(&mut record) {
            Ok(false) => return out,
            Ok(true) => {
                let rel = record.position().map_or(rel, |p| p.line());
                let line = chunk.first_line + rel - 1;
                out.push(parse_record(&record, index, line).map(|r| (line, r)));
            }
            Err(e) => {
                let mut err = malformed(&e, rel);
                err.line = chunk.first_line + err.line - 1;
                out.push(Err(err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use super::{read_parallel, record_boundary};
    use crate::progress::Progress;

    #[test]
    fn a_sink_that_breaks_stops_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let g = crate::gen::generate(&crate::gen::GenOptions {
            progress: Default::default(),
            records: 60_000,
            seed: 3,
            out: dir.path().to_path_buf(),
            probes: 10,
            as_of: crate::model::Date::today_jst(),
            card_key: crate::model::CardKey::demo(),
        })
        .unwrap();
        let mut rows = 0;
        let mut batches = 0;
        read_parallel(&g.csv, 2, &Progress::none(), |b| {
            batches += 1;
            rows += b.len();
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(batches > 4, "the file should span several chunks");
        assert_eq!(rows as u64, g.records);
        let mut after_break = 0;
        read_parallel(&g.csv, 2, &Progress::none(), |_| {
            after_break += 1;
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(after_break, 1, "no batch after the sink broke");
    }

    #[test]
    fn boundaries_skip_quoted_newlines() {
        assert_eq!(record_boundary(b"a,b\nc,d\ne"), 8);
        assert_eq!(record_boundary(b"a,\"x\ny\"\nc"), 8);
        assert_eq!(record_boundary(b"a,\"x\ny"), 0);
        assert_eq!(record_boundary(b"a,\"\"\"\"\nb"), 7);
        assert_eq!(record_boundary(b"no newline"), 0);
    }
}
