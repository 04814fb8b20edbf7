//! Names in URL paths: an SDFS name keeps its `/` separators, a single segment (a model
//! name, a batch id, a worker id) has its `/` encoded too. Everything but the unreserved
//! characters (`A-Z a-z 0-9 - . _ ~`) is percent-encoded, with the `percent-encoding` crate.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but the unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// As [`SEGMENT`], keeping `/`.
const PATH: &AsciiSet = &SEGMENT.remove(b'/');

/// An SDFS name for a URL path, keeping its `/` separators.
pub fn encode_path(name: &str) -> String {
    utf8_percent_encode(name, PATH).to_string()
}

/// One path segment (a model name, a batch id), `/` encoded too.
pub fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_slashes_and_segments_do_not() {
        assert_eq!(encode_path("images/a b%.png"), "images/a%20b%25.png");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("7-3"), "7-3");
        assert_eq!(encode_path("é~"), "%C3%A9~");
    }
}
