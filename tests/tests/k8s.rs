//! Offline checks of the Kubernetes deployment (issue 7). No cluster is
//! needed: every overlay is rendered with `kubectl kustomize`, every rendered
//! core object is validated with `kubernetes-validate --strict` against
//! [`K8S_VERSION`], the invariants of the pods are asserted on the parsed
//! manifests, and the alert rules go through `promtool check rules` and
//! `promtool test rules`.
//!
//! Tools are installed when missing (kubernetes-validate with pip into
//! `~/.cache/riskfeat/pytools` under a file lock; promtool from the Debian
//! package `prometheus`); a failed install fails the test. The one exception:
//! promtool missing and not root outside CI skips with a message (inside CI,
//! `CI` set, it fails).
//!
//! Objects of CRDs (the prod overlay's `PodMonitor`) have no schema in
//! kubernetes-validate: they are checked structurally here instead, and any
//! other kind without a schema fails the test.

use riskfeat_tests::process::{cache_dir, workspace_root as repo_root};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Kubernetes version the manifests are validated against (native
/// sidecars are GA from 1.33; the preStop `sleep` action is on by default
/// from 1.30).
const K8S_VERSION: &str = "1.33.0";
/// The pinned kubernetes-validate release (ships schemas 1.32..1.37).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const OVERLAYS: &[&str] = &["dev", "prod"];
const RULES: &str = "k8s/monitoring/riskfeat-alerts.yaml";
const RULES_TEST: &str = "k8s/monitoring/riskfeat-alerts.test.yaml";
const DASHBOARD: &str = "k8s/monitoring/riskfeat-dashboard.json";
/// Secrets the pods mount that are created out of band (never rendered).
const OUT_OF_BAND_SECRETS: &[&str] = &[
    "riskfeat-approle-secret-id",
    "riskfeat-configd-client",
    "riskfeat-configd-db",
    "riskfeat-configd-tokens",
    "riskfeat-db-fallback-password",
];
/// ConfigMaps the pods mount that come from outside this repository
/// (public material, e.g. a CA certificate from the operator's PKI).
const OUT_OF_BAND_CONFIGMAPS: &[&str] = &["riskfeat-vault-ca", "riskfeat-pg-ca"];
/// Kinds kubernetes-validate has schemas for, as used here.
const CORE_KINDS: &[&str] = &[
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Secret",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
];

/// Runs a command; returns (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Holds an exclusive lock on `<cache>/<name>.lock` while alive.
fn lock(name: &str) -> nix::fcntl::Flock<std::fs::File> {
    std::fs::create_dir_all(cache_dir()).expect("create the cache dir");
    let path = cache_dir().join(format!("{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock {}: {e}", path.display()))
}

// ---------------------------------------------------------------- rendering

/// One overlay rendered and parsed (cached per process).
fn rendered(overlay: &str) -> &'static [Value] {
    static CACHE: OnceLock<BTreeMap<String, Vec<Value>>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        OVERLAYS
            .iter()
            .map(|o| (o.to_string(), parse_docs(&render(o))))
            .collect()
    });
    &all[overlay]
}

fn render(overlay: &str) -> String {
    let dir = repo_root().join("k8s/overlays").join(overlay);
    let (ok, out) = run(Command::new("kubectl").arg("kustomize").arg(&dir));
    assert!(ok, "kubectl kustomize {} failed:\n{out}", dir.display());
    out
}

fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}
fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

fn object<'a>(docs: &'a [Value], k: &str, n: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == k && name(d) == n)
        .unwrap_or_else(|| panic!("no {k} {n} in the rendered manifests"))
}

