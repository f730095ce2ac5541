//! A CA file read again before each use (the agent's `vault.ca_cert_file`,
//! `database.ca_file`, `configd.ca_file`; the worker's `database_ca_file`):
//! what is built from it (an HTTP client, the PostgreSQL TLS config) is
//! rebuilt only when the file's bytes change, so a CA rotated through its
//! ConfigMap applies without a restart.
//! A changed file that cannot be used keeps the value in use; that is logged
//! once per change and kept in [`CaFile::error`] for `/status`.

use std::path::{Path, PathBuf};

/// The file, the bytes the value in use was built from, and the value.
#[derive(Debug)]
pub struct CaFile<T> {
    setting: &'static str,
    path: PathBuf,
    seen: Option<Vec<u8>>,
    current: T,
    error: Option<String>,
}

impl<T: Clone> CaFile<T> {
    /// `current` was built from `seen`, the bytes of `path` read at start.
    pub fn new(setting: &'static str, path: &Path, seen: Vec<u8>, current: T) -> Self {
        CaFile {
            setting,
            path: path.to_path_buf(),
            seen: Some(seen),
            current,
            error: None,
        }
    }

    /// Reads the file again and returns the value to use, rebuilt with
    /// `build` when the bytes changed and they build.
    pub fn current(&mut self, build: impl FnOnce(&Path, &[u8]) -> Result<T, String>) -> T {
        self.refresh(build);
        self.current.clone()
    }

    /// Reads the file again: `None` when it did not change (or cannot be
    /// read), `Some(Ok(()))` when a changed file is now in use,
    /// `Some(Err(why))` when a changed file was refused.
    pub fn refresh(
        &mut self,
        build: impl FnOnce(&Path, &[u8]) -> Result<T, String>,
    ) -> Option<Result<(), String>> {
        let setting = self.setting;
        match std::fs::read(&self.path) {
            Ok(bytes) if self.seen.as_deref() != Some(&bytes[..]) => {
                let built = build(&self.path, &bytes);
                self.seen = Some(bytes);
                match built {
                    Ok(value) => {
                        tracing::info!(file = %self.path.display(), "{setting} changed; using it");
                        self.current = value;
                        self.error = None;
                        Some(Ok(()))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "{setting} cannot be used; keeping the CA in use");
                        let why = format!("{e}; keeping the CA in use");
                        self.error = Some(why.clone());
                        Some(Err(why))
                    }
                }
            }
            Ok(_) => None,
            Err(e) => {
                // Forget the bytes so the file is used again once readable.
                if self.seen.take().is_some() {
                    tracing::warn!(file = %self.path.display(), error = %e, "cannot read {setting}; keeping the CA in use");
                }
                None
            }
        }
    }

    /// The value in use.
    pub fn value(&self) -> &T {
        &self.current
    }

    /// Why the file as it is now is not in use (None when it is).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(_: &Path, bytes: &[u8]) -> Result<String, String> {
        let text = String::from_utf8_lossy(bytes).into_owned();
        if text.starts_with("ok") {
            Ok(text)
        } else {
            Err(format!("{text:?} is not usable"))
        }
    }

    #[test]
    fn rebuilds_only_on_change_and_keeps_the_value_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "ok1").unwrap();
        let mut ca = CaFile::new("x.ca_file", &path, b"ok1".to_vec(), "ok1".to_string());
        let mut builds = 0;
        let mut counted = |p: &Path, b: &[u8]| {
            builds += 1;
            build(p, b)
        };
        assert_eq!(ca.current(&mut counted), "ok1");
        std::fs::write(&path, "bad").unwrap();
        assert_eq!(ca.current(&mut counted), "ok1");
        assert!(ca
            .error()
            .unwrap()
            .contains("\"bad\" is not usable; keeping the CA in use"));
        assert_eq!(ca.current(&mut counted), "ok1", "a bad file is tried once");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(ca.current(&mut counted), "ok1");
        std::fs::write(&path, "ok2").unwrap();
        assert_eq!(ca.current(&mut counted), "ok2");
        assert!(ca.error().is_none());
        assert_eq!(builds, 2, "built for 'bad' and 'ok2' only");
    }
}
