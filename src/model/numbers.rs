//! Check-digit numbers: insurer numbers, medical institution codes and
//! public-expense payer numbers. Each type can only hold a valid value.

use std::fmt;
use std::str::FromStr;

use super::normalize::normalize_ascii;

/// Why a number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Wrong number of digits, or a character that is not a digit.
    #[error("expected {expected}")]
    Format {
        /// What the number should look like.
        expected: &'static str,
    },
    /// The digits are fine but the last one is not the check digit.
    #[error("check digit does not match")]
    CheckDigit,
    /// A medical institution code whose prefecture is not 01-47.
    #[error("prefecture must be 01-47")]
    Prefecture,
    /// A medical institution code whose fee table is not 1 (medical),
    /// 3 (dental) or 4 (pharmacy).
    #[error("fee table must be 1 (medical), 3 (dental) or 4 (pharmacy)")]
    FeeTable,
}

/// The Luhn-style check digit the domain uses: weights 2,1,2,1,... from the
/// rightmost digit of `body`, two-digit products replaced by their digit sum,
/// check = (10 - sum mod 10) mod 10.
pub fn check_digit(body: &[u8]) -> u8 {
    let sum: u32 = body
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let p = u32::from(d) * if i % 2 == 0 { 2 } else { 1 };
            p / 10 + p % 10
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// Parses exactly `N` ASCII digits (after full-width normalisation) whose
/// last one is the check digit of the others.
fn parse_checked<const N: usize>(s: &str, expected: &'static str) -> Result<[u8; N], NumberError> {
    let mut buf = [0u8; 64];
    let norm = normalize_ascii(s, &mut buf).ok_or(NumberError::Format { expected })?;
    let digits = digits_of::<N>(norm).ok_or(NumberError::Format { expected })?;
    if check_digit(&digits[..N - 1]) != digits[N - 1] {
        return Err(NumberError::CheckDigit);
    }
    Ok(digits)
}

fn digits_of<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut out = [0u8; N];
    for (o, &c) in out.iter_mut().zip(s) {
        *o = c - b'0';
    }
    Some(out)
}

fn to_u32(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |acc, &d| acc * 10 + u32::from(d))
}

/// True if `value` has at most `N` base-10 digits and, written with `N`
/// digits, ends in the check digit of the others (what parsing checks,
/// without formatting a string).
fn is_checked<const N: usize>(mut value: u32) -> bool {
    let mut digits = [0u8; N];
    for d in digits.iter_mut().rev() {
        *d = (value % 10) as u8;
        value /= 10;
    }
    value == 0 && check_digit(&digits[..N - 1]) == digits[N - 1]
}

/// An insurer number (保険者番号): 8 digits (scheme, prefecture, insurer,
/// check) or, for municipal National Health Insurance, 6 digits
/// (prefecture, insurer, check). A 6-digit number is also accepted zero- or
/// space-padded to 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InsurerNumber {
    value: u32,
    six: bool,
}

impl InsurerNumber {
    /// The number as an integer (the 6 or 8 digits read in base 10).
    pub fn value(self) -> u32 {
        self.value
    }

    /// True for a 6-digit (municipal NHI) number.
    pub fn is_six_digit(self) -> bool {
        self.six
    }

    /// The scheme code (法別番号), absent for 6-digit numbers.
    pub fn scheme(self) -> Option<u8> {
        (!self.six).then_some((self.value / 1_000_000) as u8)
    }

    /// Rebuilds a number from [`value`](Self::value) and its width, checking
    /// it again (used when reading snapshots).
    pub fn from_parts(value: u32, six: bool) -> Option<InsurerNumber> {
        let valid = if six {
            is_checked::<6>(value)
        } else {
            // "00" followed by six digits reads as a padded 6-digit number.
            value >= 1_000_000 && is_checked::<8>(value)
        };
        valid.then_some(InsurerNumber { value, six })
    }

    /// The snapshot encoding: the value, with bit 31 set for 6-digit numbers.
    pub fn to_raw(self) -> u32 {
        self.value | if self.six { 1 << 31 } else { 0 }
    }

    /// Inverse of [`to_raw`](Self::to_raw), without re-checking the digit
    /// (snapshots are checksummed and verified as a whole).
    pub fn from_raw(raw: u32) -> InsurerNumber {
        InsurerNumber {
            value: raw & !(1 << 31),
            six: raw & (1 << 31) != 0,
        }
    }
}

impl FromStr for InsurerNumber {
    type Err = NumberError;