/// `(deployment name, pod spec)` of every Deployment.
fn pod_specs(docs: &[Value]) -> Vec<(&str, &Value)> {
    let pods: Vec<_> = docs
        .iter()
        .filter(|d| kind(d) == "Deployment")
        .map(|d| (name(d), &d["spec"]["template"]["spec"]))
        .collect();
    assert!(!pods.is_empty(), "no Deployment rendered");
    pods
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// Every container of a pod: `(is_init, container)`.
fn containers(pod: &Value) -> Vec<(bool, &Value)> {
    arr(&pod["initContainers"])
        .iter()
        .map(|c| (true, c))
        .chain(arr(&pod["containers"]).iter().map(|c| (false, c)))
        .collect()
}

fn container<'a>(pod: &'a Value, n: &str) -> &'a Value {
    containers(pod)
        .into_iter()
        .map(|(_, c)| c)
        .find(|c| c["name"] == n)
        .unwrap_or_else(|| panic!("no container {n}"))
}

fn volume<'a>(pod: &'a Value, n: &str) -> &'a Value {
    arr(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == n)
        .unwrap_or_else(|| panic!("no volume {n}"))
}

fn mount_path<'a>(c: &'a Value, volume: &str) -> Option<&'a str> {
    arr(&c["volumeMounts"])
        .iter()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
}

/// The TOML file `file` of the ConfigMap a pod's volume refers to.
fn config_file(docs: &[Value], pod: &Value, volume_name: &str, file: &str) -> toml::Table {
    let cm_name = volume(pod, volume_name)["configMap"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("volume {volume_name} is not a ConfigMap"));
    let cm = object(docs, "ConfigMap", cm_name);
    let text = cm["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no {file}"));
    text.parse()
        .unwrap_or_else(|e| panic!("{cm_name}/{file} is not TOML: {e}"))
}

fn toml_str<'a>(t: &'a toml::Table, path: &[&str]) -> &'a str {
    let mut v: &toml::Value = t
        .get(path[0])
        .unwrap_or_else(|| panic!("missing key {}", path[0]));
    for p in &path[1..] {
        v = v.get(p).unwrap_or_else(|| panic!("missing key {p}"));
    }
    v.as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

fn toml_int(t: &toml::Table, path: &[&str]) -> Option<i64> {
    let mut v: &toml::Value = t.get(path[0])?;
    for p in &path[1..] {
        v = v.get(p)?;
    }
    v.as_integer()
}

/// The volume and mount that hold absolute path `file` in container `c`:
/// asserts the mount is read-only and the volume a Secret (when `secret`)
/// whose items put the file there.
fn assert_secret_file(pod: &Value, c: &Value, file: &str, what: &str) {
    let mount = arr(&c["volumeMounts"])
        .iter()
        .find(|m| {
            let p = m["mountPath"].as_str().unwrap_or("");
            file.starts_with(&format!("{p}/"))
        })
        .unwrap_or_else(|| panic!("{what}: no volume mounted over {file}"));
    assert_eq!(
        mount["readOnly"], true,
        "{what}: the mount over {file} must be readOnly"
    );
    let vol = volume(pod, mount["name"].as_str().unwrap());
    assert!(
        vol["secret"].is_object(),
        "{what}: {file} must come from a Secret volume, got {vol}"
    );
    let rel = &file[mount["mountPath"].as_str().unwrap().len() + 1..];
    let items = arr(&vol["secret"]["items"]);
    assert!(
        items.is_empty() || items.iter().any(|i| i["path"] == rel),
        "{what}: Secret volume {} does not project {rel}",
        vol["name"]
    );
    let secret = vol["secret"]["secretName"].as_str().unwrap();
    assert!(
        OUT_OF_BAND_SECRETS.contains(&secret),
        "{what}: Secret {secret} is not in the documented out-of-band list"
    );
}

// ------------------------------------------------- kubernetes-validate setup

/// PYTHONPATH with kubernetes-validate importable; installs it when not.
fn kubernetes_validate_path() -> PathBuf {
    riskfeat_tests::pytools::module_path(KUBERNETES_VALIDATE, "kubernetes_validate")
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `kubernetes-validate --strict` on one multi-document file.
fn validate(file: &Path) -> (bool, String) {
    let py = kubernetes_validate_path();
    run(Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION])
        .arg(file)
        .env("PYTHONPATH", py))
}

