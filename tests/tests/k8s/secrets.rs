//! Secrets only as read-only files (never env or args), no literal secret
//! value anywhere (and the scanner does find planted ones), and every
//! mounted ConfigMap rendered or documented, the CA files projected.

use crate::support::*;
use serde_json::Value;
use std::collections::BTreeSet;

#[test]
fn secrets_are_read_only_files_never_env_or_args() {
    for (overlay, docs, pod) in worker_pods() {
        let agent = container(pod, "riskfeat-agent");
        let agent_toml = config_file(docs, pod, "agent-config", "agent.toml");
        let method = agent_toml["vault"]
            .get("auth")
            .and_then(|a| a.get("method"))
            .and_then(|m| m.as_str())
            .unwrap_or("approle");
        if method == "approle" {
            let secret_id = toml_str(&agent_toml, &["vault", "secret_id_file"]);
            assert_secret_file(pod, agent, secret_id, &format!("{overlay}: secret_id"));
        } else {
            assert_projected_token(pod, agent, &agent_toml, &format!("{overlay}: {method}"));
        }
        if agent_toml.contains_key("configd") {
            let token = toml_str(&agent_toml, &["configd", "token_file"]);
            assert_secret_file(pod, agent, token, &format!("{overlay}: configd token"));
        }
        if agent_toml.contains_key("fallback") {
            // The fallback credential file (who) from a read-only ConfigMap,
            // its password from a read-only Secret file.
            let file = toml_str(&agent_toml, &["fallback", "file"]);
            let mount = arr(&agent["volumeMounts"])
                .iter()
                .find(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
                .unwrap_or_else(|| panic!("{overlay}: nothing mounted over {file}"));
            assert_eq!(mount["readOnly"], true, "{overlay}: {file}");
            let vol = mount["name"].as_str().unwrap();
            let rel = &file[mount["mountPath"].as_str().unwrap().len() + 1..];
            let fb = config_file(docs, pod, vol, rel);
            let keys: BTreeSet<&str> = fb.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                BTreeSet::from(["username", "password_file"]),
                "{overlay}: fallback file keys"
            );
            let pw = toml_str(&fb, &["password_file"]);
            assert_secret_file(pod, agent, pw, &format!("{overlay}: fallback password"));
        }
        if method == "approle" {
            let role_id = toml_str(&agent_toml, &["vault", "role_id_file"]);
            assert!(
                arr(&agent["volumeMounts"]).iter().any(|m| {
                    m["readOnly"] == true
                        && role_id.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap()))
                }),
                "{overlay}: role_id must come from a read-only mount"
            );
        }
        let configd = pod_spec(docs, "riskfeat-configd");
        let configd_c = container(configd, "riskfeat-configd");
        let configd_toml = config_file(docs, configd, "config", "configd.toml");
        for (k, v) in &configd_toml {
            if k.ends_with("_file") && (k.contains("database") || k.contains("token")) {
                let path = v.as_str().expect("a path");
                assert_secret_file(configd, configd_c, path, &format!("{overlay}: configd {k}"));
            }
        }
        // Nothing secret reaches an env var or an argument.
        for (dep, pod) in pod_specs(docs) {
            for (_, c) in containers(pod) {
                let who = format!("{overlay}/{dep}/{}", c["name"]);
                assert!(c["envFrom"].is_null(), "{who}: envFrom");
                for e in arr(&c["env"]) {
                    assert!(
                        e["valueFrom"]["secretKeyRef"].is_null(),
                        "{who}: env {} from a Secret",
                        e["name"]
                    );
                    let n = e["name"].as_str().unwrap_or("").to_lowercase();
                    for bad in ["secret", "token", "password", "role_id", "database_url"] {
                        assert!(!n.contains(bad), "{who}: env {n} looks like a secret");
                    }
                }
                for a in arr(&c["args"]).iter().chain(arr(&c["command"])) {
                    let a = a.as_str().unwrap_or("").to_lowercase();
                    for bad in ["secret", "token", "password"] {
                        assert!(!a.contains(bad), "{who}: argument {a:?}");
                    }
                }
            }
        }
    }
}

/// Keys whose value would be a secret if it were a literal.
fn secret_key(key: &str) -> bool {
    let k = key.to_lowercase().replace(['-', '.'], "_");
    if k.ends_with("_file") || k.ends_with("_path") || k == "secretname" {
        return false;
    }
    [
        "password",
        "passwd",
        "secret_id",
        "token",
        "api_key",
        "apikey",
        "database_url",
        "dsn",
        "private_key",
        "client_secret",
    ]
    .iter()
    .any(|s| k == *s || k.ends_with(&format!("_{s}")) || k.starts_with(&format!("{s}_")))
}

