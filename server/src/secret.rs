//! Checking a presented secret or bearer token without leaking, through timing, where it
//! differs (the maintained `constant_time_eq` crate, not a hand fold the compiler may cut short).

/// Whether `given` (absent: no) equals `wanted`.
pub fn matches(given: Option<&str>, wanted: &str) -> bool {
    given.is_some_and(|g| constant_time_eq::constant_time_eq(g.as_bytes(), wanted.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_exactly() {
        assert!(super::matches(Some("abc"), "abc"));
        assert!(!super::matches(Some("abd"), "abc"));
        assert!(!super::matches(Some("ab"), "abc"));
        assert!(!super::matches(None, "abc"));
    }
}
