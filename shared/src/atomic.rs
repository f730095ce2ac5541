//! Publishing a file so that no reader ever sees half of it.
//!
//! Temp file in the same directory (created exclusively, with its final mode
//! and group), write, fsync, rename over the target, fsync the directory.
//! When the target already holds exactly these bytes nothing is written, so
//! watchers are not woken for nothing (consul-template does the same).
//! A writer killed between create and rename leaves its temp file behind:
//! [`remove_temp_files`] clears them at the writer's next start.

use nix::unistd::{fchown, Gid};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How to publish.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// File mode, e.g. `0o640`.
    pub mode: u32,
    /// Group to give the file (e.g. the pod's fsGroup); `None` keeps ours.
    pub gid: Option<u32>,
}

impl WriteOptions {
    /// Readable by the group (the worker): for `db.json` and config files.
    pub const SHARED: Self = Self {
        mode: 0o640,
        gid: None,
    };
    /// Private to the writer: for agent state.
    pub const PRIVATE: Self = Self {
        mode: 0o600,
        gid: None,
    };

    /// The same options with a group.
    pub fn with_gid(self, gid: Option<u32>) -> Self {
        Self { gid, ..self }
    }
}

/// What [`write_atomic`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// The file already held these bytes with this mode; nothing was touched.
    Unchanged,
}

/// A failed publish; the previous file, if any, is intact.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {step}: {source}")]
pub struct AtomicWriteError {
    pub path: PathBuf,
    pub step: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Publishes `bytes` at `path` atomically; see the module docs.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    opts: WriteOptions,
) -> Result<WriteOutcome, AtomicWriteError> {
    let err = |step: &'static str| {
        move |source: std::io::Error| AtomicWriteError {
            path: path.to_path_buf(),
            step,
            source,
        }
    };
    if let Ok(meta) = fs::metadata(path) {
        let same_mode = meta.permissions().mode() & 0o7777 == opts.mode;
        let same_gid = opts
            .gid
            .is_none_or(|g| std::os::unix::fs::MetadataExt::gid(&meta) == g);
        if same_mode && same_gid && meta.len() == bytes.len() as u64 {
            if let Ok(existing) = fs::read(path) {
                if existing == bytes {
                    return Ok(WriteOutcome::Unchanged);
                }
            }
        }
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(opts.mode)
            .open(&tmp)
            .map_err(err("create temp file"))?;
        // The umask may have narrowed the mode given to open().
        file.set_permissions(fs::Permissions::from_mode(opts.mode))
            .map_err(err("chmod temp file"))?;
        if let Some(gid) = opts.gid {
            fchown(&file, None, Some(Gid::from_raw(gid)))
                .map_err(|e| err("chgrp temp file")(std::io::Error::from(e)))?;
        }
        file.write_all(bytes).map_err(err("write temp file"))?;
        file.sync_all().map_err(err("fsync temp file"))?;
        fs::rename(&tmp, path).map_err(err("rename into place"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("fsync directory"))?;
        Ok(WriteOutcome::Written)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The file a temp file of [`write_atomic`] was for: `.<name>.tmp.<pid>.<8
/// hex digits>` gives `<name>`.
fn temp_target(file_name: &str) -> Option<&str> {
    let rest = file_name.strip_prefix('.')?;
    let (name, suffix) = rest.rsplit_once(".tmp.")?;
    let (pid, hex) = suffix.split_once('.')?;
    let ok = !name.is_empty()
        && !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && hex.len() == 8
        && hex.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then_some(name)
}

/// Removes the temp files [`write_atomic`] left in `dir` (a writer killed
/// between create and rename) for targets `mine` accepts; returns the
/// paths removed. Call it only where no other process writes those
/// targets at the same time. A missing `dir` has none.
pub fn remove_temp_files(dir: &Path, mine: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(target) = name.to_str().and_then(temp_target) else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && mine(target) && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// The bytes [`write_json_atomic`] writes for `value`: pretty JSON with a
/// trailing newline (for a caller that checks their size first).
pub fn json_bytes<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Serializes `value` with [`json_bytes`] and publishes it with
/// [`write_atomic`].
pub fn write_json_atomic<T: serde::Serialize>(
    path: &Path,
    value: &T,
    opts: WriteOptions,
) -> Result<WriteOutcome, AtomicWriteError> {
    let bytes = json_bytes(value).map_err(|e| AtomicWriteError {
        path: path.to_path_buf(),
        step: "serialize",
        source: std::io::Error::other(e),
    })?;
    write_atomic(path, &bytes, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_with_mode_and_skips_unchanged_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.json");
        assert_eq!(
            write_atomic(&path, b"one", WriteOptions::SHARED).unwrap(),
            WriteOutcome::Written
        );
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o640);
        let ino = meta.ino();
        assert_eq!(
            write_atomic(&path, b"one", WriteOptions::SHARED).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(
            fs::metadata(&path).unwrap().ino(),
            ino,
            "unchanged bytes must not be rewritten"
        );
        assert_eq!(
            write_atomic(&path, b"two", WriteOptions::PRIVATE).unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
    }

    #[test]
    fn a_concurrent_reader_never_sees_half_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let big_a = vec![b'a'; 256 * 1024];
        let big_b = vec![b'b'; 128 * 1024];
        write_atomic(&path, &big_a, WriteOptions::SHARED).unwrap();
        let reader_path = path.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut reads = 0;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let got = fs::read(&reader_path).unwrap();
                assert!(
                    got == vec![b'a'; 256 * 1024] || got == vec![b'b'; 128 * 1024],
                    "reader saw a torn file of {} bytes",
                    got.len()
                );
                reads += 1;
            }
            reads
        });
        for i in 0..200 {
            let bytes = if i % 2 == 0 { &big_b } else { &big_a };
            write_atomic(&path, bytes, WriteOptions::SHARED).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn removes_only_the_temp_files_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            ".db.json.tmp.42.0badcafe",
            ".worker.json.tmp.7.deadbeef",
            ".db.json.tmp.x.0badcafe",
            "db.json",
            ".db.json.tmp.42.short",
        ];
        for n in names {
            fs::write(dir.path().join(n), b"x").unwrap();
        }
        let removed = remove_temp_files(dir.path(), |t| t == "db.json");
        assert_eq!(removed, vec![dir.path().join(".db.json.tmp.42.0badcafe")]);
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".db.json.tmp.42.short",
                ".db.json.tmp.x.0badcafe",
                ".worker.json.tmp.7.deadbeef",
                "db.json"
            ]
        );
        assert!(remove_temp_files(&dir.path().join("none"), |_| true).is_empty());
    }

    #[test]
    fn failure_names_the_path_and_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("db.json");
        let err = write_atomic(&path, b"x", WriteOptions::SHARED).unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
