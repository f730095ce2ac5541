//! `[[output]]`: the published credential again, for programs that do not
//! read `db.json` (a Java or Python service next to the agent): a libpq
//! password file, a DSN, PG* shell variables, JDBC properties
//! ([`render`]).
//!
//! Written by the lifecycle right after `db.json`, so under the same rules:
//! only a credential that logged in on the replica, generation for
//! generation. Each file goes through `shared::atomic` (temp + fsync +
//! rename, with its mode and group) and is skipped when its bytes are
//! unchanged, so a lease renewal (same generation) rewrites nothing. When at
//! least one file of an output with `notify_pid_file` changed, that program
//! gets `notify_signal` once ([`notify`]). A file that cannot be written is
//! reported and retried at the next step; it never holds back `db.json`.

mod notify;
mod render;

use crate::config::{Config, OutputSettings};
use crate::fatal::Fatal;
use crate::metrics::AgentMetrics;
use nix::sys::signal::Signal;
use riskfeat_shared::atomic::{write_atomic, WriteOptions, WriteOutcome};
use riskfeat_shared::creds::DbCredential;
use riskfeat_shared::fs_check;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// One configured output, its path resolved.
struct Output {
    settings: OutputSettings,
    path: PathBuf,
}

/// Every `[[output]]` of the config; see the module docs.
pub struct Outputs {
    items: Vec<Output>,
    ca_file: Option<PathBuf>,
    file_group: Option<u32>,
    /// The credential whose outputs are not all written yet.
    pending: Option<DbCredential>,
}

impl Outputs {
    /// The outputs of `cfg` (nothing is written yet).
    pub fn new(cfg: &Config) -> Self {
        Self {
            items: cfg
                .output
                .iter()
                .map(|o| Output {
                    settings: o.clone(),
                    path: o.resolved_path(&cfg.shared_dir),
                })
                .collect(),
            ca_file: cfg.database.ca_file.clone(),
            file_group: cfg.file_group,
            pending: None,
        }
    }

    /// True while some output of the last credential is still unwritten.
    pub fn pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Writes every output for `cred` (`None`: retries the pending one),
    /// then signals the programs whose outputs changed. Returns the errors
    /// (each names the file, never its contents).
    pub fn publish(&mut self, cred: Option<&DbCredential>, m: &AgentMetrics) -> Vec<String> {
        let Some(cred) = cred.cloned().or_else(|| self.pending.take()) else {
            return Vec::new();
        };
        self.pending = None;
        let mut errors = Vec::new();
        let mut notify: Vec<(PathBuf, Signal)> = Vec::new();
        for o in &self.items {
            let kind = o.settings.kind.as_str();
            let written = render::render(&o.settings, &cred, self.ca_file.as_deref())
                .map_err(|e| format!("output {} ({kind}): {e}", o.path.display()))
                .and_then(|text| {
                    let opts = WriteOptions {
                        mode: o.settings.mode(),
                        gid: o.settings.group.or(self.file_group),
                    };
                    write_atomic(&o.path, text.as_bytes(), opts)
                        .map_err(|e| format!("output ({kind}): {e}"))
                });
            match written {
                Ok(WriteOutcome::Unchanged) => {
                    m.output_writes.with_label_values(&["unchanged"]).inc();
                }
                Ok(WriteOutcome::Written) => {
                    m.output_writes.with_label_values(&["ok"]).inc();
                    tracing::info!(path = %o.path.display(), kind, generation = cred.generation, "output written");
                    if let (Some(file), Some(sig)) =
                        (&o.settings.notify_pid_file, o.settings.signal())
                    {
                        if !notify.iter().any(|(f, s)| f == file && *s == sig) {
                            notify.push((file.clone(), sig));
                        }
                    }
                }
                Err(e) => {
                    m.output_writes.with_label_values(&["error"]).inc();
                    errors.push(e);
                    self.pending = Some(cred.clone());
                }
            }
        }
        for (file, sig) in notify {
            match notify::send(&file, sig) {
                Ok(pid) => {
                    m.output_notifications.with_label_values(&["ok"]).inc();
                    tracing::info!(pid, signal = %sig, generation = cred.generation, "told the program to reload its outputs");
                }
                Err(e) => {
                    m.output_notifications.with_label_values(&["error"]).inc();
                    tracing::warn!(error = %e, signal = %sig, "outputs changed but the program was not told to reload");
                }
            }
        }
        errors
    }

