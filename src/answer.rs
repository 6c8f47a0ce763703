//! JSON rendering of lookup answers (what `qualcache lookup` prints).

use serde::Serialize;

use crate::model::{Qualification, Status};
use crate::snapshot::{Answer, CorruptRecord};

/// An answer in owned, serialisable form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnswerJson {
    /// Status code (1-8).
    pub status: Status,
    /// Its name, e.g. `"lost_with_newer"`.
    pub status_name: &'static str,
    /// The snapshot generation that answered.
    pub generation: u64,
    /// The qualification (statuses 1, 2, 3, 6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qualification: Option<Qualification>,
    /// The newer qualification (status 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newer: Option<Qualification>,
    /// The matches (status 5).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Qualification>,
}

impl AnswerJson {
    /// Decodes an answer's views.
    pub fn new(answer: &Answer<'_>, generation: u64) -> Result<AnswerJson, CorruptRecord> {
        let status = answer.status();
        let mut out = AnswerJson {
            status,
            status_name: status.name(),
            generation,
            qualification: None,
            newer: None,
            matches: Vec::new(),
        };
        match answer {
            Answer::Found {
                qualification,
                newer,
                ..
            } => {
                out.qualification = Some(qualification.to_qualification()?);
                out.newer = newer.map(|n| n.to_qualification()).transpose()?;
            }
            Answer::Multiple(m) => {
                out.matches = m
                    .iter()
                    .map(|v| v.to_qualification())
                    .collect::<Result<_, _>>()?;
            }
            _ => {}
        }
        Ok(out)
    }
}