    fn from_str(s: &str) -> Result<InsurerNumber, NumberError> {
        const EXPECTED: &str = "6 or 8 digits (6 may be zero- or space-padded to 8)";
        // Normalisation trims spaces, so a space-padded 6-digit number
        // ("  138057") arrives here as its 6 digits.
        let mut buf = [0u8; 64];
        let norm =
            normalize_ascii(s, &mut buf).ok_or(NumberError::Format { expected: EXPECTED })?;
        let text =
            std::str::from_utf8(norm).map_err(|_| NumberError::Format { expected: EXPECTED })?;
        match text.len() {
            8 if text.starts_with("00") => {
                let d: [u8; 6] = parse_checked(&text[2..], EXPECTED)?;
                Ok(InsurerNumber {
                    value: to_u32(&d),
                    six: true,
                })
            }
            8 => {
                let d: [u8; 8] = parse_checked(text, EXPECTED)?;
                Ok(InsurerNumber {
                    value: to_u32(&d),
                    six: false,
                })
            }
            6 => {
                let d: [u8; 6] = parse_checked(text, EXPECTED)?;
                Ok(InsurerNumber {
                    value: to_u32(&d),
                    six: true,
                })
            }
            _ => Err(NumberError::Format { expected: EXPECTED }),
        }
    }
}

impl InsurerNumber {
    /// The form answers carry, as OQS returns it: always 8 characters, a
    /// 6-digit (municipal NHI) number preceded by two spaces (`"  138057"`).
    /// [`Display`](fmt::Display) gives the canonical stored form instead
    /// (6 or 8 digits), which stores, probes and key identities use.
    pub fn answer_form(self) -> String {
        if self.six {
            format!("  {:06}", self.value)
        } else {
            format!("{:08}", self.value)
        }
    }
}

impl fmt::Display for InsurerNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.six {
            write!(f, "{:06}", self.value)
        } else {
            write!(f, "{:08}", self.value)
        }
    }
}

/// A medical institution code (医療機関コード): prefecture 2 (01-47) + fee
/// table 1 (1 medical, 3 dental, 4 pharmacy) + district 2 + institution 4
/// + check 1 (over the other 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstitutionCode(u64);

impl InstitutionCode {
    /// The prefecture, 1-47.
    pub fn prefecture(self) -> u8 {
        (self.0 / 100_000_000) as u8
    }

    /// The fee table digit: 1 medical, 3 dental, 4 pharmacy.
    pub fn fee_table(self) -> u8 {
        ((self.0 / 10_000_000) % 10) as u8
    }
}

impl FromStr for InstitutionCode {
    type Err = NumberError;

    fn from_str(s: &str) -> Result<InstitutionCode, NumberError> {
        let d: [u8; 10] = parse_checked(s, "10 digits")?;
        if !(1..=47).contains(&(d[0] * 10 + d[1])) {
            return Err(NumberError::Prefecture);
        }
        if ![1, 3, 4].contains(&d[2]) {
            return Err(NumberError::FeeTable);
        }
        Ok(InstitutionCode(
            d.iter().fold(0u64, |acc, &x| acc * 10 + u64::from(x)),
        ))
    }
}

impl fmt::Display for InstitutionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:010}", self.0)
    }
}

/// A public-expense payer number (公費負担者番号): scheme 2 + prefecture 2 +
/// payer 3 + check 1. Scheme 12 is medical aid (生活保護).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayerNumber(u32);

impl PayerNumber {
    /// The scheme code (法別番号).
    pub fn scheme(self) -> u8 {
        (self.0 / 1_000_000) as u8
    }

    /// The number as an integer.
    pub fn value(self) -> u32 {
        self.0
    }

    /// From [`value`](Self::value), re-checking the digit.
    pub fn from_value(value: u32) -> Option<PayerNumber> {
        is_checked::<8>(value).then_some(PayerNumber(value))
    }
}

impl FromStr for PayerNumber {
    type Err = NumberError;

    fn from_str(s: &str) -> Result<PayerNumber, NumberError> {
        let d: [u8; 8] = parse_checked(s, "8 digits")?;
        Ok(PayerNumber(to_u32(&d)))
    }
}

impl fmt::Display for PayerNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08}", self.0)
    }
}

/// A public-expense recipient number (受給者番号): 7 digits. It carries a
/// check digit in practice, but the domain does not fix its scheme, so only
/// the format is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecipientNumber(u32);

impl RecipientNumber {
    /// The number as an integer.
    pub fn value(self) -> u32 {
        self.0
    }

    /// From [`value`](Self::value), if it has at most 7 digits.
    pub fn from_value(value: u32) -> Option<RecipientNumber> {
        (value < 10_000_000).then_some(RecipientNumber(value))
    }
}

impl FromStr for RecipientNumber {
    type Err = NumberError;

    fn from_str(s: &str) -> Result<RecipientNumber, NumberError> {
        let mut buf = [0u8; 64];
        let norm = normalize_ascii(s, &mut buf).ok_or(NumberError::Format {
            expected: "7 digits",
        })?;
        let d: [u8; 7] = digits_of(norm).ok_or(NumberError::Format {
            expected: "7 digits",
        })?;
        Ok(RecipientNumber(to_u32(&d)))
    }
}

impl fmt::Display for RecipientNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:07}", self.0)
    }
}

