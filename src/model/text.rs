//! The text parts of an insurance key: symbol (記号), number (番号) and
//! branch (枝番), held in their canonical form ([`super::normalize`]:
//! full-width ASCII made half-width, spaces around trimmed), so that every
//! spelling of one key compares equal.

use std::fmt;
use std::str::FromStr;

use super::normalize::{normalize_ascii, normalize_into, trim};
use super::numbers::InsurerNumber;

/// The longest symbol or number, in bytes after normalisation.
pub const MAX_KEY_TEXT: usize = 38;

/// Why a key part was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Nothing left after trimming.
    #[error("empty")]
    Empty,
    /// Longer than [`MAX_KEY_TEXT`] bytes after normalisation.
    #[error("longer than {MAX_KEY_TEXT} bytes")]
    TooLong,
    /// A control character (tab, newline, NUL, ...).
    #[error("contains a control character")]
    Control,
    /// A branch number that is not exactly two digits.
    #[error("expected 2 digits")]
    Branch,
}

/// Bytes of a [`KeyText`]'s buffer: the longest text rounded up to whole
/// 8-byte words, zero after the text (hashing reads whole words).
pub const KEY_TEXT_BUF: usize = MAX_KEY_TEXT.div_ceil(8) * 8;

/// A normalised symbol or number: 1 to 38 bytes of UTF-8 with no control
/// characters, stored inline so that parsing one does not allocate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyText {
    len: u8,
    /// The text, then zeros.
    bytes: [u8; KEY_TEXT_BUF],
}

impl KeyText {
    /// The normalised text.
    pub fn as_str(&self) -> &str {
        // Built only from whole UTF-8 characters (see `from_str`).
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The normalised bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The text followed by zeros, [`KEY_TEXT_BUF`] bytes.
    #[inline]
    pub fn padded(&self) -> &[u8; KEY_TEXT_BUF] {
        &self.bytes
    }
}

impl FromStr for KeyText {
    type Err = TextError;

    fn from_str(s: &str) -> Result<KeyText, TextError> {
        let mut bytes = [0u8; KEY_TEXT_BUF];
        let norm = normalize_into(s, &mut bytes[..MAX_KEY_TEXT]).ok_or(TextError::TooLong)?;
        if norm.is_empty() {
            return Err(TextError::Empty);
        }
        if norm.chars().any(char::is_control) {
            return Err(TextError::Control);
        }
        let len = norm.len() as u8;
        Ok(KeyText { len, bytes })
    }
}

impl fmt::Debug for KeyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for KeyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for KeyText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A branch number (枝番): two digits, `00`-`99`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Branch(u8);

impl Branch {
    /// The branch as a number 0-99.
    pub fn value(self) -> u8 {
        self.0
    }

    /// The branch with this value, if it is 0-99.
    pub fn new(value: u8) -> Option<Branch> {
        (value < 100).then_some(Branch(value))
    }
}

impl FromStr for Branch {
    type Err = TextError;

    fn from_str(s: &str) -> Result<Branch, TextError> {
        let mut buf = [0u8; 8];
        match normalize_ascii(s, &mut buf) {
            Some(&[a, b]) if a.is_ascii_digit() && b.is_ascii_digit() => {
                Ok(Branch((a - b'0') * 10 + (b - b'0')))
            }
            _ => Err(TextError::Branch),
        }
    }
}

impl fmt::Display for Branch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

impl serde::Serialize for Branch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The insurance key of a lookup by numbers, normalised. Without a branch it
/// may match a whole family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InsuranceKey {
    /// 保険者番号.
    pub insurer: InsurerNumber,
    /// 記号; absent for late-stage elderly and some NHI cards.
    pub symbol: Option<KeyText>,
    /// 番号.
    pub number: KeyText,
    /// 枝番; absent means "any branch".
    pub branch: Option<Branch>,
}

impl InsuranceKey {
    /// Parses and normalises the parts of a key; an empty or all-space
    /// symbol or branch means "none".
    pub fn parse(
        insurer: &str,
        symbol: Option<&str>,
        number: &str,
        branch: Option<&str>,
    ) -> Result<InsuranceKey, KeyError> {
        fn present(s: Option<&str>) -> Option<&str> {
            s.filter(|s| !trim(s).is_empty())
        }
        Ok(InsuranceKey {
            insurer: insurer.parse().map_err(KeyError::Insurer)?,
            symbol: present(symbol)
                .map(str::parse)
                .transpose()
                .map_err(KeyError::Symbol)?,
            number: number.parse().map_err(KeyError::Number)?,
            branch: present(branch)
                .map(str::parse)
                .transpose()
                .map_err(KeyError::Branch)?,
        })
    }
}

/// Which part of an insurance key was refused, and why. The message names
/// the part but never repeats its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The insurer number.
    #[error("insurer number: {0}")]
    Insurer(super::numbers::NumberError),
    /// The symbol.
    #[error("symbol: {0}")]
    Symbol(TextError),
    /// The number.
    #[error("number: {0}")]
    Number(TextError),
    /// The branch.
    #[error("branch: {0}")]
    Branch(TextError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        for (input, expected) in [
            ("ABC123", "ABC123"),
            ("ＡＢＣ１２３", "ABC123"),
            ("ａｂｃ", "abc"),
            ("  12 ", "12"),
            ("\u{3000}１２\u{3000}", "12"),
            (" \u{3000} 記号１ ", "記号1"),
            ("東京　１", "東京　1"), // inner spaces are kept
            ("１２－３", "12-3"),    // punctuation too
            ("（Ａ＿Ｂ）", "(A_B)"),
        ] {
            let t: KeyText = input.parse().unwrap();
            assert_eq!(t.as_str(), expected, "{input:?}");
        }
    }

    #[test]
    fn refusals() {
        for (input, err) in [
            ("", TextError::Empty),
            (" \u{3000} ", TextError::Empty),
            ("a\tb", TextError::Control),
            (&"1".repeat(39), TextError::TooLong),
            (&"記".repeat(13), TextError::TooLong),
        ] {
            assert_eq!(input.parse::<KeyText>(), Err(err), "{input:?}");
        }
        assert_eq!(
            "１".repeat(38).parse::<KeyText>().map(|t| t.as_str().len()),
            Ok(38)
        );
    }

    #[test]
    fn branches() {
        for (input, value) in [("00", 0), ("01", 1), ("９９", 99), (" 07 ", 7)] {
            assert_eq!(
                input.parse::<Branch>().map(Branch::value),
                Ok(value),
                "{input:?}"
            );
        }
        for input in ["1", "100", "a1", ""] {
            assert_eq!(input.parse::<Branch>(), Err(TextError::Branch), "{input:?}");
        }
    }

    #[test]
    fn keys() {
        let k = InsuranceKey::parse("06130488", Some("ＡＢ１"), " 123 ", Some("")).unwrap();
        assert_eq!(k.symbol.unwrap().as_str(), "AB1");
        assert_eq!(k.number.as_str(), "123");
        assert_eq!(k.branch, None);
        let k = InsuranceKey::parse("06130488", Some("\u{3000}"), "1", Some("02")).unwrap();
        assert_eq!(k.symbol, None);
        assert_eq!(k.branch, Branch::new(2));
        assert!(matches!(
            InsuranceKey::parse("06130487", None, "1", None),
            Err(KeyError::Insurer(_))
        ));
        assert!(matches!(
            InsuranceKey::parse("06130488", None, " ", None),
            Err(KeyError::Number(TextError::Empty))
        ));
    }
}
