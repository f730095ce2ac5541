//! The worker's HTTP API and process contract: stable error codes, the
//! batch limits, answers checked against docs/openapi/worker.yaml (and the
//! document against the router), the probes and the `probe` subcommand,
//! `degraded` under a fallback credential, the SIGTERM drain, and the exit
//! codes for a bad config or shared dir.

use crate::support::{
    get, insert_rows, publish, rotate, spawn_worker, start_stack, wait_for_answer, Load, Txn,
    READY_TIMEOUT, SECS,
};
use chrono::{Duration as ChronoDuration, Utc};
use riskfeat_shared::creds::DbCredential;
use riskfeat_shared::health::ProbeKind;
use riskfeat_tests::binary;
use riskfeat_tests::openapi::{axum_routes, OpenApi};
use serde_json::{json, Value};
use std::time::Duration;

/// docs/openapi/worker.yaml is a valid OpenAPI 3.1 document and lists
/// exactly the routes of the worker's router, no more and no fewer.
#[test]
fn the_openapi_document_is_valid_and_lists_exactly_the_routes() {
    let api = OpenApi::load("worker").unwrap();
    api.validate_document().unwrap();
    let router = riskfeat_tests::process::workspace_root().join("worker/src/http.rs");
    let routes = axum_routes(&std::fs::read_to_string(router).unwrap());
    assert!(routes.len() >= 3, "routes read from the router: {routes:?}");
    assert_eq!(api.operations(), routes, "document vs router");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_errors_probes_and_sigterm_drain() {
    // Every JSON answer below is also checked against docs/openapi/worker.yaml.
    let api = OpenApi::load("worker").unwrap();
    let one = "/v1/features/{user_id}";
    let batch = "/v1/features/batch";
    let stack = start_stack().await;
    let mut w = spawn_worker(&stack, "");
    let client = reqwest::Client::new();
    // Before any credential: live, not ready, 503 with a stable code.
    w.wait_live(SECS(20)).await.unwrap();
    let (code, body) = w.health().probe(ProbeKind::Ready).await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("db.json"), "{body}");
    let (code, body) = get(&client, &w.url("/v1/features/1")).await.unwrap();
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("no_credential"))
    );
    api.check("GET", one, code, &body).unwrap();

    // The probe subcommand.
    let probe_ready = || {
        std::process::Command::new(binary("riskfeat-worker"))
            .args(["probe", "ready", "--socket"])
            .arg(w.health().path())
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(probe_ready(), Some(1));
    rotate(&stack, 1).await;
    w.wait_generation(1, READY_TIMEOUT).await.unwrap();
    assert_eq!(probe_ready(), Some(0));

    // Bad input: 400 with stable codes; unknown user: 200, count 0.
    for (url, want) in [
        ("/v1/features/abc", "bad_user_id"),
        ("/v1/features/-5", "bad_user_id"),
    ] {
        let (code, body) = get(&client, &w.url(url)).await.unwrap();
        assert_eq!(
            (code, body["error"]["code"].as_str()),
            (400, Some(want)),
            "{url}"
        );
        api.check("GET", one, code, &body).unwrap();
    }
    let (code, body) = get(&client, &w.url("/v2/nope")).await.unwrap();
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    api.check_component("NotFound", &body).unwrap();
    let post = |body: String| {
        let c = client.clone();
        let url = w.url("/v1/features/batch");
        async move {
            let r = c.post(url).body(body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    for (req, want) in [
        ("{not json".to_string(), "bad_body"),
        (json!({"ids": [1]}).to_string(), "bad_body"),
        (json!({"user_ids": [1, -2]}).to_string(), "bad_user_id"),
        (
            json!({"user_ids": (0..1001).collect::<Vec<i64>>()}).to_string(),
            "batch_too_large",
        ),
    ] {
        let (code, body) = post(req).await;
        assert_eq!((code, body["error"]["code"].as_str()), (400, Some(want)));
        api.check("POST", batch, code, &body).unwrap();
    }
    let thousand: Vec<i64> = (1_000_000..1_001_000).collect();
    let (code, body) = post(json!({"user_ids": thousand}).to_string()).await;
    assert_eq!(code, 200);
    assert_eq!(body["results"].as_array().unwrap().len(), 1000);
    api.check("POST", batch, code, &body).unwrap();
    let (code, body) = get(&client, &w.url("/v1/features/987654321"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(body["features"]["count"], 0);
    assert_eq!(body["degraded"], false);
    api.check("GET", one, code, &body).unwrap();
    // Users with one and with several transactions: every field non-null
    // where the document says it can be.
    let now = Utc::now();
    insert_rows(&stack, 41, &[(12.5, now)]).await;
    let rows: Vec<Txn> = (0..5)
        .map(|i| {
            (
                10.0 * f64::from(i + 1),
                now - ChronoDuration::minutes(i.into()),
            )
        })
        .collect();
    insert_rows(&stack, 42, &rows).await;
    let url = w.url("/v1/features/42");
    wait_for_answer(
        &client,
        &url,
        SECS(15),
        "user 42 replayed on the replica",
        |_, b| b["features"]["count"] == 5,
    )
    .await
    .unwrap();
    for user in [41, 42] {
        let (code, body) = get(&client, &w.url(&format!("/v1/features/{user}")))
            .await
            .unwrap();
        assert_eq!(code, 200);
        api.check("GET", one, code, &body).unwrap();
    }
    let (code, body) = post(json!({"user_ids": [42, 41, 0, 42]}).to_string()).await;
    assert_eq!(code, 200);
    assert_eq!(body["results"][1]["features"]["count"], 1);
    api.check("POST", batch, code, &body).unwrap();
    let m = w.metrics().await.unwrap();
    assert!(
        m.contains("riskfeat_worker_http_request_duration_seconds_count{route=\"/v1/features/{user_id}\",status=\"400\"} 2"),
        "{m}"
    );

    // degraded: a fallback credential marks responses.
    let mut fb = DbCredential::load(&stack.shared_dir.path().join("db.json")).unwrap();
    fb.fallback = true;
    publish(&stack, &fb);
    let url = w.url("/v1/features/1");
    wait_for_answer(&client, &url, SECS(15), "degraded: true", |_, b| {
        b["degraded"] == true
    })
    .await
    .unwrap();
    let (code, body) = get(&client, &url).await.unwrap();
    assert_eq!(body["degraded"], true);
    api.check("GET", one, code, &body).unwrap();
    assert!(w
        .metrics()
        .await
        .unwrap()
        .contains("riskfeat_worker_credential_fallback 1"));

    // SIGTERM: in-flight requests are answered, then exit 0.
    let load = Load::start(w.http().base(), 4, vec![1, 2]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = w.stop(SECS(30)).expect("worker exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", w.logs());
    let (ok, failures) = load.finish().await;
    assert!(ok > 0);
    // After the listener closed, new connections are refused (transport
    // errors); no request got a 5xx answer.
    assert!(
        failures.iter().all(|f| f.starts_with("transport")),
        "{failures:?}"
    );
    assert!(w.logs().contains("draining in-flight requests"));
    assert!(!w.health().path().exists(), "health socket removed");
}

#[test]
fn exit_codes_for_bad_config_and_shared_dir() {
    let bin = binary("riskfeat-worker");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    // Bad config: every problem listed, exit 64.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "pool_sise = 3\nlag_policy = \"fastest\"\n").unwrap();
    let (code, err) = run(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("pool_sise") && err.contains("lag_policy"),
        "{err}"
    );
    let (code, _) = run(&["--bogus-flag"]);
    assert_eq!(code, Some(64));
    // Missing shared dir: 66.
    let ok = dir.path().join("ok.toml");
    std::fs::write(&ok, "listen = \"127.0.0.1:0\"\n").unwrap();
    let missing = dir.path().join("nope");
    let (code, err) = run(&[
        "run",
        "--config",
        ok.to_str().unwrap(),
        "--shared-dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(66), "{err}");
    // A disk directory without allow_disk: 78 (when the temp dir is on disk).
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if !riskfeat_shared::fs_check::fs_kind(disk.path())
        .unwrap()
        .is_memory()
    {
        let (code, err) = run(&[
            "run",
            "--config",
            ok.to_str().unwrap(),
            "--shared-dir",
            disk.path().to_str().unwrap(),
        ]);
        assert_eq!(code, Some(78), "{err}");
        assert!(err.contains("allow_disk"), "{err}");
    }
    // An absent database_ca_file: 66; one holding no certificate: 64. Both
    // name the setting and the file.
    let shared = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    for (ca, want) in [(dir.path().join("absent.pem"), 66), (junk, 64)] {
        let cfg = dir.path().join("ca.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:0\"\nallow_disk = true\nshared_dir = \"{}\"\n\
                 database_ca_file = \"{}\"\n",
                shared.path().display(),
                ca.display()
            ),
        )
        .unwrap();
        let (code, err) = run(&["run", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, Some(want), "{err}");
        assert!(
            err.contains("database_ca_file") && err.contains(ca.to_str().unwrap()),
            "{err}"
        );
    }
}
