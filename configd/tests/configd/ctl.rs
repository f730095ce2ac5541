//! `riskfeatctl` against a real configd: every command, the
//! replace-namespace publish (change set shown, `--yes`, published at the
//! version shown), and the exit codes for validation errors (65), version
//! conflicts (75), refused tokens (77) and a missing token (64).

use crate::support::{create, start, ADMIN, READER};
use riskfeat_tests::{binary, Configd, PgCluster};
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs riskfeatctl with `token` (None: no token at all): (code, stdout, stderr).
fn ctl(c: &Configd, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(binary("riskfeatctl"));
    cmd.args(["--addr", c.http().base()])
        .args(args)
        .env_remove("RISKFEAT_CONFIGD_TOKEN_FILE")
        .stdin(Stdio::null());
    match token {
        Some(t) => cmd.env("RISKFEAT_CONFIGD_TOKEN", t),
        None => cmd.env_remove("RISKFEAT_CONFIGD_TOKEN"),
    };
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Checked: with `Fatal::Conflict`'s code changed to 1, or the 409 mapping
/// in `ctl.rs` removed, this test fails at the stale `--expected-version`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riskfeatctl_publishes_declaratively_with_clear_exit_codes() {
    let pg = PgCluster::start(false).await.unwrap();
    let c = start(&pg.primary, "").await;
    create(&c, "features").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let schema = riskfeat_tests::bootstrap::dir().join("configd/features.schema.json");
    let (code, out, err) = ctl(
        &c,
        Some(ADMIN),
        &["schema", "set", "features", schema.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"version\": 1"), "{out}");

    let v1 = file(d, "v1.json", r#"{"lookback": 50, "zscore_above": 3.0}"#);
    // Without --yes and no terminal: shown, not published.
    let (code, _, err) = ctl(&c, Some(ADMIN), &["publish", "features", &v1]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("+ lookback = 50") && err.contains("not confirmed"),
        "{err}"
    );
    let (code, out, err) = ctl(
        &c,
        Some(ADMIN),
        &["publish", "features", &v1, "--yes", "--comment", "first"],
    );
    assert_eq!(
        (code, out.trim()),
        (0, "published features version 1"),
        "{err}"
    );
    let (code, out, _) = ctl(&c, Some(ADMIN), &["publish", "features", &v1, "--yes"]);
    assert!(code == 0 && out.contains("nothing to publish"), "{out}");
    // Replace semantics: zscore_above removed, lookback changed.
    let v2 = file(d, "v2.json", r#"{"items": {"lookback": 60}}"#);
    let (code, _, err) = ctl(&c, Some(ADMIN), &["publish", "features", &v2, "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("~ lookback: 50 -> 60") && err.contains("- zscore_above"),
        "{err}"
    );
    // Exit codes: schema violation 65 naming the key, stale version 75.
    let bad = file(d, "bad.json", r#"{"lookback": 0}"#);
    let (code, _, err) = ctl(&c, Some(ADMIN), &["publish", "features", &bad, "--yes"]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("schema_violation") && err.contains("items.lookback"),
        "{err}"
    );
    let (code, _, err) = ctl(
        &c,
        Some(ADMIN),
        &[
            "publish",
            "features",
            &v1,
            "--yes",
            "--expected-version",
            "1",
        ],
    );
    assert_eq!(code, 75, "{err}");
    let (code, _, err) = ctl(&c, Some(READER), &["publish", "features", &v1, "--yes"]);
    assert_eq!(code, 77, "{err}");
    let (code, _, err) = ctl(&c, None, &["list"]);
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = ctl(
        &c,
        Some(ADMIN),
        &["schema", "set", "features", "/nonexistent.json"],
    );
    assert_eq!(code, 66, "{err}");

    // Reading: list, get, diff, history.
    let (code, out, _) = ctl(&c, Some(READER), &["list"]);
    assert!(code == 0 && out.contains("\"features\""), "{out}");
    let (_, out, _) = ctl(&c, Some(READER), &["get", "features", "lookback"]);
    assert_eq!(out.trim(), "60");
    let (_, out, _) = ctl(&c, Some(READER), &["diff", "features", "1", "2"]);
    assert!(out.contains("~ lookback: 50 -> 60"), "{out}");
    // Gray: start for canary=true, show, promote; abort with none is 75.
    let g = file(d, "gray.json", r#"{"lookback": 70}"#);
    let (code, _, err) = ctl(
        &c,
        Some(ADMIN),
        &["gray", "start", "features", &g, "--label", "canary=true"],
    );
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = ctl(&c, Some(READER), &["gray", "show", "features"]);
    assert!(out.contains("canary"), "{out}");
    assert_eq!(ctl(&c, Some(ADMIN), &["gray", "promote", "features"]).0, 0);
    assert_eq!(ctl(&c, Some(ADMIN), &["gray", "abort", "features"]).0, 75);
    assert_eq!(
        ctl(&c, Some(READER), &["get", "features", "lookback"])
            .1
            .trim(),
        "70"
    );
    // Rollback to 1, and the history says what each version was.
    let (code, _, err) = ctl(&c, Some(ADMIN), &["rollback", "features", "1"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = ctl(&c, Some(READER), &["history", "features"]);
    for kind in ["rollback", "gray_promote", "gray_start", "replace"] {
        assert!(out.contains(kind), "{kind}: {out}");
    }
    let (code, out, _) = ctl(&c, Some(READER), &["rollout", "features"]);
    assert!(code == 0 && out.contains("\"clients\""), "{out}");
}
