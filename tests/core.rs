//! Integration tests of the snapshot core: lookup semantics on both paths,
//! the snapshot file (round trip, corruption), the CSV store, generated
//! probes, and the `qualcache` command line.

mod util;

use std::fs;

use qualcache::model::{CardKey, CardStatus, Date, InsuranceKey, Status};
use qualcache::probe::key_id;
use qualcache::snapshot::{Answer, Snapshot, SnapshotError};
use util::*;

const AS_OF: &str = "20261101";

/// One person per feature of the lookup semantics.
fn fixture(dir: &std::path::Path) -> Snapshot {
    use CardStatus::*;
    let mut six = qual("600", Some(0), "19600101", "20000401");
    six.insurer_number = "138057".parse().unwrap();
    six.insurer_name = "東京第1市国民健康保険".into();
    snapshot(
        dir,
        vec![
            // 1: valid, registered card.
            rec(
                1,
                card("5E01", Registered),
                qual("100", Some(0), "19800101", "20100401"),
            ),
            // 2: job change: 200 lost on 2020-04-01, 201 from then on.
            rec(
                2,
                card("5E02", Registered),
                lost(qual("200", Some(0), "19750101", "20050401"), "20200401"),
            ),
            rec(
                2,
                card("5E02", Registered),
                qual("201", Some(0), "19750101", "20200401"),
            ),
            // 3: lost, nothing newer.
            rec(
                3,
                card("5E03", Registered),
                lost(qual("300", Some(0), "19700101", "20000401"), "20250101"),
            ),
            // 4: a family; the twins share a birth date.
            rec(40, None, qual("400", Some(0), "19700101", "20000401")),
            rec(41, None, qual("400", Some(1), "20100505", "20100505")),
            rec(42, None, qual("400", Some(2), "20100505", "20100505")),
            // 5, 6: medical aid, ticket not registered / registered.
            rec(
                5,
                card("5E05", Registered),
                medical_aid("5000001", "19900101", "20200101", false),
            ),
            rec(
                6,
                None,
                medical_aid("6000001", "19900202", "20200101", true),
            ),
            // 7: card withdrawn; 8: card use restricted.
            rec(
                7,
                card("5E07", Withdrawn),
                qual("700", Some(0), "19810101", "20100401"),
            ),
            rec(
                8,
                card("5E08", Restricted),
                qual("800", Some(0), "19820101", "20100401"),
            ),
            // 9: a 6-digit NHI insurer number.
            rec(9, None, six),
        ],
    )
}

fn by_card<'a>(s: &'a Snapshot, serial: &str, as_of: &str) -> Answer<'a> {
    s.lookup_card(&digest(serial), date(as_of))
}

fn by_key<'a>(
    s: &'a Snapshot,
    insurer: &str,
    symbol: Option<&str>,
    number: &str,
    branch: Option<&str>,
    birth: &str,
    as_of: &str,
) -> Answer<'a> {
    let key = InsuranceKey::parse(insurer, symbol, number, branch).unwrap();
    s.lookup_insurance(&key, date(birth), date(as_of))
}

/// The key identity of the answer's qualification, or "" if none.
fn id(a: &Answer<'_>) -> String {
    match a {
        Answer::Found { qualification, .. } => key_id(&qualification.to_qualification().unwrap()),
        _ => String::new(),
    }
}

#[test]
fn every_status_by_card() {
    let dir = tempdir();
    let s = fixture(dir.path());
    // (serial, as_of, expected status, expected number of the qualification)
    let cases: &[(&str, &str, Status, &str)] = &[
        ("5E01", AS_OF, Status::Valid, "01130012:1234:100:00"),
        ("5E02", AS_OF, Status::Valid, "01130012:1234:201:00"),
        ("5E02", "20200331", Status::Valid, "01130012:1234:200:00"),
        ("5E03", AS_OF, Status::Lost, "01130012:1234:300:00"),
        (
            "5E05",
            AS_OF,
            Status::ValidUnregistered,
            "12130019::5000001:",
        ),
        ("5E01", "20100331", Status::NotFound, ""),
        ("5E07", AS_OF, Status::CardNotRegistered, ""),
        ("5E08", AS_OF, Status::CardRestricted, ""),
        ("FFFF0000", AS_OF, Status::CardNotRegistered, ""),
        (" 5E01 ", AS_OF, Status::Valid, "01130012:1234:100:00"),
        ("5e01", AS_OF, Status::Valid, "01130012:1234:100:00"),
        (
            "\u{3000}５Ｅ０１",
            AS_OF,
            Status::Valid,
            "01130012:1234:100:00",
        ),
        ("５ｅ０１", AS_OF, Status::Valid, "01130012:1234:100:00"),
    ];
    for &(serial, as_of, status, key) in cases {
        let a = by_card(&s, serial, as_of);
        assert_eq!(a.status(), status, "card {serial:?} as of {as_of}");
        assert_eq!(id(&a), key, "card {serial:?} as of {as_of}");
    }
}

#[test]
fn every_status_by_insurance_key() {
    let dir = tempdir();
    let s = fixture(dir.path());
    let k = "01130012";
    // (insurer, symbol, number, branch, birth, as_of, status, key)
    #[allow(clippy::type_complexity)]
    let cases: &[(
        &str,
        Option<&str>,
        &str,
        Option<&str>,
        &str,
        &str,
        Status,
        &str,
    )] = &[
        (
            k,
            Some("1234"),
            "100",
            Some("00"),
            "19800101",
            AS_OF,
            Status::Valid,
            "01130012:1234:100:00",
        ),
        // Full-width and padded input is normalised.
        (
            k,
            Some("１２３４"),
            "１００",
            Some("００"),
            "19800101",
            AS_OF,
            Status::Valid,
            "01130012:1234:100:00",
        ),
        (
            k,
            Some(" 1234\u{3000}"),
            "100",
            None,
            "19800101",
            AS_OF,
            Status::Valid,
            "01130012:1234:100:00",
        ),
        (
            "00138057",
            Some("1234"),
            "600",
            Some("00"),
            "19600101",
            AS_OF,
            Status::Valid,
            "138057:1234:600:00",
        ),
        (
            "  138057",
            Some("1234"),
            "600",
            None,
            "19600101",
            AS_OF,
            Status::Valid,
            "138057:1234:600:00",
        ),
        // Lost with a newer qualification, lost, and valid before the loss.
        (
            k,
            Some("1234"),
            "200",
            Some("00"),
            "19750101",
            AS_OF,
            Status::LostWithNewer,
            "01130012:1234:200:00",
        ),
        (
            k,
            Some("1234"),
            "200",
            Some("00"),
            "19750101",
            "20200331",
            Status::Valid,
            "01130012:1234:200:00",
        ),
        (
            k,
            Some("1234"),
            "300",
            Some("00"),
            "19700101",
            AS_OF,
            Status::Lost,
            "01130012:1234:300:00",
        ),
        // Not found: unknown number, wrong symbol, wrong birth date, not yet acquired.
        (
            k,
            Some("1234"),
            "999",
            None,
            "19800101",
            AS_OF,
            Status::NotFound,
            "",
        ),
        (
            k,
            Some("1235"),
            "100",
            None,
            "19800101",
            AS_OF,
            Status::NotFound,
            "",
        ),
        (
            k,
            None,
            "100",
            None,
            "19800101",
            AS_OF,
            Status::NotFound,
            "",
        ),
        (
            k,
            Some("1234"),
            "100",
            Some("00"),
            "19800102",
            AS_OF,
            Status::NotFound,
            "",
        ),
        (
            k,
            Some("1234"),
            "100",
            Some("01"),
            "19800101",
            AS_OF,
            Status::NotFound,
            "",
        ),
        (
            k,
            Some("1234"),
            "100",
            Some("00"),
            "19800101",
            "20100331",
            Status::NotFound,
            "",
        ),
        // A family: the twins match together without a branch.
        (
            k,
            Some("1234"),
            "400",
            None,
            "20100505",
            AS_OF,
            Status::MultipleHits,
            "",
        ),
        (
            k,
            Some("1234"),
            "400",
            Some("02"),
            "20100505",
            AS_OF,
            Status::Valid,
            "01130012:1234:400:02",
        ),
        (
            k,
            Some("1234"),
            "400",
            None,
            "19700101",
            AS_OF,
            Status::Valid,
            "01130012:1234:400:00",
        ),
        // Medical aid: unregistered ticket answers 6, registered 1.
        (
            "12130019",
            None,
            "5000001",
            None,
            "19900101",
            AS_OF,
            Status::ValidUnregistered,
            "12130019::5000001:",
        ),
        (
            "12130019",
            None,
            "6000001",
            None,
            "19900202",
            AS_OF,
            Status::Valid,
            "12130019::6000001:",
        ),
        // Withdrawn or restricted cards do not affect the numbers path.
        (
            k,
            Some("1234"),
            "700",
            Some("00"),
            "19810101",
            AS_OF,
            Status::Valid,
            "01130012:1234:700:00",
        ),
        (
            k,
            Some("1234"),
            "800",
            Some("00"),
            "19820101",
            AS_OF,
            Status::Valid,
            "01130012:1234:800:00",
        ),
    ];
    for &(insurer, symbol, number, branch, birth, as_of, status, key) in cases {
        let a = by_key(&s, insurer, symbol, number, branch, birth, as_of);
        let what = format!("{insurer}/{symbol:?}/{number}/{branch:?} born {birth} as of {as_of}");
        assert_eq!(a.status(), status, "{what}");
        assert_eq!(id(&a), key, "{what}");
    }
}

