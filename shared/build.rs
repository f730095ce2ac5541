//! Bakes the git commit into the build as `RISKFEAT_GIT_COMMIT` (read by
//! `riskfeat_shared::metrics::COMMIT` for the `*_build_info` metrics).
//!
//! `RISKFEAT_COMMIT` in the environment wins (an image build without
//! `.git`: `docker build --build-arg RISKFEAT_COMMIT=$(git rev-parse HEAD)`);
//! else `git rev-parse HEAD`; else `unknown` (a source tarball, no git).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Watches `path` (relative to the git dir) when it exists: a missing
/// file would make cargo rerun this script on every build.
fn watch(path: &str) {
    if let Some(p) = git(&["rev-parse", "--git-path", path]) {
        if std::path::Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=RISKFEAT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let commit = std::env::var("RISKFEAT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves (also in a git worktree, whose HEAD
            // and refs live elsewhere: --git-path resolves both).
            watch("HEAD");
            watch("packed-refs");
            if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(&head);
            }
            git(&["rev-parse", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=RISKFEAT_GIT_COMMIT={}", commit.trim());
}
