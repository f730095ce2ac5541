//! Network policies (every overlay: they are in the base) and HTTPS
//! configd (prod): default-deny for the riskfeat pods, and exactly the
//! flows the programs need, derived from the shipped configs (Vault's and
//! PostgreSQL's addresses in agent.toml, the containers' ports).

use crate::support::*;
use serde_json::Value;
use std::collections::BTreeSet;

const FEATURE_CLIENT: &str = "riskfeat.io/feature-client=true";
const CONFIGD_ADMIN: &str = "riskfeat.io/configd-admin=true";
const MONITORING: &str = "kubernetes.io/metadata.name=monitoring";
const DNS: &str = "kubernetes.io/metadata.name=kube-system";

/// `matchLabels` of a selector as "k=v" strings (no matchExpressions used).
fn labels(selector: &Value) -> BTreeSet<String> {
    assert!(
        selector.get("matchExpressions").is_none(),
        "matchExpressions are not used here: {selector}"
    );
    selector["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &Value, pod_labels: &Value) -> bool {
    let have = labels(&serde_json::json!({ "matchLabels": pod_labels }));
    let want = labels(selector);
    !want.is_empty() && want.is_subset(&have)
}

/// Every (peer, port/protocol) a list of ingress or egress rules allows, a
/// peer written `ns:<labels>` or `pod:<labels>` (this namespace).
fn flows(rules: &Value, peers_key: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rule in arr(rules) {
        let peers = arr(&rule[peers_key]);
        let ports = arr(&rule["ports"]);
        assert!(!peers.is_empty(), "a rule open to every peer: {rule}");
        assert!(!ports.is_empty(), "a rule open on every port: {rule}");
        for peer in peers {
            assert!(peer.get("ipBlock").is_none(), "ipBlock peer: {peer}");
            let desc = match (peer.get("namespaceSelector"), peer.get("podSelector")) {
                (Some(ns), None) => format!(
                    "ns:{}",
                    labels(ns).into_iter().collect::<Vec<_>>().join(",")
                ),
                (None, Some(pod)) => format!(
                    "pod:{}",
                    labels(pod).into_iter().collect::<Vec<_>>().join(",")
                ),
                _ => panic!("a peer with both or neither selector: {peer}"),
            };
            for p in ports {
                out.insert(format!(
                    "{desc} {}/{}",
                    p["port"],
                    p["protocol"].as_str().unwrap_or("TCP")
                ));
            }
        }
    }
    out
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

/// `(namespace, port)` of a `scheme://name.namespace.svc:port` address.
fn svc_addr(addr: &str) -> (String, u16) {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let (host, port) = rest.rsplit_once(':').unwrap();
    let ns = host
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("{addr} names no namespace"));
    (ns.to_string(), port.trim_end_matches('/').parse().unwrap())
}

fn container_port(pod: &Value, cname: &str, port: &str) -> u64 {
    arr(&container(pod, cname)["ports"])
        .iter()
        .find(|p| p["name"] == port)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("{cname} has no port {port}"))
}

