//! Real HTTP answers checked against the OpenAPI 3.1 documents in
//! `docs/openapi/`: the document is what the tests hold the server to, so it
//! cannot drift from what the server does.
//!
//! A response schema is compiled as JSON Schema 2020-12 (the dialect of
//! OpenAPI 3.1) with the document's `components` beside it, so its
//! `#/components/...` references resolve as they do in the document.

use crate::process::workspace_root;
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The pinned openapi-spec-validator (OpenAPI 2.0 to 3.2), pip-installed on
/// first use.
pub const OPENAPI_SPEC_VALIDATOR: &str = "openapi-spec-validator==0.9.0";

/// One parsed OpenAPI document.
pub struct OpenApi {
    pub path: PathBuf,
    pub doc: Value,
}

impl OpenApi {
    /// Loads `docs/openapi/<name>.yaml` from the workspace.
    pub fn load(name: &str) -> anyhow::Result<OpenApi> {
        let path = workspace_root()
            .join("docs/openapi")
            .join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let doc: Value =
            serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(OpenApi { path, doc })
    }

    /// Validates the document itself with openapi-spec-validator.
    pub fn validate_document(&self) -> anyhow::Result<()> {
        let py = crate::pytools::module_path(OPENAPI_SPEC_VALIDATOR, "openapi_spec_validator")?;
        let out = std::process::Command::new("python3")
            .args(["-m", "openapi_spec_validator"])
            .arg(&self.path)
            .env("PYTHONPATH", py)
            .output()
            .context("running openapi_spec_validator")?;
        if !out.status.success() {
            bail!(
                "{} is not a valid OpenAPI document:\n{}{}",
                self.path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Every operation as (`GET`, `/v1/features/{user_id}`).
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                if ["get", "put", "post", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    ops.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        ops
    }

    /// The document's path template that `path` (a concrete path, query
    /// ignored) instantiates: `/v1/namespaces/a/watch` gives
    /// `/v1/namespaces/{ns}/watch`. A literal segment beats a parameter.
    pub fn template_of(&self, path: &str) -> Option<&str> {
        let path = path.split('?').next().unwrap_or(path);
        let segs: Vec<&str> = path.split('/').collect();
        let mut best: Option<(&str, usize)> = None;
        for template in self.doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(t, _)| t)
        {
            let tsegs: Vec<&str> = template.split('/').collect();
            if tsegs.len() != segs.len() {
                continue;
            }
            let mut literal = 0;
            let fits = tsegs.iter().zip(&segs).all(|(t, s)| {
                if t.starts_with('{') && t.ends_with('}') {
                    !s.is_empty()
                } else {
                    literal += 1;
                    t == s
                }
            });
            if fits && best.is_none_or(|(_, l)| literal > l) {
                best = Some((template, literal));
            }
        }
        best.map(|(t, _)| t)
    }

    /// Checks an answer to `method` on a concrete `path`: against its
    /// operation when the path is in the document, else (an unknown route)
    /// against `components/responses/<unknown_route>`.
    pub fn check_path(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &Value,
        unknown_route: &str,
    ) -> anyhow::Result<()> {
        match self.template_of(path) {
            Some(t) if !self.doc["paths"][t][method.to_lowercase()].is_null() => {
                self.check(method, t, status, body)
            }
            _ => self.check_component(unknown_route, body),
        }
    }

    /// Follows a local `$ref` (`#/a/b`), or returns `v` itself.
    fn deref<'a>(&'a self, v: &'a Value) -> anyhow::Result<&'a Value> {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r
                    .strip_prefix('#')
                    .ok_or_else(|| anyhow!("{r}: only local references are followed"))?;
                self.doc
                    .pointer(pointer)
                    .ok_or_else(|| anyhow!("{r} does not exist in {}", self.path.display()))
            }
            None => Ok(v),
        }
    }

    /// The JSON schema of the response `status` of `method path`; for a
    /// `path` of `None`, the document's `components/responses/<name>`.
    fn response_schema(&self, method: &str, path: &str, status: u16) -> anyhow::Result<&Value> {
        let op = &self.doc["paths"][path][method.to_lowercase()];
        if op.is_null() {
            bail!("{method} {path} is not in {}", self.path.display());
        }
        let responses = &op["responses"];
        let response = responses
            .get(status.to_string())
            .or_else(|| responses.get("default"))
            .ok_or_else(|| anyhow!("{method} {path} documents no {status} answer"))?;
        self.content_schema(self.deref(response)?)
            .with_context(|| format!("{method} {path} {status}"))
    }