macro_rules! serialize_display {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_display!(InsurerNumber, InstitutionCode, PayerNumber, RecipientNumber);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digits() {
        for (body, check) in [
            ("0613048", 8), // domain.md's worked example: 06130488
            ("0113001", 2),
            ("13805", 7),
            ("391301", 9),
            ("131234567", 9),
            ("0000000", 0),
        ] {
            let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
            assert_eq!(check_digit(&digits), check, "{body}");
        }
    }

    #[test]
    fn insurer_numbers() {
        let ok = |s: &str, shown: &str, six: bool| {
            let n: InsurerNumber = s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(n.to_string(), shown, "{s:?}");
            assert_eq!(n.is_six_digit(), six, "{s:?}");
            assert_eq!(InsurerNumber::from_raw(n.to_raw()), n);
            assert_eq!(InsurerNumber::from_parts(n.value(), six), Some(n), "{s:?}");
        };
        ok("06130488", "06130488", false);
        ok("０６１３０４８８", "06130488", false);
        ok(" 06130488 ", "06130488", false);
        ok("138057", "138057", true);
        ok("00138057", "138057", true);
        ok("  138057", "138057", true);
        ok("\u{3000}138057", "138057", true);
        assert_eq!(
            "138057".parse::<InsurerNumber>().unwrap().answer_form(),
            "  138057"
        );
        assert_eq!(
            "00138057".parse::<InsurerNumber>().unwrap().answer_form(),
            "  138057"
        );
        assert_eq!(
            "06130488".parse::<InsurerNumber>().unwrap().answer_form(),
            "06130488"
        );
        assert_eq!(
            "06130488".parse::<InsurerNumber>().unwrap().scheme(),
            Some(6)
        );
        assert_eq!("138057".parse::<InsurerNumber>().unwrap().scheme(), None);

        let bad = |s: &str, e: NumberError| assert_eq!(s.parse::<InsurerNumber>(), Err(e), "{s:?}");
        let format = NumberError::Format {
            expected: "6 or 8 digits (6 may be zero- or space-padded to 8)",
        };
        bad("06130487", NumberError::CheckDigit);
        bad("138058", NumberError::CheckDigit);
        bad("00138058", NumberError::CheckDigit);
        bad("0613048", format.clone());
        bad("061304881", format.clone());
        bad("0613O488", format.clone());
        bad("", format);

        // Rebuilding from snapshot parts checks the digit and the width.
        assert_eq!(InsurerNumber::from_parts(6_130_487, false), None);
        assert_eq!(InsurerNumber::from_parts(138_058, true), None);
        assert_eq!(
            InsurerNumber::from_parts(138_057, false),
            None,
            "00138057 is 6-digit"
        );
        assert_eq!(InsurerNumber::from_parts(6_130_488, true), None, "too wide");
        assert_eq!(
            InsurerNumber::from_parts(100_061_304, false),
            None,
            "too wide"
        );
    }

    #[test]
    fn institution_codes() {
        let with_check = |body: &str| {
            let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
            format!("{body}{}", check_digit(&digits))
        };
        let good = with_check("131012345");
        let code = good.parse::<InstitutionCode>().unwrap();
        assert_eq!((code.prefecture(), code.fee_table()), (13, 1));
        assert_eq!(code.to_string(), good);
        let last = good.as_bytes()[9] - b'0';
        let bad = format!("131012345{}", (last + 1) % 10);
        assert_eq!(bad.parse::<InstitutionCode>(), Err(NumberError::CheckDigit));
        assert!("13101234".parse::<InstitutionCode>().is_err());
        // (body, expected): prefecture 01-47, fee table 1, 3 or 4.
        for (body, expected) in [
            ("011012345", Ok(())),
            ("473012345", Ok(())),
            ("134012345", Ok(())),
            ("001012345", Err(NumberError::Prefecture)),
            ("481012345", Err(NumberError::Prefecture)),
            ("991012345", Err(NumberError::Prefecture)),
            ("130012345", Err(NumberError::FeeTable)),
            ("132012345", Err(NumberError::FeeTable)),
            ("135012345", Err(NumberError::FeeTable)),
            ("139012345", Err(NumberError::FeeTable)),
        ] {
            let code = with_check(body);
            assert_eq!(
                code.parse::<InstitutionCode>().map(|_| ()),
                expected,
                "{body}"
            );
        }
        let full = super::super::normalize::to_full_width(&good);
        assert_eq!(full.parse::<InstitutionCode>(), Ok(code));
    }

    #[test]
    fn payer_numbers() {
        let body: Vec<u8> = "1213001".bytes().map(|b| b - b'0').collect();
        let text = format!("1213001{}", check_digit(&body));
        let p: PayerNumber = text.parse().unwrap();
        assert_eq!(p.scheme(), 12);
        assert_eq!(p.to_string(), text);
        assert_eq!(PayerNumber::from_value(p.value()), Some(p));
        let wrong = 12_130_010 + u32::from((check_digit(&body) + 1) % 10);
        assert_eq!(PayerNumber::from_value(wrong), None);
        assert_eq!(PayerNumber::from_value(100_000_000 + p.value()), None);
        assert!("1213001".parse::<PayerNumber>().is_err());
        assert!("1234567".parse::<RecipientNumber>().is_ok());
        assert!("123456".parse::<RecipientNumber>().is_err());
    }
}
