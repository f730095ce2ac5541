//! Wakes the reload loop when something changes in the shared directory.
//!
//! The agent publishes by renaming a temp file over the target, so we watch
//! the DIRECTORIES (`<shared>` and `<shared>/config`), not the files: a watch
//! on a file would follow the replaced inode and go deaf. When the watcher
//! reports an error, or `config/` appears after start-up, the watch is
//! re-armed at the next tick. The reload loop also re-checks on a timer, so
//! a lost event costs at most `recheck_interval_ms`.

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The directory watch; see the module docs.
pub struct DirWatch {
    root: PathBuf,
    config_dir: PathBuf,
    tx: mpsc::Sender<()>,
    watcher: Option<RecommendedWatcher>,
    watching_config: bool,
    broken: Arc<AtomicBool>,
}

impl DirWatch {
    /// A watch that sends `()` on `tx` (coalesced: capacity 1) on any event.
    pub fn new(root: PathBuf, config_dir: PathBuf, tx: mpsc::Sender<()>) -> Self {
        let mut w = DirWatch {
            root,
            config_dir,
            tx,
            watcher: None,
            watching_config: false,
            broken: Arc::new(AtomicBool::new(false)),
        };
        w.ensure();
        w
    }

    /// Arms (or re-arms) the watch when needed. Cheap when all is well.
    pub fn ensure(&mut self) {
        let need = self.watcher.is_none()
            || self.broken.load(Ordering::Relaxed)
            || (!self.watching_config && self.config_dir.is_dir());
        if !need {
            return;
        }
        self.watcher = None;
        self.broken.store(false, Ordering::Relaxed);
        let tx = self.tx.clone();
        let broken = self.broken.clone();
        let made = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Err(e) = &res {
                tracing::warn!(error = %e, "file watch error; re-arming at the next check");
                broken.store(true, Ordering::Relaxed);
            }
            let _ = tx.try_send(());
        });
        let mut watcher = match made {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a file watcher; relying on the periodic check");
                return;
            }
        };
        if let Err(e) = watcher.watch(&self.root, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %self.root.display(), error = %e, "cannot watch; relying on the periodic check");
            return;
        }
        self.watching_config = self.config_dir.is_dir()
            && watcher
                .watch(&self.config_dir, RecursiveMode::NonRecursive)
                .is_ok();
        self.watcher = Some(watcher);
        // Something may have changed while we were not watching.
        let _ = self.tx.try_send(());
    }

    #[cfg(test)]
    pub fn armed(&self) -> bool {
        self.watcher.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sees_atomic_renames_and_a_late_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let mut w = DirWatch::new(dir.path().into(), dir.path().join("config"), tx);
        assert!(w.armed());
        let _ = rx.try_recv();
        let opts = riskfeat_shared::atomic::WriteOptions::SHARED;
        riskfeat_shared::atomic::write_atomic(&dir.path().join("db.json"), b"1", opts).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        riskfeat_shared::atomic::write_atomic(&dir.path().join("db.json"), b"2", opts).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        w.ensure();
        while rx.try_recv().is_ok() {}
        riskfeat_shared::atomic::write_atomic(
            &dir.path().join("config/features.json"),
            b"{}",
            opts,
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
    }
}
