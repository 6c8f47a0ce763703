//! A small hand-made data set with what real insurer exports hold and the
//! generator does not make, and the lookups that must answer it right:
//! one table, run through the library, the command line, the daemon and
//! the PostgreSQL path alike.
//!
//! - person 20 left and rejoined under the same key (two qualifications,
//!   periods apart);
//! - persons 21 and 22: one number given again after its first holder died;
//! - person 23: a loss and a new qualification in the future (after the
//!   usual as-of day);
//! - person 24: two job changes, the newer qualification lost too;
//! - person 25: a symbol with punctuation, written full-width in the export;
//! - person 26: a 6-digit NHI insurer number;
//! - person 27: late-stage elderly (scheme 39: no symbol, no branch) with
//!   an elderly-age 70+ limit category;
//! - person 28: a 70+ limit category at 45 (built, counted as a warning).

use qualcache::model::numbers::check_digit;
use qualcache::model::{CardStatus, EnrolleeRecord, LimitCategory, LossReason, Percent};
use qualcache::probe::ProbeLookup;
use qualcache::protocol::pb;
use qualcache::store::csv::CsvWriter;

use super::{card, date, lost, qual, rec};

/// `body` followed by its check digit.
pub fn with_check(body: &str) -> String {
    let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    format!("{body}{}", check_digit(&digits))
}

/// The late-stage elderly insurer of person 27 (scheme 39, Tokyo).
pub fn elderly_insurer() -> String {
    with_check("3913001")
}

/// The records, in person order.
pub fn records() -> Vec<EnrolleeRecord> {
    use CardStatus::Registered;
    let died = |mut q: qualcache::model::Qualification, on: &str| {
        q = lost(q, on);
        q.loss.as_mut().unwrap().reason = LossReason::Death;
        q
    };
    let mut punct = qual("2500", Some(0), "19900909", "20100401");
    punct.symbol = Some("12-3".parse().unwrap());
    let mut nhi = qual("2600", Some(0), "19600101", "20000401");
    nhi.insurer_number = "138057".parse().unwrap();
    nhi.insurer_name = "東京第1市国民健康保険".into();
    let mut elderly = qual("00002700", None, "19400202", "20150202");
    elderly.insurer_number = elderly_insurer().parse().unwrap();
    elderly.insurer_name = "東京都後期高齢者医療広域連合".into();
    elderly.symbol = None;
    elderly.copay_percent = Percent::Ten;
    elderly.limit_category = Some(LimitCategory::B04);
    let mut warned = qual("2800", Some(0), "19810101", "20100401");
    warned.limit_category = Some(LimitCategory::B01);
    vec![
        rec(
            20,
            card("2A20", Registered),
            lost(qual("2000", Some(0), "19700101", "20000401"), "20100401"),
        ),
        rec(
            20,
            card("2A20", Registered),
            qual("2000", Some(0), "19700101", "20150401"),
        ),
        rec(
            21,
            card("2A21", Registered),
            died(qual("2100", Some(0), "19600101", "19900401"), "20050401"),
        ),
        rec(22, None, qual("2100", Some(0), "19850505", "20100401")),
        rec(
            23,
            card("2A23", Registered),
            lost(qual("2300", Some(0), "19800303", "20100401"), "20270101"),
        ),
        rec(
            23,
            card("2A23", Registered),
            qual("2301", Some(0), "19800303", "20270101"),
        ),
        rec(
            24,
            card("2A24", Registered),
            lost(qual("2400", Some(0), "19750707", "20000401"), "20100401"),
        ),
        rec(
            24,
            card("2A24", Registered),
            lost(qual("2401", Some(0), "19750707", "20100401"), "20200401"),
        ),
        rec(25, None, punct),
        rec(26, None, nhi),
        rec(27, card("2A27", Registered), elderly),
        rec(28, None, warned),
    ]
}

