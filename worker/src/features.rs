//! The feature math, with ndarray, over one user's last `lookback`
//! transactions. Pure: no I/O, so it is unit-tested here and checked against
//! an independent reference in the integration tests.
//!
//! Definitions (documented in docs/api.md):
//! - `std` is the population standard deviation (ddof = 0); 0 for fewer than
//!   two transactions.
//! - `zscore` = (latest - mean) / std; 0 when std is 0 (no deviation).
//! - `moving_average` = mean of the latest `min(ma_window, count)` amounts.
//! - windows `1h` / `24h` count transactions with `now - ts < window`.
//! - `seconds_since_prev` = latest.ts - previous.ts; `seconds_since_latest` =
//!   now - latest.ts.
//! - Undefined values (mean/min/max/... of no transactions) are `null`,
//!   never NaN.

use crate::params::FeatureParams;
use ndarray::Array1;
use serde::Serialize;

/// One transaction as read from the database.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub amount: f64,
    /// Microseconds since the Unix epoch.
    pub ts_us: i64,
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

const HOUR_US: i64 = 3_600_000_000;

/// Computes the features; `newest_first` is the database order (ts desc),
/// already limited to `lookback` rows (extra rows are ignored).
pub fn compute(newest_first: &[Row], p: &FeatureParams, now_us: i64) -> Features {
    let rows = &newest_first[..newest_first.len().min(p.lookback)];
    let n = rows.len();
    if n == 0 {
        return Features {
            count: 0,
            sum: 0.0,
            mean: None,
            std: 0.0,
            min: None,
            max: None,
            latest_amount: None,
            moving_average: None,
            zscore: 0.0,
            count_1h: 0,
            amount_1h: 0.0,
            count_24h: 0,
            amount_24h: 0.0,
            seconds_since_prev: None,
            seconds_since_latest: None,
            flags: Flags {
                zscore_high: false,
                count_1h_high: false,
                amount_24h_high: false,
            },
        };
    }
    // Newest first, as read: index 0 is the latest transaction.
    let amounts: Array1<f64> = rows.iter().map(|r| r.amount).collect();
    let sum = amounts.sum();
    let mean = sum / n as f64;
    let std = if n > 1 { amounts.std(0.0) } else { 0.0 };
    let min = amounts.fold(f64::INFINITY, |a, &b| a.min(b));
    let max = amounts.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let latest = amounts[0];
    let w = p.ma_window.min(n);
    let moving_average = amounts.slice(ndarray::s![..w]).mean().unwrap_or(latest);
    let zscore = if std > 0.0 && std.is_finite() {
        (latest - mean) / std
    } else {
        0.0
    };
    let (mut count_1h, mut amount_1h, mut count_24h, mut amount_24h) = (0u64, 0.0, 0u64, 0.0);
    for r in rows {
        let age = now_us - r.ts_us;
        if age < HOUR_US {
            count_1h += 1;
            amount_1h += r.amount;
        }
        if age < 24 * HOUR_US {
            count_24h += 1;
            amount_24h += r.amount;
        }
    }
    let seconds_since_prev = (n > 1).then(|| (rows[0].ts_us - rows[1].ts_us) as f64 / 1e6);
    let seconds_since_latest = Some((now_us - rows[0].ts_us) as f64 / 1e6);
    Features {
        count: n,
        sum,
        mean: Some(mean),
        std,
        min: Some(min),
        max: Some(max),
        latest_amount: Some(latest),
        moving_average: Some(moving_average),
        zscore,
        count_1h,
        amount_1h,
        count_24h,
        amount_24h,
        seconds_since_prev,
        seconds_since_latest,
        flags: Flags {
            zscore_high: zscore.abs() > p.zscore_above,
            count_1h_high: count_1h > p.count_1h_above,
            amount_24h_high: amount_24h > p.amount_24h_above,
        },
    }
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

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn empty_user_has_no_nan() {
        let f = compute(&[], &FeatureParams::default(), NOW);
        assert_eq!(f.count, 0);
        let json = serde_json::to_string(&f).unwrap();
        assert!(!json.contains("NaN") && !json.contains("nan"), "{json}");
        assert!(json.contains("\"mean\":null"), "{json}");
        assert!(json.contains("\"zscore\":0.0"), "{json}");
    }

    #[test]
    fn single_transaction_has_std_and_zscore_zero() {
        let f = compute(&[row(42.5, 10)], &FeatureParams::default(), NOW);
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
        let f = compute(&rows, &p, NOW);
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
        let f = compute(&rows, &p, NOW);
        assert_eq!(f.count, 3);
        assert!(close(f.sum, 3.0));
    }

    #[test]
    fn identical_amounts_give_zero_std_and_zscore() {
        let rows = [row(5.0, 1), row(5.0, 2), row(5.0, 3)];
        let f = compute(&rows, &FeatureParams::default(), NOW);
        assert_eq!(f.std, 0.0);
        assert_eq!(f.zscore, 0.0);
        assert!(!f.flags.zscore_high);
    }
}
