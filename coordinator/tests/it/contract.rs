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

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use idunno_coordinator::local::LocalGroup;
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn spec() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api-spec/openapi.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

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

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Documented operations: path → methods.
fn operations(spec: &Value) -> BTreeMap<String, Vec<String>> {
    spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_string())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

#[test]
fn every_routed_path_is_documented_and_every_documented_path_routed() {
    let spec = spec();
    let documented: BTreeSet<String> = operations(&spec).into_keys().collect();
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

/// `$ref` resolved against the spec.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.trim_start_matches('#');
            resolve(
                spec,
                spec.pointer(pointer).unwrap_or_else(|| panic!("no {r}")),
            )
        }
        None => schema,
    }
}

/// Checks `value` against `schema` (the JSON Schema keywords the spec uses: type, enum,
/// properties, required, additionalProperties, items, oneOf, anyOf, allOf); the first
/// mismatch, with where it is.
fn validate(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {value} is not of type {types:?}"));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return Err(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            if !options.iter().any(|o| validate(spec, o, value, at).is_ok()) {
                return Err(format!("{at}: {value} matches none of its {key}"));
            }
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(spec, s, value, at)?;
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return Err(format!("{at}: required field {name:?} is missing"));
            }
        }
        for (name, v) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(s) => validate(spec, s, v, &format!("{at}.{name}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: field {name:?} is not in the schema"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, v) in array.iter().enumerate() {
            validate(spec, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// The documented answer of `operation` for `status`, if any.
fn documented<'a>(spec: &'a Value, operation: &'a Value, status: StatusCode) -> Option<&'a Value> {
    let responses = operation.get("responses")?;
    let answer = responses.get(status.as_str())?;
    Some(resolve(spec, answer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_only_what_the_spec_documents() {
    let spec = spec();
    let dir = tempfile::tempdir().unwrap();
    let group = LocalGroup::start(1, dir.path(), |_| {}).await.unwrap();
    group
        .wait_for_leader(std::time::Duration::from_secs(15))
        .await
        .expect("a leader");
    let addr = group.addrs()[0].clone();
    let http = reqwest::Client::new();
    let mut problems = Vec::new();
    let ops = operations(&spec);
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
                let operation = &spec["paths"][path.as_str()][method];
                let Some(answer) = documented(&spec, operation, status) else {
                    problems.push(format!("{what}: status not documented"));
                    continue;
                };
                let schema = answer.pointer("/content/application~1json/schema");
                if let (Some(schema), false) = (schema, body.is_empty()) {
                    match &json {
                        None => problems.push(format!("{what}: body is not JSON")),
                        Some(v) => {
                            if let Err(e) = validate(&spec, schema, v, "body") {
                                problems.push(format!("{what}: {e}"));
                            }
                        }
                    }
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

#[test]
fn the_validator_catches_what_it_should() {
    let spec = spec();
    let error = serde_json::json!({"$ref": "#/components/schemas/Error"});
    let ok = serde_json::json!({"error": "x", "code": "not_found"});
    assert!(validate(&spec, &error, &ok, "body").is_ok());
    let missing = serde_json::json!({"error": "x"});
    assert!(validate(&spec, &error, &missing, "body").is_err());
    let bad_code = serde_json::json!({"error": "x", "code": "nope"});
    assert!(validate(&spec, &error, &bad_code, "body").is_err());
}
