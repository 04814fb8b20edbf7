//! A batch's inputs: their bytes read straight from storage nodes, hash-verified, and decoded
//! into images.
//!
//! The lease names each input's BLAKE3 hash and the storage nodes holding it, best first. A
//! replica that cannot be reached, answers an error, or serves bytes with another hash is
//! skipped for the next one; an input no replica could serve, or that does not decode, is a
//! per-query error, never a batch failure. This module does not talk to the coordinators.
//!
//! Inputs come from anyone who can write to SDFS, so both steps are bounded: an input is read
//! only up to [`MAX_INPUT_BYTES`], and decoding stops with an error before it allocates more
//! than [`MAX_DECODED_BYTES`] or meets a side longer than [`MAX_IMAGE_SIDE`] (a few bytes of
//! PNG can claim a 100 000 × 100 000 image: a decompression bomb is one query's error result,
//! not an out-of-memory worker).

use std::io::Cursor;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use idunno_api::client::describe_error;
use idunno_api::storage_node::StorageNodeClient;
use idunno_api::worker::LeasedInput;
use idunno_api::Scheme;
use image::{DynamicImage, ImageError, ImageFormat, ImageReader, Limits};

use crate::error::WorkerError;

/// Largest input the worker reads, whatever size the lease gives: an image to classify, not
/// a data set. 64 MiB holds any compressed photo and an uncompressed 21-megapixel RGB one
/// (a larger input is an error result, refused before it is downloaded).
pub const MAX_INPUT_BYTES: u64 = 64 << 20;

/// Most memory one image's decoder may allocate (the decoded pixels count): 256 MiB is an
/// 89-megapixel RGB image. A prepared batch holds its decoded images, so this bounds a
/// batch's memory to its size times this.
pub const MAX_DECODED_BYTES: u64 = 256 << 20;

/// Longest side of an image the worker decodes (as long as the resize step accepts).
pub const MAX_IMAGE_SIDE: u32 = idunno_models::preprocess::MAX_RESIZED_SIDE;

/// Inputs of one batch fetched at the same time.
const PARALLEL_FETCHES: usize = 8;

/// Longest one replica may take to serve one input.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads input blobs from storage nodes.
#[derive(Clone)]
pub struct InputFetcher {
    /// The storage nodes' client, over the coordinators' client's connection pool.
    nodes: StorageNodeClient,
}

impl InputFetcher {
    /// A fetcher over `http`'s pool, reaching nodes with `scheme` and sending `secret` when
    /// the cluster has one.
    pub fn new(http: reqwest::Client, scheme: Scheme, secret: Option<String>) -> InputFetcher {
        InputFetcher {
            nodes: StorageNodeClient::new(http, scheme, secret),
        }
    }

