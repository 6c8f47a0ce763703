//! Card certificate serials and their keyed digests.
//!
//! A terminal sends the serial of the card's user certificate. qualcache
//! never stores or prints a raw serial: it keeps a keyed BLAKE3 digest,
//! truncated to 128 bits, under a deployment secret ([`CardKey`]). Without
//! the key a digest cannot be turned back into a serial or tested against
//! guessed serials.

use std::fmt;
use std::str::FromStr;

use super::normalize::{half_width, trim};

/// The environment variable that may hold the card key (64 hex digits).
pub const CARD_KEY_ENV: &str = "QUALCACHE_CARD_KEY";

/// Bytes kept of the keyed digest (128 bits: collisions among 10^8 cards
/// have probability about 10^-23).
pub const DIGEST_LEN: usize = 16;

/// The deployment secret under which card serials are digested.
#[derive(Clone)]
pub struct CardKey([u8; 32]);

/// Why a card key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardKeyError {
    /// Not 64 hexadecimal digits.
    #[error("card key must be 64 hexadecimal digits (32 bytes)")]
    Format,
}

impl CardKey {
    /// The key every demo and test uses when none is configured. Never use it
    /// in production: anyone can compute digests with it.
    pub fn demo() -> CardKey {
        CardKey(blake3::derive_key("qualcache 2026 demo card key", b""))
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> CardKey {
        CardKey(bytes)
    }

    /// The digest of a card certificate serial, taken over its canonical
    /// form, so every spelling of one serial (`0a1b`, `０Ａ１Ｂ`, ` 0A1B `)
    /// has one digest.
    pub fn digest(&self, serial: &CardSerial) -> CardDigest {
        let h = blake3::keyed_hash(&self.0, serial.as_bytes());
        let mut d = [0u8; DIGEST_LEN];
        d.copy_from_slice(&h.as_bytes()[..DIGEST_LEN]);
        CardDigest(d)
    }

    /// A public fingerprint of the key, stored in snapshot headers so that a
    /// lookup with the wrong key is refused instead of answering "not
    /// registered" for every card. It reveals nothing about the key.
    pub fn id(&self) -> u64 {
        let h = blake3::derive_key("qualcache card key id", &self.0);
        u64::from_le_bytes(h[..8].try_into().unwrap_or_default())
    }
}

impl FromStr for CardKey {
    type Err = CardKeyError;

    fn from_str(s: &str) -> Result<CardKey, CardKeyError> {
        let s = s.trim();
        let mut out = [0u8; 32];
        hex_into(s, &mut out).ok_or(CardKeyError::Format)?;
        Ok(CardKey(out))
    }
}

impl fmt::Debug for CardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardKey(id {:016x})", self.id())
    }
}

/// The most hexadecimal digits in a card serial: 20 octets, the longest
/// serial number a certificate may carry (RFC 5280, 4.1.2.2).
pub const MAX_SERIAL_DIGITS: usize = 40;

/// A card's user-certificate serial in its canonical form: 1 to 40
/// hexadecimal digits, upper case. Parsing normalises what a reader or a
/// person may send: full-width characters become half-width, spaces
/// (U+0020, U+3000) around the serial are trimmed and `a`-`f` become
/// `A`-`F`; leading zeros are kept (they are part of the serial as read).
/// Its `Debug` form does not show the digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CardSerial {
    len: u8,
    digits: [u8; MAX_SERIAL_DIGITS],
}

/// Why a card serial was refused. The message never repeats the serial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// Nothing left after trimming.
    #[error("serial is empty")]
    Empty,
    /// More than [`MAX_SERIAL_DIGITS`] digits.
    #[error("serial is longer than {MAX_SERIAL_DIGITS} hexadecimal digits")]
    TooLong,
    /// A character that is not a hexadecimal digit.
    #[error("serial is not hexadecimal (0-9, A-F)")]
    NotHex,
}

