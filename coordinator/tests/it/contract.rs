//! The REST contract kept: `api-spec/openapi.yaml` against a running coordinator.
//!
//! * Paths: every path the routers declare (the `.route("…")` calls under `src/api/`) is in
//!   the spec, and every path in the spec is declared. (The Raft transport, `/raft/…`, is
//!   the coordinators' own binary protocol, described in docs/DESIGN.md, not a client API.)
//! * Methods: every documented operation reaches a handler (not the 404/405 fallbacks), and
//!   every undocumented method on a documented path answers 405.
//! * Statuses and bodies: each probe — an operation called with an empty JSON object and
//!   placeholder path parameters, as an API fuzzer starts — answers a status its operation
//!   documents, never a 5xx but 503 (no storage node yet), and a JSON body that validates
//!   against the documented schema.

use std::collections::BTreeSet;
use std::path::Path;

use idunno_api::contract::{Spec, METHODS};
use idunno_coordinator::local::LocalGroup;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The paths the coordinator's routers declare, from their source.
fn routed_paths() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = rest[at + ".route(".len()..].trim_start();
            if let Some(literal) = rest.strip_prefix('"') {
                let end = literal.find('"').unwrap();
                out.insert(literal[..end].to_string());
            }
        }
    }
    out
}

#[test]
fn every_routed_path_is_documented_and_every_documented_path_routed() {
    let spec = Spec::load();
    let documented: BTreeSet<String> = spec.operations().into_keys().collect();
    let routed = routed_paths();
    assert!(routed.len() > 30, "found only {routed:?}");
    // A catch-all route (`/v1/files/{*path}`) serves its documented sub-paths too
    // (`/v1/files/{path}/versions`): its handler tells them apart.
    let serves = |route: &str, path: &str| match route.split_once("{*") {
        Some((prefix, rest)) => {
            let param = rest.trim_end_matches('}');
            let documented = format!("{prefix}{{{param}}}");
            path == documented || path.starts_with(&format!("{documented}/"))
        }
        None => route == path,
    };
    let undocumented: Vec<&String> = routed
        .iter()
        .filter(|r| !documented.iter().any(|p| serves(r, p)))
        .collect();
    let unrouted: Vec<&String> = documented
        .iter()
        .filter(|p| !routed.iter().any(|r| serves(r, p)))
        .collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routed but not in openapi.yaml: {undocumented:?}; in openapi.yaml but not routed: {unrouted:?}"
    );
}

/// A placeholder for each path parameter.
fn fill(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(match &rest[open + 1..close] {
            "id" => "1",
            "batch" => "1-0",
            "version" => "1",
            "path" => "nope.txt",
            _ => "nope",
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// What a fuzzer starts with, per operation: (name, URL, JSON body): a plain call (an empty
/// object as the body); an unknown query parameter; malformed path parameters; a body that
/// is not JSON, and one of the wrong JSON type.
fn probes(
    addr: &str,
    path: &str,
    method: &str,
) -> Vec<(&'static str, String, Option<&'static str>)> {
    let with_body = matches!(method, "post" | "put" | "patch");
    let body = |b: &'static str| with_body.then_some(b);
    let url = format!("http://{addr}{}", fill(path));
    let mut out = vec![
        ("plain", url.clone(), body("{}")),
        ("unknown query", format!("{url}?bogus=1"), body("{}")),
    ];
    if path.contains('{') {
        let bad = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "%FF%00x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        out.push((
            "bad path parameter",
            format!("http://{addr}{bad}"),
            body("{}"),
        ));
    }
    if with_body && !path.starts_with("/v1/files/") {
        out.push(("not JSON", url.clone(), Some("{")));
        out.push(("wrong JSON type", url, Some("[]")));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_only_what_the_spec_documents() {
    let spec = Spec::load();
    let dir = tempfile::tempdir().unwrap();
    let group = LocalGroup::start(1, dir.path(), |_| {}).await.unwrap();
    group
        .wait_for_leader(std::time::Duration::from_secs(15))
        .await
        .expect("a leader");
    let addr = group.addrs()[0].clone();
    let http = reqwest::Client::new();
    let mut problems = Vec::new();
    let ops = spec.operations();
    for (path, methods) in &ops {
        // A sub-path of the files catch-all (`…/{path}/versions`) is also a file name, which
        // the catch-all's own methods (put, delete) take as such.
        let base_methods: Vec<String> = ops
            .iter()
            .filter(|(p, _)| {
                p.as_str() != path && path.starts_with(&format!("{p}/")) && p.ends_with("{path}")
            })
            .flat_map(|(_, m)| m.clone())
            .collect();
        for method in METHODS {
            if !methods.contains(&method.to_string()) {
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let status = http
                    .request(m, format!("http://{addr}{}", fill(path)))
                    .send()
                    .await
                    .unwrap()
                    .status();
                if status != StatusCode::METHOD_NOT_ALLOWED
                    && !base_methods.contains(&method.to_string())
                {
                    problems.push(format!(
                        "{method} {path} → {status}: undocumented method not refused with 405"
                    ));
                }
                continue;
            }
            for (probe, url, body) in probes(&addr, path, method) {
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let mut req = http.request(m.clone(), &url);
                if let Some(body) = body {
                    req = req.header("content-type", "application/json").body(body);
                }
                let resp = req.send().await.unwrap();
                let status = resp.status();
                let content_type = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = resp.bytes().await.unwrap();
                let json: Option<Value> = serde_json::from_slice(&body).ok();
                let what = format!("{method} {path} ({probe}) → {status}");
                let fallback = status == StatusCode::METHOD_NOT_ALLOWED
                    || (status == StatusCode::NOT_FOUND
                        && json
                            .as_ref()
                            .and_then(|j| j["error"].as_str())
                            .is_some_and(|e| e.starts_with("no route")));
                if fallback {
                    problems.push(format!("{what}: reaches no handler"));
                    continue;
                }
                if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
                    problems.push(format!(
                        "{what}: server error {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                if let Err(e) = spec.check_operation(
                    method,
                    path,
                    status.as_u16(),
                    content_type.as_deref(),
                    &body,
                ) {
                    problems.push(format!("{what}: {e}"));
                }
            }
        }
    }
    group.shutdown().await;
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
