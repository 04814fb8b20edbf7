//! `host:port` addresses as the API carries them (coordinator members, storage nodes): one
//! parser, so that every route refuses the same malformed address the same way.

use std::net::{IpAddr, Ipv6Addr};

/// Checks `text` is `HOST:PORT` — an IPv4 address, a bracketed IPv6 address or a DNS name,
/// and a port from 1 to 65535 — and returns it trimmed. The error says what is wrong.
pub fn parse_host_port(text: &str) -> Result<String, String> {
    let text = text.trim();
    let bad = |why: &str| Err(format!("{text:?} is not HOST:PORT: {why}"));
    let Some((host, port)) = text.rsplit_once(':') else {
        return bad("no port");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return bad("the port must be a number from 1 to 65535"),
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(text.to_string()),
            Err(_) => bad("not an IPv6 address in brackets"),
        };
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(text.to_string());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return bad("the host must be an IP address or a DNS name");
    }
    Ok(text.to_string())
}

/// Whether `host:port` names the loopback interface (`localhost`, `127.0.0.0/8`, `[::1]`).
pub fn is_loopback(addr: &str) -> bool {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_garbage_does_not() {
        for ok in [
            "127.0.0.1:7001",
            " node-2.example:80 ",
            "[::1]:7001",
            "localhost:1",
        ] {
            assert!(parse_host_port(ok).is_ok(), "{ok}");
        }
        for bad in [
            ":",
            "",
            "host",
            "host:",
            ":7001",
            "host:0",
            "host:70000",
            "host:x",
            "a b:1",
            "[::1:7001",
            "-x:1",
            "a..b:1",
            "http://h:1",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_host_port(" 10.0.0.1:7 ").unwrap(), "10.0.0.1:7");
    }

    #[test]
    fn loopback_is_told_apart() {
        for addr in ["127.0.0.1:7001", "localhost:1", "[::1]:7", "127.9.9.9:1"] {
            assert!(super::is_loopback(addr), "{addr}");
        }
        for addr in ["0.0.0.0:7001", "10.0.0.2:1", "example.org:80", "[::]:7"] {
            assert!(!super::is_loopback(addr), "{addr}");
        }
    }
}