    fn content_schema<'a>(&'a self, response: &'a Value) -> anyhow::Result<&'a Value> {
        response["content"]["application/json"]
            .get("schema")
            .ok_or_else(|| anyhow!("no application/json schema"))
    }

    fn validate(&self, schema: &Value, body: &Value, what: &str) -> anyhow::Result<()> {
        let mut root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"].clone(),
        });
        for (k, v) in schema.as_object().into_iter().flatten() {
            root[k] = v.clone();
        }
        validate_json(&root, body, what, &self.path, false)
    }

    /// Checks a JSON answer of `method path` (a path template as in the
    /// document) with `status` against the documented schema.
    pub fn check(&self, method: &str, path: &str, status: u16, body: &Value) -> anyhow::Result<()> {
        let schema = self.response_schema(method, path, status)?;
        self.validate(schema, body, &format!("{method} {path} {status}"))
    }

    /// Checks a JSON answer against `components/responses/<name>` (answers
    /// not tied to one operation, such as the 404 of an unknown route).
    pub fn check_component(&self, name: &str, body: &Value) -> anyhow::Result<()> {
        let response = self.doc["components"]["responses"]
            .get(name)
            .ok_or_else(|| anyhow!("components/responses/{name} is not in the document"))?;
        let schema = self.content_schema(response)?;
        self.validate(schema, body, &format!("response {name}"))
    }
}

/// Checks `body` against the JSON Schema 2020-12 `root` (with `formats`,
/// `format` is asserted, not only annotated); the error names `what` and
/// `source` (the document the schema comes from), lists the first ten
/// mismatches and shows the value.
pub fn validate_json(
    root: &Value,
    body: &Value,
    what: &str,
    source: &Path,
    formats: bool,
) -> anyhow::Result<()> {
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(formats)
        .build(root)
        .map_err(|e| anyhow!("{what}: the schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    let mut answer = body.to_string();
    if answer.len() > 2000 {
        answer.truncate(answer.floor_char_boundary(2000));
        answer.push_str("...");
    }
    bail!(
        "{what}: the answer does not match {}:\n  {}{}\nanswer: {answer}",
        source.display(),
        errors[..errors.len().min(10)].join("\n  "),
        match errors.len() {
            n if n > 10 => format!("\n  ({} more)", n - 10),
            _ => String::new(),
        }
    )
}

/// The (METHOD, path) pairs an axum router registers in `source`, read from
/// its `.route("<path>", <method>(handler))` calls (also split over lines);
/// what a document's [`OpenApi::operations`] must equal.
pub fn axum_routes(source: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let Some(args) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some(end) = args.find('"') else { break };
        let path = &args[..end];
        let after = args[end + 1..].trim_start();
        let Some(after) = after.strip_prefix(',') else {
            continue;
        };
        // `get(a)` or a chain `put(a).delete(b)`.
        let mut chain = after.trim_start();
        loop {
            let method: String = chain
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let Some(args) = chain[method.len()..].strip_prefix('(') else {
                break;
            };
            routes.insert((method.to_uppercase(), path.to_string()));
            let mut depth = 1;
            let close = args.char_indices().find_map(|(i, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                (depth == 0).then_some(i)
            });
            let Some(close) = close else { break };
            match args[close + 1..].trim_start().strip_prefix('.') {
                Some(next) => chain = next.trim_start(),
                None => break,
            }
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_from_router_source() {
        let src = r#"
            Router::new()
                .route("/v1/a/{id}", get(one))
                .route(
                    "/v1/b",
                    post(two),
                )
                .route("/v1/c", put(make(x)).delete(drop_it))
                .fallback(not_found)
        "#;
        let want: BTreeSet<_> = [
            ("GET", "/v1/a/{id}"),
            ("POST", "/v1/b"),
            ("PUT", "/v1/c"),
            ("DELETE", "/v1/c"),
        ]
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .into();
        assert_eq!(axum_routes(src), want);
    }

    #[test]
    fn concrete_paths_find_their_template() {
        let api = OpenApi {
            path: PathBuf::from("t.yaml"),
            doc: json!({"paths": {
                "/v1/ns/{ns}": {}, "/v1/ns/{ns}/watch": {}, "/v1/ns/batch": {}
            }}),
        };
        assert_eq!(api.template_of("/v1/ns/a?x=1"), Some("/v1/ns/{ns}"));
        assert_eq!(api.template_of("/v1/ns/a/watch"), Some("/v1/ns/{ns}/watch"));
        assert_eq!(api.template_of("/v1/ns/batch"), Some("/v1/ns/batch"));
        assert_eq!(api.template_of("/v1/ns/"), None);
        assert_eq!(api.template_of("/v2/x"), None);
    }
}
