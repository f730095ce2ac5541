//! `cargo xtask demo` in the suite: the real demo command (the debug
//! binaries it builds, or the ones already built with
//! `RISKFEAT_NO_BUILD=1`), run with `--exit-after-s` on a small dataset.

use riskfeat_tests::ChildProc;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The demo comes up (PostgreSQL primary + replica, OpenBao, configd,
/// agent, worker), prints a real answer of the worker with the published
/// config, stops by itself, every program exits 0, no lease or role is
/// left, and the command exits 0.
///
/// Checked: with the demo's config publish sent to another namespace
/// (the worker serves its defaults, `config_version` 0), this test fails
/// on `config_version`. A demo that ignores `--exit-after-s` fails it with
/// "the demo did not stop by itself".
#[test]
fn the_demo_comes_up_answers_and_stops_by_itself_leaving_nothing() {
    let xtask = Path::new(env!("CARGO_BIN_EXE_xtask"));
    let args = [
        "demo",
        "--exit-after-s",
        "2",
        "--users",
        "50",
        "--per-user",
        "20",
    ];
    let mut demo = ChildProc::spawn(xtask, &args, &[]).unwrap();
    let status = demo.wait_exit(Duration::from_secs(280));
    let log = demo.logs();
    let status = status.unwrap_or_else(|| panic!("the demo did not stop by itself\n{log}"));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("riskfeat is up (1000 transactions of 50 users loaded)"),
        "{log}"
    );
    // The worker's real answer, as printed.
    let answer = log
        .split_once("/v1/features/1 answered:\n")
        .and_then(|(_, rest)| rest.split_once("\n\nTry:"))
        .map(|(json, _)| json)
        .unwrap_or_else(|| panic!("no answer printed\n{log}"));
    let answer: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(answer["user_id"], 1, "{answer}");
    assert_eq!(answer["config_version"], 1, "{answer}");
    assert!(answer["features"]["zscore"].is_number(), "{answer}");
    assert!(log.contains("Stopping by itself in 2 s."), "{log}");
    assert!(
        log.contains("outstanding leases: 0, dynamic roles left in PostgreSQL: 0"),
        "{log}"
    );
}
