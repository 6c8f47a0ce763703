//! `probes.jsonl`: lookups with their expected answers, written by `gen` and
//! read by the tests and the load generator.
//!
//! One JSON object per line:
//!
//! ```json
//! {"case":"card_hit","kind":"card","serial":"5F0C...","as_of":"20261101","expect":1,"expect_key":"06130488:12:3456:00"}
//! {"case":"multiple","kind":"insurance","insurer":"06130488","symbol":"12","number":"3456","birth":"20100101","as_of":"20261101","expect":5,"expect_matches":2}
//! ```
//!
//! - `kind` is `card` (with `serial`) or `insurance` (with `insurer`,
//!   optional `symbol`, `number`, optional `branch`, and `birth`), written as
//!   a terminal would send them (symbols may be full-width).
//! - `as_of` is the day the lookup is made for; `expect` the status code.
//! - `expect_key` names the qualification the answer must carry
//!   (`insurer:symbol:number:branch`, normalised, empty parts for absent
//!   ones); `expect_newer_key` the newer one of status 3; `expect_matches`
//!   the number of matches of status 5.

use serde::{Deserialize, Serialize};

use crate::model::card::SerialError;
use crate::model::text::KeyError;
use crate::model::{CardKey, CardSerial, Date, InsuranceKey, Qualification, Status};
use crate::snapshot::{Answer, Snapshot};

/// One probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// What the probe exercises, e.g. `lost_with_newer`.
    pub case: String,
    /// The lookup.
    #[serde(flatten)]
    pub lookup: ProbeLookup,
    /// The day of the lookup.
    pub as_of: Date,
    /// Expected status.
    pub expect: Status,
    /// Identity of the expected qualification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_key: Option<String>,
    /// Identity of the expected newer qualification (status 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_newer_key: Option<String>,
    /// Expected number of matches (status 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_matches: Option<usize>,
}

/// The lookup of a probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProbeLookup {
    /// By card certificate serial.
    Card {
        /// The serial as read from the card.
        serial: String,
    },
    /// By insurance numbers and birth date.
    Insurance {
        /// 保険者番号.
        insurer: String,
        /// 記号.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        symbol: Option<String>,
        /// 番号.
        number: String,
        /// 枝番.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
        /// 生年月日.
        birth: Date,
    },
}

/// The identity of a qualification used by `expect_key`.
pub fn key_id(q: &Qualification) -> String {
    format!(
        "{}:{}:{}:{}",
        q.insurer_number,
        q.symbol.map(|s| s.to_string()).unwrap_or_default(),
        q.number,
        q.branch.map(|b| b.to_string()).unwrap_or_default()
    )
}

/// Why a lookup could not be made: the words the daemon answers
/// `INVALID_REQUEST` with and the command line reports (never the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The card serial is not 1 to 40 hexadecimal digits.
    #[error("card: {0}")]
    Serial(#[from] SerialError),
    /// A part of the insurance key does not parse.
    #[error("insurance: {0}")]
    Key(#[from] KeyError),
}

impl ProbeLookup {
    /// Runs this lookup against a snapshot (card serials digested with
    /// `key`). Fails only if the card serial or the insurance key does not
    /// parse.
    pub fn run<'s>(
        &self,
        snapshot: &'s Snapshot,
        key: &CardKey,
        as_of: Date,
    ) -> Result<Answer<'s>, LookupError> {
        Ok(match self {
            ProbeLookup::Card { serial } => {
                let serial: CardSerial = serial.parse()?;
                snapshot.lookup_card(&key.digest(&serial), as_of)
            }
            ProbeLookup::Insurance {
                insurer,
                symbol,
                number,
                branch,
                birth,
            } => {
                let k = InsuranceKey::parse(insurer, symbol.as_deref(), number, branch.as_deref())?;
                snapshot.lookup_insurance(&k, *birth, as_of)
            }
        })
    }
}