    /// The verified bytes of one input, from the first replica that serves them correctly.
    pub async fn fetch(&self, input: &LeasedInput) -> Result<Bytes, WorkerError> {
        let fail = |reason: String| WorkerError::Input {
            name: input.name.clone(),
            reason,
        };
        let Some(hash) = input.hash.as_deref() else {
            return Err(fail("no such file in SDFS".into()));
        };
        if input.replicas.is_empty() {
            return Err(fail("no live storage node holds it".into()));
        }
        if input.size > MAX_INPUT_BYTES {
            return Err(fail(format!(
                "{} bytes is more than the {MAX_INPUT_BYTES} a worker reads for one image",
                input.size
            )));
        }
        // The size the lease gives is exact: a replica that sends more is refused.
        let limit = if input.size > 0 {
            input.size
        } else {
            MAX_INPUT_BYTES
        };
        let mut reasons = Vec::new();
        for replica in &input.replicas {
            match self.fetch_from(replica, hash, limit).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => {
                    tracing::warn!(input = %input.name, %replica, error = %e, "replica failed; trying the next");
                    reasons.push(e.to_string());
                }
            }
        }
        Err(fail(format!(
            "no replica could serve it: {}",
            reasons.join("; ")
        )))
    }

    /// All inputs of a batch, in input order, a few at a time.
    pub async fn fetch_all(&self, inputs: &[LeasedInput]) -> Vec<Result<Bytes, WorkerError>> {
        // Owned futures: borrowing closures here make the caller's future not `Send`.
        futures::stream::iter(inputs.to_vec())
            .map(|input| {
                let fetcher = self.clone();
                async move { fetcher.fetch(&input).await }
            })
            .buffered(PARALLEL_FETCHES)
            .collect()
            .await
    }

    /// `GET http://{replica}/internal/blobs/{hash}`, at most `limit` bytes, BLAKE3-checked.
    async fn fetch_from(
        &self,
        replica: &str,
        hash: &str,
        limit: u64,
    ) -> Result<Bytes, WorkerError> {
        let fail = |reason: String| WorkerError::Replica {
            replica: replica.to_string(),
            reason,
        };
        let response = self
            .nodes
            .get_blob(replica, hash, REPLICA_TIMEOUT)
            .await
            .map_err(|e| fail(e.reason))?;
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(fail(format!("blob is larger than {limit} bytes")));
        }
        // Sized once from the declared length (at most `limit`, checked above), not grown.
        let declared = response.content_length().unwrap_or(0);
        let mut body = BytesMut::with_capacity(usize::try_from(declared).unwrap_or(0));
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| fail(describe_error(&e)))?;
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(fail(format!("blob is larger than {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let body = body.freeze();
        verify_hash(&body, hash, &format!("blob {hash} on {replica}"))?;
        Ok(body)
    }
}

/// Checks that `bytes` hash (BLAKE3) to the hex digest `expected`.
pub fn verify_hash(bytes: &[u8], expected: &str, what: &str) -> Result<(), WorkerError> {
    let actual = blake3::hash(bytes).to_hex();
    if actual.as_str().eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(WorkerError::HashMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

/// Decodes an image in any format the worker's `image` crate reads: JPEG, PNG, GIF, BMP, ICO,
/// WebP, TIFF, PNM, TGA, QOI, DDS, Radiance HDR, OpenEXR, farbfeld (not AVIF: its decoder
/// needs the native dav1d library). The format comes from the bytes' signature, whatever
/// the file is called; only a format that has none (TGA) is taken from `name`'s extension.
/// Decoding is bounded by [`decode_limits`]. The error says why, for the query's result.
pub fn decode(bytes: &[u8], name: &str) -> Result<DynamicImage, String> {
    if bytes.is_empty() {
        return Err("cannot decode an empty file as an image".into());
    }
    let format = image_format(bytes, name)
        .ok_or("cannot decode as an image: not in any image format the worker reads")?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decode_limits());
    reader.decode().map_err(|e| match e {
        ImageError::Limits(e) => format!(
            "image too large to decode ({e}; a worker decodes at most {MAX_IMAGE_SIDE} pixels \
             a side and {} MiB of pixels)",
            MAX_DECODED_BYTES >> 20
        ),
        e => format!("cannot decode as {format:?}: {e}"),
    })
}

/// The format [`decode`] reads `bytes` (the first few are enough) as: the one their signature
/// names, else the one `name`'s extension names; `None` if neither is one the worker decodes.
pub fn image_format(bytes: &[u8], name: &str) -> Option<ImageFormat> {
    image::guess_format(bytes)
        .ok()
        .or_else(|| ImageFormat::from_path(name).ok())
        // image 0.25 builds a DDS decoder with its `dds` feature but says it cannot read DDS.
        .filter(|f| f.reading_enabled() || *f == ImageFormat::Dds)
}

/// Whether the local file at `path` is one [`decode`] would read as an image (by its first
/// bytes; by its extension for a format without a signature). For uploads of sample folders.
pub fn is_image_file(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(64);
    let read = std::fs::File::open(path).and_then(|f| f.take(64).read_to_end(&mut head));
    read.is_ok() && image_format(&head, &path.to_string_lossy()).is_some()
}

/// The decoder limits of [`decode`]: [`MAX_IMAGE_SIDE`] and [`MAX_DECODED_BYTES`].
pub fn decode_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    limits
}

#[cfg(test)]
mod tests {
    //! Against real storage nodes (`idunno_sdfs::start`, each on 127.0.0.1:0 with its own data
    //! folder, no coordinators): blobs go in through `PUT /internal/blobs`, bit rot comes from
    //! `idunno_sdfs::corrupt_byte_for_tests` on a stopped node that is then restarted.

    use idunno_sdfs::{NodeConfig, NodeHandle};
    use tokio::net::TcpListener;

    use super::*;

    /// A real storage node that can be stopped and started again on its address and folder.
    struct StorageNode {
        config: NodeConfig,
        handle: Option<NodeHandle>,
        _dir: tempfile::TempDir,
    }

    impl StorageNode {
        async fn start(secret: Option<&str>) -> StorageNode {
            let dir = tempfile::tempdir().unwrap();
            let mut config = NodeConfig::new("s1", dir.path().join("data"));
            config.cluster_secret = secret.map(str::to_string);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            config.listen = listener.local_addr().unwrap().to_string();
            let handle = idunno_sdfs::start(config.clone(), listener).await.unwrap();
            StorageNode {
                config,
                handle: Some(handle),
                _dir: dir,
            }
        }

        fn addr(&self) -> String {
            self.config.listen.clone()
        }

        /// Stores `bytes` through the node's blob route; returns their hash.
        async fn put(&self, bytes: &[u8]) -> String {
            let hash = blake3::hash(bytes).to_hex().to_string();
            let mut request = reqwest::Client::new()
                .put(format!("http://{}/internal/blobs", self.addr()))
                .header(idunno_api::headers::EXPECT_HASH_HEADER, &hash)
                .body(bytes.to_vec());
            if let Some(secret) = &self.config.cluster_secret {
                request = request.header(idunno_api::headers::SECRET_HEADER, secret);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), reqwest::StatusCode::CREATED);
            hash
        }

        /// Flips the byte at `offset` of each blob on disk (the chunk checksums stay as
        /// they were), with the node stopped, then starts it again on the same address.
        async fn rot(&mut self, blobs: &[(&str, u64)]) {
            self.handle.take().unwrap().shutdown().await.unwrap();
            for (hash, offset) in blobs {
                idunno_sdfs::corrupt_byte_for_tests(&self.config.data, hash, *offset).unwrap();
            }
            let listener = TcpListener::bind(&self.config.listen).await.unwrap();
            self.handle = Some(
                idunno_sdfs::start(self.config.clone(), listener)
                    .await
                    .unwrap(),
            );
        }
    }

    fn input(bytes: &[u8], replicas: Vec<String>) -> LeasedInput {
        LeasedInput {
            index: 0,
            name: "images/x.png".into(),
            hash: Some(blake3::hash(bytes).to_hex().to_string()),
            size: bytes.len() as u64,
            replicas,
        }
    }

    fn sample(name: &str) -> Vec<u8> {
        let path = format!("{}/../samples/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    fn png() -> Vec<u8> {
        sample("coffee.png")
    }

    /// `len` bytes that depend only on `seed`.
    fn content(seed: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }

    /// A port nothing listens on.
    const DEAD: &str = "127.0.0.1:1";

    #[tokio::test]
    async fn a_rotten_replica_is_an_error_and_the_next_replica_serves() {
        let (a, b) = (png(), sample("chelsea.png"));
        let mut bad = StorageNode::start(None).await;
        let good = StorageNode::start(None).await;
        let (hash_a, hash_b) = (bad.put(&a).await, bad.put(&b).await);
        good.put(&b).await;
        // Inside the first chunk: the node finds the rot before it answers.
        bad.rot(&[(&hash_a, 100), (&hash_b, 100)]).await;
        let fetcher = InputFetcher::new(reqwest::Client::new(), Scheme::Http, None);

        // The rotten replica alone: an input error naming it, no bytes.
        let err = fetcher
            .fetch(&input(&a, vec![bad.addr()]))
            .await
            .unwrap_err();
        assert!(matches!(err, WorkerError::Input { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&bad.addr()) && text.contains("500"), "{text}");

        // Rotten first, a dead node second, a good one last: the good bytes come back.
        let all = input(&b, vec![bad.addr(), DEAD.into(), good.addr()]);
        let bytes = fetcher.fetch(&all).await.unwrap();
        assert_eq!(&bytes[..], &b[..]);
        assert!(decode(&bytes, "x.png").is_ok());
    }

    #[tokio::test]
    async fn a_replica_that_breaks_off_mid_blob_is_not_trusted() {
        // 5 MiB blobs rotten at 4 MiB: the node has answered 200 and sent megabytes before
        // it reaches the bad chunk and cuts the stream.
        let (x, y) = (content(1, 5 << 20), content(2, 5 << 20));
        let mut bad = StorageNode::start(None).await;
        let good = StorageNode::start(None).await;
        let (hash_x, hash_y) = (bad.put(&x).await, bad.put(&y).await);
        good.put(&y).await;
        bad.rot(&[(&hash_x, 4 << 20), (&hash_y, 4 << 20)]).await;
        let fetcher = InputFetcher::new(reqwest::Client::new(), Scheme::Http, None);

        // Alone, the cut-off replica is an error, not a short blob.
        let err = fetcher
            .fetch(&input(&x, vec![bad.addr()]))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, WorkerError::Input { .. }), "{text}");
        assert!(!text.contains("answered"), "not refused up front: {text}");

        // With a good replica after it, the whole blob comes back; also when the lease gives
        // no size (the worker's own limit applies then).
        let mut both = input(&y, vec![bad.addr(), good.addr()]);
        assert!(fetcher.fetch(&both).await.unwrap() == y);
        both.size = 0;
        assert!(fetcher.fetch(&both).await.unwrap() == y);
    }

    #[tokio::test]
    async fn the_cluster_secret_is_sent() {
        let good = png();
        let node = StorageNode::start(Some("s3cret")).await;
        node.put(&good).await;
        let without = InputFetcher::new(reqwest::Client::new(), Scheme::Http, None);
        let wrong = InputFetcher::new(reqwest::Client::new(), Scheme::Http, Some("guess".into()));
        let with = InputFetcher::new(reqwest::Client::new(), Scheme::Http, Some("s3cret".into()));
        let i = input(&good, vec![node.addr()]);
        for fetcher in [without, wrong] {
            let err = fetcher.fetch(&i).await.unwrap_err();
            assert!(err.to_string().contains("403"), "{err}");
        }
        assert_eq!(&with.fetch(&i).await.unwrap()[..], &good[..]);
    }

    #[tokio::test]
    async fn missing_files_and_oversized_blobs_are_input_errors() {
        let fetcher = InputFetcher::new(reqwest::Client::new(), Scheme::Http, None);
        let mut missing = input(b"x", vec![DEAD.into()]);
        missing.hash = None;
        let err = fetcher.fetch(&missing).await.unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");

        let no_replica = input(b"x", vec![]);
        let err = fetcher.fetch(&no_replica).await.unwrap_err();
        assert!(err.to_string().contains("no live storage node"), "{err}");

        let node = StorageNode::start(None).await;
        let big = vec![7u8; 1000];
        node.put(&big).await;
        let mut lying = input(&big, vec![node.addr()]);
        lying.size = 10;
        let err = fetcher.fetch(&lying).await.unwrap_err();
        assert!(err.to_string().contains("larger than 10"), "{err}");

        // An input the lease says is huge is refused without reading it.
        let mut huge = input(&big, vec![node.addr()]);
        huge.size = MAX_INPUT_BYTES + 1;
        let err = fetcher.fetch(&huge).await.unwrap_err();
        assert!(
            err.to_string().contains("a worker reads for one image"),
            "{err}"
        );

        // A node that does not hold the blob says so; the worker passes that on.
        let absent = input(b"never stored", vec![node.addr()]);
        let err = fetcher.fetch(&absent).await.unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
    }

    #[tokio::test]
    async fn a_batch_is_fetched_in_input_order() {
        let a = png();
        let b = b"plain text, not an image".to_vec();
        let node = StorageNode::start(None).await;
        node.put(&a).await;
        node.put(&b).await;
        let fetcher = InputFetcher::new(reqwest::Client::new(), Scheme::Http, None);
        let missing = input(b"not on the node", vec![node.addr()]);
        let inputs = vec![
            input(&b, vec![node.addr()]),
            missing,
            input(&a, vec![node.addr()]),
        ];
        let got = fetcher.fetch_all(&inputs).await;
        assert_eq!(got.len(), 3);
        assert_eq!(&got[0].as_ref().unwrap()[..], &b[..]);
        assert!(got[1].is_err(), "one unreadable input fails alone");
        assert_eq!(&got[2].as_ref().unwrap()[..], &a[..]);
    }

    #[test]
    fn undecodable_bytes_give_a_reason() {
        assert!(decode(b"", "a.png").unwrap_err().contains("empty"));
        // A 16 × 16 GIF's header, then nothing.
        let gif = decode(b"GIF89a\x10\x00\x10\x00 truncated", "a.gif").unwrap_err();
        assert!(gif.contains("cannot decode as Gif"), "{gif}");
        let text = decode(b"plain text", "notes.txt").unwrap_err();
        assert!(text.contains("not in any image format"), "{text}");
        assert!(decode(&png(), "coffee.png").is_ok());
    }

    /// A small image with a gradient, so a decoder that mixes up pixels is caught.
    fn gradient() -> image::RgbImage {
        image::RgbImage::from_fn(12, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 99]))
    }

    #[test]
    fn formats_beyond_jpeg_and_png_decode_by_content_not_by_name() {
        let rgb = gradient();
        let f32_image = DynamicImage::ImageRgb32F(DynamicImage::ImageRgb8(rgb.clone()).to_rgb32f());
        for format in [
            ImageFormat::Qoi,
            ImageFormat::Pnm,
            ImageFormat::Farbfeld,
            ImageFormat::Ico,
            ImageFormat::OpenExr,
            ImageFormat::Hdr,
            ImageFormat::Tga,
        ] {
            // Each encoder takes the pixel types of its format.
            let source = match format {
                ImageFormat::OpenExr | ImageFormat::Hdr => f32_image.clone(),
                ImageFormat::Farbfeld => {
                    DynamicImage::ImageRgba16(DynamicImage::ImageRgb8(rgb.clone()).to_rgba16())
                }
                ImageFormat::Ico => {
                    DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb.clone()).to_rgba8())
                }
                _ => DynamicImage::ImageRgb8(rgb.clone()),
            };
            let mut bytes = Cursor::new(Vec::new());
            source.write_to(&mut bytes, format).unwrap();
            let bytes = bytes.into_inner();
            // A misleading name: the signature decides. TGA has none, so its name must say.
            let name = if format == ImageFormat::Tga {
                "in/picture.tga"
            } else {
                "in/picture.jpg"
            };
            let decoded = decode(&bytes, name)
                .unwrap_or_else(|e| panic!("{format:?}: {e}"))
                .to_rgb8();
            assert_eq!(decoded.dimensions(), rgb.dimensions(), "{format:?}");
            for (got, want) in decoded.pixels().zip(rgb.pixels()) {
                for c in 0..3 {
                    // HDR keeps 8-bit mantissas with a shared exponent: close, not exact.
                    let d = (got[c] as i32 - want[c] as i32).abs();
                    assert!(d <= 3, "{format:?}: {got:?} vs {want:?}");
                }
            }
        }
    }

    /// CRC-32 (IEEE) as PNG chunks use it.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A real PNG whose header is rewritten to claim `width × height` (its CRC fixed, so the
    /// header itself is valid); `color` 2 is RGB, 6 RGBA.
    fn png_claiming(width: u32, height: u32, color: u8) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(gradient())
            .write_to(&mut bytes, ImageFormat::Png)
            .unwrap();
        let mut png = bytes.into_inner();
        // Signature (8), then the IHDR chunk: length (4), "IHDR" (4), 13 bytes of data, CRC.
        assert_eq!(&png[12..16], b"IHDR");
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        png[24] = 8;
        png[25] = color;
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_it_is_allocated() {
        // Sides beyond the limit.
        let err = decode(&png_claiming(100_000, 100_000, 6), "bomb.png").unwrap_err();
        assert!(err.contains("too large to decode"), "{err}");
        // Sides within it, but 12 000 × 12 000 RGB is 412 MiB of pixels (under the image
        // crate's own 512 MiB default, over the worker's budget).
        let err = decode(&png_claiming(12_000, 12_000, 2), "big.png").unwrap_err();
        assert!(err.contains("too large to decode"), "{err}");
        // The untouched image still decodes: the rewrite, not the PNG, is what is refused.
        assert!(decode(&png_claiming(12, 7, 2), "small.png").is_ok());
    }

    #[test]
    fn hashes_compare_case_insensitively() {
        let h = blake3::hash(b"abc").to_hex().to_string();
        assert!(verify_hash(b"abc", &h.to_uppercase(), "x").is_ok());
        assert!(matches!(
            verify_hash(b"abd", &h, "x"),
            Err(WorkerError::HashMismatch { .. })
        ));
    }
}