/// The records as an export writes them: person 25's symbol full-width
/// (`１２－３`, with a full-width hyphen-minus), the NHI number
/// space-padded to 8.
pub fn csv() -> String {
    let mut w = CsvWriter::new(Vec::new()).unwrap();
    for r in records() {
        w.write(&r).unwrap();
    }
    let text = String::from_utf8(w.finish().unwrap()).unwrap();
    text.lines()
        .map(|line| {
            if line.starts_with("25,") {
                line.replacen(",12-3,", ",１２－３,", 1)
            } else if line.starts_with("26,") {
                line.replacen(",138057,", ",  138057,", 1)
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// One lookup and what it must answer.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case shows.
    pub what: &'static str,
    /// The lookup.
    pub lookup: ProbeLookup,
    /// The as-of day, YYYYMMDD.
    pub as_of: &'static str,
    /// What must come back.
    pub expect: Seen,
}

/// The parts of an answer the cases check, whatever path it came by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The status code.
    pub status: u32,
    /// The answered qualification: insurer number as answered, number,
    /// acquisition date, loss date (0: none shown).
    pub qualification: Option<(String, String, u32, u32)>,
    /// The newer qualification's number and acquisition date (status 3).
    pub newer: Option<(String, u32)>,
}

fn card_case(what: &'static str, serial: &str, as_of: &'static str, expect: Seen) -> Case {
    Case {
        what,
        lookup: ProbeLookup::Card {
            serial: serial.into(),
        },
        as_of,
        expect,
    }
}

#[allow(clippy::too_many_arguments)]
fn key_case(
    what: &'static str,
    insurer: &str,
    symbol: Option<&str>,
    number: &str,
    branch: Option<&str>,
    birth: &str,
    as_of: &'static str,
    expect: Seen,
) -> Case {
    Case {
        what,
        lookup: ProbeLookup::Insurance {
            insurer: insurer.into(),
            symbol: symbol.map(Into::into),
            number: number.into(),
            branch: branch.map(Into::into),
            birth: date(birth),
        },
        as_of,
        expect,
    }
}

/// A status-only answer.
fn status(s: u32) -> Seen {
    Seen {
        status: s,
        qualification: None,
        newer: None,
    }
}

/// An answer carrying `number` of insurer 01130012.
fn found(s: u32, number: &str, acquired: u32, lost: u32) -> Seen {
    Seen {
        status: s,
        qualification: Some(("01130012".into(), number.into(), acquired, lost)),
        newer: None,
    }
}

fn with_newer(mut seen: Seen, number: &str, acquired: u32) -> Seen {
    seen.newer = Some((number.into(), acquired));
    seen
}

/// Every case. Statuses: 1 valid, 2 lost, 3 lost with newer, 4 not found.
pub fn cases() -> Vec<Case> {
    const K: &str = "01130012";
    let s = Some("1234");
    let b = Some("00");
    vec![
        // A key held twice by one person, periods apart.
        key_case(
            "rejoined, first period, loss ahead hidden",
            K,
            s,
            "2000",
            b,
            "19700101",
            "20050101",
            found(1, "2000", 20000401, 0),
        ),
        key_case(
            "rejoined, day before the loss",
            K,
            s,
            "2000",
            b,
            "19700101",
            "20100331",
            found(1, "2000", 20000401, 0),
        ),
        key_case(
            "rejoined, the loss day is not covered",
            K,
            s,
            "2000",
            b,
            "19700101",
            "20100401",
            found(2, "2000", 20000401, 20100401),
        ),
        key_case(
            "rejoined, between the periods",
            K,
            s,
            "2000",
            b,
            "19700101",
            "20120101",
            found(2, "2000", 20000401, 20100401),
        ),
        key_case(
            "rejoined, second period",
            K,
            s,
            "2000",
            b,
            "19700101",
            "20200101",
            found(1, "2000", 20150401, 0),
        ),
        key_case(
            "rejoined, no branch: one person, not multiple",
            K,
            s,
            "2000",
            None,
            "19700101",
            "20200101",
            found(1, "2000", 20150401, 0),
        ),
        card_case(
            "rejoined, by card between the periods",
            "2A20",
            "20120101",
            found(2, "2000", 20000401, 20100401),
        ),
        card_case(
            "rejoined, by card in the second period",
            "2A20",
            "20200101",
            found(1, "2000", 20150401, 0),
        ),
        card_case(
            "card serial in lower case",
            "2a20",
            "20200101",
            found(1, "2000", 20150401, 0),
        ),
        card_case(
            "card serial full-width with spaces",
            "\u{3000}２Ａ２０ ",
            "20200101",
            found(1, "2000", 20150401, 0),
        ),
        // A number given again after its holder died.
        key_case(
            "reissued number, first holder",
            K,
            s,
            "2100",
            b,
            "19600101",
            "20200101",
            found(2, "2100", 19900401, 20050401),
        ),
        key_case(
            "reissued number, second holder",
            K,
            s,
            "2100",
            b,
            "19850505",
            "20200101",
            found(1, "2100", 20100401, 0),
        ),
        key_case(
            "reissued number, before the second holder had it",
            K,
            s,
            "2100",
            b,
            "19850505",
            "20050101",
            status(4),
        ),
        key_case(
            "reissued number, no branch, first holder's birth date",
            K,
            s,
            "2100",
            None,
            "19600101",
            "20200101",
            found(2, "2100", 19900401, 20050401),
        ),
        // A loss and a new qualification in the future.
        key_case(
            "loss in the future: valid, loss not answered",
            K,
            s,
            "2300",
            b,
            "19800303",
            "20261101",
            found(1, "2300", 20100401, 0),
        ),
        key_case(
            "loss reached: lost with the newer one",
            K,
            s,
            "2300",
            b,
            "19800303",
            "20270101",
            with_newer(found(3, "2300", 20100401, 20270101), "2301", 20270101),
        ),
        key_case(
            "acquisition in the future: not yet",
            K,
            s,
            "2301",
            b,
            "19800303",
            "20261101",
            status(4),
        ),
        card_case(
            "card before a future job change",
            "2A23",
            "20261231",
            found(1, "2300", 20100401, 0),
        ),
        card_case(
            "card on the day of the job change",
            "2A23",
            "20270101",
            found(1, "2301", 20270101, 0),
        ),
        // The newer qualification lost too.
        key_case(
            "lost, newer one lost too: still status 3",
            K,
            s,
            "2400",
            b,
            "19750707",
            "20261101",
            with_newer(found(3, "2400", 20000401, 20100401), "2401", 20100401),
        ),
        key_case(
            "lost, nothing newer: status 2",
            K,
            s,
            "2401",
            b,
            "19750707",
            "20261101",
            found(2, "2401", 20100401, 20200401),
        ),
        card_case(
            "card, every qualification lost: the newest",
            "2A24",
            "20261101",
            found(2, "2401", 20100401, 20200401),
        ),
        // Full-width punctuation in the stored symbol and in the request.
        key_case(
            "symbol asked half-width",
            K,
            Some("12-3"),
            "2500",
            b,
            "19900909",
            "20261101",
            Seen {
                qualification: Some((K.into(), "2500".into(), 20100401, 0)),
                ..status(1)
            },
        ),
        key_case(
            "symbol asked full-width",
            K,
            Some("１２－３"),
            "２５００",
            Some("００"),
            "19900909",
            "20261101",
            Seen {
                qualification: Some((K.into(), "2500".into(), 20100401, 0)),
                ..status(1)
            },
        ),
        key_case(
            "symbol asked mixed, with spaces",
            K,
            Some("\u{3000}１２-３ "),
            "2500",
            b,
            "19900909",
            "20261101",
            Seen {
                qualification: Some((K.into(), "2500".into(), 20100401, 0)),
                ..status(1)
            },
        ),
        key_case(
            "symbol with another punctuation",
            K,
            Some("12_3"),
            "2500",
            b,
            "19900909",
            "20261101",
            status(4),
        ),
        // A 6-digit NHI insurer: asked in any padding, answered as 8 characters.
        key_case(
            "NHI, 6 digits",
            "138057",
            s,
            "2600",
            b,
            "19600101",
            "20261101",
            Seen {
                qualification: Some(("  138057".into(), "2600".into(), 20000401, 0)),
                ..status(1)
            },
        ),
        key_case(
            "NHI, zero-padded",
            "00138057",
            s,
            "2600",
            b,
            "19600101",
            "20261101",
            Seen {
                qualification: Some(("  138057".into(), "2600".into(), 20000401, 0)),
                ..status(1)
            },
        ),
        key_case(
            "NHI, space-padded, full-width",
            "\u{3000}\u{3000}１３８０５７",
            s,
            "2600",
            b,
            "19600101",
            "20261101",
            Seen {
                qualification: Some(("  138057".into(), "2600".into(), 20000401, 0)),
                ..status(1)
            },
        ),
        // Late-stage elderly: no symbol, no branch.
        key_case(
            "late-stage elderly",
            &elderly_insurer(),
            None,
            "00002700",
            None,
            "19400202",
            "20261101",
            Seen {
                qualification: Some((elderly_insurer(), "00002700".into(), 20150202, 0)),
                ..status(1)
            },
        ),
    ]
}

impl Seen {
    /// From a wire response (a single lookup).
    pub fn from_response(r: &pb::Response) -> Seen {
        let a = r.answer.clone().unwrap_or_default();
        assert_eq!(a.status, r.status, "the answer's status is the response's");
        Seen::from_answer(&a)
    }

    /// From a wire answer (a single lookup's or a batch item's).
    pub fn from_answer(a: &pb::Answer) -> Seen {
        let q = |q: &pb::Qualification| {
            (
                q.insurer_number.clone(),
                q.number.clone(),
                q.acquired_date,
                q.lost_date,
            )
        };
        Seen {
            status: a.status as u32,
            qualification: a.qualification.as_ref().map(q),
            newer: a
                .newer
                .as_ref()
                .map(|n| (n.number.clone(), n.acquired_date)),
        }
    }

    /// From the JSON `qualcache lookup` prints.
    pub fn from_json(v: &serde_json::Value) -> Seen {
        let day = |v: &serde_json::Value| v.as_str().map_or(0, |s| s.parse::<u32>().unwrap());
        let q = |q: &serde_json::Value| {
            (
                q["insurer_number"].as_str().unwrap().to_string(),
                q["number"].as_str().unwrap().to_string(),
                day(&q["acquired_date"]),
                day(&q["loss"]["date"]),
            )
        };
        Seen {
            status: v["status"].as_u64().unwrap() as u32,
            qualification: v.get("qualification").map(q),
            newer: v.get("newer").map(|n| {
                (
                    n["number"].as_str().unwrap().to_string(),
                    day(&n["acquired_date"]),
                )
            }),
        }
    }

    /// What a case expects, with the parts a status-only expectation
    /// leaves open taken from `got` only where the expectation has none.
    pub fn check(&self, got: &Seen, what: &str, path: &str) {
        assert_eq!(got.status, self.status, "{path}: {what}");
        if self.qualification.is_some() {
            assert_eq!(got.qualification, self.qualification, "{path}: {what}");
        }
        assert_eq!(got.newer, self.newer, "{path}: {what}");
    }
}

/// A case as a wire request.
pub fn request(c: &Case) -> pb::Request {
    pb::Request {
        as_of: c.as_of.parse().unwrap(),
        kind: Some(qualcache::protocol::request_kind(&c.lookup)),
    }
}

/// A case as `qualcache lookup` arguments after `--snapshot DIR`.
pub fn cli_args(c: &Case) -> Vec<String> {
    let mut args = vec!["--as-of".to_string(), c.as_of.to_string()];
    match &c.lookup {
        ProbeLookup::Card { serial } => {
            args.extend(["card".to_string(), "--".to_string(), serial.clone()]);
        }
        ProbeLookup::Insurance {
            insurer,
            symbol,
            number,
            branch,
            birth,
        } => {
            args.extend([
                "insurance".to_string(),
                format!("--insurer={insurer}"),
                format!("--number={number}"),
                format!("--birth={birth}"),
            ]);
            if let Some(s) = symbol {
                args.push(format!("--symbol={s}"));
            }
            if let Some(b) = branch {
                args.push(format!("--branch={b}"));
            }
        }
    }
    args
}