fn to_yaml(docs: &[&Value]) -> String {
    docs.iter()
        .map(|d| serde_norway::to_string(d).expect("serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}

// ------------------------------------------------------------------ promtool

/// The promtool binary; installs the Debian package `prometheus` when it is
/// missing. `None` (skip) only when not root and not in CI.
fn promtool() -> Option<PathBuf> {
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("promtool"))
                .find(|p| p.is_file())
        })
    };
    if let Some(p) = find() {
        return Some(p);
    }
    if !nix::unistd::geteuid().is_root() {
        let msg = "promtool is missing and installing the Debian package `prometheus` needs root";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED promtool checks: {msg} (apt-get install -y prometheus)");
        return None;
    }
    let _guard = lock("apt-prometheus");
    if find().is_none() {
        let install = || {
            run(Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "-o",
                    "Dpkg::Options::=--force-confold",
                    "prometheus",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"))
        };
        let (mut ok, mut out) = install();
        if !ok {
            let (uok, uout) = run(Command::new("apt-get").arg("update"));
            assert!(uok, "apt-get update failed:\n{uout}");
            (ok, out) = install();
        }
        assert!(ok, "apt-get install prometheus failed:\n{out}");
    }
    Some(find().expect("promtool on PATH after installing the prometheus package"))
}

// --------------------------------------------------------------------- tests

#[test]
fn every_overlay_renders_and_passes_strict_validation() {
    let tmp = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let (core, other): (Vec<&Value>, Vec<&Value>) =
            docs.iter().partition(|d| CORE_KINDS.contains(&kind(d)));
        for d in &other {
            // Only the Prometheus Operator's PodMonitor is expected; it is
            // checked in `prod_overlay_has_a_pod_monitor_for_every_metrics_port`.
            assert_eq!(
                (d["apiVersion"].as_str(), kind(d)),
                (Some("monitoring.coreos.com/v1"), "PodMonitor"),
                "{overlay}: a kind with no schema in kubernetes-validate: {}",
                name(d)
            );
            eprintln!(
                "{overlay}: kubernetes-validate has no schema for {} {} (CRD): checked structurally instead",
                kind(d),
                name(d)
            );
        }
        let file = tmp.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, to_yaml(&core)).unwrap();
        let (ok, out) = validate(&file);
        assert!(
            ok,
            "{overlay}: kubernetes-validate --strict -k {K8S_VERSION} failed:\n{out}"
        );
        for d in &core {
            let want = format!("passed for resource {}/{}", kind(d).to_lowercase(), name(d));
            assert!(
                out.contains(&want),
                "{overlay}: no '{want}' in the validator's output:\n{out}"
            );
        }
    }
}

#[test]
fn strict_validation_rejects_a_misspelled_field() {
    // The validator must not let typos through (why --strict is used).
    let docs = rendered("dev");
    let mut dep = object(docs, "Deployment", "riskfeat-worker").clone();
    let agent = &mut dep["spec"]["template"]["spec"]["initContainers"][0];
    let policy = agent
        .as_object_mut()
        .unwrap()
        .remove("restartPolicy")
        .unwrap();
    agent["restartPolcy"] = policy;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("typo.yaml");
    std::fs::write(&file, to_yaml(&[&dep])).unwrap();
    let (ok, out) = validate(&file);
    assert!(!ok, "a misspelled field passed validation:\n{out}");
    assert!(out.contains("restartPolcy"), "{out}");
}

