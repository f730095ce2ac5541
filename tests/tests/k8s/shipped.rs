//! What the manifests ship is what the binaries take: their config files
//! pass each binary's own check, and the Dockerfile builds each binary where
//! the probes exec it.

use crate::support::*;
use std::collections::BTreeMap;
use std::process::Command;

/// The config files the manifests ship are accepted by the binaries
/// themselves (unknown keys, types and values), so the manifests stay in
/// step with agent/src/config.rs, worker/src/config.rs and
/// configd/src/config.rs.
#[test]
fn shipped_configs_are_accepted_by_the_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    for (overlay, docs, worker_pod) in worker_pods() {
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
        let configd_pod = pod_spec(docs, "riskfeat-configd");
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
        // HTTPS (prod): a stand-in pair from a throwaway CA, so configd
        // loads a real certificate and key as it would from the Secret.
        if cfg.contains_key("tls_cert_file") || cfg.contains_key("tls_key_file") {
            let ca = riskfeat_tests::tls::TestCa::new("k8s-test configd CA").unwrap();
            let pair = ca.issue_server(&["riskfeat-configd"]).unwrap();
            let cert = tmp.path().join(format!("{overlay}-tls.crt"));
            let key = tmp.path().join(format!("{overlay}-tls.key"));
            std::fs::write(&cert, &pair.cert_pem).unwrap();
            std::fs::write(&key, &pair.key_pem).unwrap();
            for (k, path) in [("tls_cert_file", &cert), ("tls_key_file", &key)] {
                assert!(cfg.contains_key(k), "{overlay}: configd.toml has no {k}");
                cfg.insert(k.into(), path.display().to_string().into());
            }
        } else {
            assert_ne!(overlay, "prod", "prod: configd.toml has no tls_cert_file");
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

/// The fallback login's `CONNECTION LIMIT` (k8s/bootstrap/postgres/02-fallback.sql)
/// fits the prod fleet on it: every worker pod at once on the fallback,
/// each with one `fallback_pool_size` pool per server, twice during the
/// swap from one fallback generation to the next (old pool draining), for
/// the most pods prod may run: `replicas + maxSurge` of the Deployment, or
/// the example HPA's `maxReplicas` when it is enabled.
///
/// Checked: with the old `CONNECTION LIMIT 50` this test fails with
/// "2 x 12 pods x 4 connections = 96 > CONNECTION LIMIT 50".
#[test]
fn the_fallback_connection_limit_fits_the_prod_fleet() {
    let sql = riskfeat_tests::bootstrap::FALLBACK_SQL;
    let limit: i64 = sql
        .split("CONNECTION LIMIT")
        .nth(1)
        .and_then(|rest| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
        })
        .and_then(|n| n.parse().ok())
        .expect("02-fallback.sql sets a CONNECTION LIMIT");
    let docs = rendered("prod");
    let deployment = object(docs, "Deployment", "riskfeat-worker");
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap();
    let surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        .as_i64()
        .unwrap();
    let hpa_file =
        riskfeat_tests::process::workspace_root().join("k8s/overlays/prod/worker-hpa.yaml");
    let hpa = parse_docs(&std::fs::read_to_string(hpa_file).unwrap());
    let hpa_max = hpa[0]["spec"]["maxReplicas"].as_i64().unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let worker = config_file(docs, pod, "worker-config", "worker.toml");
    let per_pod = toml_int(&worker, &["fallback_pool_size"]).unwrap_or(4);
    let pods = (replicas + surge).max(hpa_max);
    assert!(
        2 * pods * per_pod <= limit,
        "2 x {pods} pods x {per_pod} connections = {} > CONNECTION LIMIT {limit}",
        2 * pods * per_pod
    );
}
