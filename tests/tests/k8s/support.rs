//! What the Kubernetes checks share: the pinned versions and the documented
//! out-of-band objects, rendering and parsing the overlays, looking things
//! up in the parsed manifests, kubernetes-validate, and promtool.

pub use riskfeat_tests::process::workspace_root as repo_root;
use riskfeat_tests::process::{cache_dir, lock_file};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Kubernetes version the manifests are validated against (native
/// sidecars are GA from 1.33; the preStop `sleep` action is on by default
/// from 1.30).
pub const K8S_VERSION: &str = "1.33.0";
/// The pinned kubernetes-validate release (ships schemas 1.32..1.37).
pub const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
pub const OVERLAYS: &[&str] = &["dev", "prod", "dev-kubernetes-auth"];
pub const RULES: &str = "k8s/monitoring/riskfeat-alerts.yaml";
pub const RULES_TEST: &str = "k8s/monitoring/riskfeat-alerts.test.yaml";
pub const DASHBOARD: &str = "k8s/monitoring/riskfeat-dashboard.json";
/// [`RULES`] as a PrometheusRule (generated; the prod overlay includes it).
pub const PROMETHEUS_RULE: &str = "k8s/monitoring/prometheusrule.yaml";
/// Secrets the pods mount that are created out of band (never rendered).
pub const OUT_OF_BAND_SECRETS: &[&str] = &[
    "riskfeat-approle-secret-id",
    "riskfeat-configd-client",
    "riskfeat-configd-db",
    "riskfeat-configd-tokens",
    "riskfeat-db-fallback-password",
    "riskfeat-configd-tls",
];
/// ConfigMaps the pods mount that come from outside this repository
/// (public material, e.g. a CA certificate from the operator's PKI).
pub const OUT_OF_BAND_CONFIGMAPS: &[&str] =
    &["riskfeat-vault-ca", "riskfeat-pg-ca", "riskfeat-configd-ca"];
/// Kinds kubernetes-validate has schemas for, as used here.
pub const CORE_KINDS: &[&str] = &[
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Secret",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "NetworkPolicy",
];

/// Runs a command; returns (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
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
pub fn lock(name: &str) -> nix::fcntl::Flock<std::fs::File> {
    lock_file(&cache_dir().join(format!("{name}.lock"))).unwrap_or_else(|e| panic!("{e:#}"))
}

// ---------------------------------------------------------------- rendering

/// One overlay rendered and parsed (cached per process).
pub fn rendered(overlay: &str) -> &'static [Value] {
    static CACHE: OnceLock<BTreeMap<String, Vec<Value>>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        OVERLAYS
            .iter()
            .map(|o| (o.to_string(), parse_docs(&render(o))))
            .collect()
    });
    &all[overlay]
}

pub fn render(overlay: &str) -> String {
    let dir = repo_root().join("k8s/overlays").join(overlay);
    let (ok, out) = run(Command::new("kubectl").arg("kustomize").arg(&dir));
    assert!(ok, "kubectl kustomize {} failed:\n{out}", dir.display());
    out
}

pub fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}
pub fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

pub fn object<'a>(docs: &'a [Value], k: &str, n: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == k && name(d) == n)
        .unwrap_or_else(|| panic!("no {k} {n} in the rendered manifests"))
}

/// The pod spec of Deployment `deployment`.
pub fn pod_spec<'a>(docs: &'a [Value], deployment: &str) -> &'a Value {
    &object(docs, "Deployment", deployment)["spec"]["template"]["spec"]
}

/// `(overlay, its rendered manifests, the worker Deployment's pod spec)`
/// for every overlay.
pub fn worker_pods() -> impl Iterator<Item = (&'static str, &'static [Value], &'static Value)> {
    OVERLAYS.iter().map(|&overlay| {
        let docs = rendered(overlay);
        (overlay, docs, pod_spec(docs, "riskfeat-worker"))
    })
}

/// `(deployment name, pod spec)` of every Deployment.
pub fn pod_specs(docs: &[Value]) -> Vec<(&str, &Value)> {
    let pods: Vec<_> = docs
        .iter()
        .filter(|d| kind(d) == "Deployment")
        .map(|d| (name(d), &d["spec"]["template"]["spec"]))
        .collect();
    assert!(!pods.is_empty(), "no Deployment rendered");
    pods
}

pub fn arr(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// Every container of a pod: `(is_init, container)`.
pub fn containers(pod: &Value) -> Vec<(bool, &Value)> {
    arr(&pod["initContainers"])
        .iter()
        .map(|c| (true, c))
        .chain(arr(&pod["containers"]).iter().map(|c| (false, c)))
        .collect()
}

pub fn container<'a>(pod: &'a Value, n: &str) -> &'a Value {
    containers(pod)
        .into_iter()
        .map(|(_, c)| c)
        .find(|c| c["name"] == n)
        .unwrap_or_else(|| panic!("no container {n}"))
}

pub fn volume<'a>(pod: &'a Value, n: &str) -> &'a Value {
    arr(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == n)
        .unwrap_or_else(|| panic!("no volume {n}"))
}

pub fn mount_path<'a>(c: &'a Value, volume: &str) -> Option<&'a str> {
    arr(&c["volumeMounts"])
        .iter()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
}

/// The TOML file `file` of the ConfigMap a pod's volume refers to.
pub fn config_file(docs: &[Value], pod: &Value, volume_name: &str, file: &str) -> toml::Table {
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

pub fn toml_str<'a>(t: &'a toml::Table, path: &[&str]) -> &'a str {
    let mut v: &toml::Value = t
        .get(path[0])
        .unwrap_or_else(|| panic!("missing key {}", path[0]));
    for p in &path[1..] {
        v = v.get(p).unwrap_or_else(|| panic!("missing key {p}"));
    }
    v.as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

pub fn toml_int(t: &toml::Table, path: &[&str]) -> Option<i64> {
    let mut v: &toml::Value = t.get(path[0])?;
    for p in &path[1..] {
        v = v.get(p)?;
    }
    v.as_integer()
}

/// The volume and mount that hold absolute path `file` in container `c`:
/// asserts the mount is read-only and the volume a Secret (when `secret`)
/// whose items put the file there.
pub fn assert_secret_file(pod: &Value, c: &Value, file: &str, what: &str) {
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
pub fn kubernetes_validate_path() -> PathBuf {
    riskfeat_tests::pytools::module_path(KUBERNETES_VALIDATE, "kubernetes_validate")
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `kubernetes-validate --strict` on one multi-document file.
pub fn validate(file: &Path) -> (bool, String) {
    let py = kubernetes_validate_path();
    run(Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION])
        .arg(file)
        .env("PYTHONPATH", py))
}

pub fn to_yaml(docs: &[&Value]) -> String {
    docs.iter()
        .map(|d| serde_norway::to_string(d).expect("serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}

// ------------------------------------------------------------------ promtool

/// The promtool binary; installs the Debian package `prometheus` when it is
/// missing. `None` (skip) only when not root and not in CI.
pub fn promtool() -> Option<PathBuf> {
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