    /// Removes every output (after SIGTERM revoked the credential they
    /// hold, as `db.json` is removed).
    pub fn remove_all(&mut self) {
        self.pending = None;
        for o in &self.items {
            let _ = std::fs::remove_file(&o.path);
        }
    }
}

/// At start: every `output_allowed_dirs` entry exists and (unless
/// `allow_disk`) is memory-backed, as the shared dir must be; the parent
/// directory of each output is created (0750) when missing.
pub fn prepare(cfg: &Config) -> Result<(), Fatal> {
    for dir in &cfg.output_allowed_dirs {
        memory_backed(cfg, dir)?;
    }
    for o in &cfg.output {
        let path = o.resolved_path(&cfg.shared_dir);
        let Some(parent) = path.parent().filter(|p| !p.exists()) else {
            continue;
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)
            .map_err(|e| {
                Fatal::SharedDir(format!(
                    "output {}: cannot create {}: {e}",
                    path.display(),
                    parent.display()
                ))
            })?;
    }
    Ok(())
}

fn memory_backed(cfg: &Config, dir: &Path) -> Result<(), Fatal> {
    let shown = dir.display();
    let kind = fs_check::fs_kind(dir).map_err(|e| {
        Fatal::SharedDir(format!("output_allowed_dirs: {shown}: statfs failed: {e}"))
    })?;
    if kind.is_memory() {
        return Ok(());
    }
    if cfg.allow_disk {
        tracing::warn!(dir = %shown, fs = %kind, "output dir is not memory-backed; credentials will reach a disk (allow_disk = true)");
        return Ok(());
    }
    Err(Fatal::SharedDir(format!(
        "output_allowed_dirs: {shown} is on {kind}: refusing to write credentials to disk (mount a tmpfs there, or set allow_disk = true)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn config(shared: &Path, outputs: &str) -> Config {
        let minimal = crate::config::tests::MINIMAL;
        let text = format!(
            "shared_dir = \"{}\"\n{minimal}\n{outputs}",
            shared.display()
        );
        crate::config::Config::parse("t.toml", &text, &Default::default()).unwrap()
    }

    fn cred(generation: u64) -> DbCredential {
        let text = format!(
            r#"{{"generation": {generation}, "username": "u{generation}", "password": "pw",
            "lease_id": "l", "lease_duration_s": 60, "renewable": true,
            "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z",
            "primary": {{"host": "p", "port": 5432, "dbname": "riskfeat"}},
            "replica": {{"host": "r", "port": 5433, "dbname": "riskfeat"}}}}"#
        );
        DbCredential::from_slice("db.json", text.as_bytes()).unwrap()
    }

    #[test]
    fn written_with_mode_only_on_change_and_retried_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            dir.path(),
            "[[output]]\nkind = \"pgpass\"\npath = \"pgpass\"\n\
             [[output]]\nkind = \"env\"\npath = \"sub/pg.env\"\n",
        );
        prepare(&cfg).unwrap();
        let m = AgentMetrics::new();
        let mut outs = Outputs::new(&cfg);
        assert!(outs.publish(Some(&cred(1)), &m).is_empty());
        let pgpass = dir.path().join("pgpass");
        let meta = std::fs::metadata(&pgpass).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let env = dir.path().join("sub/pg.env");
        assert_eq!(std::fs::metadata(&env).unwrap().mode() & 0o777, 0o640);
        assert!(std::fs::read_to_string(&pgpass).unwrap().contains(":u1:pw"));
        // The same credential again (a renewal): nothing rewritten.
        let mut renewed = cred(1);
        renewed.expires_at += chrono::Duration::hours(1);
        assert!(outs.publish(Some(&renewed), &m).is_empty());
        assert_eq!(std::fs::metadata(&pgpass).unwrap().ino(), meta.ino());
        // A failure (the directory gone) is reported and retried.
        std::fs::remove_dir_all(dir.path().join("sub")).unwrap();
        let errors = outs.publish(Some(&cred(2)), &m);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("sub/pg.env") && !errors[0].contains("pw"));
        assert!(outs.pending());
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(outs.publish(None, &m).is_empty());
        assert!(!outs.pending());
        assert!(std::fs::read_to_string(&env)
            .unwrap()
            .contains("RISKFEAT_GENERATION='2'"));
        outs.remove_all();
        assert!(!pgpass.exists() && !env.exists());
    }
}
