//! The gray release row of a namespace (`configd_gray`), changed only
//! inside a publish transaction (start, promote, abort), and the gray marks
//! (which versions started and ended one) read from the audit log.

use super::{Publish, StoreError};
use crate::gray::{changes_from_json, changes_json, Gray, Selector, MAX_MARKS};
use crate::store::Change;

/// What a publish does to the gray release of its namespace.
#[derive(Debug, Clone, Copy)]
pub enum GrayEffect<'a> {
    /// Nothing (a main publish; a gray in progress stays, over the new main).
    Keep,
    /// Starts one (none may be in progress).
    Start(&'a Selector, &'a [Change]),
    /// Ends the one in progress (promote or abort).
    End,
}

/// Applies `p.gray` in the publish transaction, after the namespace row is
/// locked; `current` is the version before the publish.
pub(super) async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    p: &Publish<'_>,
    current: u64,
) -> Result<(), StoreError> {
    let existing = tx
        .query_opt(
            "SELECT version FROM configd_gray WHERE namespace = $1",
            &[&p.ns],
        )
        .await?
        .map(|r| super::u(r.get(0)));
    match (p.gray, existing) {
        (GrayEffect::Keep, _) => Ok(()),
        (GrayEffect::Start(_, _), Some(v)) => Err(StoreError::GrayActive(v)),
        (GrayEffect::Start(selector, changes), None) => {
            let selector = serde_json::to_value(selector).expect("a selector serializes");
            tx.execute(
                "INSERT INTO configd_gray(namespace, version, selector, changes) VALUES ($1, $2, $3::text::jsonb, $4::text::jsonb)",
                &[
                    &p.ns,
                    &((current + 1) as i64),
                    &selector.to_string(),
                    &changes_json(changes).to_string(),
                ],
            )
            .await?;
            Ok(())
        }
        (GrayEffect::End, None) => Err(StoreError::NoGray),
        (GrayEffect::End, Some(_)) => {
            tx.execute("DELETE FROM configd_gray WHERE namespace = $1", &[&p.ns])
                .await?;
            Ok(())
        }
    }
}

/// The gray release in progress in `ns`, if any.
pub(super) async fn current(
    tx: &tokio_postgres::Transaction<'_>,
    ns: &str,
) -> Result<Option<Gray>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT version, selector::text, changes::text FROM configd_gray WHERE namespace = $1",
            &[&ns],
        )
        .await?;
    Ok(row.map(|r| {
        let selector: &str = r.get(1);
        let changes: &str = r.get(2);
        Gray {
            version: super::u(r.get(0)),
            selector: serde_json::from_str(selector).unwrap_or(Selector {
                labels: [("riskfeat.invalid/selector".into(), "none".into())].into(),
                percent: None,
            }),
            changes: changes_from_json(&serde_json::from_str(changes).unwrap_or_default()),
        }
    }))
}

/// Gray marks (version, is a start) ascending: after `from`, or the last
/// [`MAX_MARKS`].
pub(super) async fn marks(
    tx: &tokio_postgres::Transaction<'_>,
    ns: &str,
    from: Option<u64>,
) -> Result<Vec<(u64, bool)>, StoreError> {
    let from = from.map_or(-1, |v| v as i64);
    let rows = tx
        .query(
            "SELECT version, kind FROM configd_audits WHERE namespace = $1 AND version > $2 \
             AND kind IN ('gray_start', 'gray_promote', 'gray_abort') ORDER BY version DESC LIMIT $3",
            &[&ns, &from, &(MAX_MARKS as i64)],
        )
        .await?;
    let mut marks: Vec<(u64, bool)> = rows
        .iter()
        .map(|r| (super::u(r.get(0)), r.get::<_, &str>(1) == "gray_start"))
        .collect();
    marks.reverse();
    Ok(marks)
}
