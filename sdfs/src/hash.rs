//! A blob's name: the BLAKE3 hash of its content, written as 64 lowercase hex digits on the
//! wire and kept as 32 raw bytes in the store.

use std::fmt;
use std::str::FromStr;

use crate::error::SdfsError;

/// The BLAKE3 hash of a blob's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash([u8; 32]);

impl BlobHash {
    /// The hash of `data` (for small contents and tests; uploads hash as they stream).
    pub fn of(data: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(data).as_bytes())
    }

    /// Parses 64 hex digits (either case); anything else is a [`SdfsError::BadRequest`].
    pub fn parse(hex: &str) -> Result<BlobHash, SdfsError> {
        let bad = || {
            SdfsError::BadRequest(format!(
                "{:?} is not a blob hash (64 hex digits of BLAKE3)",
                truncate(hex)
            ))
        };
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(bad)?;
            let lo = hex_value(pair[1]).ok_or_else(bad)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(BlobHash(out))
    }

    /// The hash from its 32 raw bytes (a store key); `None` if the length is wrong.
    pub fn from_slice(bytes: &[u8]) -> Option<BlobHash> {
        <[u8; 32]>::try_from(bytes).ok().map(BlobHash)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(h: blake3::Hash) -> Self {
        BlobHash(*h.as_bytes())
    }
}

impl FromStr for BlobHash {
    type Err = SdfsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlobHash::parse(s)
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({self})")
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// At most 80 characters of a user's string, for error messages.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_matches_blake3() {
        let h = BlobHash::of(b"hello");
        assert_eq!(h.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(BlobHash::parse(&h.to_hex()).unwrap(), h);
        assert_eq!(BlobHash::parse(&h.to_hex().to_uppercase()).unwrap(), h);
    }

    #[test]
    fn bad_hashes_are_refused() {
        let good = BlobHash::of(b"x").to_hex();
        for bad in [
            String::new(),
            "abc".to_string(),
            good[..63].to_string(),
            format!("{good}0"),
            format!("{}g", &good[..63]),
            format!("{}é", &good[..62]),
        ] {
            assert!(BlobHash::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
