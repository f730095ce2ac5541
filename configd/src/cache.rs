//! The in-memory cache: per namespace, the current items, the retained
//! change log, and the full snapshot pre-serialized once per version (plain
//! and gzip, each built on first use) and shared by every client as one
//! `Bytes` buffer.
//!
//! Cache misses are single-flight: concurrent requests for a namespace that
//! is not loaded wait on one per-namespace lock, and only the first makes the
//! database query ([`crate::metrics::Metrics::snapshot_queries`] counts them).
//! Refreshes after a NOTIFY or scan read only the change log after the cached
//! version (a full load only when that part of the log was compacted).

use crate::gray::{Gray, GrayMarks};
use crate::metrics::Metrics;
use crate::store::{LoggedChange, Op, Store, StoreError};
use crate::watch::Hubs;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Items of a namespace: key to JSON text.
pub type Items = BTreeMap<Arc<str>, Arc<str>>;

/// One namespace at one version. Immutable; replaced on every change.
pub struct NsState {
    pub name: String,
    pub version: u64,
    /// Every change with a version above this one is in `ops`.
    pub ops_base: u64,
    pub items: Arc<Items>,
    pub ops: Arc<Vec<LoggedChange>>,
    /// The gray release in progress at this version.
    pub gray: Option<Arc<Gray>>,
    /// Where gray releases started and ended.
    pub marks: GrayMarks,
    plain: tokio::sync::OnceCell<Bytes>,
    gzip: tokio::sync::OnceCell<Bytes>,
    /// The gray view's snapshot (plain), built on first use.
    gray_plain: tokio::sync::OnceCell<Bytes>,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Writes the snapshot body: `{"namespace","from":0,"to","snapshot":true,"items":{..}}`.
fn write_snapshot(
    name: &str,
    version: u64,
    items: &Items,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    write_snapshot_as(name, version, "", items, out)
}

/// [`write_snapshot`] with `extra` (`,"key":value` members) after `snapshot`.
fn write_snapshot_as(
    name: &str,
    version: u64,
    extra: &str,
    items: &Items,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    write!(
        out,
        "{{\"namespace\":{},\"from\":0,\"to\":{},\"snapshot\":true{extra},\"items\":{{",
        json_str(name),
        version
    )?;
    for (i, (k, v)) in items.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        out.write_all(json_str(k).as_bytes())?;
        out.write_all(b":")?;
        out.write_all(v.as_bytes())?;
    }
    out.write_all(b"}}")
}

impl NsState {
    fn new(
        name: &str,
        version: u64,
        ops_base: u64,
        items: Arc<Items>,
        ops: Vec<LoggedChange>,
    ) -> Self {
        NsState {
            name: name.to_string(),
            version,
            ops_base,
            items,
            ops: Arc::new(ops),
            gray: None,
            marks: GrayMarks::default(),
            plain: tokio::sync::OnceCell::new(),
            gzip: tokio::sync::OnceCell::new(),
            gray_plain: tokio::sync::OnceCell::new(),
        }
    }

    fn with_gray(mut self, gray: Option<Gray>, marks: GrayMarks) -> Self {
        self.gray = gray.map(Arc::new);
        self.marks = marks;
        self
    }

    /// The items a gray client sees: the main items with the gray changes
    /// applied (the main items when no gray release is in progress).
    pub fn gray_items(&self) -> Arc<Items> {
        let Some(gray) = &self.gray else {
            return self.items.clone();
        };
        let mut items = (*self.items).clone();
        for c in &gray.changes {
            match c.op {
                Op::Upsert => {
                    let v = c.value.as_deref().unwrap_or("null");
                    items.insert(Arc::from(c.key.as_str()), Arc::from(v));
                }
                Op::Delete => {
                    items.remove(c.key.as_str());
                }
            }
        }
        Arc::new(items)
    }

