//! Feature parameters from `config/<namespace>.json`: validation of the
//! items the worker understands (unknown keys are ignored with a warning,
//! other teams may share the namespace); a wrong type or range rejects the
//! whole file so the last good parameters stay in force.

use riskfeat_shared::config_file::ConfigSnapshot;
use serde::Serialize;

/// The parameters in force, with the config version they came from
/// (0 = built-in defaults, no file seen yet).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureParams {
    pub version: u64,
    pub lookback: usize,
    pub ma_window: usize,
    pub zscore_above: f64,
    pub count_1h_above: u64,
    pub amount_24h_above: f64,
    /// Fewer usable transactions than this: `insufficient_history`.
    pub min_history: usize,
    /// A standard deviation below this gives z-score 0.
    pub std_epsilon: f64,
    /// The short window (`count_1h`, `amount_1h`), seconds.
    pub short_window_s: u64,
    /// The long window (`count_24h`, `amount_24h`), seconds.
    pub long_window_s: u64,
}

impl Default for FeatureParams {
    fn default() -> Self {
        Self {
            version: 0,
            lookback: 50,
            ma_window: 10,
            zscore_above: 3.0,
            count_1h_above: 20,
            amount_24h_above: 10_000.0,
            min_history: 1,
            std_epsilon: 1e-6,
            short_window_s: 3_600,
            long_window_s: 86_400,
        }
    }
}

/// The keys this worker reads.
pub const KNOWN_KEYS: [&str; 9] = [
    "lookback",
    "ma_window",
    "zscore_above",
    "count_1h_above",
    "amount_24h_above",
    "min_history",
    "std_epsilon",
    "short_window_s",
    "long_window_s",
];

/// The longest window accepted: a year (and what `statement_timeout` must
/// cover for the heaviest user).
pub const MAX_WINDOW_S: u64 = 366 * 86_400;

/// A rejected config: every problem at once.
#[derive(Debug, thiserror::Error)]
#[error("config version {version} rejected: {}", problems.join("; "))]
pub struct ParamsError {
    pub version: u64,
    pub problems: Vec<String>,
}

