//! Gray release: a change set served, on top of the main version, only to
//! the clients a [`Selector`] picks (labels and/or a stable percentage of
//! client ids), until it is promoted (published as a main version) or
//! aborted. Who a client is comes from two request headers,
//! [`CLIENT_ID_HEADER`] and [`CLIENT_LABELS_HEADER`] ([`Client`]).
//!
//! Gray start, promote and abort each take a version of the namespace (the
//! start and the abort with no main change), so every watcher wakes and
//! versions only ever grow; a client whose local copy may be a gray view
//! (its version lies in a gray window, see [`GrayMarks`]) gets a full
//! snapshot instead of incremental ops.

use crate::store::{Change, Op};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The client id header (the agent sends its `[configd] client_id`).
pub const CLIENT_ID_HEADER: &str = "riskfeat-client-id";
/// The client labels header: `key=value` pairs separated by commas.
pub const CLIENT_LABELS_HEADER: &str = "riskfeat-client-labels";

/// Which clients get a gray release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Every one of these labels must match exactly.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Of the clients the labels match, those whose id hashes below this
    /// (0..=100; none: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
}

/// A client as its headers describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    pub id: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The bucket (0..100) of a client id in a namespace: FNV-1a 64 of
/// `namespace NUL id`, modulo 100. Stable across restarts, instances and
/// releases, so a client in the first 10 % stays in the first 20 %.
pub fn bucket(ns: &str, id: &str) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ns.bytes().chain([0u8]).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 100) as u8
}

impl Selector {
    /// Whether `client` gets the gray release of namespace `ns`.
    pub fn matches(&self, ns: &str, client: &Client) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| client.labels.get(k) == Some(v))
            && self
                .percent
                .is_none_or(|p| client.id.as_deref().is_some_and(|id| bucket(ns, id) < p))
    }

    /// Refuses a selector that picks everyone or no one, naming the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.labels.is_empty() && self.percent.is_none_or(|p| p >= 100) {
            return Err((
                "selector",
                "the selector picks every client: give labels and/or a percent below 100 (or publish)"
                    .into(),
            ));
        }
        if self.percent.is_some_and(|p| p == 0 || p > 100) {
            return Err(("selector.percent", "percent must be 1..=100".into()));
        }
        for (k, v) in &self.labels {
            if let Some(bad) = [k, v].into_iter().find(|s| !label_text_ok(s)) {
                return Err((
                    "selector.labels",
                    format!("label {bad:?}: 1-253 bytes of [A-Za-z0-9._/-]"),
                ));
            }
        }
        Ok(())
    }
}

fn label_text_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
}

impl Client {
    /// Parses the identity headers; the error names the header.
    pub fn from_headers(h: &axum::http::HeaderMap) -> Result<Client, (&'static str, String)> {
        let text = |name: &'static str| -> Result<Option<String>, (&'static str, String)> {
            h.get(name)
                .map(|v| {
                    v.to_str()
                        .map(|s| s.trim().to_string())
                        .map_err(|_| (name, format!("{name} is not text")))
                })
                .transpose()
        };
        let id = text(CLIENT_ID_HEADER)?.filter(|s| !s.is_empty());
        if id
            .as_deref()
            .is_some_and(|s| s.len() > 253 || s.chars().any(|c| c.is_control()))
        {
            return Err((
                CLIENT_ID_HEADER,
                "client id: 1-253 bytes, no control characters".into(),
            ));
        }
        let mut labels = BTreeMap::new();
        for pair in text(CLIENT_LABELS_HEADER)?
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, v)| label_text_ok(k) && (v.is_empty() || label_text_ok(v)))
                .ok_or_else(|| {
                    (
                        CLIENT_LABELS_HEADER,
                        format!("label {pair:?}: expected key=value of [A-Za-z0-9._/-]"),
                    )
                })?;
            labels.insert(k.to_string(), v.to_string());
        }
        if labels.len() > 64 {
            return Err((CLIENT_LABELS_HEADER, "at most 64 labels".into()));
        }
        Ok(Client { id, labels })
    }
}

/// The gray release in progress in a namespace.
#[derive(Debug, Clone)]
pub struct Gray {
    /// The version that started it.
    pub version: u64,
    pub selector: Selector,
    /// Applied over the main items for the selected clients.
    pub changes: Vec<Change>,
}

impl Gray {
    /// The changes as the API shows them (`[{op,key,value}]`).
    pub fn changes_json(&self) -> serde_json::Value {
        changes_json(&self.changes)
    }
}

