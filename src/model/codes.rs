//! The code tables of the domain as Rust enums.
//!
//! Each enum converts to and from its official code (the string OQS uses,
//! such as `"A1"` or `"B03"`) and to a `u8` used inside snapshots. A snapshot
//! byte that names no variant is reported as corruption, never guessed.

use std::fmt;

/// Defines a code-table enum: its variants, their official codes, and the
/// `u8` each takes in a snapshot.
macro_rules! code_table {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = ($byte:literal, $code:literal), )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// What this table is called in error messages.
            pub const WHAT: &'static str = $what;

            /// The official code.
            pub fn code(self) -> &'static str {
                match self { $($name::$variant => $code,)+ }
            }

            /// Parses the official code (exact match after the caller's
            /// normalisation).
            pub fn from_code(code: &str) -> Option<$name> {
                match code { $($code => Some($name::$variant),)+ _ => None }
            }

            /// The byte stored in a snapshot.
            pub fn to_byte(self) -> u8 {
                match self { $($name::$variant => $byte,)+ }
            }

            /// The variant a snapshot byte names, if any.
            pub fn from_byte(byte: u8) -> Option<$name> {
                match byte { $($byte => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.code())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                $name::from_code(s).ok_or_else(|| {
                    let codes: Vec<&str> = $name::ALL.iter().map(|v| v.code()).collect();
                    format!("not a {} code (expected one of {})", $what, codes.join(", "))
                })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.code())
            }
        }
    };
}

code_table! {
    /// Card classification (保険証区分) of the qualification.
    CardClass, "card classification" {
        /// 01: the general insurance card / qualification certificate.
        General = (1, "01"),
        /// 02-07: the other classifications OQS codes.
        Class02 = (2, "02"),
        Class03 = (3, "03"),
        Class04 = (4, "04"),
        Class05 = (5, "05"),
        Class06 = (6, "06"),
        Class07 = (7, "07"),
        /// A1: medical aid (生活保護の医療券・調剤券).
        MedicalAid = (0xA1, "A1"),
    }
}

code_table! {
    /// Whether the person is the insured person (本人) or a dependent (家族).
    Relation, "relation" {
        Insured = (1, "1"),
        Dependent = (2, "2"),
    }
}

code_table! {
    /// Sex as recorded by the insurer.
    Sex, "sex" {
        Male = (1, "1"),
        Female = (2, "2"),
        Unset = (3, "3"),
    }
}

code_table! {
    /// Why a qualification was lost (資格喪失事由).
    LossReason, "loss reason" {
        Death = (1, "01"),
        WelfareStarted = (2, "02"),
        JoinedOtherInsurance = (3, "03"),
        Other = (99, "99"),
    }
}

code_table! {
    /// High-cost-care limit category (限度額適用区分).
    LimitCategory, "limit category" {
        /// Under 70: ア.
        A01 = (1, "A01"),
        /// Under 70: イ.
        A02 = (2, "A02"),
        /// Under 70: ウ.
        A03 = (3, "A03"),
        /// Under 70: エ.
        A04 = (4, "A04"),
        /// Under 70: オ.
        A05 = (5, "A05"),
        /// 70 and over: 現役並みⅢ.
        B01 = (11, "B01"),
        /// 70 and over: 現役並みⅡ.
        B02 = (12, "B02"),
        /// 70 and over: 現役並みⅠ.
        B03 = (13, "B03"),
        /// 70 and over: 一般.
        B04 = (14, "B04"),
        /// 70 and over: 低所得Ⅱ.
        B05 = (15, "B05"),
        /// 70 and over: 低所得Ⅰ.
        B06 = (16, "B06"),
        B07 = (17, "B07"),
        B08 = (18, "B08"),
        B09 = (19, "B09"),
        B10 = (20, "B10"),
    }
}

impl LimitCategory {
    /// True for the categories of people 70 and over (B01-B10).
    pub fn is_seventy_plus(self) -> bool {
        self.to_byte() > LimitCategory::A05.to_byte()
    }
}

code_table! {
    /// Specific-disease certificate (特定疾病療養受療証) kind.
    DiseaseKind, "specific disease" {
        Dialysis = (1, "1"),
        Haemophilia = (2, "2"),
        HivFromBloodProducts = (3, "3"),
    }
}

code_table! {
    /// State of the link between a My Number Card and a person's insurance.
    CardStatus, "card status" {
        /// Registered for insurance use: card lookups answer.
        Registered = (1, "registered"),
        /// The person withdrew the registration: answers "not registered".
        Withdrawn = (2, "withdrawn"),
        /// Use restricted (DV/abuse notification): never answered by card.
        Restricted = (3, "restricted"),
    }
}

code_table! {
    /// Co-payment or elderly-certificate ratio, in percent.
    Percent, "ratio" {
        /// No co-payment (medical aid).
        Zero = (100, "0"),
        Ten = (10, "10"),
        Twenty = (20, "20"),
        Thirty = (30, "30"),
    }
}

/// The answer's validity status: domain codes 1-6 plus the card path's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// 1: valid.
    Valid,
    /// 2: lost or expired.
    Lost,
    /// 3: lost, but a newer qualification exists (attached).
    LostWithNewer,
    /// 4: no such qualification.
    NotFound,
    /// 5: several matches (insurance path without branch).
    MultipleHits,
    /// 6: valid, not registered (medical aid only).
    ValidUnregistered,
    /// 7: card not registered for insurance use, or registration withdrawn.
    CardNotRegistered,
    /// 8: card use restricted (DV/abuse notification).
    CardRestricted,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 8] = [
        Status::Valid,
        Status::Lost,
        Status::LostWithNewer,
        Status::NotFound,
        Status::MultipleHits,
        Status::ValidUnregistered,
        Status::CardNotRegistered,
        Status::CardRestricted,
    ];

    /// The numeric code (1-6 as in OQS, 7 and 8 for the card path).
    pub fn code(self) -> u8 {
        match self {
            Status::Valid => 1,
            Status::Lost => 2,
            Status::LostWithNewer => 3,
            Status::NotFound => 4,
            Status::MultipleHits => 5,
            Status::ValidUnregistered => 6,
            Status::CardNotRegistered => 7,
            Status::CardRestricted => 8,
        }
    }

    /// The status with this numeric code.
    pub fn from_code(code: u8) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }

    /// A short English name, used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Lost => "lost",
            Status::LostWithNewer => "lost_with_newer",
            Status::NotFound => "not_found",
            Status::MultipleHits => "multiple_hits",
            Status::ValidUnregistered => "valid_unregistered",
            Status::CardNotRegistered => "card_not_registered",
            Status::CardRestricted => "card_restricted",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.name())
    }
}

impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

impl<'de> serde::Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
        let code = u8::deserialize(d)?;
        Status::from_code(code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown status code {code}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_text_and_bytes() {
        for &c in CardClass::ALL {
            assert_eq!(CardClass::from_code(c.code()), Some(c));
            assert_eq!(CardClass::from_byte(c.to_byte()), Some(c));
        }
        for &c in LimitCategory::ALL {
            assert_eq!(c.code().parse::<LimitCategory>(), Ok(c));
            assert_eq!(LimitCategory::from_byte(c.to_byte()), Some(c));
        }
        for s in Status::ALL {
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
    }

    #[test]
    fn unknown_codes_are_refused() {
        assert_eq!(CardClass::from_code("08"), None);
        assert_eq!(CardClass::from_byte(0), None);
        assert!("C01".parse::<LimitCategory>().unwrap_err().contains("A01"));
        assert_eq!(Status::from_code(0), None);
        assert_eq!(Percent::from_code("25"), None);
    }
}