/// Patterns that only a real secret has.
fn secret_pattern(text: &str) -> Option<String> {
    for p in ["hvs.", "hvb.", "-----BEGIN"] {
        if text.contains(p) {
            return Some(format!("{p}…"));
        }
    }
    // scheme://user:password@host
    for (i, _) in text.match_indices("://") {
        let rest = &text[i + 3..];
        let end = rest
            .find(|c: char| c.is_whitespace() || "\"'`<>".contains(c))
            .unwrap_or(rest.len());
        let url = &rest[..end];
        if let Some(at) = url.find('@') {
            let userinfo = &url[..at];
            if userinfo.contains(':') && !userinfo.contains("{{") {
                return Some(format!("URL with a password: {}", &url[..at.min(20)]));
            }
        }
    }
    None
}

/// Every literal secret in a JSON tree, with where it is.
fn literal_secrets(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let here = format!("{at}.{k}");
                if secret_key(k) {
                    if let Some(s) = x.as_str() {
                        if !s.is_empty() && !s.starts_with('/') {
                            out.push(format!("{here} = literal value"));
                        }
                    }
                }
                literal_secrets(x, &here, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                literal_secrets(x, &format!("{at}[{i}]"), out);
            }
        }
        Value::String(s) => {
            if let Some(p) = secret_pattern(s) {
                out.push(format!("{at}: {p}"));
            }
            // Embedded config files: check their keys too.
            if let Ok(t) = s.parse::<toml::Table>() {
                if !t.is_empty() {
                    let j = serde_json::to_value(&t).unwrap_or(Value::Null);
                    literal_secrets(&j, &format!("{at}<toml>"), out);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn the_secret_scanner_finds_planted_secrets() {
    let planted = serde_json::json!({
        "data": {
            "agent.toml": "[vault]\nsecret_id = \"0f1e2d3c\"\n",
            "url": "postgres://app:hunter2@db:5432/x",
        },
        "env": [{ "name": "X", "value": "hvs.CAESIabc" }],
        "password": "hunter2",
        "password_file": "/etc/p",
    });
    let mut found = Vec::new();
    literal_secrets(&planted, "", &mut found);
    assert_eq!(found.len(), 4, "{found:#?}");
}

#[test]
fn no_literal_secret_value_anywhere() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        for d in docs {
            if kind(d) == "Secret" {
                panic!(
                    "{overlay}: Secret {} is rendered; every Secret is created out of band",
                    name(d)
                );
            }
            let mut found = Vec::new();
            literal_secrets(d, &format!("{}/{}", kind(d), name(d)), &mut found);
            assert!(found.is_empty(), "{overlay}: literal secrets: {found:#?}");
        }
        // Every Secret a pod mounts is documented as created out of band.
        for (dep, pod) in pod_specs(docs) {
            for v in arr(&pod["volumes"]) {
                if let Some(s) = v["secret"]["secretName"].as_str() {
                    assert!(
                        OUT_OF_BAND_SECRETS.contains(&s),
                        "{overlay}/{dep}: undocumented Secret {s}"
                    );
                }
            }
        }
    }
    let ops = std::fs::read_to_string(repo_root().join("docs/operations.md"))
        .expect("docs/operations.md");
    for s in OUT_OF_BAND_SECRETS {
        assert!(ops.contains(s), "docs/operations.md does not explain {s}");
    }
    for f in [RULES, RULES_TEST, DASHBOARD] {
        let text = std::fs::read_to_string(repo_root().join(f)).unwrap();
        assert_eq!(secret_pattern(&text), None, "{f}");
    }
}

/// Every ConfigMap a pod mounts is rendered or documented as created out of
/// band, and the agent's `vault.ca_cert_file` (set in prod, where Vault is
/// HTTPS with a private CA) is a read-only file projected from such a
/// ConfigMap.
#[test]
fn every_mounted_config_map_exists_and_the_cas_are_mounted() {
    let ops = std::fs::read_to_string(repo_root().join("docs/operations.md"))
        .expect("docs/operations.md");
    for cm in OUT_OF_BAND_CONFIGMAPS {
        assert!(ops.contains(cm), "docs/operations.md does not explain {cm}");
    }
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        for (dep, pod) in pod_specs(docs) {
            for v in arr(&pod["volumes"]) {
                if let Some(cm) = v["configMap"]["name"].as_str() {
                    let rendered = docs.iter().any(|d| kind(d) == "ConfigMap" && name(d) == cm);
                    assert!(
                        rendered || OUT_OF_BAND_CONFIGMAPS.contains(&cm),
                        "{overlay}/{dep}: ConfigMap {cm} is neither rendered nor documented"
                    );
                }
            }
        }
        let pod = pod_spec(docs, "riskfeat-worker");
        let agent_toml = config_file(docs, pod, "agent-config", "agent.toml");
        let worker_toml = config_file(docs, pod, "worker-config", "worker.toml");
        let vault = agent_toml["vault"].as_table().unwrap();
        let addr = vault["addr"].as_str().unwrap();
        match vault.get("ca_cert_file").and_then(|v| v.as_str()) {
            Some(ca) => {
                assert!(addr.starts_with("https://"), "{overlay}: {addr}");
                assert_projected(overlay, pod, "riskfeat-agent", ca);
            }
            None => assert_ne!(*overlay, "prod", "prod: vault.ca_cert_file is not set"),
        }
        // PostgreSQL TLS: an endpoint with verify-full needs the CA in the
        // agent (its check login) and in the worker (db.json copies it).
        let db = agent_toml["database"].as_table().unwrap();
        let tls: Vec<&str> = ["primary", "replica"]
            .into_iter()
            .filter(|ep| db[*ep].get("sslmode").and_then(|v| v.as_str()) == Some("verify-full"))
            .collect();
        if *overlay == "prod" {
            assert_eq!(
                tls,
                ["primary", "replica"],
                "prod: PostgreSQL without verify-full"
            );
        }
        if !tls.is_empty() {
            let ca = db["ca_file"]
                .as_str()
                .expect("database.ca_file with verify-full");
            assert_projected(overlay, pod, "riskfeat-agent", ca);
            let wca = worker_toml
                .get("database_ca_file")
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| panic!("{overlay}: verify-full but no database_ca_file"));
            assert_projected(overlay, pod, "riskfeat-worker", wca);
        }
    }
}