/// Runs a probe against a snapshot and says how the answer differs from
/// the expectation, if it does. Messages carry no personal data.
pub fn check(snapshot: &Snapshot, key: &CardKey, probe: &Probe) -> Result<(), String> {
    let answer = probe
        .lookup
        .run(snapshot, key, probe.as_of)
        .map_err(|e| format!("probe key does not parse: {e}"))?;
    check_answer(&answer, probe)
}

/// Compares an answer with a probe's expectation.
pub fn check_answer(answer: &Answer<'_>, probe: &Probe) -> Result<(), String> {
    let status = answer.status();
    if status != probe.expect {
        return Err(format!("expected status {}, got {}", probe.expect, status));
    }
    let id_of = |v: &crate::snapshot::QualView<'_>| {
        v.to_qualification()
            .map(|q| key_id(&q))
            .map_err(|e| e.to_string())
    };
    match answer {
        Answer::Found {
            qualification,
            newer,
            ..
        } => {
            if let Some(want) = &probe.expect_key {
                if &id_of(qualification)? != want {
                    return Err("answer carries a different qualification".into());
                }
            }
            let got = newer.as_ref().map(id_of).transpose()?;
            if probe.expect_newer_key.is_some() && got != probe.expect_newer_key {
                return Err("answer carries a different newer qualification".into());
            }
        }
        Answer::Multiple(m) => {
            if let Some(n) = probe.expect_matches {
                let got = m.iter().count();
                if got != n {
                    return Err(format!("expected {n} matches, got {got}"));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads a `probes.jsonl` file.
pub fn read_probes(path: &std::path::Path) -> anyhow::Result<Vec<Probe>> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| json_line(path, i + 1, l))
        .collect()
}

/// Parses line `number` of the JSON-lines file `path`. The error names
/// the file, line and column and says what is wrong, but never repeats a
/// value: serde's own messages quote them ("invalid type: integer
/// `12345678`"), and a value here may be an insurance number, a serial or
/// a birth date.
pub fn json_line<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    number: usize,
    line: &str,
) -> anyhow::Result<T> {
    use serde_json::error::Category;
    serde_json::from_str(line).map_err(|e| {
        let message = e.to_string();
        let why = match e.classify() {
            Category::Syntax | Category::Eof => "not valid JSON",
            Category::Data if message.starts_with("missing field") => {
                // Only the field's name, no value.
                message
                    .split(" at line")
                    .next()
                    .unwrap_or("a field is missing")
            }
            Category::Data => "a field has a value of the wrong type or form, or is unknown",
            Category::Io => "unreadable",
        };
        anyhow::anyhow!(
            "{}: line {number}, column {}: {why}",
            path.display(),
            e.column()
        )
    })
}

#[cfg(test)]
mod json_line_tests {
    use super::*;

    #[test]
    fn a_bad_line_is_placed_without_repeating_its_values() {
        let path = std::path::Path::new("probes.jsonl");
        let wrong_type = r#"{"case":"c","kind":"insurance","insurer":"06130488","number":12345678,"birth":"19800101","as_of":"20261101","expect":1}"#;
        let err = json_line::<Probe>(path, 7, wrong_type)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("probes.jsonl: line 7, column "), "{err}");
        assert!(err.contains("wrong type"), "{err}");
        assert!(!err.contains("12345678"), "{err}");
        let bad_date =
            r#"{"kind":"insurance","insurer":"06130488","number":"1","birth":"1980011"}"#;
        let err = json_line::<ProbeLookup>(path, 2, bad_date)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("probes.jsonl: line 2, column "), "{err}");
        assert!(!err.contains("1980011"), "{err}");
        let missing = r#"{"case":"c","kind":"card","as_of":"20261101","expect":1}"#;
        let err = json_line::<Probe>(path, 3, missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `serial`"), "{err}");
        let err = json_line::<Probe>(path, 4, "{not json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 4") && err.contains("not valid JSON"),
            "{err}"
        );
    }
}