#[test]
fn agent_is_a_native_sidecar_gating_the_worker() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let pod = &object(docs, "Deployment", "riskfeat-worker")["spec"]["template"]["spec"];
        let inits = arr(&pod["initContainers"]);
        assert_eq!(
            inits.first().map(|c| &c["name"]),
            Some(&Value::from("riskfeat-agent")),
            "{overlay}: the agent must be the first init container"
        );
        let agent = &inits[0];
        assert_eq!(
            agent["restartPolicy"], "Always",
            "{overlay}: the agent must be a native sidecar (restartPolicy: Always)"
        );
        let startup = &agent["startupProbe"]["exec"]["command"];
        let cmd: Vec<&str> = arr(startup).iter().filter_map(Value::as_str).collect();
        assert!(
            cmd.first().is_some_and(|b| b.ends_with("riskfeat-agent"))
                && cmd.get(1..3) == Some(&["probe", "ready"][..]),
            "{overlay}: the agent's startupProbe must run `riskfeat-agent probe ready`, got {cmd:?}"
        );
        assert!(
            arr(&pod["containers"])
                .iter()
                .any(|c| c["name"] == "riskfeat-worker"),
            "{overlay}: no worker container"
        );
    }
}

#[test]
fn shared_volume_is_memory_backed_and_group_readable() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let pod = &object(docs, "Deployment", "riskfeat-worker")["spec"]["template"]["spec"];
        let shared = &volume(pod, "shared")["emptyDir"];
        assert_eq!(shared["medium"], "Memory", "{overlay}: shared volume");
        assert!(
            shared["sizeLimit"].as_str().is_some_and(|s| !s.is_empty()),
            "{overlay}: the shared volume needs a sizeLimit"
        );
        for c in ["riskfeat-agent", "riskfeat-worker"] {
            assert_eq!(
                mount_path(container(pod, c), "shared"),
                Some("/run/riskfeat"),
                "{overlay}: {c} must mount the shared volume at /run/riskfeat"
            );
        }
        let fs_group = pod["securityContext"]["fsGroup"]
            .as_i64()
            .unwrap_or_else(|| panic!("{overlay}: the pod needs an fsGroup"));
        assert_ne!(fs_group, 0, "{overlay}: fsGroup 0");
        let agent_toml = config_file(docs, pod, "agent-config", "agent.toml");
        assert_eq!(
            toml_int(&agent_toml, &["file_group"]),
            Some(fs_group),
            "{overlay}: agent.toml file_group must be the pod's fsGroup"
        );
        assert_eq!(toml_str(&agent_toml, &["shared_dir"]), "/run/riskfeat");
        let worker_toml = config_file(docs, pod, "worker-config", "worker.toml");
        assert_eq!(toml_str(&worker_toml, &["shared_dir"]), "/run/riskfeat");
        // The agent and the worker are different users: only the group
        // (fsGroup) lets the worker read the 0640 files.
        let uid = |c: &str| container(pod, c)["securityContext"]["runAsUser"].as_i64();
        assert_ne!(uid("riskfeat-agent"), uid("riskfeat-worker"), "{overlay}");
    }
}

#[test]
fn probes_use_the_probe_subcommands() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let pod = &object(docs, "Deployment", "riskfeat-worker")["spec"]["template"]["spec"];
        for (c, bin) in [
            ("riskfeat-agent", "riskfeat-agent"),
            ("riskfeat-worker", "riskfeat-worker"),
        ] {
            let c = container(pod, c);
            for (probe, want) in [
                ("livenessProbe", "live"),
                ("readinessProbe", "ready"),
                ("startupProbe", "ready"),
            ] {
                let p = &c[probe];
                if p.is_null() && probe == "startupProbe" {
                    continue;
                }
                let cmd: Vec<&str> = arr(&p["exec"]["command"])
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert!(
                    cmd.first().is_some_and(|b| b.ends_with(&format!("/{bin}")))
                        && cmd.get(1..3) == Some(&["probe", want][..]),
                    "{overlay}: {} {probe} must exec `{bin} probe {want}`, got {p}",
                    c["name"]
                );
                if let Some(i) = cmd.iter().position(|a| *a == "--socket") {
                    let sock = cmd.get(i + 1).expect("--socket value");
                    assert!(
                        sock.starts_with("/run/riskfeat/"),
                        "{overlay}: probe socket {sock} outside the shared dir"
                    );
                }
            }
        }
    }
}

