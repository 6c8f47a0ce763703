//! Person names (氏名) and their kana (カナ氏名), in the form OQS answers
//! carry them: full-width, family and given name separated by one
//! ideographic space U+3000.
//!
//! Both stores pass each name through [`parse_name`] / [`parse_kana`],
//! which trim spaces (U+0020, U+3000) around the value and then accept only:
//! - parts separated by single U+3000s: at least two (family, given), more
//!   for the middle names some foreign residents' names carry; no other
//!   space of any kind, and no empty part;
//! - in a name, full-width characters only: no ASCII or Latin-1 character
//!   (U+0000-U+00FF, which includes every half-width letter, digit, sign
//!   and space) and no half-width form (U+FF61-U+FFEF, half-width katakana
//!   among them); kanji, kana, full-width letters and the variation
//!   selectors of 異体字 are fine;
//! - in a kana name, full-width katakana only (U+30A1-U+30FA, the long
//!   vowel mark ー, the middle dot ・ and the iteration marks ヽ ヾ).
//!
//! The error says which rule failed, never the name.

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing left after trimming.
    #[error("required")]
    Empty,
    /// No U+3000 between family and given name.
    #[error("family and given name must be separated by one U+3000")]
    NoSeparator,
    /// Two U+3000 in a row, or a space other than U+3000.
    #[error("parts must be separated by exactly one U+3000 and hold no other space")]
    Spacing,
    /// A control character.
    #[error("contains a control character")]
    Control,
    /// A half-width character in a name.
    #[error("must be full-width (a half-width character was found)")]
    NotFullWidth,
    /// A character other than full-width katakana in a kana name.
    #[error("must be full-width katakana")]
    NotKatakana,
}

/// The ideographic space that separates the parts of a name.
pub const SEPARATOR: char = '\u{3000}';

/// Checks a name (氏名) and returns its canonical form (trimmed).
pub fn parse_name(s: &str) -> Result<String, NameError> {
    parse(s, |c| {
        if is_half_width(c) {
            Err(NameError::NotFullWidth)
        } else {
            Ok(())
        }
    })
}

/// Checks a kana name (カナ氏名) and returns its canonical form (trimmed).
pub fn parse_kana(s: &str) -> Result<String, NameError> {
    parse(s, |c| {
        if is_katakana(c) {
            Ok(())
        } else {
            Err(NameError::NotKatakana)
        }
    })
}

fn parse(s: &str, allowed: impl Fn(char) -> Result<(), NameError>) -> Result<String, NameError> {
    let s = super::normalize::trim(s);
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    let mut parts = 0;
    for part in s.split(SEPARATOR) {
        if part.is_empty() {
            return Err(NameError::Spacing);
        }
        parts += 1;
        for c in part.chars() {
            if c.is_control() {
                return Err(NameError::Control);
            }
            if c.is_whitespace() {
                return Err(NameError::Spacing);
            }
            allowed(c)?;
        }
    }
    if parts < 2 {
        return Err(NameError::NoSeparator);
    }
    Ok(s.to_string())
}

/// ASCII, Latin-1 and the half-width forms block.
fn is_half_width(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{FF}' | '\u{FF61}'..='\u{FFEF}')
}

fn is_katakana(c: char) -> bool {
    matches!(
        c,
        '\u{30A1}'..='\u{30FA}' | '\u{30FB}' | '\u{30FC}' | '\u{30FD}' | '\u{30FE}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for (input, expected) in [
            ("山田　太郎", Ok("山田　太郎")),
            ("\u{3000}山田　太郎 ", Ok("山田　太郎")),
            (
                "ＳＭＩＴＨ　ＪＯＨＮ　ＰＡＵＬ",
                Ok("ＳＭＩＴＨ　ＪＯＨＮ　ＰＡＵＬ"),
            ),
            ("髙橋　葛\u{E0100}子", Ok("髙橋　葛\u{E0100}子")),
            ("", Err(NameError::Empty)),
            ("\u{3000}", Err(NameError::Empty)),
            ("山田太郎", Err(NameError::NoSeparator)),
            ("山田 太郎", Err(NameError::Spacing)),
            ("山田　　太郎", Err(NameError::Spacing)),
            ("山田\u{3000}\u{0020}太郎", Err(NameError::Spacing)),
            ("山田\t太郎", Err(NameError::Control)),
            ("Yamada　Taro", Err(NameError::NotFullWidth)),
            ("山田　太郎1", Err(NameError::NotFullWidth)),
            ("ﾔﾏﾀﾞ　ﾀﾛｳ", Err(NameError::NotFullWidth)),
            ("Müller　ハンス", Err(NameError::NotFullWidth)),
        ] {
            assert_eq!(
                parse_name(input).as_deref(),
                expected.as_deref(),
                "{input:?}"
            );
        }
    }

    #[test]
    fn kana() {
        for (input, expected) in [
            ("ヤマダ　タロウ", Ok("ヤマダ　タロウ")),
            ("ヴァン・デル　ヘーヴェン", Ok("ヴァン・デル　ヘーヴェン")),
            (" ササキ　ヶイ ", Ok("ササキ　ヶイ")),
            ("やまだ　たろう", Err(NameError::NotKatakana)),
            ("ﾔﾏﾀﾞ　ﾀﾛｳ", Err(NameError::NotKatakana)),
            ("山田　タロウ", Err(NameError::NotKatakana)),
            ("ＹＡＭＡＤＡ　タロウ", Err(NameError::NotKatakana)),
            ("ヤマダタロウ", Err(NameError::NoSeparator)),
            ("ヤマダ タロウ", Err(NameError::Spacing)),
        ] {
            assert_eq!(
                parse_kana(input).as_deref(),
                expected.as_deref(),
                "{input:?}"
            );
        }
    }
}
