//! A CSV export's header and rows, as `snapshot build` reads them, folded
//! into the builder: any bytes give rows or row errors (line, column,
//! reason), never a panic. The first byte chooses whether the input is
//! the whole file (header included) or rows after a valid header.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qualcache::snapshot::Builder;
use qualcache::store::csv::{CsvReader, COLUMNS};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut t = COLUMNS.join(",").into_bytes();
        t.push(b'\n');
        t.extend_from_slice(rest);
        t
    };
    let Ok(mut reader) = CsvReader::new(text.as_slice(), "fuzz.csv") else {
        return;
    };
    let mut builder = Builder::with_capacity(64);
    while let Some(row) = reader.next_record() {
        if let Ok((line, record)) = row {
            let _ = builder.push(line, record);
        }
    }
    let _ = builder.warnings();
    let _ = builder.finish();
});
