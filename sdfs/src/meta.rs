//! A stored blob's metadata record, keyed by its content hash: how big it is and where its
//! chunks are. Written only after every chunk is on disk, so its presence means "complete".

use std::time::{SystemTime, UNIX_EPOCH};

/// Format version of the encoded record (version 1 records, without a stamp, still decode).
const VERSION: u8 = 2;
/// Encoded length: version, size, upload, chunk size, creation time, stamp.
const ENCODED_LEN: usize = 1 + 8 + 8 + 4 + 8 + 8;
/// Encoded length of a version 1 record (no stamp).
const V1_LEN: usize = ENCODED_LEN - 8;

/// What the store knows about one complete blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobMeta {
    /// Content bytes.
    pub size: u64,
    /// The upload whose chunks hold the content (the first half of each chunk key).
    pub upload: u64,
    /// Content bytes per chunk (every chunk but the last is full). Kept per blob so the
    /// store's chunk size can change without rewriting old blobs.
    pub chunk_size: u32,
    /// When it was stored (or stored again), milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Changes every time the blob is stored or stored again (a unique id from the store's
    /// counter). A conditional delete names the stamp it saw, so a blob stored again since
    /// — by a put that will refer to it — is not deleted.
    pub stamp: u64,
}

impl BlobMeta {
    /// How many chunks the content spans (0 for an empty blob).
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }

    /// Content bytes of chunk `index`.
    pub fn chunk_len(&self, index: u64) -> usize {
        let cs = u64::from(self.chunk_size);
        let start = index * cs;
        // The result is at most chunk_size, so it fits in usize.
        self.size.saturating_sub(start).min(cs) as usize
    }

    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0] = VERSION;
        out[1..9].copy_from_slice(&self.size.to_be_bytes());
        out[9..17].copy_from_slice(&self.upload.to_be_bytes());
        out[17..21].copy_from_slice(&self.chunk_size.to_be_bytes());
        out[21..29].copy_from_slice(&self.created_ms.to_be_bytes());
        out[29..37].copy_from_slice(&self.stamp.to_be_bytes());
        out
    }

    /// Decodes a record; `None` if it is not one this version wrote.
    pub fn decode(bytes: &[u8]) -> Option<BlobMeta> {
        let stamped = match (bytes.first(), bytes.len()) {
            (Some(&VERSION), ENCODED_LEN) => true,
            (Some(1), V1_LEN) => false,
            _ => return None,
        };
        let u64_at = |i: usize| bytes[i..i + 8].try_into().ok().map(u64::from_be_bytes);
        let chunk_size = u32::from_be_bytes(bytes[17..21].try_into().ok()?);
        if chunk_size == 0 {
            return None;
        }
        let upload = u64_at(9)?;
        Some(BlobMeta {
            size: u64_at(1)?,
            upload,
            chunk_size,
            created_ms: u64_at(21)?,
            // A version 1 record was never stored again: its upload id is as unique.
            stamp: if stamped { u64_at(29)? } else { upload },
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let m = BlobMeta {
            size: 5 << 30,
            upload: 42,
            chunk_size: 65536,
            created_ms: 1_700_000_000_000,
            stamp: 77,
        };
        assert_eq!(BlobMeta::decode(&m.encode()), Some(m));
        assert_eq!(BlobMeta::decode(&m.encode()[1..]), None);
        // A version 1 record (no stamp) is read with its upload id as the stamp.
        let mut v1 = m.encode()[..V1_LEN].to_vec();
        v1[0] = 1;
        assert_eq!(BlobMeta::decode(&v1), Some(BlobMeta { stamp: 42, ..m }));
    }

    #[test]
    fn chunks_cover_the_size() {
        let m = |size| BlobMeta {
            size,
            upload: 1,
            chunk_size: 10,
            created_ms: 0,
            stamp: 1,
        };
        assert_eq!(m(0).chunk_count(), 0);
        assert_eq!(m(10).chunk_count(), 1);
        assert_eq!(m(25).chunk_count(), 3);
        assert_eq!(m(25).chunk_len(2), 5);
        assert_eq!(m(25).chunk_len(1), 10);
    }
}
