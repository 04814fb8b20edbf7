//! Chunks: a blob's content is cut into fixed-size chunks, each with its own BLAKE3 kept in
//! sled under (upload id, chunk index) — keys known before the blob's hash is — so a read
//! verifies every chunk before handing out any of its bytes. The bytes themselves live in the
//! upload's content file (`content.rs`). Blob metadata is in `meta.rs`.

/// Bytes of content per chunk (the default; each blob records its own). 64 KiB keeps a
/// range read's overhead small (at most one chunk read and hashed on each side) while the
/// checksums cost 0.05 % of the content; see the crate README for the measurements.
pub const CHUNK_SIZE: usize = 64 << 10;

/// Length of a chunk checksum (BLAKE3).
pub const SUM_LEN: usize = 32;

/// The key of chunk `index` of upload `upload`: both big-endian, so an upload's chunks are
/// adjacent and in order.
pub fn chunk_key(upload: u64, index: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&upload.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The prefix every chunk key of `upload` starts with.
pub fn upload_prefix(upload: u64) -> [u8; 8] {
    upload.to_be_bytes()
}

/// Why a stored chunk cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFault {
    /// Its checksum or its bytes are gone (a missing record, a missing or short file).
    Missing,
    /// The bytes do not match their checksum: bit rot.
    ChecksumMismatch,
}

/// Checks chunk bytes against their stored checksum.
pub fn verify(data: &[u8], sum: &[u8]) -> Result<(), ChunkFault> {
    if sum.len() != SUM_LEN {
        return Err(ChunkFault::Missing);
    }
    if blake3::hash(data).as_bytes()[..] == *sum {
        Ok(())
    } else {
        Err(ChunkFault::ChecksumMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_upload_then_index() {
        assert!(chunk_key(1, 2) < chunk_key(1, 3));
        assert!(chunk_key(1, u32::MAX) < chunk_key(2, 0));
        assert!(chunk_key(7, 9).starts_with(&upload_prefix(7)));
    }

    #[test]
    fn a_flipped_byte_fails_verification() {
        let data = b"hello world".to_vec();
        let sum = blake3::hash(&data);
        assert_eq!(verify(&data, sum.as_bytes()), Ok(()));
        let mut bad = data.clone();
        bad[3] ^= 1;
        assert_eq!(
            verify(&bad, sum.as_bytes()),
            Err(ChunkFault::ChecksumMismatch)
        );
        assert_eq!(verify(&data, &[0; 5]), Err(ChunkFault::Missing));
    }
}
