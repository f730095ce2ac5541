//! Every overlay renders and passes `kubernetes-validate --strict`, and the
//! validator does reject a misspelled field.

use crate::support::*;
use serde_json::Value;

#[test]
fn every_overlay_renders_and_passes_strict_validation() {
    let tmp = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let (core, other): (Vec<&Value>, Vec<&Value>) =
            docs.iter().partition(|d| CORE_KINDS.contains(&kind(d)));
        for d in &other {
            // Only the Prometheus Operator's CRDs are expected, and
            // kubernetes-validate has no schema for them (it ships the core
            // API only; the Operator's CRD schemas are not vendored here):
            // skipped here and checked structurally instead, the PodMonitor
            // in `prod_overlay_has_a_pod_monitor_for_every_metrics_port`, the
            // PrometheusRule in `prod_prometheus_rule_ships_the_same_rules`
            // (the groups of the plain rules file, which promtool checks).
            let why = match (d["apiVersion"].as_str(), kind(d)) {
                (Some("monitoring.coreos.com/v1"), "PodMonitor") => {
                    "checked structurally (selects every pod, names their metrics ports)"
                }
                (Some("monitoring.coreos.com/v1"), "PrometheusRule") => {
                    "checked structurally (its groups are riskfeat-alerts.yaml, checked by promtool)"
                }
                _ => panic!(
                    "{overlay}: a kind with no schema in kubernetes-validate: {} {}",
                    kind(d),
                    name(d)
                ),
            };
            eprintln!(
                "{overlay}: SKIPPED kubernetes-validate for {} {} (CRD, no schema in kubernetes-validate): {why}",
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

/// The HPA example (not in any overlay's resources) is valid and scales the
/// prod worker Deployment within what its PDB allows.
#[test]
fn worker_hpa_example_passes_strict_validation() {
    let path = repo_root().join("k8s/overlays/prod/worker-hpa.yaml");
    let (ok, out) = validate(&path);
    assert!(ok, "{}: {out}", path.display());
    assert!(
        out.contains("passed for resource horizontalpodautoscaler/riskfeat-worker"),
        "{out}"
    );
    let hpa: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let target = &hpa["spec"]["scaleTargetRef"];
    let dep = object(rendered("prod"), "Deployment", "riskfeat-worker");
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], name(dep));
    assert_eq!(hpa["metadata"]["namespace"], dep["metadata"]["namespace"]);
    assert!(hpa["spec"]["minReplicas"].as_i64().unwrap() >= 2);
    assert!(hpa["spec"]["maxReplicas"].as_i64() > hpa["spec"]["minReplicas"].as_i64());
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
