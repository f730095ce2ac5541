//! The feature math, with ndarray, over one user's newest `lookback`
//! transactions and the exact window aggregates the same query returned.
//! Pure: no I/O, so it is unit-tested here and checked against an
//! independent reference in the integration tests.
//!
//! Definitions (documented in docs/api.md):
//! - `count`, `sum`, `mean`, `std`, `min`, `max`, `latest_amount`,
//!   `moving_average`, `zscore` and the gaps are over the newest `lookback`
//!   transactions whose amount is a finite number (NULL and non-finite
//!   amounts are skipped by the query and counted in a metric).
//! - `std` is the population standard deviation (ddof = 0); 0 for fewer than
//!   two transactions.
//! - `zscore` = (latest - mean) / std; 0 when std < `std_epsilon` (the seed's
//!   1e-6 by default: no deviation).
//! - `moving_average` = mean of the latest `min(ma_window, count)` amounts.
//! - `count_1h`/`amount_1h` and `count_24h`/`amount_24h` count EVERY
//!   transaction of the user with `now - time < window` (the short and the
//!   long window of the feature params, 1 h and 24 h by default), however
//!   many there are: the database aggregates them, `lookback` does not cap
//!   them.
//! - A time in the future counts as now (clock skew): no negative ages.
//! - `seconds_since_prev` = latest - previous; `seconds_since_latest` =
//!   now - latest.
//! - `insufficient_history` is true when `count < min_history` (the seed's
//!   "not enough data"); the values that exist are still given.
//! - Undefined values (mean/min/max/... of no transactions) are `null`,
//!   never NaN.

use crate::params::FeatureParams;
use ndarray::Array1;
use serde::Serialize;

/// One transaction as read from the database (finite amount).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub amount: f64,
    /// Microseconds since the Unix epoch.
    pub ts_us: i64,
}

/// The exact aggregates of the short and the long window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Windows {
    pub count_short: u64,
    pub amount_short: f64,
    pub count_long: u64,
    pub amount_long: f64,
}

impl Windows {
    /// The windows of `rows` (finite amounts), counting rows whose time is
    /// after each start (µs; a future time is inside both): exact when
    /// `rows` holds every row of the long window.
    pub fn from_rows(rows: &[Row], short_start_us: i64, long_start_us: i64) -> Windows {
        let mut w = Windows::default();
        for r in rows {
            if r.ts_us > short_start_us {
                w.count_short += 1;
                w.amount_short += r.amount;
            }
            if r.ts_us > long_start_us {
                w.count_long += 1;
                w.amount_long += r.amount;
            }
        }
        w
    }
}

/// The computed features of one user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Features {
    pub count: usize,
    pub sum: f64,
    pub mean: Option<f64>,
    pub std: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub latest_amount: Option<f64>,
    pub moving_average: Option<f64>,
    pub zscore: f64,
    pub count_1h: u64,
    pub amount_1h: f64,
    pub count_24h: u64,
    pub amount_24h: f64,
    pub seconds_since_prev: Option<f64>,
    pub seconds_since_latest: Option<f64>,
    pub insufficient_history: bool,
    pub flags: Flags,
}

/// Risk flags from the configured thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Flags {
    /// |zscore| > zscore_above.
    pub zscore_high: bool,
    /// count_1h > count_1h_above.
    pub count_1h_high: bool,
    /// amount_24h > amount_24h_above.
    pub amount_24h_high: bool,
}