#[test]
fn no_container_runs_as_root_or_with_privileges() {
    for overlay in OVERLAYS {
        for (dep, pod) in pod_specs(rendered(overlay)) {
            let psc = &pod["securityContext"];
            for key in ["hostNetwork", "hostPID", "hostIPC"] {
                assert_ne!(pod[key], true, "{overlay}/{dep}: {key}");
            }
            for (_, c) in containers(pod) {
                let who = format!("{overlay}/{dep}/{}", c["name"]);
                let sc = &c["securityContext"];
                let eff = |k: &str| {
                    if sc[k].is_null() {
                        psc[k].clone()
                    } else {
                        sc[k].clone()
                    }
                };
                assert_eq!(eff("runAsNonRoot"), true, "{who}: runAsNonRoot");
                let uid = eff("runAsUser").as_i64();
                assert!(
                    uid.is_some_and(|u| u > 0),
                    "{who}: runAsUser must be set and non-zero"
                );
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
                assert_ne!(sc["privileged"], true, "{who}");
                assert!(
                    arr(&sc["capabilities"]["drop"]).contains(&Value::from("ALL")),
                    "{who}: capabilities must drop ALL"
                );
                assert!(
                    arr(&sc["capabilities"]["add"]).is_empty(),
                    "{who}: no capability may be added"
                );
                assert_eq!(
                    eff("seccompProfile")["type"],
                    "RuntimeDefault",
                    "{who}: seccompProfile"
                );
                for res in ["requests", "limits"] {
                    for r in ["cpu", "memory"] {
                        assert!(
                            c["resources"][res][r].is_string(),
                            "{who}: resources.{res}.{r} missing"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn secrets_are_read_only_files_never_env_or_args() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let pod = &object(docs, "Deployment", "riskfeat-worker")["spec"]["template"]["spec"];
        let agent = container(pod, "riskfeat-agent");
        let agent_toml = config_file(docs, pod, "agent-config", "agent.toml");
        let secret_id = toml_str(&agent_toml, &["vault", "secret_id_file"]);
        assert_secret_file(pod, agent, secret_id, &format!("{overlay}: secret_id"));
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
        let role_id = toml_str(&agent_toml, &["vault", "role_id_file"]);
        assert!(
            arr(&agent["volumeMounts"]).iter().any(|m| {
                m["readOnly"] == true
                    && role_id.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap()))
            }),
            "{overlay}: role_id must come from a read-only mount"
        );
        let configd = &object(docs, "Deployment", "riskfeat-configd")["spec"]["template"]["spec"];
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
        let pod = &object(docs, "Deployment", "riskfeat-worker")["spec"]["template"]["spec"];
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

#[test]
fn shutdown_fits_in_the_grace_period() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let pod = &object(docs, "Deployment", "riskfeat-worker")["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
        let agent = config_file(docs, pod, "agent-config", "agent.toml");
        let worker = config_file(docs, pod, "worker-config", "worker.toml");
        let pre_stop = container(pod, "riskfeat-worker")["lifecycle"]["preStop"]["sleep"]
            ["seconds"]
            .as_i64()
            .unwrap_or(0);
        // Defaults from agent/src/config.rs and worker/src/config.rs.
        let worker_stop = toml_int(&worker, &["shutdown_timeout_s"]).unwrap_or(25);
        let agent_stop = toml_int(&agent, &["lifecycle", "shutdown_timeout_s"]).unwrap_or(10);
        assert!(
            pre_stop + worker_stop + agent_stop < grace,
            "{overlay}: preStop {pre_stop} + worker {worker_stop} + agent revocation {agent_stop} >= grace {grace}"
        );
        let configd = object(docs, "Deployment", "riskfeat-configd");
        assert!(configd["spec"]["replicas"].as_i64().unwrap() >= 2);
        let pdb = object(docs, "PodDisruptionBudget", "riskfeat-configd");
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"], configd["spec"]["selector"]["matchLabels"],
            "{overlay}: the PDB must select configd's pods"
        );
    }
}

#[test]
fn prod_overlay_has_a_pod_monitor_for_every_metrics_port() {
    let docs = rendered("prod");
    let pm = object(docs, "PodMonitor", "riskfeat");
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("PodMonitor selector.matchLabels");
    let ports: BTreeSet<&str> = arr(&pm["spec"]["podMetricsEndpoints"])
        .iter()
        .map(|e| e["port"].as_str().expect("endpoint port name"))
        .collect();
    let mut scraped = BTreeSet::new();
    for d in docs.iter().filter(|d| kind(d) == "Deployment") {
        let labels = d["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "PodMonitor does not select {}",
            name(d)
        );
        for (_, c) in containers(&d["spec"]["template"]["spec"]) {
            for p in arr(&c["ports"]) {
                let n = p["name"].as_str().unwrap();
                assert!(ports.contains(n), "port {n} of {} not scraped", c["name"]);
                scraped.insert(n);
            }
        }
    }
    assert_eq!(
        scraped.iter().copied().collect::<BTreeSet<_>>(),
        ports,
        "PodMonitor names ports no pod has"
    );
    assert!(
        rendered("dev").iter().all(|d| kind(d) != "PodMonitor"),
        "dev must not need the Prometheus Operator"
    );
}

/// `riskfeat_*` metric names used in `text`, histogram suffixes stripped.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("riskfeat_") {
        if i > 0 {
            let prev = text.as_bytes()[i - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' {
                continue;
            }
        }
        let end = text[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| i + e);
        let mut m = &text[i..end];
        // A histogram's series: the family is registered without the suffix.
        for s in ["_bucket", "_sum", "_count"] {
            if let Some(family) = m.strip_suffix(s) {
                if family.ends_with("_seconds") {
                    m = family;
                }
            }
        }
        if ["agent", "worker", "configd"]
            .iter()
            .any(|c| m.starts_with(&format!("riskfeat_{c}_")))
        {
            out.insert(m.to_string());
        }
    }
    out
}

/// Every metric the rules or the dashboard use is registered by its
/// component (a string literal in `<component>/src`).
fn assert_metrics_exist(what: &str, names: &BTreeSet<String>) {
    let mut sources: BTreeMap<&str, String> = BTreeMap::new();
    for comp in ["agent", "worker", "configd"] {
        let mut all = String::new();
        let mut stack = vec![repo_root().join(comp).join("src")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    all.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
                }
            }
        }
        sources.insert(comp, all);
    }
    // A component with no metric registered at all is not written yet (the
    // names used for it are the documented plan): say so loudly, check the
    // others strictly.
    let unwritten: BTreeSet<&str> = sources
        .iter()
        .filter(|(comp, src)| !src.contains(&format!("\"riskfeat_{comp}_")))
        .map(|(comp, _)| *comp)
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            let comp = n.split('_').nth(1).unwrap();
            if unwritten.contains(comp) {
                eprintln!("NOT CHECKED: {what} uses {n}, but {comp} registers no metrics yet");
                return false;
            }
            !sources[comp].contains(&format!("\"{n}\""))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{what} uses metrics no component registers: {missing:?}"
    );
}

