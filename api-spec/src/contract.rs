//! The REST contract as data: `api-spec/openapi.yaml` (embedded at build time), its operations,
//! and a check of an answer against it — a documented status, and a JSON body that validates
//! against the documented schema. For tests (feature `contract`): the coordinator's contract
//! test probes every operation with it, and the system tests check every raw answer they get.

use std::collections::BTreeMap;

use serde_json::Value;

/// The methods the spec documents operations for.
pub const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The spec, parsed.
pub struct Spec {
    doc: Value,
}

impl Spec {
    /// `openapi.yaml` as this crate was built with it.
    pub fn load() -> Spec {
        let doc = serde_yaml::from_str(include_str!("../openapi.yaml"))
            .expect("api-spec/openapi.yaml is valid YAML");
        Spec { doc }
    }

    /// The whole document.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// Documented operations: path template → lower-case methods.
    pub fn operations(&self) -> BTreeMap<String, Vec<String>> {
        self.doc["paths"]
            .as_object()
            .map(|paths| {
                paths
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
            })
            .unwrap_or_default()
    }

    /// The path template a concrete path (no query) falls under, the most specific first
    /// (`/v1/files/a/b/versions` is `/v1/files/{path}/versions`; `{path}` takes one or more
    /// segments, other parameters one).
    pub fn template_of(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut best: Option<(usize, String)> = None;
        for template in self.operations().into_keys() {
            let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
            if matches(&parts, &segments) {
                let literal = parts.iter().filter(|p| !p.starts_with('{')).count();
                if best.as_ref().is_none_or(|(n, _)| literal > *n) {
                    best = Some((literal, template));
                }
            }
        }
        best.map(|(_, t)| t)
    }

    /// Checks an answer to `method path` (a concrete path, no query): if the spec documents
    /// that operation, its status must be documented, and a body the server said is JSON
    /// (`content_type`) must validate against the documented schema. `Ok(false)` when the spec documents no such operation (nothing
    /// to check), `Ok(true)` when it checked out.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<bool, String> {
        match self.template_of(path) {
            Some(template) => self.check_operation(method, &template, status, content_type, body),
            None => Ok(false),
        }
    }

    /// As [`Spec::check`], for the operation `method template` named by its template.
    pub fn check_operation(
        &self,
        method: &str,
        template: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<bool, String> {
        let method = method.to_ascii_lowercase();
        let operation = &self.doc["paths"][template][method.as_str()];
        if operation.is_null() {
            return Ok(false);
        }
        let what = format!("{method} {template} → {status}");
        let Some(answer) = documented(&self.doc, operation, status) else {
            return Err(format!("{what}: status not documented"));
        };
        let Some(schema) = answer.pointer("/content/application~1json/schema") else {
            return Ok(true);
        };
        let json = content_type.is_some_and(|t| t.starts_with("application/json"));
        if body.is_empty() || !json {
            return Ok(true);
        }
        let value: Value = serde_json::from_slice(body).map_err(|_| {
            format!(
                "{what}: body is not JSON: {}",
                String::from_utf8_lossy(body)
            )
        })?;
        validate(&self.doc, schema, &value, "body").map_err(|e| format!("{what}: {e}"))?;
        Ok(true)
    }

    /// Checks `value` against `schema` (of this spec).
    pub fn validate(&self, schema: &Value, value: &Value) -> Result<(), String> {
        validate(&self.doc, schema, value, "body")
    }
}

/// Whether template `parts` match path `segments` (`{path}` takes one or more segments).
fn matches(parts: &[&str], segments: &[&str]) -> bool {
    match (parts.split_first(), segments.split_first()) {
        (None, None) => true,
        (Some((&"{path}", rest)), Some(_)) => {
            (1..=segments.len()).any(|n| matches(rest, &segments[n..]))
        }
        (Some((p, rest)), Some((s, srest))) => {
            (p.starts_with('{') && !s.is_empty() || p == s) && matches(rest, srest)
        }
        _ => false,
    }
}

/// `$ref` resolved against the spec.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.trim_start_matches('#');
            resolve(
                spec,
                spec.pointer(pointer)
                    .unwrap_or_else(|| panic!("openapi.yaml has no {r}")),
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
fn documented<'a>(spec: &'a Value, operation: &'a Value, status: u16) -> Option<&'a Value> {
    let answer = operation.get("responses")?.get(status.to_string())?;
    Some(resolve(spec, answer))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_find_their_most_specific_template() {
        let spec = Spec::load();
        assert_eq!(
            spec.template_of("/v1/jobs/7").as_deref(),
            Some("/v1/jobs/{id}")
        );
        assert_eq!(
            spec.template_of("/v1/files/a/b/versions").as_deref(),
            Some("/v1/files/{path}/versions")
        );
        assert_eq!(
            spec.template_of("/v1/files/a/b").as_deref(),
            Some("/v1/files/{path}")
        );
        assert_eq!(spec.template_of("/internal/blobs"), None);
    }

    #[test]
    fn answers_are_checked_against_status_and_schema() {
        let spec = Spec::load();
        let error = serde_json::to_vec(&json!({"error": "x", "code": "not_found"})).unwrap();
        assert_eq!(
            spec.check("GET", "/v1/jobs/7", 404, Some("application/json"), &error),
            Ok(true)
        );
        assert!(spec
            .check("GET", "/v1/jobs/7", 418, Some("application/json"), &error)
            .is_err());
        let bad = serde_json::to_vec(&json!({"error": "x", "code": "nope"})).unwrap();
        assert!(spec
            .check("GET", "/v1/jobs/7", 404, Some("application/json"), &bad)
            .is_err());
        let not_json = spec.check("GET", "/v1/jobs/7", 404, Some("application/json"), b"{");
        assert!(not_json.is_err());
        assert_eq!(
            spec.check("GET", "/internal/blobs", 200, Some("application/json"), b""),
            Ok(false)
        );
        assert_eq!(
            spec.check("PATCH", "/v1/cluster", 405, Some("application/json"), b""),
            Ok(false)
        );
    }
}