/// Computes the features; `newest_first` is the database order (time
/// desc), already limited to `lookback` rows (extra rows are ignored);
/// `w` holds the window aggregates of the same query.
pub fn compute(newest_first: &[Row], w: &Windows, p: &FeatureParams, now_us: i64) -> Features {
    let rows = &newest_first[..newest_first.len().min(p.lookback)];
    let n = rows.len();
    let flags = |zscore: f64| Flags {
        zscore_high: zscore.abs() > p.zscore_above,
        count_1h_high: w.count_short > p.count_1h_above,
        amount_24h_high: w.amount_long > p.amount_24h_above,
    };
    let mut f = Features {
        count: n,
        sum: 0.0,
        mean: None,
        std: 0.0,
        min: None,
        max: None,
        latest_amount: None,
        moving_average: None,
        zscore: 0.0,
        count_1h: w.count_short,
        amount_1h: w.amount_short,
        count_24h: w.count_long,
        amount_24h: w.amount_long,
        seconds_since_prev: None,
        seconds_since_latest: None,
        insufficient_history: n < p.min_history,
        flags: flags(0.0),
    };
    if n == 0 {
        return f;
    }
    // Newest first, as read: index 0 is the latest transaction.
    let amounts: Array1<f64> = rows.iter().map(|r| r.amount).collect();
    let sum = amounts.sum();
    let mean = sum / n as f64;
    let std = if n > 1 { amounts.std(0.0) } else { 0.0 };
    let latest = amounts[0];
    let wma = p.ma_window.min(n);
    let zscore = if std.is_finite() && std >= p.std_epsilon && std > 0.0 {
        (latest - mean) / std
    } else {
        0.0
    };
    // A time in the future counts as now.
    let ts = |i: usize| rows[i].ts_us.min(now_us);
    f.sum = sum;
    f.mean = Some(mean);
    f.std = std;
    f.min = Some(amounts.fold(f64::INFINITY, |a, &b| a.min(b)));
    f.max = Some(amounts.fold(f64::NEG_INFINITY, |a, &b| a.max(b)));
    f.latest_amount = Some(latest);
    f.moving_average = Some(amounts.slice(ndarray::s![..wma]).mean().unwrap_or(latest));
    f.zscore = zscore;
    f.seconds_since_prev = (n > 1).then(|| (ts(0) - ts(1)) as f64 / 1e6);
    f.seconds_since_latest = Some((now_us - ts(0)) as f64 / 1e6);
    f.flags = flags(zscore);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000;

    fn row(amount: f64, secs_ago: i64) -> Row {
        Row {
            amount,
            ts_us: NOW - secs_ago * 1_000_000,
        }
    }

    /// The windows of all of `rows` (what the query aggregates).
    fn windows(rows: &[Row]) -> Windows {
        Windows::from_rows(rows, NOW - 3_600_000_000, NOW - 86_400_000_000)
    }

    fn run(rows: &[Row], p: &FeatureParams) -> Features {
        compute(rows, &windows(rows), p, NOW)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn empty_user_has_no_nan() {
        let f = run(&[], &FeatureParams::default());
        assert_eq!(f.count, 0);
        let json = serde_json::to_string(&f).unwrap();
        assert!(!json.contains("NaN") && !json.contains("nan"), "{json}");
        assert!(json.contains("\"mean\":null"), "{json}");
        assert!(json.contains("\"zscore\":0.0"), "{json}");
    }

    #[test]
    fn single_transaction_has_std_and_zscore_zero() {
        let f = run(&[row(42.5, 10)], &FeatureParams::default());
        assert_eq!(f.count, 1);
        assert_eq!(f.std, 0.0);
        assert_eq!(f.zscore, 0.0);
        assert_eq!(f.mean, Some(42.5));
        assert_eq!(f.moving_average, Some(42.5));
        assert_eq!(f.seconds_since_prev, None);
        assert_eq!(f.seconds_since_latest, Some(10.0));
        assert_eq!(f.count_1h, 1);
        let json = serde_json::to_string(&f).unwrap();
        assert!(!json.to_lowercase().contains("nan"), "{json}");
    }

    #[test]
    fn matches_hand_computed_values() {
        // Newest first: 100 (1 min ago), 10 (2 h ago), 20 (30 h ago), 30 (2 days).
        let rows = [
            row(100.0, 60),
            row(10.0, 7200),
            row(20.0, 30 * 3600),
            row(30.0, 48 * 3600),
        ];
        let p = FeatureParams {
            ma_window: 2,
            zscore_above: 1.5,
            count_1h_above: 0,
            amount_24h_above: 100.0,
            ..Default::default()
        };
        let f = run(&rows, &p);
        let mean = 40.0;
        let var = ((60.0f64).powi(2) + 30.0f64.powi(2) + 20.0f64.powi(2) + 10.0f64.powi(2)) / 4.0;
        assert_eq!(f.count, 4);
        assert!(close(f.sum, 160.0));
        assert!(close(f.mean.unwrap(), mean));
        assert!(close(f.std, var.sqrt()));
        assert_eq!((f.min, f.max), (Some(10.0), Some(100.0)));
        assert_eq!(f.latest_amount, Some(100.0));
        assert!(close(f.moving_average.unwrap(), 55.0));
        assert!(close(f.zscore, 60.0 / var.sqrt()));
        assert_eq!((f.count_1h, f.count_24h), (1, 2));
        assert!(close(f.amount_1h, 100.0) && close(f.amount_24h, 110.0));
        assert_eq!(f.seconds_since_prev, Some(7140.0));
        assert!(f.flags.zscore_high && f.flags.count_1h_high && f.flags.amount_24h_high);
    }

    #[test]
    fn lookback_limits_the_rows_used() {
        let rows: Vec<Row> = (0..10).map(|i| row(i as f64, 100 + i)).collect();
        let p = FeatureParams {
            lookback: 3,
            ma_window: 3,
            ..Default::default()
        };
        let f = run(&rows, &p);
        assert_eq!(f.count, 3);
        assert!(close(f.sum, 3.0));
    }

    #[test]
    fn identical_amounts_give_zero_std_and_zscore() {
        let rows = [row(5.0, 1), row(5.0, 2), row(5.0, 3)];
        let f = run(&rows, &FeatureParams::default());
        assert_eq!(f.std, 0.0);
        assert_eq!(f.zscore, 0.0);
        assert!(!f.flags.zscore_high);
    }

    #[test]
    fn windows_come_from_the_query_not_the_lookback_slice() {
        // 300 transactions in the last hour, lookback 50: the windows the
        // query aggregated stand, the slice does not cap them.
        let rows: Vec<Row> = (0..300).map(|i| row(13.0, 10 + i)).collect();
        let w = windows(&rows);
        let p = FeatureParams::default();
        let f = compute(&rows[..p.lookback], &w, &p, NOW);
        assert_eq!(f.count, 50);
        assert_eq!((f.count_1h, f.count_24h), (300, 300));
        assert!(close(f.amount_1h, 3900.0));
        assert!(f.flags.count_1h_high);
    }

    #[test]
    fn future_times_count_as_now() {
        let rows = [row(1.0, -600), row(2.0, -300)];
        let f = run(&rows, &FeatureParams::default());
        assert_eq!(f.seconds_since_latest, Some(0.0));
        assert_eq!(f.seconds_since_prev, Some(0.0));
    }

    #[test]
    fn min_history_and_std_epsilon() {
        let p = FeatureParams {
            min_history: 3,
            std_epsilon: 1e-6,
            ..Default::default()
        };
        let f = run(&[row(5.0, 1), row(5.0000001, 2)], &p);
        assert!(f.insufficient_history);
        assert_eq!(f.count, 2);
        assert!(f.std > 0.0 && f.std < 1e-6);
        assert_eq!(f.zscore, 0.0, "std below std_epsilon gives zscore 0");
        let f = run(&[row(5.0, 1), row(6.0, 2), row(9.0, 3)], &p);
        assert!(!f.insufficient_history);
        assert!(f.zscore != 0.0);
    }
}
