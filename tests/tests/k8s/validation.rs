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
