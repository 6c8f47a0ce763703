//! The insurers of the synthetic population, one set per prefecture, with
//! valid check digits, and the population weights of each kind.

use crate::model::numbers::check_digit;
use crate::model::InsurerNumber;

use super::names::PREFECTURES;

/// The kinds of insurance, with their population weights (out of 125).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Kyokai,
    Union,
    Nhi,
    Elderly,
    Mutual,
    MedicalAid,
}

pub(super) const KINDS: &[(Kind, u64)] = &[
    (Kind::Kyokai, 39),
    (Kind::Union, 29),
    (Kind::Nhi, 29),
    (Kind::Elderly, 17),
    (Kind::Mutual, 9),
    (Kind::MedicalAid, 2),
];

/// One insurer of the synthetic population.
#[derive(Debug, Clone)]
pub(super) struct Insurer {
    pub(super) number: InsurerNumber,
    pub(super) name: String,
    pub(super) kind: Kind,
    /// Next household number; numbers are unique per insurer, so keys are.
    pub(super) next_number: u64,
}

/// Builds an insurer number from a body, appending its check digit.
fn with_check(body: &str) -> String {
    let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    format!("{body}{}", check_digit(&digits))
}

pub(super) fn insurer_pool() -> Vec<Insurer> {
    let mut pool = Vec::new();
    let mut add = |body: String, name: String, kind: Kind| {
        if let Ok(number) = with_check(&body).parse() {
            pool.push(Insurer {
                number,
                name,
                kind,
                next_number: 1,
            });
        }
    };
    for (p, pref) in PREFECTURES.iter().enumerate() {
        let pp = p + 1;
        add(
            format!("01{pp:02}001"),
            format!("全国健康保険協会　{pref}支部"),
            Kind::Kyokai,
        );
        add(
            format!("39{pp:02}001"),
            format!("{pref}後期高齢者医療広域連合"),
            Kind::Elderly,
        );
        for i in 0..30 {
            add(
                format!("06{pp:02}{:03}", 100 + i),
                format!("{pref}第{}健康保険組合", i + 1),
                Kind::Union,
            );
        }
        for i in 0..36 {
            // Municipal NHI: 6 digits, no scheme code.
            add(
                format!("{pp:02}{:03}", 10 + i),
                format!("{pref}第{}市国民健康保険", i + 1),
                Kind::Nhi,
            );
        }
        for (s, what) in [
            (31, "国家公務員"),
            (32, "地方職員"),
            (33, "警察職員"),
            (34, "公立学校"),
        ] {
            add(
                format!("{s}{pp:02}{:03}", 1),
                format!("{pref}{what}共済組合"),
                Kind::Mutual,
            );
        }
        add(
            format!("12{pp:02}{:03}", 1),
            format!("{pref}福祉事務所"),
            Kind::MedicalAid,
        );
    }
    pool
}
