//! `riskfeatctl` against a real configd: every command, the
//! replace-namespace publish (change set shown, `--yes`, published at the
//! version shown), and the exit codes for validation errors (65), version
//! conflicts (75), refused tokens (77) and a missing token (64).

use crate::support::{with_features, ADMIN, READER};
use riskfeat_tests::{binary, Configd};
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

/// `riskfeatctl publish features <file> <extra>` with `token`, asserting
/// its exit code: (stdout, stderr).
fn publish(c: &Configd, token: &str, file: &str, extra: &[&str], code: i32) -> (String, String) {
    let mut args = vec!["publish", "features", file];
    args.extend(extra);
    let (got, out, err) = ctl(c, Some(token), &args);
    assert_eq!(got, code, "riskfeatctl {args:?}:\n{out}{err}");
    (out, err)
}

fn file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Checked: with the 409 mapping in `ctl.rs`'s `Target::call` removed, or
/// `Fatal::Conflict` exiting 1 in `riskfeatctl`, this test fails at the
/// stale `--expected-version` (exit 1, not 75, after "configd answered 409
/// version_conflict"); with the 400 mapping removed, at the schema
/// violation (exit 1, not 65).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riskfeatctl_publishes_declaratively_with_clear_exit_codes() {
    let (_pg, c) = with_features("").await;
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
    let err = publish(&c, ADMIN, &v1, &[], 1).1;
    assert!(
        err.contains("+ lookback = 50") && err.contains("not confirmed"),
        "{err}"
    );
    let out = publish(&c, ADMIN, &v1, &["--yes", "--comment", "first"], 0).0;
    assert_eq!(out.trim(), "published features version 1");
    let out = publish(&c, ADMIN, &v1, &["--yes"], 0).0;
    assert!(out.contains("nothing to publish"), "{out}");
    // Replace semantics: zscore_above removed, lookback changed.
    let v2 = file(d, "v2.json", r#"{"items": {"lookback": 60}}"#);
    let err = publish(&c, ADMIN, &v2, &["--yes"], 0).1;
    assert!(
        err.contains("~ lookback: 50 -> 60") && err.contains("- zscore_above"),
        "{err}"
    );
    // Exit codes: schema violation 65 naming the key, stale version 75,
    // a read token 77, no token 64, an unreadable file 66.
    let bad = file(d, "bad.json", r#"{"lookback": 0}"#);
    let err = publish(&c, ADMIN, &bad, &["--yes"], 65).1;
    assert!(
        err.contains("schema_violation") && err.contains("items.lookback"),
        "{err}"
    );
    let stale = ["--yes", "--expected-version", "1"];
    let err = publish(&c, ADMIN, &v1, &stale, 75).1;
    assert!(err.contains("version_conflict"), "{err}");
    publish(&c, READER, &v1, &["--yes"], 77);
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