#[test]
fn lost_with_newer_carries_the_newer_one() {
    let dir = tempdir();
    let s = fixture(dir.path());
    let a = by_key(
        &s,
        "01130012",
        Some("1234"),
        "200",
        Some("00"),
        "19750101",
        AS_OF,
    );
    let Answer::Found { newer: Some(n), .. } = a else {
        panic!("expected a newer qualification, got {a:?}");
    };
    assert_eq!(
        key_id(&n.to_qualification().unwrap()),
        "01130012:1234:201:00"
    );
}

#[test]
fn multiple_hits_list_the_matches() {
    let dir = tempdir();
    let s = fixture(dir.path());
    let a = by_key(&s, "01130012", Some("1234"), "400", None, "20100505", AS_OF);
    let Answer::Multiple(m) = a else {
        panic!("expected multiple hits, got {a:?}");
    };
    let mut keys: Vec<String> = m
        .iter()
        .map(|v| key_id(&v.to_qualification().unwrap()))
        .collect();
    keys.sort();
    assert_eq!(keys, ["01130012:1234:400:01", "01130012:1234:400:02"]);
}

/// The persons an answer carries (the audit trail's "whom"), by their
/// store ids: none when nothing is answered.
#[test]
fn answers_name_the_persons_they_carry() {
    let dir = tempdir();
    let s = fixture(dir.path());
    let persons = |a: Answer<'_>| {
        let mut p: Vec<u64> = a.persons().collect();
        p.sort_unstable();
        p
    };
    assert_eq!(persons(by_card(&s, "5E02", AS_OF)), [2]);
    assert_eq!(persons(by_card(&s, "5E02", "20200331")), [2]);
    assert_eq!(
        persons(by_key(
            &s,
            "01130012",
            Some("1234"),
            "400",
            None,
            "20100505",
            AS_OF
        )),
        [41, 42]
    );
    assert_eq!(
        persons(by_key(
            &s,
            "01130012",
            Some("1234"),
            "200",
            Some("00"),
            "19750101",
            AS_OF
        )),
        [2],
        "lost with newer: one person"
    );
    // And the store rows (here the lines the records were pushed at) of
    // the qualifications answered.
    let rows = |a: Answer<'_>| {
        let mut r: Vec<u64> = a.rows().collect();
        r.sort_unstable();
        r
    };
    assert_eq!(rows(by_card(&s, "5E02", AS_OF)), [4]);
    assert_eq!(
        rows(by_key(
            &s,
            "01130012",
            Some("1234"),
            "200",
            Some("00"),
            "19750101",
            AS_OF
        )),
        [3, 4],
        "the lost one and the newer one"
    );
    assert_eq!(
        rows(by_key(
            &s,
            "01130012",
            Some("1234"),
            "400",
            None,
            "20100505",
            AS_OF
        )),
        [7, 8]
    );
    assert!(persons(by_card(&s, "5E08", AS_OF)).is_empty(), "restricted");
    assert!(
        persons(by_card(&s, "FFFF0000", AS_OF)).is_empty(),
        "unknown card"
    );
    assert!(persons(by_key(
        &s,
        "01130012",
        Some("1234"),
        "100",
        Some("00"),
        "19800102",
        AS_OF
    ))
    .is_empty());
}

#[test]
fn a_wrong_birth_date_answers_like_an_unknown_key() {
    let dir = tempdir();
    let s = fixture(dir.path());
    let wrong = by_key(
        &s,
        "01130012",
        Some("1234"),
        "100",
        Some("00"),
        "19800102",
        AS_OF,
    );
    let unknown = by_key(
        &s,
        "01130012",
        Some("1234"),
        "101",
        Some("00"),
        "19800101",
        AS_OF,
    );
    assert!(matches!(wrong, Answer::NotFound));
    assert!(matches!(unknown, Answer::NotFound));
    // Nor does a family reveal its members to a wrong birth date.
    let family = by_key(&s, "01130012", Some("1234"), "400", None, "20100506", AS_OF);
    assert!(matches!(family, Answer::NotFound));
}

#[test]
fn a_restricted_card_never_returns_the_qualification() {
    let dir = tempdir();
    let s = fixture(dir.path());
    for as_of in ["20100401", AS_OF, "20300101"] {
        assert!(matches!(by_card(&s, "5E08", as_of), Answer::CardRestricted));
    }
}

#[test]
fn snapshots_are_new_files_and_never_replaced() {
    let dir = tempdir();
    let first = fixture(dir.path());
    let before = fs::read(first.path()).unwrap();
    let second = fixture(dir.path());
    assert_eq!(first.header().generation, 1);
    assert_eq!(second.header().generation, 2);
    assert_eq!(second.path(), dir.path().join("2.qcs"));
    assert_eq!(fs::read(first.path()).unwrap(), before);
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
}

#[test]
fn header_describes_the_snapshot() {
    let dir = tempdir();
    let s = fixture(dir.path());
    let h = s.header();
    assert_eq!(h.records, 12);
    assert_eq!(h.persons, 11);
    assert_eq!(h.pointer_width, 64);
    assert_eq!(h.endianness, "little");
    assert_eq!(h.card_key_id, CardKey::demo().id());
    assert_eq!(h.archive_offset, 512);
    assert_eq!(
        h.archive_offset + h.archive_len,
        fs::metadata(s.path()).unwrap().len()
    );
    let report = s.verify().unwrap();
    assert_eq!((report.records, report.persons, report.cards), (12, 11, 6));
}

/// Copies the fixture snapshot, applies `damage`, and opens the copy.
fn open_damaged(damage: impl FnOnce(&mut Vec<u8>)) -> SnapshotError {
    let dir = tempdir();
    let s = fixture(dir.path());
    let mut bytes = fs::read(s.path()).unwrap();
    damage(&mut bytes);
    let path = dir.path().join("damaged.qcs");
    fs::write(&path, &bytes).unwrap();
    Snapshot::open(&path).expect_err("a damaged snapshot must be refused")
}

/// Rewrites the header with `edit` applied and a correct header checksum.
fn reheader(bytes: &mut [u8], edit: impl FnOnce(&mut [u8])) {
    edit(&mut bytes[..512]);
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..504]);
    bytes[504..512].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn corrupt_snapshots_are_refused_with_a_clear_error() {
    let cases: Vec<(&str, SnapshotError, &str)> = vec![
        ("empty", open_damaged(|b| b.clear()), "truncated header"),
        (
            "truncated",
            open_damaged(|b| b.truncate(b.len() - 100)),
            "truncated archive",
        ),
        (
            "trailing",
            open_damaged(|b| b.extend_from_slice(b"x")),
            "trailing data",
        ),
        (
            "flipped archive byte",
            open_damaged(|b| {
                let i = b.len() - 700;
                b[i] ^= 0x10
            }),
            "checksum mismatch",
        ),
        (
            "flipped header byte",
            open_damaged(|b| b[30] ^= 1),
            "header checksum",
        ),
        ("wrong magic", open_damaged(|b| b[0] = b'X'), "bad magic"),
        (
            "wrong format version",
            open_damaged(|b| b[8] = 9),
            "format version 9",
        ),
        (
            "wrong schema version",
            open_damaged(|b| reheader(b, |h| h[12] = 99)),
            "schema version 99",
        ),
        (
            "32-bit pointers",
            open_damaged(|b| reheader(b, |h| h[16] = 32)),
            "32-bit pointers",
        ),
        (
            "big endian",
            open_damaged(|b| reheader(b, |h| h[17] = b'B')),
            "big endian",
        ),
        (
            "archive past the end",
            open_damaged(|b| reheader(b, |h| h[64] = h[64].wrapping_add(8))),
            "truncated archive",
        ),
    ];
    for (what, err, expected) in cases {
        let msg = err.to_string();
        assert!(
            msg.contains(expected),
            "{what}: {msg:?} should mention {expected:?}"
        );
    }
}

