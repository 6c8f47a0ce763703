//! The canonical form of text a terminal or an export sends: one function
//! for every key (symbols, numbers, branches, insurer and payer numbers,
//! card serials), whichever path the text arrives by (CSV, PostgreSQL,
//! requests, probes, the command line).
//!
//! The rule (domain.md): every full-width ASCII character U+FF01-U+FF5E
//! (letters, digits and punctuation: `Ａ`, `１`, `－`, `＿`, `（`, `／`, ...)
//! becomes its half-width form U+0021-U+007E, and spaces (U+0020 and the
//! ideographic space U+3000) around the value are trimmed. Spaces inside
//! the value are kept as they are, and nothing else changes (kanji, kana,
//! half-width katakana). Normalising never allocates: it writes into a
//! caller's buffer, so the lookup path can use it.

/// A space that is trimmed around values: U+0020 or U+3000.
pub fn is_space(c: char) -> bool {
    c == ' ' || c == '\u{3000}'
}

/// `s` without the spaces ([`is_space`]) around it.
pub fn trim(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// Maps a full-width ASCII character (U+FF01-U+FF5E) to its half-width
/// form (U+0021-U+007E); any other character is returned as it is.
pub fn half_width(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFF01 + 0x21).unwrap_or(c),
        _ => c,
    }
}

/// Normalises `s` into `buf` and returns the normalised text, or `None` if
/// it does not fit.
pub fn normalize_into<'b>(s: &str, buf: &'b mut [u8]) -> Option<&'b str> {
    let mut len = 0;
    for c in trim(s).chars() {
        let c = half_width(c);
        let n = c.len_utf8();
        let dst = buf.get_mut(len..len + n)?;
        c.encode_utf8(dst);
        len += n;
    }
    // Only whole characters were written, so the prefix is valid UTF-8.
    std::str::from_utf8(&buf[..len]).ok()
}

/// [`normalize_into`] returning bytes, for numeric fields.
pub(crate) fn normalize_ascii<'b>(s: &str, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    normalize_into(s, buf).map(str::as_bytes)
}

/// The full-width form of printable ASCII (U+0021-U+007E): the inverse of
/// [`half_width`], as some insurers' exports and terminals write keys.
pub fn to_full_width(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{21}'..='\u{7E}' => char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap_or(c),
            _ => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        let mut buf = [0u8; 128];
        normalize_into(s, &mut buf).unwrap().to_string()
    }

    #[test]
    fn every_full_width_ascii_character_becomes_half_width() {
        for c in '\u{21}'..='\u{7E}' {
            let full = char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap();
            assert_eq!(half_width(full), c, "{full:?}");
            assert_eq!(to_full_width(&c.to_string()), full.to_string());
        }
        assert_eq!(half_width('\u{FF00}'), '\u{FF00}');
        assert_eq!(half_width('\u{FF5F}'), '\u{FF5F}');
        assert_eq!(half_width('記'), '記');
        assert_eq!(half_width('ｱ'), 'ｱ', "half-width katakana stays");
    }

    #[test]
    fn canonical_forms() {
        for (input, expected) in [
            ("１２－３", "12-3"),
            ("ＡＢ＿（１）／２", "AB_(1)/2"),
            ("\u{3000} 記号１\u{3000}", "記号1"),
            ("東京　１", "東京　1"), // inner spaces are kept
            ("  ", ""),
            ("ａｂｃ", "abc"), // case is kept
        ] {
            assert_eq!(norm(input), expected, "{input:?}");
        }
        let mut small = [0u8; 2];
        assert_eq!(normalize_into("123", &mut small), None);
        assert_eq!(to_full_width("12-3 A"), "１２－３ Ａ");
    }
}