#[test]
fn alert_rules_pass_promtool_and_cover_every_failure_mode() {
    let root = repo_root();
    let rules_text = std::fs::read_to_string(root.join(RULES)).unwrap();
    for alert in [
        "RiskfeatCredentialExpiringSoon",
        "RiskfeatRenewalsFailing",
        "RiskfeatConfigStale",
        "RiskfeatReplicaLagHigh",
        "RiskfeatConfigdDegraded",
        "RiskfeatAgentFallbackCredential",
    ] {
        assert!(
            rules_text.contains(&format!("alert: {alert}\n")),
            "no alert {alert}"
        );
        let anchor = format!("#{}", alert.to_lowercase());
        let ops = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
        assert!(
            ops.to_lowercase()
                .contains(&format!("### {}", alert.to_lowercase())),
            "docs/operations.md has no section for {alert} ({anchor})"
        );
    }
    // Every alert links a section of docs/operations.md that exists.
    let ops = std::fs::read_to_string(root.join("docs/operations.md"))
        .unwrap()
        .to_lowercase();
    let rules: Value = serde_norway::from_str(&rules_text).expect("rules parse");
    let mut count = 0;
    for group in arr(&rules["groups"]) {
        for rule in arr(&group["rules"]) {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            count += 1;
            let desc = rule["annotations"]["description"].as_str().unwrap_or("");
            let anchor = desc
                .split("docs/operations.md#")
                .nth(1)
                .map(|a| a.trim_end_matches('.'))
                .unwrap_or_else(|| {
                    panic!("{alert}: description links no docs/operations.md section")
                });
            assert!(
                ops.contains(&format!("\n### {anchor}\n")),
                "{alert}: docs/operations.md has no section #{anchor}"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{alert}: summary"
            );
            assert!(rule["labels"]["severity"].is_string(), "{alert}: severity");
        }
    }
    assert!(count >= 6, "only {count} alerts");
    assert_metrics_exist(RULES, &metric_names(&rules_text));
    let Some(promtool) = promtool() else { return };
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(root.join(RULES)));
    assert!(ok, "promtool check rules {RULES}:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(root.join(RULES_TEST)));
    assert!(ok, "promtool test rules {RULES_TEST}:\n{out}");
}