/// `[{op,key,value}]` of change sets (values are JSON text).
pub fn changes_json(changes: &[Change]) -> serde_json::Value {
    changes
        .iter()
        .map(|c| {
            let mut o = serde_json::json!({"op": c.op, "key": c.key});
            if let Some(v) = &c.value {
                o["value"] = serde_json::from_str(v).unwrap_or(serde_json::Value::Null);
            }
            o
        })
        .collect()
}

/// Change sets back from `[{op,key,value}]` (as stored).
pub fn changes_from_json(v: &serde_json::Value) -> Vec<Change> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|c| Change {
            op: if c["op"] == "delete" {
                Op::Delete
            } else {
                Op::Upsert
            },
            key: c["key"].as_str().unwrap_or_default().to_string(),
            value: c.get("value").map(|v| v.to_string()),
        })
        .collect()
}

/// Where gray releases started and ended, ascending by version (`true`:
/// a start). A client at version `v` may hold a gray view when the last
/// mark at or below `v` is a start.
#[derive(Debug, Clone, Default)]
pub struct GrayMarks(pub Vec<(u64, bool)>);

/// Marks kept per namespace (50 gray releases); an older `from` is
/// answered with a snapshot.
pub const MAX_MARKS: usize = 100;

impl GrayMarks {
    /// Whether a client at `from` may hold a gray view (then it gets a
    /// snapshot). When the oldest mark kept is an end, its start is older
    /// still: anything before it counts as possibly gray.
    pub fn may_be_gray(&self, from: u64) -> bool {
        match self.0.iter().rev().find(|(v, _)| *v <= from) {
            Some((_, start)) => *start,
            None => self.0.first().is_some_and(|(_, start)| !start),
        }
    }

    /// Appends newer marks, keeping the last [`MAX_MARKS`].
    pub fn extend(&mut self, newer: impl IntoIterator<Item = (u64, bool)>) {
        self.0.extend(newer);
        let n = self.0.len();
        if n > MAX_MARKS {
            self.0.drain(..n - MAX_MARKS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, labels: &[(&str, &str)]) -> Client {
        Client {
            id: Some(id.into()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn labels_and_percent_select_clients_stably() {
        let canary = Selector {
            labels: [("canary".to_string(), "true".to_string())].into(),
            percent: None,
        };
        assert!(canary.matches("f", &client("a", &[("canary", "true"), ("zone", "x")])));
        assert!(!canary.matches("f", &client("a", &[("canary", "false")])));
        assert!(!canary.matches("f", &client("a", &[])));
        let tenth = Selector {
            labels: Default::default(),
            percent: Some(10),
        };
        let picked = (0..10_000)
            .filter(|i| tenth.matches("f", &client(&format!("pod-{i}"), &[])))
            .count();
        assert!((800..1200).contains(&picked), "{picked} of 10000");
        // Growing the percentage keeps everyone already in.
        let fifth = Selector {
            percent: Some(20),
            ..tenth.clone()
        };
        for i in 0..1000 {
            let c = client(&format!("pod-{i}"), &[]);
            assert!(!tenth.matches("f", &c) || fifth.matches("f", &c));
        }
        assert!(!tenth.matches("f", &Client::default()), "no id, no percent");
        assert!(Selector {
            labels: Default::default(),
            percent: None
        }
        .check()
        .is_err());
    }

    #[test]
    fn marks_tell_which_versions_may_be_gray() {
        let m = GrayMarks(vec![(5, true), (7, false), (9, true)]);
        assert!(!m.may_be_gray(4));
        assert!(m.may_be_gray(5) && m.may_be_gray(6));
        assert!(!m.may_be_gray(7) && !m.may_be_gray(8));
        assert!(m.may_be_gray(9) && m.may_be_gray(100));
        let cut = GrayMarks(vec![(7, false)]);
        assert!(cut.may_be_gray(3) && !cut.may_be_gray(7));
    }

    #[test]
    fn identity_headers_parse_and_bad_ones_are_named() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(CLIENT_ID_HEADER, "pod-1".parse().unwrap());
        h.insert(
            CLIENT_LABELS_HEADER,
            "canary=true, app=worker".parse().unwrap(),
        );
        let c = Client::from_headers(&h).unwrap();
        assert_eq!(c.id.as_deref(), Some("pod-1"));
        assert_eq!(c.labels["canary"], "true");
        h.insert(CLIENT_LABELS_HEADER, "nolabel".parse().unwrap());
        assert_eq!(
            Client::from_headers(&h).unwrap_err().0,
            CLIENT_LABELS_HEADER
        );
    }
}