/// `path` is a file that a read-only ConfigMap volume mounted in the
/// container `cname` projects.
/// A JWT/Kubernetes login: `vault.auth.token_file` is a read-only projected
/// service-account token for an audience (not the pod's default token,
/// which stays unmounted), short-lived, and no AppRole file is mounted.
fn assert_projected_token(pod: &Value, agent: &Value, agent_toml: &toml::Table, what: &str) {
    let file = toml_str(agent_toml, &["vault", "auth", "token_file"]);
    let mount = arr(&agent["volumeMounts"])
        .iter()
        .find(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("{what}: nothing mounted over {file}"));
    assert_eq!(mount["readOnly"], true, "{what}: {file}");
    let rel = &file[mount["mountPath"].as_str().unwrap().len() + 1..];
    let vol = volume(pod, mount["name"].as_str().unwrap());
    let sources = arr(&vol["projected"]["sources"]);
    let token = sources
        .iter()
        .map(|s| &s["serviceAccountToken"])
        .find(|t| t["path"] == rel)
        .unwrap_or_else(|| panic!("{what}: {file} is not a projected serviceAccountToken"));
    let audience = token["audience"].as_str().unwrap_or("");
    assert!(!audience.is_empty(), "{what}: the token has no audience");
    let ttl = token["expirationSeconds"].as_u64().unwrap_or(3600);
    assert!(
        (600..=86400).contains(&ttl),
        "{what}: expirationSeconds {ttl}"
    );
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    for v in arr(&pod["volumes"]) {
        assert_ne!(
            v["secret"]["secretName"], "riskfeat-approle-secret-id",
            "{what}: the AppRole secret_id is still mounted"
        );
    }
}

fn assert_projected(overlay: &str, pod: &Value, cname: &str, path: &str) {
    let c = container(pod, cname);
    let mount = arr(&c["volumeMounts"])
        .iter()
        .find(|m| path.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("{overlay}/{cname}: nothing mounted over {path}"));
    assert_eq!(mount["readOnly"], true, "{overlay}/{cname}: {path}");
    let vol = volume(pod, mount["name"].as_str().unwrap());
    let rel = &path[mount["mountPath"].as_str().unwrap().len() + 1..];
    assert!(
        arr(&vol["configMap"]["items"])
            .iter()
            .any(|i| i["path"] == rel),
        "{overlay}/{cname}: volume {} does not project {rel}",
        vol["name"]
    );
}