#[test]
fn a_checksummed_but_invalid_archive_is_refused_by_bytecheck() {
    // Damage the archive, then fix the checksum: only validation can tell.
    let err = open_damaged(|b| {
        let n = b.len();
        // The root (last bytes) holds relative pointers; point one far away.
        for x in &mut b[n - 16..n - 8] {
            *x = 0x7f;
        }
        let sum = xxhash_rust::xxh3::xxh3_128(&b[512..]);
        reheader(b, |h| h[72..88].copy_from_slice(&sum.to_le_bytes()));
    });
    assert!(err.to_string().contains("invalid archive"), "{err}");
}

mod csv_store {
    use super::*;
    use qualcache::build::{build_from_csv, BuildFailure, BuildOptions};
    use qualcache::snapshot::BuildError;
    use qualcache::store::csv::{CsvReader, CsvWriter, RowError};

    fn csv_of(records: &[qualcache::model::EnrolleeRecord]) -> String {
        let mut w = CsvWriter::new(Vec::new()).unwrap();
        for r in records {
            w.write(r).unwrap();
        }
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    fn sample() -> Vec<qualcache::model::EnrolleeRecord> {
        vec![
            rec(
                1,
                card("5E01", CardStatus::Registered),
                qual("100", Some(0), "19800101", "20100401"),
            ),
            rec(
                2,
                None,
                lost(qual("200", Some(0), "19750101", "20050401"), "20200401"),
            ),
            rec(2, None, qual("201", Some(0), "19750101", "20200401")),
            rec(
                5,
                None,
                medical_aid("5000001", "19900101", "20200101", false),
            ),
        ]
    }

    fn build(text: &str, skip_invalid: bool) -> (Result<u64, BuildFailure>, Vec<RowError>) {
        let dir = tempdir();
        let path = dir.path().join("in.csv");
        fs::write(&path, text).unwrap();
        let mut skipped = Vec::new();
        let opts = BuildOptions {
            progress: Default::default(),
            skip_invalid,
            card_key_id: CardKey::demo().id(),
        };
        let r = build_from_csv(&path, &dir.path().join("snap"), &opts, |e| {
            skipped.push(e.clone())
        });
        (r.map(|s| s.records), skipped)
    }

    fn row_errors(r: Result<u64, BuildFailure>) -> Vec<RowError> {
        match r {
            Err(BuildFailure::Build(BuildError::Rows { errors, .. })) => errors,
            other => panic!("expected row errors, got {other:?}"),
        }
    }

    #[test]
    fn rows_round_trip_through_csv() {
        let records = sample();
        let text = csv_of(&records);
        let mut r = CsvReader::new(text.as_bytes(), "mem").unwrap();
        let mut back = Vec::new();
        while let Some(row) = r.next_record() {
            back.push(row.unwrap().1);
        }
        assert_eq!(back, records);
    }

    /// Replaces one field of data row `row` (0-based) in CSV text.
    fn edit(text: &str, row: usize, column: &str, value: &str) -> String {
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let col = qualcache::store::csv::COLUMNS
            .iter()
            .position(|c| *c == column)
            .unwrap();
        let mut fields: Vec<String> = lines[row + 1].split(',').map(String::from).collect();
        fields[col] = value.to_string();
        lines[row + 1] = fields.join(",");
        lines.join("\n") + "\n"
    }

    #[test]
    fn bad_rows_are_reported_by_line_and_column() {
        let text = csv_of(&sample());
        // (row, column, value, expected reason)
        let cases = [
            (0, "insurer_number", "01130013", "check digit"),
            (0, "insurer_number", "0113001", "6 or 8 digits"),
            (0, "birth_date", "19800230", "no such calendar day"),
            (0, "branch", "1", "2 digits"),
            (0, "card_status", "lost", "card status"),
            (0, "card_digest", "", "required when card_status is given"),
            (0, "sex", "4", "sex"),
            (0, "number", "", "required"),
            (1, "lost_date", "20050401", "not after acquired_date"),
            (1, "loss_reason", "", "required when lost_date is given"),
            (3, "public_payer", "12130018", "check digit"),
            (3, "aid_registered", "yes", "expected 0 or 1"),
            (2, "name", "別人　花子", "differs from line 3"),
            // Names: full-width, parts separated by one U+3000.
            (0, "name", "山田 太郎", "exactly one U+3000"),
            (0, "name", "山田　　太郎", "exactly one U+3000"),
            (0, "name", "山田太郎", "separated by one U+3000"),
            (0, "name", "Yamada　Taro", "must be full-width"),
            (0, "name", "ﾔﾏﾀﾞ　ﾀﾛｳ", "must be full-width"),
            (0, "name_kana", "やまだ　たろう", "full-width katakana"),
            (0, "name_kana", "ﾔﾏﾀﾞ　ﾀﾛｳ", "full-width katakana"),
            (0, "name_kana", "山田　太郎", "full-width katakana"),
            (0, "name_kana", "", "required"),
            // The card digest column speaks of itself, not of the key.
            (0, "card_digest", "abc", "32 hexadecimal digits"),
            (0, "card_digest", &"0".repeat(33), "32 hexadecimal digits"),
            // Full-width punctuation counts against the 38 bytes after
            // normalisation, like any other character.
            (0, "symbol", &"－".repeat(39), "longer than 38 bytes"),
        ];
        for (row, column, value, reason) in cases {
            let (r, _) = build(&edit(&text, row, column, value), false);
            let errors = row_errors(r);
            assert_eq!(errors.len(), 1, "{column}={value:?}: {errors:?}");
            let e = &errors[0];
            assert_eq!(e.line, row as u64 + 2, "{column}={value:?}");
            assert_eq!(e.column, Some(column), "{column}={value:?}");
            assert!(e.to_string().contains(reason), "{column}={value:?}: {e}");
            // Personal data is never echoed.
            assert!(!e.to_string().contains(value) || value.len() < 2, "{e}");
        }
    }

    /// Rules of domain.md a row breaks with well-formed fields: refused
    /// (row errors) or built and counted (warnings).
    #[test]
    fn domain_rules_refuse_or_count_rows() {
        let text = csv_of(&sample());
        let elderly = util::history::elderly_insurer();
        // (edits of row 0, born 1980-01-01: column and value; the column
        // blamed, the reason)
        type Edits<'a> = &'a [(&'a str, &'a str)];
        let refused: &[(Edits, &str, &str)] = &[
            (
                &[
                    ("elderly_valid_from", "20400101"),
                    ("elderly_valid_until", "20441231"),
                    ("elderly_percent", "20"),
                ],
                "elderly_valid_from",
                "before the 70th birthday",
            ),
            (
                &[
                    ("elderly_valid_from", "20500201"),
                    ("elderly_valid_until", "20550101"),
                    ("elderly_percent", "20"),
                ],
                "elderly_valid_until",
                "on or after the 75th birthday",
            ),
            (
                &[
                    ("elderly_valid_from", "20500201"),
                    ("elderly_valid_until", "20541231"),
                    ("elderly_percent", "20"),
                    ("lost_date", "20500201"),
                    ("loss_reason", "01"),
                ],
                "elderly_valid_from",
                "on or after lost_date",
            ),
            (
                &[("insurer_number", &elderly), ("branch", "")],
                "symbol",
                "scheme 39",
            ),
            (
                &[("insurer_number", &elderly), ("symbol", "")],
                "branch",
                "scheme 39",
            ),
        ];
        for (edits, column, reason) in refused {
            let edited = edits
                .iter()
                .fold(text.clone(), |t, (c, v)| edit(&t, 0, c, v));
            let errors = row_errors(build(&edited, false).0);
            assert_eq!(errors.len(), 1, "{edits:?}: {errors:?}");
            assert_eq!((errors[0].line, errors[0].column), (2, Some(*column)));
            assert!(errors[0].reason.contains(reason), "{}", errors[0]);
        }
        // The elderly certificate of a person 70-74 is fine: 2050-02-01
        // to the day before the 75th birthday.
        let fine = [
            ("elderly_valid_from", "20500201"),
            ("elderly_valid_until", "20541231"),
            ("elderly_percent", "20"),
            ("limit_category", "B04"),
        ]
        .iter()
        .fold(text.clone(), |t, (c, v)| edit(&t, 0, c, v));
        assert_eq!(build(&fine, false).0.unwrap(), 4);

        // Warnings: built as they are, counted by rule in the summary.
        let dir = tempdir();
        let csv = dir.path().join("w.csv");
        let warned = edit(
            &edit(&text, 0, "limit_category", "B01"),
            2,
            "limit_category",
            "A01",
        );
        fs::write(&csv, edit(&warned, 3, "limit_category", "B02")).unwrap();
        let (ok, out, err) = run(&[
            "snapshot",
            "build",
            "--source",
            csv.to_str().unwrap(),
            "--out",
            dir.path().join("s").to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary["records"], 4);
        assert_eq!(
            summary["warnings"],
            serde_json::json!([{
                "rule": "limit_category_70_plus_under_70",
                "message": "limit_category B01-B10 (70 and over) on a person under 70 on the qualification's last day",
                "column": "limit_category",
                "count": 2,
                "first": "line 2",
            }]),
            "{out}"
        );
        // A under 70 for the one lost at 45 (row 1, line 3) is fine; so is
        // A01 on row 2 (45 today).
    }

    #[test]
    fn skip_invalid_builds_without_the_bad_rows() {
        let text = edit(&csv_of(&sample()), 0, "birth_date", "1980");
        let (r, _) = build(&text, false);
        assert_eq!(row_errors(r).len(), 1);
        let (r, skipped) = build(&text, true);
        assert_eq!(r.unwrap(), 3);
        assert_eq!(skipped.len(), 1);
        assert_eq!(
            (skipped[0].line, skipped[0].column),
            (2, Some("birth_date"))
        );
    }

    /// An export rewritten in place while a build reads it (here: its
    /// modification time moves when the build meets a bad row) must not
    /// become a snapshot recording the final fingerprint over partial
    /// rows: the build fails, writes nothing, and a build of the settled
    /// file then succeeds and records its fingerprint.
    #[test]
    fn a_csv_changed_while_it_is_read_fails_the_build() {
        let dir = tempdir();
        let path = dir.path().join("in.csv");
        let snap = dir.path().join("snap");
        fs::write(&path, edit(&csv_of(&sample()), 0, "birth_date", "19800230")).unwrap();
        let opts = BuildOptions {
            progress: Default::default(),
            skip_invalid: true,
            card_key_id: CardKey::demo().id(),
        };
        let err = build_from_csv(&path, &snap, &opts, |_| {
            let later = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(later)
                .unwrap();
        })
        .unwrap_err();
        assert!(matches!(err, BuildFailure::SourceChanged { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("the CSV was written into while it was read")
                && message.contains("export to a temporary name and rename"),
            "{message}"
        );
        assert!(qualcache::snapshot::list_generations(&snap)
            .unwrap()
            .is_empty());
        let summary = build_from_csv(&path, &snap, &opts, |_| {}).unwrap();
        assert_eq!(summary.records, 3);
        let header = qualcache::snapshot::Header::read(&summary.path).unwrap();
        assert_eq!(
            header.source_version,
            qualcache::store::csv::file_fingerprint(&path)
        );
    }

    /// `bytes` written to a new file in `dir`.
    fn path_of_copy(dir: &tempfile::TempDir, bytes: &str) -> std::path::PathBuf {
        let p = dir.path().join("copy.csv");
        fs::write(&p, bytes).unwrap();
        p
    }

    /// What README tells exporters to do, a new file renamed over the
    /// source, while a build reads it: the build reads the file it opened
    /// to the end, succeeds, and records that file's fingerprint, so the
    /// daemon's next check sees the new one as a change.
    #[test]
    fn a_csv_renamed_over_the_source_during_a_build_does_not_disturb_it() {
        let dir = tempdir();
        let path = dir.path().join("in.csv");
        let snap = dir.path().join("snap");
        let before_bytes = edit(&csv_of(&sample()), 0, "birth_date", "19800230");
        fs::write(&path, &before_bytes).unwrap();
        let before = qualcache::store::csv::file_fingerprint(&path);
        let opts = BuildOptions {
            progress: Default::default(),
            skip_invalid: true,
            card_key_id: CardKey::demo().id(),
        };
        let mut renamed = false;
        let summary = build_from_csv(&path, &snap, &opts, |_| {
            // The bad row is met mid-read: a whole new export replaces it.
            let next = dir.path().join("in.csv.tmp");
            fs::write(&next, csv_of(&sample()[..1])).unwrap();
            fs::rename(&next, &path).unwrap();
            renamed = true;
        })
        .unwrap();
        assert!(renamed);
        let undisturbed = build_from_csv(&path_of_copy(&dir, &before_bytes), &snap, &opts, |_| {})
            .unwrap()
            .records;
        assert_eq!(summary.records, undisturbed, "the rows of the file opened");
        let header = qualcache::snapshot::Header::read(&summary.path).unwrap();
        assert_eq!(header.source_version, before);
        assert_ne!(qualcache::store::csv::file_fingerprint(&path), before);
    }

    /// A new person's first row refused for a reason found late (its
    /// insurer_name contradicts an earlier row's) must leave nothing behind
    /// under --skip-invalid: not an empty person, not its card.
    #[test]
    fn a_refused_first_row_leaves_the_builder_unchanged() {
        let mut records = sample();
        let mut bad = rec(
            3,
            card("5E03", CardStatus::Registered),
            qual("300", Some(0), "19700101", "20000401"),
        );
        bad.qualification.insurer_name = "別の保険者".into();
        let good = rec(
            3,
            card("5E03", CardStatus::Registered),
            qual("301", Some(0), "19700101", "20000401"),
        );
        // Person 1, then person 3's bad row and a good one, then 2 and 5.
        records.insert(1, good);
        records.insert(1, bad);
        let dir = tempdir();
        let path = dir.path().join("in.csv");
        fs::write(&path, csv_of(&records)).unwrap();
        let opts = BuildOptions {
            progress: Default::default(),
            skip_invalid: true,
            card_key_id: CardKey::demo().id(),
        };
        let mut skipped = Vec::new();
        let summary = build_from_csv(&path, &dir.path().join("snap"), &opts, |e| {
            skipped.push(e.clone())
        })
        .unwrap();
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(
            (skipped[0].line, skipped[0].column),
            (3, Some("insurer_name"))
        );
        assert_eq!((summary.records, summary.persons), (5, 4));
        let snap = Snapshot::open(&summary.path).unwrap();
        snap.verify().unwrap();
        let a = by_card(&snap, "5E03", AS_OF);
        assert_eq!(a.status(), Status::Valid);
        assert_eq!(id(&a), "01130012:1234:301:00");
        assert_eq!(by_card(&snap, "5E01", AS_OF).status(), Status::Valid);
        assert_eq!(
            by_key(
                &snap,
                "01130012",
                Some("1234"),
                "300",
                Some("00"),
                "19700101",
                AS_OF
            )
            .status(),
            Status::NotFound
        );
        assert_eq!(
            by_key(
                &snap,
                "01130012",
                Some("1234"),
                "201",
                Some("00"),
                "19750101",
                AS_OF
            )
            .status(),
            Status::Valid
        );
    }

    #[test]
    fn overlapping_keys_and_split_persons_are_errors() {
        let mut records = sample();
        let mut dup = records[0].clone();
        dup.person_id = 9;
        dup.card = None;
        records.push(dup);
        let errors = row_errors(build(&csv_of(&records), true).0);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 6);
        assert!(
            errors[0].reason.contains("overlapping period"),
            "{}",
            errors[0]
        );
        assert!(errors[0].reason.contains("line 2"), "{}", errors[0]);

        // Same key, another person with another birth date: still an
        // overlap, since both hold the key at once.
        let mut records = sample();
        let mut dup = records[0].clone();
        dup.person_id = 9;
        dup.card = None;
        dup.qualification.birth_date = date("19990909");
        dup.qualification.acquired_date = date("20200101");
        records.push(dup);
        let errors = row_errors(build(&csv_of(&records), false).0);
        assert!(
            errors[0].reason.contains("overlapping period"),
            "{}",
            errors[0]
        );

        let mut records = sample();
        let mut again = records[0].clone();
        again.qualification.number = "101".parse().unwrap();
        records.push(again);
        let errors = row_errors(build(&csv_of(&records), false).0);
        assert_eq!(errors[0].column, Some("person_id"));
        assert!(errors[0].reason.contains("not adjacent"), "{}", errors[0]);

        let mut records = sample();
        let mut same_card = records[3].clone();
        same_card.person_id = 6;
        same_card.card = records[0].card;
        same_card.qualification.number = "5000002".parse().unwrap();
        records.push(same_card);
        let errors = row_errors(build(&csv_of(&records), false).0);
        assert!(errors[0].reason.contains("same card"), "{}", errors[0]);
    }

    #[test]
    fn bad_headers_and_malformed_csv() {
        let text = csv_of(&sample());
        let no_sex = text.replacen("sex,", "gender,", 1);
        let err = CsvReader::new(no_sex.as_bytes(), "in.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown column \"gender\""), "{err}");
        // An export without a header row: its first row is data, which the
        // error must not repeat (a name, a date, an insurer number).
        let lines: Vec<&str> = text.lines().collect();
        let headerless = lines[1..].join("\n") + "\n";
        let err = CsvReader::new(headerless.as_bytes(), "in.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("column 1 is not a known column name"), "{err}");
        assert!(!err.contains('"'), "{err}");
        for value in ["山田　太郎", "19800101", "01130012"] {
            let mut fields: Vec<&str> = lines[0].split(',').collect();
            fields[3] = value;
            let first_row = fields.join(",") + "\n" + &lines[1..].join("\n");
            let err = CsvReader::new(first_row.as_bytes(), "in.csv")
                .unwrap_err()
                .to_string();
            assert!(err.contains("column 4 is not a known column name"), "{err}");
            assert!(!err.contains(value), "{err}");
        }
        let short = text.replacen(",sex", "", 1);
        let err = CsvReader::new(short.as_bytes(), "in.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing columns: sex"), "{err}");

        // A short row, a name that is not UTF-8, and a quoted field with a
        // newline inside (which moves the line numbers after it).
        let rows: Vec<&str> = text.lines().collect();
        let mut bad = Vec::new();
        for l in &rows[..3] {
            bad.extend_from_slice(l.as_bytes());
            bad.push(b'\n');
        }
        bad.extend_from_slice(b"1,2,3\n"); // line 4
                                           // The medical-aid row; its last 東京福祉事務所 is the welfare office.
        let aid = rows[4];
        let at = aid.rfind("東京福祉事務所").unwrap();
        let mut row = aid.as_bytes().to_vec();
        row[at] = 0xff; // welfare_office: invalid UTF-8, line 5
        bad.extend_from_slice(&row);
        bad.push(b'\n');
        let quoted = rows[1].replacen(
            "全国健康保険協会　東京支部",
            "\"全国健康保険協会\n東京支部\"",
            1,
        );
        bad.extend_from_slice(quoted.as_bytes()); // lines 6-7
        bad.push(b'\n');
        bad.extend_from_slice(b"1,2\n"); // line 8
        let dir = tempdir();
        let p = dir.path().join("bad.csv");
        fs::write(&p, &bad).unwrap();
        let expected: Vec<(u64, Option<&str>, &str)> = vec![
            (4, None, "expected 32 fields, found 3"),
            (5, Some("welfare_office"), "not valid UTF-8"),
            (6, Some("insurer_name"), "contains a control character"),
            (8, None, "expected 32 fields, found 2"),
        ];
        // The sequential reader and the parallel one agree.
        let mut reader = CsvReader::open(&p).unwrap();
        let mut errs = Vec::new();
        while let Some(r) = reader.next_record() {
            if let Err(e) = r {
                errs.push(e);
            }
        }
        let mut par = Vec::new();
        qualcache::store::chunks::read_parallel(
            &p,
            2,
            &qualcache::progress::Progress::none(),
            |batch| {
                par.extend(batch.into_iter().filter_map(Result::err));
                std::ops::ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!(errs, par);
        let got: Vec<(u64, Option<&str>, &str)> = errs
            .iter()
            .map(|e| (e.line, e.column, e.reason.as_str()))
            .collect();
        assert_eq!(got, expected);
    }
}

mod generated {
    use super::*;
    use qualcache::gen::{generate, GenOptions};
    use qualcache::probe::{check, read_probes};

    fn gen(dir: &std::path::Path, records: u64, seed: u64) -> qualcache::gen::GenSummary {
        generate(&GenOptions {
            progress: Default::default(),
            records,
            seed,
            out: dir.to_path_buf(),
            probes: 3_000,
            as_of: date(AS_OF),
            card_key: CardKey::demo(),
        })
        .unwrap()
    }

    #[test]
    fn every_generated_probe_answers_as_expected() {
        let dir = tempdir();
        let g = gen(dir.path(), 60_000, 11);
        assert_eq!(g.records, 60_000);
        let opts = qualcache::build::BuildOptions {
            progress: Default::default(),
            skip_invalid: false,
            card_key_id: CardKey::demo().id(),
        };
        let built =
            qualcache::build::build_from_csv(&g.csv, &dir.path().join("snap"), &opts, |e| {
                panic!("generated data has a bad row: {e}")
            })
            .unwrap();
        assert_eq!(built.records, 60_000);
        // No generated row breaks a rule of domain.md, not even a warning
        // one (the build judges qualifications not lost on the day it
        // runs; the data is made as of AS_OF, within a year of it).
        assert!(built.warnings.is_empty(), "{:?}", built.warnings);
        assert!(
            built.bytes_per_record < 200.0,
            "{} B/record",
            built.bytes_per_record
        );
        let snap = Snapshot::open(&built.path).unwrap();
        snap.verify().unwrap();
        let probes = read_probes(&g.probes).unwrap();
        let mut cases = std::collections::BTreeMap::new();
        for (i, p) in probes.iter().enumerate() {
            if let Err(why) = check(&snap, &CardKey::demo(), p) {
                panic!("probe line {} ({}): {why}", i + 1, p.case);
            }
            *cases.entry(p.case.as_str()).or_insert(0) += 1;
        }
        // Every case the generator knows is covered.
        for &case in qualcache::gen::CASES {
            assert!(
                cases.get(case).copied().unwrap_or(0) > 0,
                "no probe for {case}: {cases:?}"
            );
        }
        // Every status is expected somewhere.
        for status in Status::ALL {
            assert!(
                probes.iter().any(|p| p.expect == status),
                "no probe expects {status}"
            );
        }
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let (a, b, c) = (tempdir(), tempdir(), tempdir());
        gen(a.path(), 5_000, 3);
        gen(b.path(), 5_000, 3);
        gen(c.path(), 5_000, 4);
        for f in ["enrollees.csv", "probes.jsonl"] {
            let read = |d: &tempfile::TempDir| fs::read(d.path().join(f)).unwrap();
            assert_eq!(read(&a), read(&b), "{f} differs for the same seed");
            assert_ne!(read(&a), read(&c), "{f} is the same for another seed");
        }
        let csv = fs::read_to_string(a.path().join("enrollees.csv")).unwrap();
        // Edge cases of domain.md are present.
        assert!(
            csv.contains("ＡＢ") || csv.chars().any(|c| ('\u{FF10}'..='\u{FF19}').contains(&c)),
            "full-width symbols"
        );
        assert!(
            csv.lines()
                .any(|l| l.split(',').nth(3).is_some_and(|n| n.len() == 6)),
            "6-digit insurers"
        );
        assert!(
            csv.lines()
                .any(|l| l.split(',').nth(3).is_some_and(|n| n.starts_with("39"))),
            "late elderly"
        );
        assert!(csv.contains(",A1,"), "medical aid");
        assert!(
            csv.contains(",withdrawn,") && csv.contains(",restricted,"),
            "card states"
        );
        let left: Vec<String> = fs::read_dir(a.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    /// `gen`, `snapshot build` and `snapshot verify` say what they are
    /// doing and how far they are, and reach their totals exactly.
    #[test]
    fn long_tasks_report_how_far_they_are() {
        use qualcache::progress::Progress;
        let dir = tempdir();
        let tape = std::sync::Arc::new(util::Tape::default());
        let g = generate(&GenOptions {
            progress: Progress::to(tape.clone()),
            records: 50_000,
            seed: 4,
            out: dir.path().to_path_buf(),
            probes: 100,
            as_of: date(AS_OF),
            card_key: CardKey::demo(),
        })
        .unwrap();
        let csv = g.csv.display().to_string();
        assert_eq!(
            tape.stages(),
            [(format!("generating {csv}"), Some(50_000), 50_000)]
        );

        let size = fs::metadata(&g.csv).unwrap().len();
        let opts = qualcache::build::BuildOptions {
            progress: Progress::to(tape.clone()),
            skip_invalid: false,
            card_key_id: CardKey::demo().id(),
        };
        let built =
            qualcache::build::build_from_csv(&g.csv, &dir.path().join("snap"), &opts, |_| {})
                .unwrap();
        assert_eq!(
            tape.stages(),
            [
                (format!("reading {csv}"), Some(size), size),
                ("building the indexes".to_string(), None, 0),
                ("writing the snapshot".to_string(), None, 0),
            ]
        );

        let snap = Snapshot::open(&built.path).unwrap();
        let report = snap.verify_reporting(&Progress::to(tape.clone())).unwrap();
        assert_eq!(
            tape.stages(),
            [
                (
                    "checking persons".to_string(),
                    Some(report.persons),
                    report.persons
                ),
                ("checking records".to_string(), Some(50_000), 50_000),
                ("checking the indexes".to_string(), None, 0),
            ]
        );
    }

    /// `gen` killed half-way leaves no `enrollees.csv` or `probes.jsonl`
    /// (the daemon takes an existing `enrollees.csv` for a complete one).
    #[test]
    fn a_killed_gen_leaves_no_partial_output() {
        let dir = tempdir();
        let out = dir.path().join("out");
        let mut child = std::process::Command::new(bin())
            .args(["gen", "--records", "200000000", "--out"])
            .arg(&out)
            .env_remove("QUALCACHE_CARD_KEY")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until rows are being written (bounded: 60 s).
        let writing = |name: &str| fs::metadata(out.join(name)).is_ok_and(|m| m.len() > 1 << 16);
        let mut started = false;
        for _ in 0..600 {
            if writing("enrollees.csv") || writing(".enrollees.csv.tmp") {
                started = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(started, "gen wrote nothing");
        assert!(
            !out.join("enrollees.csv").exists(),
            "a partial enrollees.csv"
        );
        assert!(!out.join("probes.jsonl").exists(), "a partial probes.jsonl");
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;
    use qualcache::model::{
        Branch, Certificate, DiseaseKind, ElderlyCertificate, KeyText, LimitCategory, Loss,
        LossReason, Percent, SpecificDisease,
    };

    fn day(lo: i32, hi: i32) -> impl Strategy<Value = Date> {
        (lo..hi).prop_map(|d| Date::from_day_number(d).unwrap())
    }

    prop_compose! {
        fn arb_qual(i: usize)(
            symbol in proptest::option::of("[0-9A-Za-z０-９Ａ-Ｚ記号東京]{1,8}"),
            branch in proptest::option::of(0u8..100),
            birth in day(-20000, 19000),
            acquired_after in 0i32..10000,
            lost_after in proptest::option::of(1i32..5000),
            cert in proptest::option::of((0i32..3000, 0i32..2000)),
            elderly in proptest::option::of(0i32..2000),
            limit in proptest::option::of(0usize..LimitCategory::ALL.len()),
            disease in proptest::option::of((0usize..3, 0u32..100_000)),
            name in "[一-龠]{1,3}(　[ぁ-ん]{1,4})?",
            preschool in any::<bool>(),
        ) -> qualcache::model::Qualification {
            let mut q = qual(&format!("{}", 10_000 + i), branch, "19700101", "19900101");
            q.symbol = symbol.map(|s| s.parse::<KeyText>().unwrap());
            q.branch = branch.map(|b| Branch::new(b).unwrap());
            q.birth_date = birth;
            q.acquired_date = birth.add_days(acquired_after);
            q.loss = lost_after.map(|d| Loss { date: q.acquired_date.add_days(d), reason: LossReason::Other });
            q.certificate = cert.map(|(a, b)| Certificate {
                issued: q.acquired_date.add_days(a),
                valid_from: q.acquired_date.add_days(a),
                valid_until: q.acquired_date.add_days(a + b),
            });
            q.elderly = elderly.map(|d| ElderlyCertificate {
                valid_from: birth.add_years(70),
                valid_until: birth.add_years(70).add_days(d),
                percent: Percent::Twenty,
            });
            q.limit_category = limit.map(|i| LimitCategory::ALL[i]);
            q.specific_disease = disease.map(|(k, cap)| SpecificDisease { kind: DiseaseKind::ALL[k], monthly_cap_yen: cap });
            q.name = name.clone();
            q.name_kana = name;
            q.preschool = preschool;
            q
        }
    }

    fn arb_records() -> impl Strategy<Value = Vec<qualcache::model::EnrolleeRecord>> {
        (1usize..40).prop_flat_map(|n| {
            (0..n)
                .map(|i| (arb_qual(i), any::<bool>(), 0u8..4))
                .collect::<Vec<_>>()
                .prop_map(|quals| {
                    let mut person = 0;
                    quals
                        .into_iter()
                        .enumerate()
                        .map(|(i, (q, new_person, card_state))| {
                            if new_person || i == 0 {
                                person = i as u64 + 1;
                            }
                            let status = [
                                None,
                                Some(CardStatus::Registered),
                                Some(CardStatus::Withdrawn),
                                Some(CardStatus::Restricted),
                            ][card_state as usize];
                            (person, q, status)
                        })
                        .collect::<Vec<_>>()
                })
                .prop_map(|rows| {
                    // Person-level fields must agree across a person's rows.
                    let mut out: Vec<qualcache::model::EnrolleeRecord> = Vec::new();
                    for (person, mut q, status) in rows {
                        let card = status.and_then(|s| card(&format!("{person:04X}"), s));
                        if let Some(prev) = out.last().filter(|r| r.person_id == person) {
                            let p = &prev.qualification;
                            q.name = p.name.clone();
                            q.name_kana = p.name_kana.clone();
                            q.sex = p.sex;
                            q.birth_date = p.birth_date;
                            q.acquired_date = q.acquired_date.max(q.birth_date);
                            if let Some(l) = q.loss.as_mut() {
                                l.date = l.date.max(q.acquired_date.add_days(1));
                            }
                            if let Some(e) = q.elderly.as_mut() {
                                e.valid_from = q.birth_date.add_years(70);
                                e.valid_until = e.valid_until.max(e.valid_from);
                            }
                            let card = prev.card;
                            out.push(rec(person, card, q));
                        } else {
                            out.push(rec(person, card, q));
                        }
                    }
                    out
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Build from generated records, then look each one up by its key
        /// and birth date and get it back exactly.
        #[test]
        fn every_record_comes_back_exactly(records in arb_records()) {
            let dir = tempdir();
            let snap = snapshot(dir.path(), records.clone());
            snap.verify().unwrap();
            let far = date("29991231");
            for r in &records {
                let q = &r.qualification;
                let key = InsuranceKey {
                    insurer: q.insurer_number,
                    symbol: q.symbol,
                    number: q.number,
                    branch: q.branch,
                };
                let a = snap.lookup_insurance(&key, q.birth_date, far);
                let Answer::Found { qualification, .. } = a else {
                    panic!("not found: {a:?}");
                };
                prop_assert_eq!(&qualification.to_qualification().unwrap(), q);
            }
        }
    }
}

mod cli {
    use super::*;

    #[test]
    fn a_malformed_birth_date_is_refused_without_being_repeated() {
        let (ok, _, err) = run(&[
            "query",
            "--server",
            "127.0.0.1:9",
            "--ca",
            "ca.pem",
            "--cert",
            "t.pem",
            "--key",
            "t.key",
            "insurance",
            "--insurer",
            "06130488",
            "--number",
            "1",
            "--birth",
            "1980011",
        ]);
        assert!(!ok);
        assert!(err.contains("--birth") && err.contains("YYYYMMDD"), "{err}");
        assert!(!err.contains("1980011"), "{err}");
    }

    /// Every path of subcommands in `cmd`'s tree (its own path first).
    fn command_paths(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(path.clone());
        for sub in cmd.get_subcommands() {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            command_paths(sub, p, out);
        }
    }

    /// Runs `qualcache ARGS` with its stdout and stderr on a pseudo-terminal
    /// (`script` from util-linux), as a person at a terminal does; returns
    /// what the terminal showed.
    fn on_a_terminal(args: &str) -> String {
        let out = std::process::Command::new("script")
            .args(["-qec", &format!("{} {args}", bin().display()), "/dev/null"])
            .env_remove("QUALCACHE_CARD_KEY")
            .output()
            .expect("script (util-linux) runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// On a terminal, `gen` and `snapshot build` draw a progress bar on
    /// stderr; with `--quiet`, or when stderr is not a terminal (a script,
    /// a log), they do not, and stdout is the JSON summary alone.
    #[test]
    fn progress_bars_show_on_a_terminal_only() {
        let dir = tempdir();
        let out = dir.path().join("data");
        let shown = on_a_terminal(&format!("gen --records 20000 --out {}", out.display()));
        assert!(shown.contains("generating"), "{shown}");
        assert!(shown.contains("\"records\": 20000"), "{shown}");
        let csv = out.join("enrollees.csv");
        let snaps = dir.path().join("snap");
        let shown = on_a_terminal(&format!(
            "snapshot build --source {} --out {}",
            csv.display(),
            snaps.display()
        ));
        assert!(
            shown.contains(&format!("reading {}", csv.display())),
            "{shown}"
        );
        assert!(shown.contains("\"generation\": "), "{shown}");

        let quiet = on_a_terminal(&format!(
            "--quiet gen --records 20000 --out {}",
            out.display()
        ));
        assert!(!quiet.contains("generating"), "{quiet}");
        assert!(quiet.contains("\"records\": 20000"), "{quiet}");

        let out_dir = out.display().to_string();
        let (ok, stdout, stderr) = run(&["gen", "--records", "20000", "--out", &out_dir]);
        assert!(ok, "{stderr}");
        assert_eq!(stderr, "", "nothing on a stderr that is not a terminal");
        let summary: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
        assert_eq!(summary["records"], 20000);
        let (ok, stdout, stderr) = run(&["snapshot", "verify", "-q", &snaps.display().to_string()]);
        assert!(ok, "{stderr}");
        assert_eq!(stderr, "");
        let report: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
        assert_eq!(report["records"], 20000);
    }

    #[test]
    fn every_subcommand_has_help() {
        use clap::CommandFactory;
        let mut paths = Vec::new();
        command_paths(&qualcache::cli::Cli::command(), Vec::new(), &mut paths);
        // The tree is the real one: the subcommands README.md documents.
        for expected in [
            "gen",
            "snapshot build",
            "snapshot inspect",
            "snapshot verify",
            "snapshot rollback",
            "lookup card",
            "lookup insurance",
            "check",
            "demo",
            "certs",
            "query card",
            "query insurance",
            "query batch",
            "query status",
            "db migrate",
            "db load",
            "db status",
        ] {
            assert!(
                paths.iter().any(|p| p.join(" ") == expected),
                "no subcommand {expected:?} in {paths:?}"
            );
        }
        for path in &paths {
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push("--help");
            let (ok, out, err) = run(&args);
            assert!(ok, "{args:?}: {err}");
            // The usage line names this subcommand's path, in order (the
            // parents' required options may stand between its words).
            let usage = out
                .lines()
                .find(|l| l.starts_with("Usage: qualcache"))
                .unwrap_or_else(|| panic!("{args:?}: no usage line in {out}"));
            let mut words = usage.split_whitespace();
            for name in path {
                assert!(words.any(|w| w == name), "{args:?}: usage {usage:?}");
            }
        }
    }

    /// Generated data and snapshots hold names and birth dates: they are
    /// created owner read-write, group read, nothing for others.
    #[test]
    fn data_files_and_snapshots_are_not_world_readable() {
        let dir = tempdir();
        let d = dir.path().to_str().unwrap();
        let (ok, _, err) = run(&["gen", "--records", "500", "--out", d]);
        assert!(ok, "{err}");
        let expected = 0o640 & !umask();
        for f in ["enrollees.csv", "probes.jsonl"] {
            let mode = mode_of(&dir.path().join(f));
            assert_eq!(mode, expected, "{f}: {mode:o}");
        }
        let csv = format!("{d}/enrollees.csv");
        let snaps = format!("{d}/snaps");
        let (ok, out, err) = run(&["snapshot", "build", "--source", &csv, "--out", &snaps]);
        assert!(ok, "{err}");
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        let file = std::path::PathBuf::from(summary["path"].as_str().unwrap());
        assert_eq!(mode_of(&file), expected, "{}", file.display());
        assert_eq!(mode_of(&file) & 0o007, 0);
    }

    /// A build that cannot write its file (here: past a file size limit,
    /// as on a full disk) says which file and why in the OS's words, and
    /// leaves no temporary file behind.
    #[test]
    fn a_build_that_cannot_write_names_the_file_and_the_os_error() {
        let dir = tempdir();
        let d = dir.path().to_str().unwrap();
        let (ok, _, err) = run(&["gen", "--records", "2000", "--out", d]);
        assert!(ok, "{err}");
        // SIGXFSZ ignored, so the write fails with EFBIG instead.
        let (ok, _, err) = util::outcome(std::process::Command::new("bash").args([
            "-c",
            &format!(
                "trap '' XFSZ; ulimit -f 64; exec {} snapshot build --source {d}/enrollees.csv --out {d}/snaps",
                util::bin().display()
            ),
        ]));
        assert!(!ok);
        assert!(
            err.contains(".qcs.tmp") && err.contains("File too large (os error 27)"),
            "{err}"
        );
        assert!(!err.contains("without error information"), "{err}");
        let left: Vec<_> = fs::read_dir(dir.path().join("snaps")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// `snapshot build` removes the temporary files of builds that were
    /// killed (their process is gone), never a running build's.
    #[test]
    fn snapshot_build_removes_abandoned_temporary_files_only() {
        let dir = tempdir();
        let d = dir.path().to_str().unwrap();
        let (ok, _, err) = run(&["gen", "--records", "500", "--out", d]);
        assert!(ok, "{err}");
        let snaps = dir.path().join("snaps");
        fs::create_dir(&snaps).unwrap();
        // No process has this id (above the kernel's pid_max).
        let dead = snaps.join(".build-4294967290-1.qcs.tmp");
        // This test's own process is running.
        let live = snaps.join(format!(".build-{}-1.qcs.tmp", std::process::id()));
        fs::write(&dead, "partial").unwrap();
        fs::write(&live, "partial").unwrap();
        let (ok, _, err) = run(&[
            "snapshot",
            "build",
            "--source",
            &format!("{d}/enrollees.csv"),
            "--out",
            snaps.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        assert!(
            err.contains("removed 1 temporary files of abandoned builds"),
            "{err}"
        );
        assert!(!dead.exists());
        assert!(live.exists(), "a running build's file was removed");
    }

    #[test]
    fn gen_build_inspect_verify_lookup() {
        let dir = tempdir();
        let d = dir.path().to_str().unwrap();
        let (ok, out, err) = run(&["gen", "--records", "3000", "--seed", "5", "--out", d]);
        assert!(ok, "{err}");
        assert!(out.contains("\"records\": 3000"), "{out}");
        let csv = format!("{d}/enrollees.csv");
        let snaps = format!("{d}/snaps");
        let (ok, out, err) = run(&["snapshot", "build", "--source", &csv, "--out", &snaps]);
        assert!(ok, "{err}");
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        for field in ["path", "generation", "records", "bytes", "seconds"] {
            assert!(summary.get(field).is_some(), "summary lacks {field}: {out}");
        }
        let file = summary["path"].as_str().unwrap().to_string();
        let (ok, out, _) = run(&["snapshot", "inspect", &file]);
        assert!(ok);
        let header: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(header["records"], 3000);
        assert_eq!(header["pointer_width"], 64);
        // The creation time for people too: ISO 8601 in Japan time, and the age.
        let created = header["created_at_unix"].as_u64().unwrap();
        assert_eq!(
            header["created_at"],
            qualcache::model::date::iso_jst(created).as_str()
        );
        assert!(header["created_at"].as_str().unwrap().ends_with("+09:00"));
        assert!(header["age_seconds"].as_u64().unwrap() < 600, "{out}");
        let (ok, out, _) = run(&["snapshot", "verify", &snaps]);
        assert!(ok && out.contains("\"records\": 3000"), "{out}");
        let probes = format!("{d}/probes.jsonl");
        let (ok, out, _) = run(&["check", "--snapshot", &snaps, "--probes", &probes]);
        assert!(ok && out.contains("\"failed\": 0"), "{out}");
        // With another card key, check says so instead of failing every
        // card probe one by one.
        let other = format!("{d}/other.key");
        fs::write(&other, "ab".repeat(32)).unwrap();
        let (ok, _, err) = run(&[
            "check",
            "--snapshot",
            &snaps,
            "--probes",
            &probes,
            "--card-key-file",
            &other,
        ]);
        assert!(!ok && err.contains("card key differs"), "{err}");

        // A lookup by numbers of the first probe of that kind.
        let line = fs::read_to_string(&probes).unwrap();
        let p: serde_json::Value = line
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|p| {
                p["case"] == "ins_hit" && p.get("symbol").is_some() && p.get("branch").is_some()
            })
            .unwrap();
        let (ok, out, err) = run(&[
            "lookup",
            "--snapshot",
            &snaps,
            "--as-of",
            p["as_of"].as_str().unwrap(),
            "insurance",
            "--insurer",
            p["insurer"].as_str().unwrap(),
            "--symbol",
            p["symbol"].as_str().unwrap(),
            "--number",
            p["number"].as_str().unwrap(),
            "--branch",
            p["branch"].as_str().unwrap(),
            "--birth",
            p["birth"].as_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(answer["status"], 1);
        assert_eq!(answer["qualification"]["number"], p["number"]);

        let p: serde_json::Value = line
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|p| p["case"] == "card_restricted")
            .unwrap();
        let (ok, out, _) = run(&[
            "lookup",
            "--snapshot",
            &snaps,
            "--as-of",
            AS_OF,
            "card",
            p["serial"].as_str().unwrap(),
        ]);
        assert!(ok);
        assert!(
            out.contains("\"status\": 8") && !out.contains("qualification"),
            "{out}"
        );

        // Corrupt the snapshot: verify and lookup fail with one line.
        let mut bytes = fs::read(&file).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0xff;
        fs::write(&file, bytes).unwrap();
        let (ok, _, err) = run(&["snapshot", "verify", &file]);
        assert!(!ok);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn errors_are_one_line_without_personal_data() {
        let dir = tempdir();
        let missing = dir.path().join("none.qcs");
        let (ok, _, err) = run(&[
            "lookup",
            "--snapshot",
            missing.to_str().unwrap(),
            "card",
            "ABC",
        ]);
        assert!(!ok);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("none.qcs"), "{err}");
        assert!(!err.contains("panicked"), "{err}");

        let s = fixture(dir.path());
        let path = s.path().to_str().unwrap();
        let (ok, _, err) = run(&[
            "lookup",
            "--snapshot",
            path,
            "insurance",
            "--insurer",
            "01130013",
            "--number",
            "100",
            "--birth",
            "19800101",
        ]);
        assert!(!ok);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("insurer number: check digit") && !err.contains("01130013"),
            "{err}"
        );
        let (ok, _, err) = run(&[
            "lookup",
            "--snapshot",
            path,
            "--as-of",
            "20261301",
            "card",
            "5E01",
        ]);
        assert!(!ok && !err.contains("panicked"), "{err}");

        let csv = dir.path().join("bad.csv");
        fs::write(&csv, "person_id\n1\n").unwrap();
        let (ok, _, err) = run(&[
            "snapshot",
            "build",
            "--source",
            csv.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ]);
        assert!(!ok);
        assert!(err.contains("missing columns"), "{err}");
    }
}

/// The hand-made history (`util::history`): every case through the
/// library and through `qualcache lookup`, on a snapshot built from the
/// export by `qualcache snapshot build`.
mod history {
    use super::*;
    use qualcache::answer::AnswerJson;
    use util::history::{cases, cli_args, csv, Seen};

    /// `qualcache snapshot build --source CSV --out DIR EXTRA...`.
    fn build_snapshot(
        csv: &std::path::Path,
        out: &std::path::Path,
        extra: &[&str],
    ) -> (bool, String, String) {
        let (csv, out) = (csv.to_str().unwrap(), out.to_str().unwrap());
        let mut args = vec!["snapshot", "build", "--source", csv, "--out", out];
        args.extend(extra);
        run(&args)
    }

    #[test]
    fn hand_made_history_answers_right_in_the_library_and_the_cli() {
        let dir = tempdir();
        let csv_path = dir.path().join("history.csv");
        fs::write(&csv_path, csv()).unwrap();
        let snap_dir = dir.path().join("snap");
        let (ok, out, err) = build_snapshot(&csv_path, &snap_dir, &[]);
        assert!(ok, "{err}");
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary["records"], 12, "{out}");
        assert_eq!(summary["warnings"][0]["count"], 1, "{out}");
        assert_eq!(summary["warnings"][0]["first"], "line 13", "{out}");

        let snap = Snapshot::open(&snap_dir.join("1.qcs")).unwrap();
        snap.verify().unwrap();
        let key = CardKey::demo();
        for c in cases() {
            let answer = c.lookup.run(&snap, &key, date(c.as_of)).unwrap();
            let json = serde_json::to_value(AnswerJson::new(&answer, 1).unwrap()).unwrap();
            c.expect.check(&Seen::from_json(&json), c.what, "library");

            let mut args = vec!["lookup", "--snapshot", snap_dir.to_str().unwrap()];
            let rest = cli_args(&c);
            args.extend(rest.iter().map(String::as_str));
            let (ok, out, err) = run(&args);
            assert!(ok, "cli: {}: {err}", c.what);
            let json: serde_json::Value = serde_json::from_str(&out).unwrap();
            c.expect.check(&Seen::from_json(&json), c.what, "cli");
        }

        // Card serials the daemon refuses, the CLI refuses with the same
        // words (tests/daemon.rs checks the daemon's).
        let snap = snap_dir.to_str().unwrap();
        for (serial, reason) in [
            ("", "card: serial is empty"),
            ("\u{3000} ", "card: serial is empty"),
            (
                &"A".repeat(41),
                "card: serial is longer than 40 hexadecimal digits",
            ),
            ("2A2O", "card: serial is not hexadecimal (0-9, A-F)"),
            ("2A:20", "card: serial is not hexadecimal (0-9, A-F)"),
        ] {
            let (ok, _, err) = run(&["lookup", "--snapshot", snap, "card", "--", serial]);
            assert!(!ok, "{serial:?}");
            assert!(err.contains(reason), "{serial:?}: {err}");
            assert!(serial.trim().len() < 2 || !err.contains(serial), "{err}");
        }
    }

    #[test]
    fn overlapping_periods_of_one_key_name_both_lines() {
        let text = csv();
        // Person 20 rejoined on 2015-04-01 after losing the key on
        // 2010-04-01 (line 2): moving the loss past the rejoining makes
        // the periods overlap.
        let overlapping = text.replacen(",20100401,03,", ",20150402,03,", 1);
        assert_ne!(overlapping, text);
        let dir = tempdir();
        let path = dir.path().join("o.csv");
        fs::write(&path, &overlapping).unwrap();
        let (ok, _, err) = build_snapshot(&path, &dir.path().join("s"), &["--skip-invalid"]);
        assert!(!ok, "an overlap fails the build even with --skip-invalid");
        assert!(
            err.contains("line 3, column number: the same insurance key")
                && err.contains("as line 2 in an overlapping period"),
            "{err}"
        );
        // Ending the first period the day the second begins is no overlap.
        let touching = text.replacen(",20100401,03,", ",20150401,03,", 1);
        fs::write(&path, &touching).unwrap();
        let (ok, _, err) = build_snapshot(&path, &dir.path().join("t"), &[]);
        assert!(ok, "{err}");
    }

    #[test]
    fn full_width_and_half_width_spellings_are_one_key() {
        // Person 25's symbol is `１２－３` in the export; a second row
        // (another person) with `12-3` and an overlapping period is the
        // same key.
        let mut text = csv();
        let line25 = text
            .lines()
            .find(|l| l.starts_with("25,"))
            .unwrap()
            .to_string();
        let twin = line25
            .replacen("25,", "29,", 1)
            .replacen(",１２－３,", ",12-3,", 1)
            .replacen(",19900909,", ",19911111,", 1);
        text.push_str(&twin);
        text.push('\n');
        let dir = tempdir();
        let path = dir.path().join("d.csv");
        fs::write(&path, &text).unwrap();
        let (ok, _, err) = build_snapshot(&path, &dir.path().join("s"), &[]);
        assert!(!ok);
        assert!(
            err.contains("line 14, column number") && err.contains("as line 10"),
            "{err}"
        );
    }
}