#[test]
fn grafana_dashboard_parses_and_uses_real_metrics() {
    let text = std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("dashboard JSON parses");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let panels = arr(&dash["panels"]);
    assert!(panels.len() >= 6, "dashboard has {} panels", panels.len());
    let mut exprs = String::new();
    for p in panels {
        for t in arr(&p["targets"]) {
            exprs.push_str(t["expr"].as_str().unwrap_or(""));
            exprs.push('\n');
        }
    }
    let names = metric_names(&exprs);
    assert!(names.len() >= 8, "dashboard uses only {names:?}");
    assert_metrics_exist(DASHBOARD, &names);
}

/// The config files the manifests ship are accepted by the binaries
/// themselves (unknown keys, types and values), so the manifests stay in
/// step with agent/src/config.rs, worker/src/config.rs and
/// configd/src/config.rs.
#[test]
fn shipped_configs_are_accepted_by_the_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let worker_pod = &object(docs, "Deployment", "riskfeat-worker")["spec"]["template"]["spec"];
        for (bin, vol, file) in [
            ("riskfeat-agent", "agent-config", "agent.toml"),
            ("riskfeat-worker", "worker-config", "worker.toml"),
        ] {
            let cm_name = volume(worker_pod, vol)["configMap"]["name"]
                .as_str()
                .unwrap();
            let text = object(docs, "ConfigMap", cm_name)["data"][file]
                .as_str()
                .unwrap();
            let path = tmp.path().join(format!("{overlay}-{file}"));
            std::fs::write(&path, text).unwrap();
            let (ok, out) = run(Command::new(riskfeat_tests::binary(bin))
                .arg("--config")
                .arg(&path)
                .arg("check-config")
                .env_remove("RISKFEAT_SHARED_DIR")
                .env_remove("RISKFEAT_LOG"));
            assert!(ok, "{overlay}: {bin} rejects the shipped {file}:\n{out}");
        }
        // configd has no check-config: start it on the shipped file with its
        // secret files replaced by harmless stand-ins and a database that
        // is not there. A config it rejects exits 64 (or 66 for an input
        // file) at once; an accepted one gets as far as the database.
        let configd_pod =
            &object(docs, "Deployment", "riskfeat-configd")["spec"]["template"]["spec"];
        let mut cfg = config_file(docs, configd_pod, "config", "configd.toml");
        let db = tmp.path().join(format!("{overlay}-database_url"));
        std::fs::write(&db, "host=127.0.0.1 port=1 user=nobody dbname=riskfeat\n").unwrap();
        let tokens = tmp.path().join(format!("{overlay}-tokens.toml"));
        std::fs::write(
            &tokens,
            "[[tokens]]\nname = \"k8s-test\"\ntoken = \"stand-in-not-a-secret\"\nrole = \"read\"\nnamespaces = [\"*\"]\n",
        )
        .unwrap();
        for (key, path) in [("database_url_file", &db), ("tokens_file", &tokens)] {
            assert!(
                cfg.contains_key(key),
                "{overlay}: configd.toml has no {key}"
            );
            cfg.insert(key.into(), path.display().to_string().into());
        }
        cfg.insert("listen".into(), "127.0.0.1:0".into());
        let path = tmp.path().join(format!("{overlay}-configd.toml"));
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
        let mut child = Command::new(riskfeat_tests::binary("riskfeat-configd"))
            .arg("--config")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn riskfeat-configd");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        let code = status.and_then(|s| s.code());
        assert!(
            !matches!(code, Some(64) | Some(66)),
            "{overlay}: riskfeat-configd rejects the shipped configd.toml (exit {code:?}):\n{err}"
        );
    }
}

