//! Owned qualification records: what the authoritative store exports, what
//! the builder takes in and what a lookup's view turns back into.

use serde::Serialize;

use super::card::CardDigest;
use super::codes::{
    CardClass, CardStatus, DiseaseKind, LimitCategory, LossReason, Percent, Relation, Sex,
};
use super::date::Date;
use super::numbers::{InsurerNumber, PayerNumber, RecipientNumber};
use super::text::{Branch, KeyText};

/// One row of the authoritative store: a qualification, the person it
/// belongs to, and that person's card link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrolleeRecord {
    /// The store's identifier of the person; all rows of one person share it
    /// and must be adjacent in the export.
    pub person_id: u64,
    /// The person's My Number Card link, if the card was ever linked.
    pub card: Option<CardLink>,
    /// The qualification itself.
    pub qualification: Qualification,
}

/// A person's card link: the keyed digest of the card serial and its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardLink {
    /// Keyed digest of the card certificate serial.
    pub digest: CardDigest,
    /// Registered, withdrawn or restricted.
    pub status: CardStatus,
}

/// One qualification, with every field of domain.md "Fields of one
/// qualification".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Qualification {
    /// 保険者番号. Serialised (in answers) in the form OQS answers with:
    /// 8 characters, a 6-digit number after two spaces.
    #[serde(serialize_with = "answer_form")]
    pub insurer_number: InsurerNumber,
    /// 保険者名称.
    pub insurer_name: String,
    /// 保険証区分.
    pub card_class: CardClass,
    /// 記号 (normalised).
    pub symbol: Option<KeyText>,
    /// 番号 (normalised).
    pub number: KeyText,
    /// 枝番.
    pub branch: Option<Branch>,
    /// 本人 (1) or 家族 (2).
    pub relation: Relation,
    /// Name, full-width, family and given name separated by U+3000 (see
    /// [`super::name`]).
    pub name: String,
    /// Name in full-width katakana, split the same way.
    pub name_kana: String,
    /// 性別.
    pub sex: Sex,
    /// 生年月日.
    pub birth_date: Date,
    /// 資格取得年月日.
    pub acquired_date: Date,
    /// 資格喪失: date and reason, if lost.
    pub loss: Option<Loss>,
    /// 資格確認書 etc.: issue and validity dates.
    pub certificate: Option<Certificate>,
    /// 一部負担金割合.
    pub copay_percent: Percent,
    /// 未就学者 flag.
    pub preschool: bool,
    /// 高齢受給者証 (ages 70-74).
    pub elderly: Option<ElderlyCertificate>,
    /// 限度額適用区分.
    pub limit_category: Option<LimitCategory>,
    /// 特定疾病療養受療証.
    pub specific_disease: Option<SpecificDisease>,
    /// 公費 (medical aid).
    pub public_expense: Option<PublicExpense>,
}

/// The loss of a qualification (資格喪失).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Loss {
    /// 資格喪失年月日: the first day the qualification no longer holds.
    pub date: Date,
    /// 資格喪失事由.
    pub reason: LossReason,
}

/// Issue and validity dates of a qualification certificate (資格確認書).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Certificate {
    /// 交付年月日.
    pub issued: Date,
    /// 有効開始年月日.
    pub valid_from: Date,
    /// 有効終了年月日.
    pub valid_until: Date,
}

/// Elderly recipient certificate (高齢受給者証).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ElderlyCertificate {
    /// 有効開始年月日.
    pub valid_from: Date,
    /// 有効終了年月日.
    pub valid_until: Date,
    /// 一部負担金割合 under the certificate.
    pub percent: Percent,
}

/// Specific-disease certificate (特定疾病療養受療証).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SpecificDisease {
    /// Which disease.
    pub kind: DiseaseKind,
    /// Monthly self-pay cap, yen (自己負担限度額).
    pub monthly_cap_yen: u32,
}

/// Public expense (公費), for medical aid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PublicExpense {
    /// 公費負担者番号 (scheme 12 = 生活保護).
    pub payer: PayerNumber,
    /// 受給者番号.
    pub recipient: RecipientNumber,
    /// 福祉事務所名.
    pub welfare_office: String,
    /// Whether the medical ticket is registered online; an unregistered
    /// valid medical-aid qualification answers status 6.
    pub registered: bool,
}

impl Qualification {
    /// Whether the qualification holds on `day`: acquired on or before it and
    /// not lost on or before it.
    pub fn holds_on(&self, day: Date) -> bool {
        self.acquired_date <= day && self.loss.is_none_or(|l| l.date > day)
    }
}

fn answer_form<S: serde::Serializer>(n: &InsurerNumber, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&n.answer_form())
}