    /// The gray view's snapshot body (with `"gray": <start version>`),
    /// built once per version.
    pub async fn gray_snapshot(&self, metrics: &Metrics) -> Bytes {
        self.gray_plain
            .get_or_init(|| async {
                metrics.snapshot_builds.inc();
                let extra = self
                    .gray
                    .as_ref()
                    .map(|g| format!(",\"gray\":{}", g.version))
                    .unwrap_or_default();
                let mut buf = Vec::new();
                write_snapshot_as(
                    &self.name,
                    self.version,
                    &extra,
                    &self.gray_items(),
                    &mut buf,
                )
                .expect("in-memory write");
                Bytes::from(buf)
            })
            .await
            .clone()
    }

    /// The shared snapshot body, built once per version and encoding.
    pub async fn snapshot(&self, gzip: bool, metrics: &Metrics) -> Bytes {
        let cell = if gzip { &self.gzip } else { &self.plain };
        cell.get_or_init(|| async {
            let items = self.items.clone();
            let name = self.name.clone();
            let version = self.version;
            metrics.snapshot_builds.inc();
            tokio::task::spawn_blocking(move || {
                if gzip {
                    let buf = Vec::with_capacity(items.len() * 64);
                    let mut enc = flate2::write::GzEncoder::new(buf, flate2::Compression::fast());
                    let mut w = std::io::BufWriter::with_capacity(1 << 16, &mut enc);
                    write_snapshot(&name, version, &items, &mut w).expect("in-memory write");
                    drop(w);
                    Bytes::from(enc.finish().expect("in-memory gzip"))
                } else {
                    let mut buf = Vec::with_capacity(
                        items.values().map(|v| v.len() + 16).sum::<usize>() + 128,
                    );
                    write_snapshot(&name, version, &items, &mut buf).expect("in-memory write");
                    Bytes::from(buf)
                }
            })
            .await
            .expect("snapshot build task")
        })
        .await
        .clone()
    }

    /// True when the changes after `from` can be answered from the log
    /// (and a client at `from` cannot hold a gray view).
    pub fn incremental_from(&self, from: u64) -> bool {
        from >= self.ops_base && from > 0 && !self.marks.may_be_gray(from)
    }

    /// The incremental body for `from` (see the API docs).
    pub fn changes_body(&self, from: u64) -> String {
        let mut out = String::with_capacity(256);
        let _ = write!(
            out,
            "{{\"namespace\":{},\"from\":{},\"to\":{},\"snapshot\":false,\"ops\":[",
            json_str(&self.name),
            from,
            self.version
        );
        let start = self.ops.partition_point(|c| c.version <= from);
        for (i, c) in self.ops[start..].iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match c.op {
                Op::Upsert => {
                    let _ = write!(
                        out,
                        "{{\"version\":{},\"op\":\"upsert\",\"key\":{},\"value\":{}}}",
                        c.version,
                        json_str(&c.key),
                        c.value.as_deref().unwrap_or("null")
                    );
                }
                Op::Delete => {
                    let _ = write!(
                        out,
                        "{{\"version\":{},\"op\":\"delete\",\"key\":{}}}",
                        c.version,
                        json_str(&c.key)
                    );
                }
            }
        }
        out.push_str("]}");
        out
    }
}

#[derive(Default)]
struct Slot {
    load: tokio::sync::Mutex<()>,
    state: RwLock<Option<Arc<NsState>>>,
}

impl Slot {
    fn get(&self) -> Option<Arc<NsState>> {
        self.state.read().expect("slot").clone()
    }
}

/// The cache of every loaded namespace.
pub struct Cache {
    store: Store,
    metrics: Metrics,
    hubs: Arc<Hubs>,
    retention: u64,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    pg_up: AtomicBool,
}

