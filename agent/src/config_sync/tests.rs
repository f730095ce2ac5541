//! The sync loop against no configd: the cached config is published at
//! start, with its modes, and the error is reported.

use super::*;
use std::os::unix::fs::PermissionsExt;

fn settings() -> Settings {
    Settings {
        addr: "http://127.0.0.1:1".into(),
        token_file: "/nonexistent".into(),
        namespaces: vec!["features".into()],
        poll_timeout_s: 30,
        backoff_initial_s: 0.5,
        backoff_max_s: 30.0,
        ca_file: None,
        max_namespace_bytes: 2 * 1024 * 1024,
        max_response_bytes: 4 * 1024 * 1024,
        client_id: None,
        labels: Default::default(),
        labels_file: None,
    }
}

#[tokio::test]
async fn the_last_known_config_is_published_at_start_without_configd() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedDir::new(dir.path());
    std::fs::create_dir_all(shared.config_cache_dir()).unwrap();
    let cached = ConfigSnapshot {
        namespace: "features".into(),
        version: 4,
        items: [("lookback".to_string(), serde_json::json!(7))].into(),
    };
    riskfeat_shared::atomic::write_json_atomic(
        &shared.config_cache_dir().join("features.json"),
        &cached,
        WriteOptions::PRIVATE,
    )
    .unwrap();
    let status = Arc::new(SyncStatus::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let registry = prometheus::Registry::new();
    let task = tokio::spawn(run(
        settings(),
        shared.clone(),
        status.clone(),
        registry,
        None,
        stop_rx,
    ));
    let published = shared.config_json("features");
    for _ in 0..100 {
        if published.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ConfigSnapshot::load(&published).unwrap(), cached);
    let mode = std::fs::metadata(&published).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let cache_mode = std::fs::metadata(shared.config_cache_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(cache_mode, 0o700);
    // The token file is missing: the error is reported, the config stays.
    for _ in 0..100 {
        if status.to_json()["last_error"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = status.to_json();
    assert_eq!(st["versions"]["features"], 4, "{st}");
    assert_eq!(st["sources"]["features"], "cache", "{st}");
    assert!(
        st["last_error"].as_str().unwrap().contains("token file"),
        "{st}"
    );
    assert_eq!(ConfigSnapshot::load(&published).unwrap(), cached);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
