//! The probes `gen` writes: which cases exist, and how each person of the
//! synthetic population yields probes with their expected answers.

use std::io::{self, Write};

use super::Generator;
use crate::model::normalize::to_full_width;
use crate::model::{Branch, CardStatus, Date, EnrolleeRecord, Qualification, Status};
use crate::probe::{key_id, Probe, ProbeLookup};

/// Which probe cases exist, and their share of the probes.
pub const CASES: &[&str] = &[
    "card_hit",
    "card_lost",
    "card_withdrawn",
    "card_restricted",
    "card_unknown",
    "card_aid_unregistered",
    "ins_hit",
    "ins_hit_full_width",
    "ins_hit_no_branch",
    "ins_lost",
    "ins_lost_with_newer",
    "ins_multiple",
    "ins_wrong_birth",
    "ins_unknown",
    "ins_restricted_card",
    "ins_aid_unregistered",
    "ins_before_acquired",
    "ins_before_loss",
];

impl<W: Write> Generator<W> {
    /// Probes for one person's rows (the last row is the current one).
    pub(super) fn person_probes(
        &mut self,
        rows: &[(EnrolleeRecord, bool)],
        serial: &str,
        alone: bool,
    ) -> io::Result<()> {
        let as_of = self.opts.as_of;
        let (cur, full_width) = &rows[rows.len() - 1];
        let q = &cur.qualification;
        let lost_now = q.loss.is_some_and(|l| l.date <= as_of);
        let unregistered_aid = q.public_expense.as_ref().is_some_and(|p| !p.registered);
        let holding = if unregistered_aid {
            Status::ValidUnregistered
        } else {
            Status::Valid
        };
        let cur_status = if lost_now { Status::Lost } else { holding };
        let cur_id = key_id(q);

        // Card path.
        match cur.card.map(|c| c.status) {
            Some(CardStatus::Registered) => {
                let case = if unregistered_aid {
                    "card_aid_unregistered"
                } else if lost_now {
                    "card_lost"
                } else {
                    "card_hit"
                };
                self.probe_card(case, serial, as_of, cur_status, Some(cur_id.clone()))?;
            }
            Some(CardStatus::Withdrawn) => self.probe_card(
                "card_withdrawn",
                serial,
                as_of,
                Status::CardNotRegistered,
                None,
            )?,
            Some(CardStatus::Restricted) => {
                self.probe_card(
                    "card_restricted",
                    serial,
                    as_of,
                    Status::CardRestricted,
                    None,
                )?;
                self.probe_key(
                    "ins_restricted_card",
                    q,
                    q.branch,
                    *full_width,
                    q.birth_date,
                    as_of,
                    Expect::key(cur_status, &cur_id),
                )?;
            }
            None => {
                if self.wants("card_unknown") {
                    let unknown = format!("{:016X}", self.rng.next());
                    self.probe_card(
                        "card_unknown",
                        &unknown,
                        as_of,
                        Status::CardNotRegistered,
                        None,
                    )?;
                }
            }
        }
        // Insurance path on the current qualification.
        let case = if unregistered_aid {
            "ins_aid_unregistered"
        } else if lost_now {
            "ins_lost"
        } else if *full_width {
            "ins_hit_full_width"
        } else {
            "ins_hit"
        };
        self.probe_key(
            case,
            q,
            q.branch,
            *full_width,
            q.birth_date,
            as_of,
            Expect::key(cur_status, &cur_id),
        )?;
        if alone && q.branch.is_some() && !lost_now {
            self.probe_key(
                "ins_hit_no_branch",
                q,
                None,
                false,
                q.birth_date,
                as_of,
                Expect::key(cur_status, &cur_id),
            )?;
        }
        if self.wants("ins_wrong_birth") {
            let wrong = q.birth_date.add_days(1 + self.rng.below(30) as i32);
            self.probe_key(
                "ins_wrong_birth",
                q,
                q.branch,
                false,
                wrong,
                as_of,
                Expect::status(Status::NotFound),
            )?;
        }
        if self.wants("ins_unknown") {
            let mut unknown = q.clone();
            unknown.number = "999999999".parse().unwrap_or(q.number);
            self.probe_key(
                "ins_unknown",
                &unknown,
                q.branch,
                false,
                q.birth_date,
                as_of,
                Expect::status(Status::NotFound),
            )?;
        }
        if q.acquired_date > q.birth_date.add_days(1) && self.wants("ins_before_acquired") {
            let before = q.acquired_date.add_days(-1);
            // On that day an older qualification of the person may hold, but
            // not this key's.
            self.probe_key(
                "ins_before_acquired",
                q,
                q.branch,
                false,
                q.birth_date,
                before,
                Expect::status(Status::NotFound),
            )?;
        }
        // The old qualification of a job change or welfare start.
        if rows.len() > 1 {
            let old = &rows[0].0.qualification;
            let expect = Expect {
                newer: Some(cur_id.clone()),
                ..Expect::key(Status::LostWithNewer, &key_id(old))
            };
            self.probe_key(
                "ins_lost_with_newer",
                old,
                old.branch,
                false,
                old.birth_date,
                as_of,
                expect,
            )?;
            if let Some(l) = old.loss {
                let day = l.date.add_days(-1);
                if day >= old.acquired_date {
                    self.probe_key(
                        "ins_before_loss",
                        old,
                        old.branch,
                        false,
                        old.birth_date,
                        day,
                        Expect::key(Status::Valid, &key_id(old)),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Whether a probe of `case` is still wanted, sampling common cases.
    fn wants(&mut self, case: &str) -> bool {
        let Some(i) = CASES.iter().position(|c| *c == case) else {
            return false;
        };
        if self.emitted[i] >= self.per_case {
            return false;
        }
        let rare = matches!(
            case,
            "card_restricted"
                | "card_withdrawn"
                | "card_lost"
                | "ins_lost"
                | "ins_lost_with_newer"
                | "ins_multiple"
                | "ins_restricted_card"
                | "ins_aid_unregistered"
                | "card_aid_unregistered"
                | "ins_before_loss"
                | "ins_hit_full_width"
                | "ins_hit_no_branch"
        );
        rare || self.rng.chance(self.common_rate)
    }

    fn emit(&mut self, case: &str, p: &Probe) -> io::Result<()> {
        if let Some(i) = CASES.iter().position(|c| *c == case) {
            self.emitted[i] += 1;
        }
        self.probe_count += 1;
        serde_json::to_writer(&mut self.probes, p)?;
        self.probes.write_all(b"\n")
    }

    fn probe_card(
        &mut self,
        case: &str,
        serial: &str,
        as_of: Date,
        expect: Status,
        key: Option<String>,
    ) -> io::Result<()> {
        if !self.wants(case) {
            return Ok(());
        }
        let p = Probe {
            case: case.to_string(),
            lookup: ProbeLookup::Card {
                serial: serial.to_string(),
            },
            as_of,
            expect,
            expect_key: key,
            expect_newer_key: None,
            expect_matches: None,
        };
        self.emit(case, &p)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn probe_key(
        &mut self,
        case: &str,
        q: &Qualification,
        branch: Option<Branch>,
        full_width: bool,
        birth: Date,
        as_of: Date,
        expect: Expect,
    ) -> io::Result<()> {
        if !self.wants(case) {
            return Ok(());
        }
        let symbol = q.symbol.map(|s| {
            if full_width {
                to_full_width(s.as_str())
            } else {
                s.to_string()
            }
        });
        let p = Probe {
            case: case.to_string(),
            lookup: ProbeLookup::Insurance {
                insurer: q.insurer_number.to_string(),
                symbol,
                number: q.number.to_string(),
                branch: branch.map(|b| b.to_string()),
                birth,
            },
            as_of,
            expect: expect.status,
            expect_key: expect.key,
            expect_newer_key: expect.newer,
            expect_matches: expect.matches,
        };
        self.emit(case, &p)
    }
}

/// What a probe expects.
#[derive(Debug)]
pub(super) struct Expect {
    pub(super) status: Status,
    pub(super) key: Option<String>,
    pub(super) newer: Option<String>,
    pub(super) matches: Option<usize>,
}

impl Expect {
    pub(super) fn status(status: Status) -> Expect {
        Expect {
            status,
            key: None,
            newer: None,
            matches: None,
        }
    }

    pub(super) fn key(status: Status, key: &str) -> Expect {
        Expect {
            key: Some(key.to_string()),
            ..Expect::status(status)
        }
    }
}
