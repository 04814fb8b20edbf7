//! Byte ranges of a file or blob and the HTTP `Range` header that asks for one (`bytes=a-b`,
//! `bytes=a-`, `bytes=-n`). One range per request; multipart ranges are refused. The one
//! parser every route uses: a malformed header is a 400, an unsatisfiable range a 416.

/// Why a `Range` header cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not `bytes=START-END` (or a multipart range): 400.
    #[error("{0}")]
    Malformed(String),
    /// Starts past the end, or asks for bytes of an empty file: 416.
    #[error("the range is outside a file of {size} bytes")]
    Unsatisfiable { size: u64 },
}

impl RangeError {
    /// The HTTP status the error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            RangeError::Malformed(_) => 400,
            RangeError::Unsatisfiable { .. } => 416,
        }
    }
}

/// The half-open byte range `start..end` of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// Bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// Resolves a `Range` header against a blob of `size` bytes. A malformed header is
    /// [`RangeError::Malformed`]; a range that starts past the end (or any range of an empty
    /// blob) is [`RangeError::Unsatisfiable`]; an end past the blob is clamped.
    pub fn parse_header(value: &str, size: u64) -> Result<ByteRange, RangeError> {
        let bad = |why: &str| RangeError::Malformed(format!("bad Range {value:?}: {why}"));
        let spec = value
            .trim()
            .strip_prefix("bytes=")
            .ok_or_else(|| bad("expected bytes=START-END"))?
            .trim();
        if spec.contains(',') {
            return Err(bad("multiple ranges are not supported"));
        }
        let (first, last) = spec
            .split_once('-')
            .ok_or_else(|| bad("expected bytes=START-END"))?;
        let number = |s: &str| s.trim().parse::<u64>().map_err(|_| bad("not a number"));
        let unsatisfiable = RangeError::Unsatisfiable { size };
        match (first.trim().is_empty(), last.trim().is_empty()) {
            (true, true) => Err(bad("expected bytes=START-END")),
            // bytes=-n: the last n bytes.
            (true, false) => {
                let n = number(last)?;
                if n == 0 || size == 0 {
                    return Err(unsatisfiable);
                }
                Ok(ByteRange {
                    start: size.saturating_sub(n),
                    end: size,
                })
            }
            (false, open_ended) => {
                let start = number(first)?;
                let end = if open_ended {
                    size
                } else {
                    let last = number(last)?;
                    if last < start {
                        return Err(bad("the end is before the start"));
                    }
                    last.saturating_add(1).min(size)
                };
                if start >= size {
                    return Err(unsatisfiable);
                }
                Ok(ByteRange { start, end })
            }
        }
    }

    /// The `Content-Range` value of this range of a blob of `size` bytes.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{size}", self.start, self.end.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str, size: u64) -> Result<(u64, u64), u16> {
        ByteRange::parse_header(v, size)
            .map(|r| (r.start, r.end))
            .map_err(|e| e.status())
    }

    #[test]
    fn ranges_resolve_like_http_says() {
        assert_eq!(parse("bytes=0-9", 100), Ok((0, 10)));
        assert_eq!(parse("bytes=90-", 100), Ok((90, 100)));
        assert_eq!(parse("bytes=90-1000", 100), Ok((90, 100)));
        assert_eq!(parse("bytes=-10", 100), Ok((90, 100)));
        assert_eq!(parse("bytes=-1000", 100), Ok((0, 100)));
        assert_eq!(parse(" bytes=5-5 ", 100), Ok((5, 6)));
    }

    #[test]
    fn bad_ranges_are_400_and_outside_ones_416() {
        for bad in [
            "",
            "bytes=",
            "bytes=-",
            "items=0-1",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=0-1,3-4",
        ] {
            assert_eq!(parse(bad, 100), Err(400), "{bad:?}");
        }
        assert_eq!(parse("bytes=100-", 100), Err(416));
        assert_eq!(parse("bytes=0-", 0), Err(416));
        assert_eq!(parse("bytes=-0", 100), Err(416));
    }

    #[test]
    fn content_range_names_the_last_byte() {
        let r = ByteRange { start: 0, end: 10 };
        assert_eq!(r.content_range(100), "bytes 0-9/100");
    }
}
