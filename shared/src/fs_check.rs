//! Is the shared directory memory-backed? Credentials must never reach a
//! disk unless the operator explicitly allows it.

use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};

/// ramfs's statfs magic (linux/magic.h); nix does not export it.
const RAMFS_MAGIC: i64 = 0x8584_58f6;
use std::path::Path;

/// What kind of filesystem holds a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Tmpfs,
    Ramfs,
    /// Anything else, with its statfs magic number.
    Other(i64),
}

impl FsKind {
    /// True for tmpfs and ramfs.
    pub fn is_memory(self) -> bool {
        matches!(self, FsKind::Tmpfs | FsKind::Ramfs)
    }
}

impl std::fmt::Display for FsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsKind::Tmpfs => f.write_str("tmpfs"),
            FsKind::Ramfs => f.write_str("ramfs"),
            FsKind::Other(m) => write!(f, "a disk filesystem (statfs type {m:#x})"),
        }
    }
}

/// The filesystem kind of `path`.
pub fn fs_kind(path: &Path) -> std::io::Result<FsKind> {
    let st = statfs(path).map_err(std::io::Error::from)?;
    let t: FsType = st.filesystem_type();
    Ok(if t == TMPFS_MAGIC {
        FsKind::Tmpfs
    } else if t.0 as i64 == RAMFS_MAGIC {
        FsKind::Ramfs
    } else {
        #[allow(clippy::unnecessary_cast)]
        FsKind::Other(t.0 as i64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_shm_is_memory_and_target_dir_is_not() {
        if Path::new("/dev/shm").exists() {
            assert!(fs_kind(Path::new("/dev/shm")).unwrap().is_memory());
        }
        let here = fs_kind(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        if !here.is_memory() {
            assert!(here.to_string().contains("disk filesystem"));
        }
    }
}
