//! Deterministic demo and test data: [`generate`] makes the same
//! transactions for the same `(users, per_user, seed)` on every machine
//! (its own SplitMix64, no dependency on a crate's RNG stream), and [`load`]
//! streams them into `transactions` with text `COPY`.

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use futures::SinkExt;
use std::fmt::Write;

/// One row of `transactions` (without its `id`).
#[derive(Debug, Clone, PartialEq)]
pub struct Txn {
    pub user_id: i64,
    /// Two decimals (the column is `numeric(14,2)`).
    pub amount: f64,
    pub ts: DateTime<Utc>,
    pub merchant: String,
    pub category: String,
}

const MERCHANTS: &[&str] = &[
    "acme-grocer",
    "blue-fuel",
    "citymart",
    "deltair",
    "east-pharmacy",
    "fastfood-42",
    "globex-online",
    "harbor-hotel",
    "initech-store",
    "jetcab",
    "kiosk-7",
    "lumen-electronics",
];
const CATEGORIES: &[&str] = &[
    "grocery",
    "fuel",
    "retail",
    "travel",
    "health",
    "restaurant",
    "online",
    "lodging",
    "electronics",
    "transport",
];

/// The most recent generated transaction is at most this instant
/// (2026-01-01T00:00:00Z); each user's history spreads over the 30 days
/// before it.
pub fn anchor() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date")
}

/// SplitMix64: tiny, fast, and stable forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `users` users (ids 1..=users), `per_user` transactions each, in user
/// order and ascending time per user. Each user has a typical amount; about
/// 2% of transactions are outliers (5-20 times it), so z-scores vary.
pub fn generate(users: u64, per_user: u64, seed: u64) -> impl Iterator<Item = Txn> {
    let anchor = anchor();
    let span_s: i64 = 30 * 24 * 3600;
    let step = (span_s / per_user.max(1) as i64).max(1);
    (1..=users).flat_map(move |user| {
        let mut rng = SplitMix64(seed ^ user.wrapping_mul(0xA24B_AED4_963E_E407));
        let typical = 5.0 + rng.unit() * 495.0;
        let merchant0 = rng.below(MERCHANTS.len() as u64) as usize;
        (0..per_user).map(move |i| {
            let mut amount = typical * (0.5 + rng.unit());
            if rng.below(50) == 0 {
                amount *= 5.0 + rng.unit() * 15.0;
            }
            let amount = (amount * 100.0).round() / 100.0;
            let back = (per_user - i) as i64 * step - rng.below(step as u64) as i64;
            let m = if rng.below(4) == 0 {
                rng.below(MERCHANTS.len() as u64) as usize
            } else {
                merchant0
            };
            Txn {
                user_id: user as i64,
                amount,
                ts: anchor - chrono::Duration::seconds(back),
                merchant: MERCHANTS[m].to_string(),
                category: CATEGORIES[m % CATEGORIES.len()].to_string(),
            }
        })
    })
}

/// Twenty transactions of `user_id` before `now`, 90 minutes apart: steady
/// amounts (10.00, 12.00) and, newest, a 5000.00 spike, so the user's
/// z-score is large and `zscore_high` follows the `zscore_above` threshold.
pub fn spike(user_id: i64, now: DateTime<Utc>) -> impl Iterator<Item = Txn> {
    (0..20i64).map(move |i| Txn {
        user_id,
        amount: match i {
            0 => 5000.0,
            i if i % 2 == 0 => 10.0,
            _ => 12.0,
        },
        ts: now - chrono::Duration::minutes(10 + i * 90),
        merchant: "m".into(),
        category: "c".into(),
    })
}

/// A default [`crate::Stack`] with a [`spike`] for `user_id` loaded on the
/// primary, the replica caught up (the worker reads the replica).
pub async fn stack_with_spike(user_id: i64) -> anyhow::Result<crate::Stack> {
    let stack = crate::Stack::start(crate::StackOptions::default()).await?;
    let db = stack.pg.primary.connect_superuser().await?;
    load(&db, spike(user_id, Utc::now())).await?;
    stack.pg.wait_replica_caught_up().await?;
    Ok(stack)
}

/// Appends `rows` to `transactions` with one text `COPY`; returns the
/// number of rows copied.
pub async fn load(
    client: &tokio_postgres::Client,
    rows: impl Iterator<Item = Txn>,
) -> anyhow::Result<u64> {
    let sink = client
        .copy_in("COPY transactions (user_id, transaction_amount, transaction_time, merchant, category) FROM STDIN")
        .await?;
    futures::pin_mut!(sink);
    let mut buf = String::with_capacity(1 << 20);
    for t in rows {
        // merchant/category come from fixed tables: nothing to escape.
        let _ = writeln!(
            buf,
            "{}\t{:.2}\t{}\t{}\t{}",
            t.user_id,
            t.amount,
            t.ts.format("%Y-%m-%d %H:%M:%S%.6f+00"),
            escape(&t.merchant),
            escape(&t.category)
        );
        if buf.len() >= (1 << 20) - 256 {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
            buf.reserve(1 << 20);
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    Ok(sink.finish().await?)
}

/// [`generate`]d transactions of `users` x `per_user` loaded with [`load`]
/// and moved so that the newest day is today (the generator is anchored at
/// a fixed date; the 1 h and 24 h windows then have something to count),
/// then `ANALYZE`d; returns the number of rows.
pub async fn load_recent(
    client: &tokio_postgres::Client,
    users: u64,
    per_user: u64,
    seed: u64,
) -> anyhow::Result<u64> {
    let rows = load(client, generate(users, per_user, seed)).await?;
    client
        .execute(
            "UPDATE transactions SET transaction_time = transaction_time + (now() - $1::text::timestamptz)",
            &[&anchor().to_rfc3339()],
        )
        .await?;
    client.execute("ANALYZE transactions", &[]).await?;
    Ok(rows)
}

/// COPY text escaping (backslash, tab, newline, carriage return).
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '\t', '\n', '\r']) {
        return s.into();
    }
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
        .into()
}
