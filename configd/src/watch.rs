//! Watchers: per-namespace waiter lists and the pacer that wakes them.
//!
//! A watcher registers under the same lock that guards the namespace's
//! version, so a publish can never slip between "check" and "wait". A new
//! version hands every waiter of that namespace to one pacer task, which wakes
//! `wake_batch` of them every `wake_interval`: a publish never stampedes, yet
//! at the defaults (500 per 5 ms) 10,000 watchers are woken in about 100 ms.

use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// What a woken watcher receives (nothing: it re-reads the versions).
pub type Signal = mpsc::Sender<()>;

struct Hub {
    version: u64,
    waiters: Vec<Signal>,
    pruned_at: usize,
}

/// Every namespace's version as served, plus its waiters.
pub struct Hubs {
    hubs: Mutex<HashMap<String, Hub>>,
    pacer: mpsc::UnboundedSender<Vec<Signal>>,
}

/// The answer to [`Hubs::register`].
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    /// Already past the client's version.
    Changed(u64),
    /// Waiting.
    Waiting,
    /// Unknown namespace (not loaded).
    Unknown,
}

impl Hubs {
    /// Starts the pacer task: `batch` waiters, then `interval`, and so on.
    pub fn new(batch: usize, interval: Duration, metrics: Metrics) -> Arc<Hubs> {
        Hubs::with_pause(batch, metrics, move || {
            let sleep = (!interval.is_zero()).then(|| tokio::time::sleep(interval));
            async move {
                if let Some(s) = sleep {
                    s.await;
                }
            }
        })
    }

    /// [`Hubs::new`] with `pause` awaited between two batches (a test
    /// steps the pacer through its batches with it).
    fn with_pause<P, F>(batch: usize, metrics: Metrics, mut pause: P) -> Arc<Hubs>
    where
        P: FnMut() -> F + Send + 'static,
        F: std::future::Future<Output = ()> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Signal>>();
        tokio::spawn(async move {
            while let Some(batch_list) = rx.recv().await {
                let mut iter = batch_list.chunks(batch.max(1)).peekable();
                while let Some(chunk) = iter.next() {
                    for s in chunk {
                        if s.try_send(()).is_ok() {
                            metrics.wakeups.inc();
                        }
                    }
                    if iter.peek().is_some() {
                        pause().await;
                    }
                }
            }
        });
        Arc::new(Hubs {
            hubs: Mutex::new(HashMap::new()),
            pacer: tx,
        })
    }

    /// The version served for `ns`, if known.
    pub fn version(&self, ns: &str) -> Option<u64> {
        self.hubs.lock().expect("hubs").get(ns).map(|h| h.version)
    }

    /// Sets the version of `ns`; when it grew, its waiters go to the pacer.
    pub fn set_version(&self, ns: &str, version: u64) {
        let woken = {
            let mut hubs = self.hubs.lock().expect("hubs");
            let hub = hubs.entry(ns.to_string()).or_insert(Hub {
                version,
                waiters: Vec::new(),
                pruned_at: 0,
            });
            if version > hub.version {
                hub.version = version;
                hub.pruned_at = 0;
                std::mem::take(&mut hub.waiters)
            } else {
                Vec::new()
            }
        };
        if !woken.is_empty() {
            let _ = self.pacer.send(woken);
        }
    }

    /// Forgets `ns` (deleted); its waiters are woken and find it gone.
    pub fn remove(&self, ns: &str) {
        let hub = self.hubs.lock().expect("hubs").remove(ns);
        if let Some(hub) = hub {
            let _ = self.pacer.send(hub.waiters);
        }
    }

    /// How many long-polls are held on `ns` right now (the console's
    /// client count; a multi-namespace watch counts once per namespace).
    pub fn watching(&self, ns: &str) -> usize {
        let hubs = self.hubs.lock().expect("hubs");
        hubs.get(ns)
            .map_or(0, |h| h.waiters.iter().filter(|s| !s.is_closed()).count())
    }

    /// Registers `signal` for `ns` unless it is already past `seen`.
    pub fn register(&self, ns: &str, seen: u64, signal: &Signal) -> Registered {
        let mut hubs = self.hubs.lock().expect("hubs");
        let Some(hub) = hubs.get_mut(ns) else {
            return Registered::Unknown;
        };
        if hub.version > seen {
            return Registered::Changed(hub.version);
        }
        hub.waiters.push(signal.clone());
        // Drop waiters whose request ended (timeout, disconnect) now and then.
        if hub.waiters.len() >= 1024 && hub.waiters.len() >= 2 * hub.pruned_at {
            hub.waiters.retain(|s| !s.is_closed());
            hub.pruned_at = hub.waiters.len();
        }
        Registered::Waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish wakes every waiter, `wake_batch` (3) at a time in the
    /// order they registered, with the pause between two batches: the test
    /// holds the pacer in each pause (a rendezvous instead of a sleep) and
    /// looks at who has been woken.
    ///
    /// Checked: with every waiter woken at once (`chunks(usize::MAX)`),
    /// this test fails: "the pacer did not pause after batch 0" (all ten
    /// were woken without a pause).
    #[tokio::test]
    async fn a_publish_wakes_every_waiter_in_paced_batches() {
        let paused = Arc::new(tokio::sync::Barrier::new(2));
        let go = Arc::new(tokio::sync::Barrier::new(2));
        let (p, g) = (paused.clone(), go.clone());
        let hubs = Hubs::with_pause(3, Metrics::new(), move || {
            let (p, g) = (p.clone(), g.clone());
            async move {
                p.wait().await;
                g.wait().await;
            }
        });
        hubs.set_version("ns", 1);
        let mut rxs = Vec::new();
        for _ in 0..10 {
            let (tx, rx) = mpsc::channel(1);
            assert_eq!(hubs.register("ns", 1, &tx), Registered::Waiting);
            rxs.push((tx, rx));
        }
        let (tx, _rx) = mpsc::channel(1);
        assert_eq!(hubs.register("ns", 0, &tx), Registered::Changed(1));
        assert_eq!(hubs.register("other", 0, &tx), Registered::Unknown);
        hubs.set_version("ns", 1);
        for (_, rx) in &mut rxs {
            assert!(rx.try_recv().is_err(), "same version must not wake");
        }
        // The console's client count: held long-polls, not ended ones.
        assert_eq!(hubs.watching("ns"), 10);
        let (gone_tx, gone_rx) = mpsc::channel(1);
        assert_eq!(hubs.register("ns", 1, &gone_tx), Registered::Waiting);
        drop(gone_rx);
        assert_eq!((hubs.watching("ns"), hubs.watching("other")), (10, 0));
        hubs.set_version("ns", 2);
        // Who has been woken since the last look.
        let newly_woken = |rxs: &mut [(Signal, mpsc::Receiver<()>)]| -> Vec<usize> {
            (0..rxs.len())
                .filter(|i| rxs[*i].1.try_recv().is_ok())
                .collect()
        };
        for (n, batch) in [[0, 1, 2], [3, 4, 5], [6, 7, 8]].iter().enumerate() {
            tokio::time::timeout(Duration::from_secs(5), paused.wait())
                .await
                .unwrap_or_else(|_| panic!("the pacer did not pause after batch {n}"));
            assert_eq!(&newly_woken(&mut rxs), batch, "batch {n}");
            go.wait().await;
        }
        // The last one, with no pause after it.
        tokio::time::timeout(Duration::from_secs(5), rxs[9].1.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(newly_woken(&mut rxs), Vec::<usize>::new());
        assert_eq!(hubs.watching("ns"), 0, "woken waiters are no longer held");
    }
}
