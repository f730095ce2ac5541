//! Backoff after failures: per-operation retry gates ([`Retry`]), the
//! exponential delay with jitter, and the configured backoff settings.
//! `config_sync` uses the same gate per namespace.

use super::{secs, Lifecycle};
use chrono::{DateTime, Duration, Utc};
use rand::Rng;

/// Retry bookkeeping for one kind of operation.
#[derive(Debug, Default, Clone)]
pub(crate) struct Retry {
    pub(crate) failures: u32,
    pub(crate) not_before: Option<DateTime<Utc>>,
}

impl Retry {
    pub(crate) fn ready(&self, now: DateTime<Utc>) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }
    pub(crate) fn ok(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }
    pub(crate) fn fail(&mut self, now: DateTime<Utc>, initial_s: f64, max_s: f64) -> DateTime<Utc> {
        let d = backoff_delay(self.failures, initial_s, max_s);
        self.failures = self.failures.saturating_add(1);
        let at = now + d;
        self.not_before = Some(at);
        at
    }
}

/// Exponential backoff with jitter: `initial * 2^n` capped at `max`, then a
/// random factor in [0.5, 1].
pub(crate) fn backoff_delay(failures: u32, initial_s: f64, max_s: f64) -> Duration {
    let base = (initial_s * 2f64.powi(failures.min(30) as i32)).min(max_s);
    let factor = rand::rng().random_range(0.5..=1.0);
    secs(base * factor)
}

impl Lifecycle {
    /// `(backoff_initial_s, backoff_max_s)` from `[lifecycle]`.
    pub(super) fn backoff(&self) -> (f64, f64) {
        (
            self.cfg.lifecycle.backoff_initial_s,
            self.cfg.lifecycle.backoff_max_s,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for n in 0..40 {
            let d = backoff_delay(n, 0.5, 30.0).num_milliseconds();
            let base = (500.0 * 2f64.powi(n.min(30) as i32)).min(30_000.0);
            assert!(
                d as f64 <= base + 1.0 && d as f64 >= base * 0.5 - 1.0,
                "n={n} d={d}"
            );
        }
    }

    #[test]
    fn retry_gate() {
        let now = Utc::now();
        let mut r = Retry::default();
        assert!(r.ready(now));
        let at = r.fail(now, 1.0, 10.0);
        assert!(!r.ready(now) && r.ready(at));
        r.ok();
        assert!(r.ready(now));
    }
}
