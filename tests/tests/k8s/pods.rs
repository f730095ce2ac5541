//! The pods: the agent a native sidecar gating the worker, the shared
//! volume in memory, the probes through the `probe` subcommands, no root or
//! privileges, and a shutdown that fits the grace period.

use crate::support::*;
use serde_json::Value;

#[test]
fn agent_is_a_native_sidecar_gating_the_worker() {
    for (overlay, _, pod) in worker_pods() {
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
    for (overlay, docs, pod) in worker_pods() {
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
    for (overlay, _, pod) in worker_pods() {
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
fn shutdown_fits_in_the_grace_period() {
    for (overlay, docs, pod) in worker_pods() {
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
fn workers_spread_over_nodes_and_have_their_own_pdb() {
    // The PDB is a file of its own in the base (issue 21).
    let pdb_file = std::fs::read_to_string(repo_root().join("k8s/base/worker-pdb.yaml")).unwrap();
    let pdb_doc: Value = serde_norway::from_str(&pdb_file).unwrap();
    assert_eq!(kind(&pdb_doc), "PodDisruptionBudget");
    for overlay in OVERLAYS {
        let docs = rendered(overlay);
        let worker = object(docs, "Deployment", "riskfeat-worker");
        let pod_labels = &worker["spec"]["template"]["metadata"]["labels"];
        let pdb = object(docs, "PodDisruptionBudget", "riskfeat-worker");
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"], worker["spec"]["selector"]["matchLabels"],
            "{overlay}: the worker PDB must select the worker's pods"
        );
        assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{overlay}");
        let spread = arr(&worker["spec"]["template"]["spec"]["topologySpreadConstraints"]);
        let by_node = spread
            .iter()
            .find(|c| c["topologyKey"] == "kubernetes.io/hostname")
            .unwrap_or_else(|| panic!("{overlay}: workers not spread over nodes"));
        assert_eq!(by_node["whenUnsatisfiable"], "DoNotSchedule", "{overlay}");
        assert_eq!(by_node["maxSkew"], 1, "{overlay}");
        for c in spread {
            let sel = c["labelSelector"]["matchLabels"].as_object().unwrap();
            assert!(
                sel.iter().all(|(k, v)| &pod_labels[k] == v),
                "{overlay}: a spread constraint does not select the worker's own pods: {c}"
            );
        }
    }
}