impl CardSerial {
    /// The canonical digits, as ASCII.
    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[..usize::from(self.len)]
    }

    /// The canonical digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are stored.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl FromStr for CardSerial {
    type Err = SerialError;

    fn from_str(s: &str) -> Result<CardSerial, SerialError> {
        let mut digits = [0u8; MAX_SERIAL_DIGITS];
        let mut len = 0;
        let mut too_long = false;
        for c in trim(s).chars() {
            let c = half_width(c);
            if !c.is_ascii_hexdigit() {
                return Err(SerialError::NotHex);
            }
            match digits.get_mut(len) {
                Some(d) => *d = c.to_ascii_uppercase() as u8,
                None => too_long = true,
            }
            len += 1;
        }
        match len {
            0 => Err(SerialError::Empty),
            _ if too_long => Err(SerialError::TooLong),
            _ => Ok(CardSerial {
                len: len as u8,
                digits,
            }),
        }
    }
}

impl fmt::Debug for CardSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardSerial({} digits)", self.len)
    }
}

/// The keyed digest of a card certificate serial.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardDigest(pub [u8; DIGEST_LEN]);

/// Why a `card_digest` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 32 hexadecimal digits (the keyed digest of the card serial)")]
pub struct DigestError;

impl CardDigest {
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }
}

impl FromStr for CardDigest {
    type Err = DigestError;

    /// Parses 32 hexadecimal digits, either case (the CSV `card_digest`
    /// column).
    fn from_str(s: &str) -> Result<CardDigest, DigestError> {
        let mut out = [0u8; DIGEST_LEN];
        hex_into(s.trim(), &mut out).ok_or(DigestError)?;
        Ok(CardDigest(out))
    }
}

impl fmt::Display for CardDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for CardDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardDigest({self})")
    }
}

fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(s: &str) -> CardSerial {
        s.parse().unwrap()
    }

    #[test]
    fn digests_depend_on_key_and_serial_only() {
        let k = CardKey::demo();
        for spelling in ["0a1b2c", " 0A1B2C ", "\u{3000}０Ａ１Ｂ２Ｃ", "０ａ１ｂ２ｃ"] {
            assert_eq!(k.digest(&serial("0A1B2C")), k.digest(&serial(spelling)));
        }
        assert_ne!(k.digest(&serial("0A1B2C")), k.digest(&serial("0A1B2D")));
        assert_ne!(k.digest(&serial("0A1B2C")), k.digest(&serial("A1B2C")));
        let other = CardKey::from_bytes([7; 32]);
        assert_ne!(k.digest(&serial("0A1B2C")), other.digest(&serial("0A1B2C")));
        assert_ne!(k.id(), other.id());
    }

    #[test]
    fn serials_have_one_canonical_form() {
        for (input, canonical) in [
            ("9c1d0e7a55b2f310", "9C1D0E7A55B2F310"),
            ("  00ff ", "00FF"),
            ("\u{3000}ＡＢ\u{3000}", "AB"),
            ("0", "0"),
            (&"f".repeat(40), &"F".repeat(40)),
        ] {
            assert_eq!(serial(input).as_str(), canonical, "{input:?}");
        }
        for (input, err) in [
            ("", SerialError::Empty),
            (" \u{3000} ", SerialError::Empty),
            (&"1".repeat(41), SerialError::TooLong),
            ("12G4", SerialError::NotHex),
            ("12 34", SerialError::NotHex),
            ("0x12", SerialError::NotHex),
            ("12-34", SerialError::NotHex),
            ("１２－３４", SerialError::NotHex),
        ] {
            assert_eq!(input.parse::<CardSerial>(), Err(err), "{input:?}");
        }
        assert_eq!(format!("{:?}", serial("ABCD")), "CardSerial(4 digits)");
    }

    #[test]
    fn hex_round_trips() {
        let d = CardKey::demo().digest(&serial("5E41A1"));
        assert_eq!(d.to_string().parse::<CardDigest>(), Ok(d));
        let key_hex = "00".repeat(31) + "ff";
        assert!(key_hex.parse::<CardKey>().is_ok());
        assert_eq!("abc".parse::<CardKey>().unwrap_err(), CardKeyError::Format);
        assert!(("zz".repeat(32)).parse::<CardKey>().is_err());
        assert!(format!("{:?}", CardKey::demo()).starts_with("CardKey(id "));
        assert_eq!(d.to_string().to_uppercase().parse::<CardDigest>(), Ok(d));
        for bad in ["", "abc", &"0".repeat(31), &"0".repeat(33), &"g".repeat(32)] {
            assert_eq!(bad.parse::<CardDigest>(), Err(DigestError), "{bad:?}");
        }
        assert!(DigestError.to_string().contains("32 hexadecimal digits"));
    }
}