/// The Dockerfile (not buildable here: no container engine) has a target
/// per binary on a non-root distroless base, and puts each binary where the
/// manifests' probes exec it.
#[test]
fn dockerfile_targets_match_the_manifests() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    // stage name -> (FROM image, lines of the stage)
    let mut stages: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    let mut current = None;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            let image = words.get(1).expect("FROM image").to_string();
            let name = match words.get(2..4) {
                Some([kw, n]) if kw.eq_ignore_ascii_case("AS") => n.to_string(),
                _ => format!("#{}", stages.len()),
            };
            stages.insert(name.clone(), (image, Vec::new()));
            current = Some(name);
        } else if let Some(c) = &current {
            stages.get_mut(c).unwrap().1.push(line.to_string());
        }
    }
    let base = |target: &str| -> (String, Vec<String>) {
        // Follow FROM <stage> chains to the image; collect every line.
        let mut name = target.to_string();
        let mut lines = Vec::new();
        loop {
            let (image, l) = &stages[&name];
            lines.extend(l.iter().cloned());
            if stages.contains_key(image) {
                name = image.clone();
            } else {
                return (image.clone(), lines);
            }
        }
    };
    for target in ["agent", "worker", "configd"] {
        assert!(
            stages.contains_key(target),
            "Dockerfile has no target {target}"
        );
        let (image, lines) = base(target);
        assert!(
            image.contains("distroless") && image.ends_with(":nonroot"),
            "{target}: runtime image {image} is not distroless nonroot"
        );
        assert!(
            lines
                .iter()
                .any(|l| l == "USER 65532:65532" || l == "USER 65532"),
            "{target}: no USER 65532"
        );
        let bin = format!("/usr/local/bin/riskfeat-{target}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("COPY") && l.ends_with(&bin)),
            "{target}: the binary is not copied to {bin}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("ENTRYPOINT") && l.contains(&format!("\"{bin}\""))),
            "{target}: ENTRYPOINT is not {bin}"
        );
    }
    for overlay in OVERLAYS {
        for (dep, pod) in pod_specs(rendered(overlay)) {
            for (_, c) in containers(pod) {
                let n = c["name"].as_str().unwrap();
                let image = c["image"].as_str().unwrap();
                assert!(
                    image.starts_with(&format!("riskfeat/{n}:")),
                    "{overlay}/{dep}: container {n} runs image {image}"
                );
                for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    if let Some(b) = c[probe]["exec"]["command"][0].as_str() {
                        assert_eq!(b, format!("/usr/local/bin/{n}"), "{overlay}/{dep}/{n}");
                    }
                }
            }
        }
    }
}