impl FeatureParams {
    /// Validates a snapshot; returns the parameters and the unknown keys
    /// (to warn about).
    pub fn from_snapshot(snap: &ConfigSnapshot) -> Result<(Self, Vec<String>), ParamsError> {
        let mut p = FeatureParams {
            version: snap.version,
            ..Default::default()
        };
        let mut problems = Vec::new();
        let int = |key: &str, problems: &mut Vec<String>| -> Option<i64> {
            let v = snap.items.get(key)?;
            // 5.0 is the integer 5 (as for JSON Schema's "integer").
            let integral = || {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                    .map(|f| f as i64)
            };
            match v.as_i64().or_else(integral) {
                Some(n) => Some(n),
                None => {
                    problems.push(format!("{key} = {v}: expected an integer"));
                    None
                }
            }
        };
        let float = |key: &str, problems: &mut Vec<String>| -> Option<f64> {
            let v = snap.items.get(key)?;
            match v.as_f64() {
                Some(n) if n.is_finite() => Some(n),
                _ => {
                    problems.push(format!("{key} = {v}: expected a number"));
                    None
                }
            }
        };
        // An integer key within `range`; out of it, "<key> = <n>: expected
        // <expected>".
        let ranged = |key: &str,
                      range: std::ops::RangeInclusive<i64>,
                      expected: &str,
                      problems: &mut Vec<String>|
         -> Option<i64> {
            let n = int(key, problems)?;
            if range.contains(&n) {
                Some(n)
            } else {
                problems.push(format!("{key} = {n}: expected {expected}"));
                None
            }
        };
        // A number key that must not be negative.
        let non_negative = |key: &str, problems: &mut Vec<String>| -> Option<f64> {
            let x = float(key, problems)?;
            if x >= 0.0 {
                Some(x)
            } else {
                problems.push(format!("{key} = {x}: expected >= 0"));
                None
            }
        };
        if let Some(n) = ranged("lookback", 1..=1000, "1..=1000", &mut problems) {
            p.lookback = n as usize;
        }
        if let Some(n) = ranged("ma_window", 1..=i64::MAX, "at least 1", &mut problems) {
            p.ma_window = n as usize;
        }
        if p.ma_window > p.lookback {
            problems.push(format!(
                "ma_window = {} is larger than lookback = {}",
                p.ma_window, p.lookback
            ));
        }
        if let Some(x) = non_negative("zscore_above", &mut problems) {
            p.zscore_above = x;
        }
        if let Some(n) = ranged("count_1h_above", 0..=i64::MAX, ">= 0", &mut problems) {
            p.count_1h_above = n as u64;
        }
        if let Some(x) = non_negative("amount_24h_above", &mut problems) {
            p.amount_24h_above = x;
        }
        let lookback = format!("0..=lookback ({})", p.lookback);
        if let Some(n) = ranged(
            "min_history",
            0..=p.lookback as i64,
            &lookback,
            &mut problems,
        ) {
            p.min_history = n as usize;
        }
        if let Some(x) = non_negative("std_epsilon", &mut problems) {
            p.std_epsilon = x;
        }
        for (key, slot) in [
            ("short_window_s", &mut p.short_window_s),
            ("long_window_s", &mut p.long_window_s),
        ] {
            let expected = format!("1..={MAX_WINDOW_S}");
            if let Some(n) = ranged(key, 1..=MAX_WINDOW_S as i64, &expected, &mut problems) {
                *slot = n as u64;
            }
        }
        if p.short_window_s > p.long_window_s {
            problems.push(format!(
                "short_window_s = {} is longer than long_window_s = {}",
                p.short_window_s, p.long_window_s
            ));
        }
        if !problems.is_empty() {
            return Err(ParamsError {
                version: snap.version,
                problems,
            });
        }
        let unknown = snap
            .items
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        Ok((p, unknown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(items: serde_json::Value) -> ConfigSnapshot {
        ConfigSnapshot {
            namespace: "features".into(),
            version: 7,
            items: serde_json::from_value(items).unwrap(),
        }
    }

    #[test]
    fn defaults_fill_missing_keys_and_unknown_keys_are_listed() {
        let (p, unknown) =
            FeatureParams::from_snapshot(&snap(json!({"lookback": 20, "other_team": 1}))).unwrap();
        assert_eq!(p.lookback, 20);
        assert_eq!(p.ma_window, 10);
        assert_eq!(p.version, 7);
        assert_eq!(unknown, vec!["other_team".to_string()]);
    }

    #[test]
    fn every_problem_rejects_the_whole_file() {
        let err = FeatureParams::from_snapshot(&snap(json!({
            "lookback": 5, "ma_window": 9, "zscore_above": "high", "count_1h_above": -1
        })))
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ma_window = 9 is larger than lookback = 5"),
            "{msg}"
        );
        assert!(msg.contains("zscore_above"), "{msg}");
        assert!(msg.contains("count_1h_above = -1"), "{msg}");
        assert!(msg.contains("version 7"), "{msg}");
    }

    #[test]
    fn lookback_range() {
        assert!(FeatureParams::from_snapshot(&snap(json!({"lookback": 0}))).is_err());
        assert!(FeatureParams::from_snapshot(&snap(json!({"lookback": 1001}))).is_err());
        assert!(FeatureParams::from_snapshot(&snap(json!({"lookback": 1.5}))).is_err());
        assert!(FeatureParams::from_snapshot(&snap(json!({"lookback": 1000}))).is_ok());
    }

    #[test]
    fn seed_semantics_and_windows() {
        let (p, unknown) = FeatureParams::from_snapshot(&snap(json!({
            "min_history": 10, "std_epsilon": 0.0, "short_window_s": 600, "long_window_s": 7200
        })))
        .unwrap();
        assert!(unknown.is_empty());
        assert_eq!((p.min_history, p.std_epsilon), (10, 0.0));
        assert_eq!((p.short_window_s, p.long_window_s), (600, 7200));
        let err = FeatureParams::from_snapshot(&snap(json!({
            "min_history": 51, "std_epsilon": -1, "short_window_s": 0, "long_window_s": 1e12
        })))
        .unwrap_err()
        .to_string();
        riskfeat_shared::testing::assert_contains_all(
            &err,
            &[
                "min_history = 51",
                "std_epsilon",
                "short_window_s = 0",
                "long_window_s",
            ],
        );
        let err = FeatureParams::from_snapshot(&snap(json!({
            "short_window_s": 7200, "long_window_s": 3600
        })))
        .unwrap_err()
        .to_string();
        assert!(err.contains("longer than long_window_s"), "{err}");
    }
}
