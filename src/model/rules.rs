//! The rules of domain.md that a qualification can break although every
//! field is well-formed, checked on every row both stores read (CSV and
//! PostgreSQL) before it reaches a snapshot.
//!
//! Each rule is either a row error (the row is refused, like a malformed
//! field; `--skip-invalid` leaves it out) or a warning (the row is built as
//! it is, and the build summary counts it). The choice per rule:
//!
//! | rule | kind | why |
//! |---|---|---|
//! | dates in order: acquired on or after birth, lost after acquired, certificate periods not reversed | error | the answer would be self-contradictory |
//! | an elderly recipient certificate (高齢受給者証) valid only from the 70th birthday, ending before the 75th, and starting before the qualification's loss | error | the certificate exists for ages 70-74 only (75+ is late-stage elderly), and only with a qualification; a desk would charge the wrong ratio |
//! | a late-stage elderly (scheme 39) qualification has no symbol and no branch | error | its card carries neither: a desk would never find the key |
//! | a 70+ limit category (B01-B10) on a person under 70 on the qualification's last day | warning | the category comes from the insurer and may lag a birthday; it is answered as stored |
//! | an under-70 limit category (A01-A05) on a person 70 or over on the qualification's last day | warning | likewise |
//!
//! A qualification's last day is the day before its loss date, or, for
//! one not lost, the day the build runs (Japan time): the limit category
//! describes the qualification as the insurer last recorded it.

use super::date::Date;
use super::record::Qualification;

/// The scheme code (法別番号) of late-stage elderly insurers (後期高齢者).
pub const LATE_STAGE_ELDERLY_SCHEME: u8 = 39;

/// A rule broken by a row that is nevertheless built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Warning {
    /// B01-B10 on a person under 70 on the qualification's last day.
    SeventyPlusLimitUnderSeventy,
    /// A01-A05 on a person 70 or over on the qualification's last day.
    UnderSeventyLimitSeventyPlus,
}

impl Warning {
    /// Every warning.
    pub const ALL: [Warning; 2] = [
        Warning::SeventyPlusLimitUnderSeventy,
        Warning::UnderSeventyLimitSeventyPlus,
    ];

    /// A stable name for summaries and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Warning::SeventyPlusLimitUnderSeventy => "limit_category_70_plus_under_70",
            Warning::UnderSeventyLimitSeventyPlus => "limit_category_under_70_at_70_plus",
        }
    }

    /// What the rule says, for people.
    pub fn message(self) -> &'static str {
        match self {
            Warning::SeventyPlusLimitUnderSeventy => {
                "limit_category B01-B10 (70 and over) on a person under 70 on the \
                 qualification's last day"
            }
            Warning::UnderSeventyLimitSeventyPlus => {
                "limit_category A01-A05 (under 70) on a person 70 or over on the \
                 qualification's last day"
            }
        }
    }

    /// The CSV column the warning is about.
    pub fn column(self) -> &'static str {
        "limit_category"
    }
}

/// The first rule `q` breaks that refuses the row, as (CSV column,
/// reason); `None` if it breaks none.
pub fn row_error(q: &Qualification) -> Option<(&'static str, &'static str)> {
    if q.acquired_date < q.birth_date {
        return Some(("acquired_date", "before birth_date"));
    }
    if q.loss.is_some_and(|l| l.date <= q.acquired_date) {
        return Some(("lost_date", "not after acquired_date"));
    }
    if q.certificate.is_some_and(|c| c.valid_until < c.valid_from) {
        return Some(("cert_valid_until", "before cert_valid_from"));
    }
    if let Some(e) = q.elderly {
        if e.valid_until < e.valid_from {
            return Some(("elderly_valid_until", "before elderly_valid_from"));
        }
        if e.valid_from < q.birth_date.add_years(70) {
            return Some((
                "elderly_valid_from",
                "before the 70th birthday (an elderly recipient certificate is for ages 70-74)",
            ));
        }
        if q.loss.is_some_and(|l| e.valid_from >= l.date) {
            return Some((
                "elderly_valid_from",
                "on or after lost_date (the certificate would start after the qualification ended)",
            ));
        }
        if e.valid_until >= q.birth_date.add_years(75) {
            return Some((
                "elderly_valid_until",
                "on or after the 75th birthday (an elderly recipient certificate is for ages \
                 70-74)",
            ));
        }
    }
    if q.insurer_number.scheme() == Some(LATE_STAGE_ELDERLY_SCHEME) {
        if q.symbol.is_some() {
            return Some((
                "symbol",
                "late-stage elderly (scheme 39) qualifications have no symbol",
            ));
        }
        if q.branch.is_some() {
            return Some((
                "branch",
                "late-stage elderly (scheme 39) qualifications have no branch",
            ));
        }
    }
    None
}

/// The warning `q` earns, if any; `today` is the build day, the last day
/// of a qualification not lost.
pub fn warning(q: &Qualification, today: Date) -> Option<Warning> {
    let category = q.limit_category?;
    let last_day = q.loss.map_or(today, |l| l.date.add_days(-1));
    let seventy = last_day >= q.birth_date.add_years(70);
    match (category.is_seventy_plus(), seventy) {
        (true, false) => Some(Warning::SeventyPlusLimitUnderSeventy),
        (false, true) => Some(Warning::UnderSeventyLimitSeventyPlus),
        _ => None,
    }
}
