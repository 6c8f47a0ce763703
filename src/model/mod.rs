//! The qualification model: value types that can only hold valid values,
//! the code tables, and owned records.

pub mod card;
pub mod codes;
pub mod date;
pub mod name;
pub mod normalize;
pub mod numbers;
pub mod record;
pub mod row;
pub mod rules;
pub mod text;

pub use card::{CardDigest, CardKey, CardSerial};
pub use codes::{
    CardClass, CardStatus, DiseaseKind, LimitCategory, LossReason, Percent, Relation, Sex, Status,
};
pub use date::Date;
pub use numbers::{InstitutionCode, InsurerNumber, PayerNumber, RecipientNumber};
pub use record::{
    CardLink, Certificate, ElderlyCertificate, EnrolleeRecord, Loss, PublicExpense, Qualification,
    SpecificDisease,
};
pub use text::{Branch, InsuranceKey, KeyText};