impl Cache {
    /// An empty cache.
    pub fn new(store: Store, metrics: Metrics, hubs: Arc<Hubs>, retention: u64) -> Arc<Cache> {
        Arc::new(Cache {
            store,
            metrics,
            hubs,
            retention,
            slots: Mutex::new(HashMap::new()),
            pg_up: AtomicBool::new(false),
        })
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The watcher hubs.
    pub fn hubs(&self) -> &Arc<Hubs> {
        &self.hubs
    }

    /// Whether the last database call succeeded.
    pub fn pg_up(&self) -> bool {
        self.pg_up.load(Ordering::Relaxed)
    }

    /// Records the outcome of a database call (degraded mode).
    pub fn track<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match &r {
            Ok(_) => self.set_pg_up(true),
            Err(e) if e.is_unavailable() => self.set_pg_up(false),
            Err(_) => {}
        }
        r
    }

    fn set_pg_up(&self, up: bool) {
        let was = self.pg_up.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!("PostgreSQL reachable");
            } else {
                tracing::warn!("PostgreSQL unreachable: serving from cache (degraded)");
            }
        }
        self.metrics.pg_up.set(up as i64);
    }

    fn slot(&self, ns: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .expect("slots")
            .entry(ns.to_string())
            .or_default()
            .clone()
    }

    /// The loaded namespace names.
    pub fn loaded(&self) -> Vec<String> {
        let slots = self.slots.lock().expect("slots");
        slots
            .iter()
            .filter(|(_, s)| s.get().is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The cached state, if loaded (never touches the database).
    pub fn peek(&self, ns: &str) -> Option<Arc<NsState>> {
        self.slots
            .lock()
            .expect("slots")
            .get(ns)
            .and_then(|s| s.get())
    }

    fn install(&self, slot: &Slot, state: NsState) -> Arc<NsState> {
        let state = Arc::new(state);
        *slot.state.write().expect("slot") = Some(state.clone());
        self.hubs.set_version(&state.name, state.version);
        state
    }

    /// Forgets `ns` (deleted in the database).
    pub fn evict(&self, ns: &str) {
        self.slots.lock().expect("slots").remove(ns);
        self.hubs.remove(ns);
    }

    async fn full_load(&self, ns: &str, slot: &Slot) -> Result<Arc<NsState>, StoreError> {
        self.metrics.snapshot_queries.inc();
        let loaded = self.track(self.store.load(ns, self.retention).await)?;
        tracing::debug!(
            namespace = ns,
            version = loaded.version,
            items = loaded.items.len(),
            "namespace loaded"
        );
        Ok(self.install(
            slot,
            NsState::new(
                ns,
                loaded.version,
                loaded.log_from,
                Arc::new(loaded.items),
                loaded.log,
            )
            .with_gray(loaded.gray, loaded.marks),
        ))
    }

    /// The namespace, loading it (single-flight) when not cached.
    pub async fn get(&self, ns: &str) -> Result<Arc<NsState>, StoreError> {
        let slot = self.slot(ns);
        if let Some(s) = slot.get() {
            return Ok(s);
        }
        let _guard = slot.load.lock().await;
        if let Some(s) = slot.get() {
            return Ok(s);
        }
        let result = self.full_load(ns, &slot).await;
        if let Err(StoreError::NotFound(_)) = result {
            let mut slots = self.slots.lock().expect("slots");
            if slots
                .get(ns)
                .is_some_and(|s| Arc::ptr_eq(s, &slot) && s.get().is_none())
            {
                slots.remove(ns);
            }
        }
        result
    }

    /// Brings a loaded namespace up to date with the database (no-op when
    /// not loaded). Returns the version now served.
    pub async fn refresh(&self, ns: &str) -> Result<Option<u64>, StoreError> {
        let Some(slot) = self.slots.lock().expect("slots").get(ns).cloned() else {
            return Ok(None);
        };
        let _guard = slot.load.lock().await;
        let Some(old) = slot.get() else {
            return Ok(None);
        };
        self.metrics.incremental_queries.inc();
        let since = match self.track(self.store.since(ns, old.version).await) {
            Ok(s) => s,
            Err(StoreError::NotFound(_)) => {
                tracing::info!(namespace = ns, "namespace deleted");
                self.evict(ns);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if since.version == old.version {
            return Ok(Some(old.version));
        }
        if since.version < old.version || old.version < since.compacted_to {
            // Recreated namespace, or the log we need was compacted away.
            return Ok(Some(self.full_load(ns, &slot).await?.version));
        }
        let mut items = (*old.items).clone();
        for c in &since.log {
            match c.op {
                Op::Upsert => {
                    items.insert(
                        c.key.clone(),
                        c.value.clone().unwrap_or_else(|| Arc::from("null")),
                    );
                }
                Op::Delete => {
                    items.remove(&c.key);
                }
            }
        }
        let base = old
            .ops_base
            .max(since.version.saturating_sub(self.retention));
        let mut ops: Vec<LoggedChange> = old
            .ops
            .iter()
            .filter(|c| c.version > base)
            .cloned()
            .collect();
        ops.extend(since.log);
        let mut marks = old.marks.clone();
        marks.extend(since.marks);
        let state = self.install(
            &slot,
            NsState::new(ns, since.version, base, Arc::new(items), ops)
                .with_gray(since.gray, marks),
        );
        Ok(Some(state.version))
    }

    /// Compares every namespace with the database: refreshes those behind,
    /// evicts those deleted.
    pub async fn scan(&self) -> Result<(), StoreError> {
        let rows = self.track(self.store.list_namespaces().await)?;
        self.metrics.scans.inc();
        let present: HashMap<&str, u64> =
            rows.iter().map(|r| (r.name.as_str(), r.version)).collect();
        for ns in self.loaded() {
            match present.get(ns.as_str()) {
                None => self.evict(&ns),
                Some(v) => {
                    if self.peek(&ns).is_some_and(|s| s.version != *v) {
                        self.refresh(&ns).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Loads every namespace, one instance at a time (advisory lock).
    pub async fn warm_up(&self) -> Result<usize, StoreError> {
        let lock = self.track(
            self.store
                .advisory_lock(crate::store::schema::WARMUP_LOCK)
                .await,
        )?;
        let result = async {
            let rows = self.store.list_namespaces().await?;
            for r in &rows {
                match self.get(&r.name).await {
                    Ok(_) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(rows.len())
        }
        .await;
        Store::advisory_unlock(lock, crate::store::schema::WARMUP_LOCK).await;
        self.track(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn state() -> NsState {
        let mut items = Items::new();
        items.insert(Arc::from("a"), Arc::from("1"));
        items.insert(Arc::from("q\"k"), Arc::from("{\"x\":[1,2]}"));
        let ops = vec![
            LoggedChange {
                version: 3,
                op: Op::Upsert,
                key: Arc::from("a"),
                value: Some(Arc::from("1")),
            },
            LoggedChange {
                version: 4,
                op: Op::Delete,
                key: Arc::from("b"),
                value: None,
            },
        ];
        NsState::new("ns", 4, 2, Arc::new(items), ops)
    }

    #[tokio::test]
    async fn snapshot_bytes_are_valid_json_and_shared() {
        let s = state();
        let m = Metrics::new();
        let plain = s.snapshot(false, &m).await;
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["snapshot"], true);
        assert_eq!(v["to"], 4);
        assert_eq!(v["items"]["q\"k"]["x"][1], 2);
        let again = s.snapshot(false, &m).await;
        assert_eq!(plain.as_ptr(), again.as_ptr(), "one buffer per version");
        let gz = s.snapshot(true, &m).await;
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text, plain.to_vec());
        assert_eq!(m.snapshot_builds.get(), 2);
    }

    #[test]
    fn incremental_body_lists_ops_after_from() {
        let s = state();
        assert!(
            s.incremental_from(2)
                && s.incremental_from(3)
                && !s.incremental_from(1)
                && !s.incremental_from(0)
        );
        let v: serde_json::Value = serde_json::from_str(&s.changes_body(3)).unwrap();
        assert_eq!(v["ops"].as_array().unwrap().len(), 1);
        assert_eq!(v["ops"][0]["op"], "delete");
        let v: serde_json::Value = serde_json::from_str(&s.changes_body(2)).unwrap();
        assert_eq!(v["ops"][0]["value"], 1);
    }
}