#[test]
fn network_policies_default_deny_and_allow_only_the_needed_flows() {
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let policies: Vec<&Value> = docs.iter().filter(|d| kind(d) == "NetworkPolicy").collect();
        let worker_dep = object(docs, "Deployment", "riskfeat-worker");
        let configd_dep = object(docs, "Deployment", "riskfeat-configd");
        let worker_labels = &worker_dep["spec"]["template"]["metadata"]["labels"];
        let configd_labels = &configd_dep["spec"]["template"]["metadata"]["labels"];
        let worker_pod = &worker_dep["spec"]["template"]["spec"];
        let configd_pod = &configd_dep["spec"]["template"]["spec"];

        // Default-deny: selects every riskfeat pod, both directions, no rule.
        let deny = object(docs, "NetworkPolicy", "riskfeat-default-deny");
        for (dep, pod_labels) in [("worker", worker_labels), ("configd", configd_labels)] {
            assert!(
                selects(&deny["spec"]["podSelector"], pod_labels),
                "{overlay}: default-deny does not select the {dep} pods"
            );
        }
        assert_eq!(
            deny["spec"]["policyTypes"],
            serde_json::json!(["Ingress", "Egress"])
        );
        assert!(deny["spec"].get("ingress").is_none() && deny["spec"].get("egress").is_none());

        // Each pod is selected by default-deny and its own policy only.
        for (dep, pod_labels, own) in [
            ("worker", worker_labels, "riskfeat-worker"),
            ("configd", configd_labels, "riskfeat-configd"),
        ] {
            let by: BTreeSet<&str> = policies
                .iter()
                .filter(|p| selects(&p["spec"]["podSelector"], pod_labels))
                .map(|p| name(p))
                .collect();
            assert_eq!(
                by,
                BTreeSet::from(["riskfeat-default-deny", own]),
                "{overlay}: policies selecting the {dep} pods"
            );
        }

        let agent_toml = config_file(docs, worker_pod, "agent-config", "agent.toml");
        let (vault_ns, vault_port) = svc_addr(toml_str(&agent_toml, &["vault", "addr"]));
        let mut pg = BTreeSet::new();
        for ep in ["primary", "replica"] {
            let host = toml_str(&agent_toml, &["database", ep, "host"]);
            let port = toml_int(&agent_toml, &["database", ep, "port"]).unwrap_or(5432);
            pg.insert(svc_addr(&format!("{host}:{port}")));
        }
        assert_eq!(
            pg.len(),
            1,
            "{overlay}: PostgreSQL endpoints in several namespaces/ports"
        );
        let (pg_ns, pg_port) = pg.into_iter().next().unwrap();
        assert_eq!(pg_port, 5432);
        let api = container_port(worker_pod, "riskfeat-worker", "http");
        let agent_metrics = container_port(worker_pod, "riskfeat-agent", "agent-metrics");
        let configd_port = container_port(configd_pod, "riskfeat-configd", "http");
        // The agent reaches configd through the Service, whose port is the
        // container's.
        let configd_addr = toml_str(&agent_toml, &["configd", "addr"]);
        let configd_addr_port: u64 = configd_addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("{overlay}: no port in {configd_addr}"));
        assert_eq!(configd_addr_port, configd_port, "{overlay}");
        let dns = [format!("ns:{DNS} 53/UDP"), format!("ns:{DNS} 53/TCP")];

        let worker = &object(docs, "NetworkPolicy", "riskfeat-worker")["spec"];
        assert_eq!(
            worker["policyTypes"],
            serde_json::json!(["Ingress", "Egress"])
        );
        assert_eq!(
            flows(&worker["ingress"], "from"),
            set(&[
                format!("ns:{FEATURE_CLIENT} {api}/TCP"),
                format!("ns:{MONITORING} {api}/TCP"),
                format!("ns:{MONITORING} {agent_metrics}/TCP"),
            ]),
            "{overlay}: worker ingress"
        );
        let configd_sel =
            object(docs, "NetworkPolicy", "riskfeat-configd")["spec"]["podSelector"].clone();
        assert!(selects(&configd_sel, configd_labels));
        let configd_peer = format!(
            "pod:{}",
            labels(&configd_sel)
                .into_iter()
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut want = set(&dns);
        want.insert(format!(
            "ns:kubernetes.io/metadata.name={pg_ns} {pg_port}/TCP"
        ));
        want.insert(format!(
            "ns:kubernetes.io/metadata.name={vault_ns} {vault_port}/TCP"
        ));
        want.insert(format!("{configd_peer} {configd_port}/TCP"));
        assert_eq!(
            flows(&worker["egress"], "to"),
            want,
            "{overlay}: worker egress"
        );

        let configd = &object(docs, "NetworkPolicy", "riskfeat-configd")["spec"];
        assert_eq!(
            configd["policyTypes"],
            serde_json::json!(["Ingress", "Egress"])
        );
        let worker_peer = format!(
            "pod:{}",
            labels(&worker["podSelector"])
                .into_iter()
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(selects(&worker["podSelector"], worker_labels));
        assert_eq!(
            flows(&configd["ingress"], "from"),
            set(&[
                format!("{worker_peer} {configd_port}/TCP"),
                format!("pod:{CONFIGD_ADMIN} {configd_port}/TCP"),
                format!("ns:{CONFIGD_ADMIN} {configd_port}/TCP"),
                format!("ns:{MONITORING} {configd_port}/TCP"),
            ]),
            "{overlay}: configd ingress"
        );
        let mut want = set(&dns);
        want.insert(format!(
            "ns:kubernetes.io/metadata.name={pg_ns} {pg_port}/TCP"
        ));
        assert_eq!(
            flows(&configd["egress"], "to"),
            want,
            "{overlay}: configd egress"
        );
    }
}

/// prod: configd serves HTTPS from its TLS Secret (read-only), its probes
/// speak HTTPS, and the agent reaches it over https:// trusting a mounted CA.
#[test]
fn prod_configd_serves_https_from_its_tls_secret() {
    let docs = rendered("prod");
    let pod = pod_spec(docs, "riskfeat-configd");
    let c = container(pod, "riskfeat-configd");
    let cfg = config_file(docs, pod, "config", "configd.toml");
    for key in ["tls_cert_file", "tls_key_file"] {
        let file = toml_str(&cfg, &[key]);
        assert_secret_file(pod, c, file, &format!("prod/configd {key}"));
        let m = arr(&c["volumeMounts"])
            .iter()
            .find(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
            .unwrap();
        assert_eq!(
            volume(pod, m["name"].as_str().unwrap())["secret"]["secretName"],
            "riskfeat-configd-tls"
        );
    }
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["scheme"], "HTTPS",
            "prod/configd {probe}"
        );
    }
    let wpod = pod_spec(docs, "riskfeat-worker");
    let agent = container(wpod, "riskfeat-agent");
    let agent_toml = config_file(docs, wpod, "agent-config", "agent.toml");
    assert!(toml_str(&agent_toml, &["configd", "addr"]).starts_with("https://"));
    let ca = toml_str(&agent_toml, &["configd", "ca_file"]);
    let m = arr(&agent["volumeMounts"])
        .iter()
        .find(|m| ca.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("prod/agent: nothing mounted over {ca}"));
    assert_eq!(m["readOnly"], true);
    let vol = volume(wpod, m["name"].as_str().unwrap());
    let rel = &ca[m["mountPath"].as_str().unwrap().len() + 1..];
    assert_eq!(vol["configMap"]["name"], "riskfeat-configd-ca", "{vol}");
    assert!(arr(&vol["configMap"]["items"])
        .iter()
        .any(|i| i["path"] == rel));
    // The worker pod never gets configd's private key.
    for v in arr(&wpod["volumes"]) {
        assert_ne!(v["secret"]["secretName"], "riskfeat-configd-tls");
    }
    // Dev stays plain HTTP.
    let dpod = pod_spec(rendered("dev"), "riskfeat-configd");
    let dcfg = config_file(rendered("dev"), dpod, "config", "configd.toml");
    assert!(!dcfg.contains_key("tls_cert_file"));
}
