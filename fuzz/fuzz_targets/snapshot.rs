//! `Snapshot` opening on arbitrary bytes, and on bytes whose header and
//! archive checksums were made to match (what someone who can write the
//! file could do), so that mutations of a valid snapshot reach rkyv's
//! validation, the full verification and the lookups: an error, never a
//! panic or a wrong read.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qualcache::model::{CardDigest, Date, InsuranceKey};
use qualcache::snapshot::{Header, Snapshot};

fn exercise(s: &Snapshot) {
    let _ = s.verify();
    let as_of: Date = "20261101".parse().unwrap();
    let _ = s.lookup_card(&CardDigest([0x5a; 16]), as_of).status();
    let key = InsuranceKey {
        insurer: "06441133".parse().unwrap(),
        symbol: Some("12-3".parse().unwrap()),
        number: "45".parse().unwrap(),
        branch: None,
    };
    let _ = s
        .lookup_insurance(&key, "19800101".parse().unwrap(), as_of)
        .status();
}

fuzz_target!(|data: &[u8]| {
    let name = Path::new("fuzz.qcs");
    if let Ok(s) = Snapshot::from_bytes(name, data) {
        exercise(&s);
    }
    let Ok(mut header) = Header::decode(data) else {
        return;
    };
    let Ok(offset) = usize::try_from(header.archive_offset) else {
        return;
    };
    let encoded_len = header.encode().len();
    if offset < encoded_len || offset > data.len() {
        return;
    }
    let mut bytes = data.to_vec();
    header.archive_len = (bytes.len() - offset) as u64;
    header.checksum = xxhash_rust::xxh3::xxh3_128(&bytes[offset..]);
    bytes[..encoded_len].copy_from_slice(&header.encode());
    if let Ok(s) = Snapshot::from_bytes(name, &bytes) {
        exercise(&s);
    }
});
