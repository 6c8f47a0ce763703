//! Card certificate serials and their keyed digests.
//!
//! A terminal sends the serial of the card's user certificate. qualcache
//! never stores or prints a raw serial: it keeps a keyed BLAKE3 digest,
//! truncated to 128 bits, under a deployment secret ([`CardKey`]). Without
//! the key a digest cannot be turned back into a serial or tested against
//! guessed serials.

use std::fmt;
use std::str::FromStr;

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

    /// The digest of a card certificate serial. The serial is trimmed of
    /// surrounding whitespace first, so `" 0A1B "` and `"0A1B"` agree.
    pub fn digest(&self, serial: &str) -> CardDigest {
        let h = blake3::keyed_hash(&self.0, serial.trim().as_bytes());
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

/// The keyed digest of a card certificate serial.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardDigest(pub [u8; DIGEST_LEN]);

impl CardDigest {
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }
}

impl FromStr for CardDigest {
    type Err = CardKeyError;

    /// Parses 32 hexadecimal digits (the CSV `card_digest` column).
    fn from_str(s: &str) -> Result<CardDigest, CardKeyError> {
        let mut out = [0u8; DIGEST_LEN];
        hex_into(s.trim(), &mut out).ok_or(CardKeyError::Format)?;
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

    #[test]
    fn digests_depend_on_key_and_serial_only() {
        let k = CardKey::demo();
        assert_eq!(k.digest("0A1B2C"), k.digest(" 0A1B2C\n"));
        assert_ne!(k.digest("0A1B2C"), k.digest("0A1B2D"));
        let other = CardKey::from_bytes([7; 32]);
        assert_ne!(k.digest("0A1B2C"), other.digest("0A1B2C"));
        assert_ne!(k.id(), other.id());
    }

    #[test]
    fn hex_round_trips() {
        let d = CardKey::demo().digest("serial");
        assert_eq!(d.to_string().parse::<CardDigest>(), Ok(d));
        let key_hex = "00".repeat(31) + "ff";
        assert!(key_hex.parse::<CardKey>().is_ok());
        assert_eq!("abc".parse::<CardKey>().unwrap_err(), CardKeyError::Format);
        assert!(("zz".repeat(32)).parse::<CardKey>().is_err());
        assert!(format!("{:?}", CardKey::demo()).starts_with("CardKey(id "));
    }
}
