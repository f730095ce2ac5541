//! Durations in Vault's answers (`lease_duration`, `ttl`), parsed so that
//! no answer can break the lifecycle: any JSON number is accepted and
//! clamped to `0..=MAX_SECS` (negative and NaN-like values are 0, a
//! fraction is cut), so `now + seconds` can never overflow chrono.

use serde::{Deserialize, Deserializer};

/// The longest duration taken from Vault: ten years, far beyond any real
/// TTL, far below what a date can add.
pub const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

/// `#[serde(deserialize_with = "secs")]` for a duration in seconds.
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    Ok(clamp(&n))
}

fn clamp(n: &serde_json::Number) -> u64 {
    if let Some(u) = n.as_u64() {
        return u.min(MAX_SECS);
    }
    if n.as_i64().is_some() {
        // Only negative integers are not u64.
        return 0;
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f > 0.0 => f.min(MAX_SECS as f64) as u64,
        _ => 0,
    }
}
