//! The soak's report: every answer that was not a 2xx sorted into the
//! documented degraded answers a fault explains and the real failures,
//! the faults injected, the leases and roles left behind, the secrets found
//! in logs; [`SoakReport::problems`] is what makes the run fail.
//!
//! Documented degraded answers (docs/api.md): a 200 marked `stale` or
//! `degraded` is always fine (it says what it is). A 503 with code
//! `database_unavailable`, `pool_exhausted` or `no_credential` is degraded
//! only while the database the worker reads is down: from a replica
//! restart's start to [`DEGRADED_GRACE`] after the worker answered again.
//! The same 503 at any other moment, every other status, every timeout and
//! every transport error is a failure.

use super::checks::Finding;
use super::faults::{FaultKind, FaultRecord};
use super::load::{Answer, Failure, Recorded};
use std::collections::BTreeMap;
use std::time::Duration;

/// The 503 codes docs/api.md gives for a database the worker cannot use.
pub const DEGRADED_CODES: &[&str] = &["database_unavailable", "pool_exhausted", "no_credential"];

/// How long after a replica restart's end its 503s still count as degraded
/// (requests that started before the worker answered again).
pub const DEGRADED_GRACE: Duration = Duration::from_secs(2);

/// Groups of failures listed in the report (the rest are only counted).
const EXAMPLES: usize = 20;

/// Whether `a` is a documented degraded answer given the `faults`.
pub fn is_documented_degraded(a: &Answer, faults: &[FaultRecord]) -> bool {
    let Failure::Status { status: 503, code } = &a.failure else {
        return false;
    };
    DEGRADED_CODES.contains(&code.as_str())
        && faults.iter().any(|f| {
            f.kind == FaultKind::Replica && f.start <= a.at && a.at <= f.end + DEGRADED_GRACE
        })
}

/// The fault in progress at `at`, if any.
fn during(at: Duration, faults: &[FaultRecord]) -> Option<&FaultRecord> {
    faults
        .iter()
        .find(|f| f.start <= at && at <= f.end + DEGRADED_GRACE)
}

/// Failures of one answer during one fault (or outside any).
#[derive(Debug, Clone)]
pub struct FailureGroup {
    /// E.g. "503 no_credential".
    pub answer: String,
    /// "during the agent fault at 17.2 s" or "outside any fault".
    pub when: String,
    pub count: u64,
    pub first: Duration,
    pub last: Duration,
}

impl std::fmt::Display for FailureGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} x {} {}, from {:.1} s to {:.1} s",
            self.count,
            self.answer,
            self.when,
            self.first.as_secs_f64(),
            self.last.as_secs_f64()
        )
    }
}

/// Everything a soak run found.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub seed: u64,
    pub ran_for: Duration,
    pub enabled: Vec<FaultKind>,
    pub faults: Vec<FaultRecord>,
    pub answers_2xx: u64,
    pub answers_stale: u64,
    pub answers_fallback: u64,
    /// Documented degraded answers, by answer ("503 database_unavailable").
    pub degraded: BTreeMap<String, u64>,
    /// Real failures, by answer.
    pub failures: BTreeMap<String, u64>,
    /// The failures grouped by answer and by the fault in progress (or
    /// none): how many, and the first and last time, in order of the first.
    pub failure_groups: Vec<FailureGroup>,
    pub first_generation: u64,
    pub last_generation: u64,
    /// Leases Vault held before the shutdown that the agent's state did
    /// not name.
    pub orphaned_leases: Vec<String>,
    /// Dynamic roles in pg_roles before the shutdown that the agent's state
    /// did not name.
    pub stray_roles: Vec<String>,
    /// Leases and dynamic roles still there after the shutdown.
    pub leases_after_shutdown: Vec<String>,
    pub roles_after_shutdown: Vec<String>,
    pub shutdown: String,
    /// How many secrets were looked for, by kind; how many logs read.
    pub secrets_tracked: BTreeMap<String, usize>,
    pub logs_scanned: usize,
    pub secrets_in_logs: Vec<Finding>,
}

impl SoakReport {
    /// Sorts the recorded answers into 2xx, degraded and failures.
    pub fn add_answers(&mut self, rec: &Recorded) {
        self.answers_2xx = rec.ok;
        self.answers_stale = rec.ok_stale;
        self.answers_fallback = rec.ok_degraded;
        for a in &rec.failures {
            let key = a.failure.to_string();
            if is_documented_degraded(a, &self.faults) {
                *self.degraded.entry(key).or_insert(0) += 1;
                continue;
            }
            *self.failures.entry(key.clone()).or_insert(0) += 1;
            let when = match during(a.at, &self.faults) {
                Some(f) => format!(
                    "during the {} fault at {:.1} s",
                    f.kind,
                    f.start.as_secs_f64()
                ),
                None => "outside any fault".into(),
            };
            let groups = &mut self.failure_groups;
            if let Some(g) = groups
                .iter_mut()
                .find(|g| g.answer == key && g.when == when)
            {
                g.count += 1;
                g.last = g.last.max(a.at);
            } else if groups.len() < EXAMPLES {
                groups.push(FailureGroup {
                    answer: key,
                    when,
                    count: 1,
                    first: a.at,
                    last: a.at,
                });
            }
        }
    }

    /// Why the run failed; empty when it is clean. Also fails a run that
    /// proved nothing: no 2xx, an enabled fault never injected, no
    /// credential rotation, no secret to look for.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let failed: u64 = self.failures.values().sum();
        if failed > 0 {
            p.push(format!(
                "{failed} answers outside the documented degraded ones: {:?}",
                self.failures
            ));
        }
        for f in self.faults.iter().filter(|f| f.error.is_some()) {
            p.push(format!(
                "after the {} fault at {:.1} s: {}",
                f.kind,
                f.start.as_secs_f64(),
                f.error.as_deref().unwrap_or_default()
            ));
        }
        let lists = [
            (
                "leases in Vault the agent did not know",
                &self.orphaned_leases,
            ),
            ("dynamic roles the agent did not know", &self.stray_roles),
            (
                "leases left after the shutdown",
                &self.leases_after_shutdown,
            ),
            (
                "dynamic roles left after the shutdown",
                &self.roles_after_shutdown,
            ),
        ];
        for (what, list) in lists {
            if !list.is_empty() {
                p.push(format!("{} {what}: {list:?}", list.len()));
            }
        }
        if !self.secrets_in_logs.is_empty() {
            p.push(format!(
                "{} secrets found in logs",
                self.secrets_in_logs.len()
            ));
        }
        if self.answers_2xx == 0 {
            p.push("no request was answered with a 2xx".into());
        }
        for kind in &self.enabled {
            if !self.faults.iter().any(|f| f.kind == *kind) {
                p.push(format!("the {kind} fault was never injected (run longer)"));
            }
        }
        if self.last_generation <= self.first_generation {
            p.push(format!(
                "no credential rotation happened (generation {} -> {})",
                self.first_generation, self.last_generation
            ));
        }
        if !self.secrets_tracked.contains_key("password")
            || !self.secrets_tracked.contains_key("token")
        {
            p.push(format!(
                "too few secrets to look for: {:?}",
                self.secrets_tracked
            ));
        }
        p
    }

    pub fn is_clean(&self) -> bool {
        self.problems().is_empty()
    }
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self.enabled.iter().map(|k| k.name()).collect();
        writeln!(
            f,
            "soak report: seed {}, {:.0} s, faults enabled: {}",
            self.seed,
            self.ran_for.as_secs_f64(),
            kinds.join(", ")
        )?;
        writeln!(f, "faults injected ({}):", self.faults.len())?;
        for r in &self.faults {
            let back = match &r.error {
                None => format!("back at {:.1} s", r.end.as_secs_f64()),
                Some(e) => format!("NOT BACK: {e}"),
            };
            writeln!(
                f,
                "  {:>6.1} s  {:<8} {}; {back}",
                r.start.as_secs_f64(),
                r.kind.name(),
                r.how
            )?;
        }
        writeln!(
            f,
            "answers: {} 2xx ({} marked stale, {} degraded/fallback); documented degraded: {:?}; \
             failures: {:?}",
            self.answers_2xx,
            self.answers_stale,
            self.answers_fallback,
            self.degraded,
            self.failures
        )?;
        for g in &self.failure_groups {
            writeln!(f, "  {g}")?;
        }
        writeln!(
            f,
            "credential generations: {} -> {}",
            self.first_generation, self.last_generation
        )?;
        writeln!(
            f,
            "leases: {} unknown to the agent before shutdown, {} left after; dynamic roles: {} \
             unknown before, {} left after",
            self.orphaned_leases.len(),
            self.leases_after_shutdown.len(),
            self.stray_roles.len(),
            self.roles_after_shutdown.len()
        )?;
        writeln!(f, "shutdown: {}", self.shutdown)?;
        writeln!(
            f,
            "secrets: {:?} looked for in {} logs; found {}",
            self.secrets_tracked,
            self.logs_scanned,
            self.secrets_in_logs.len()
        )?;
        for s in &self.secrets_in_logs {
            writeln!(f, "  {s}")?;
        }
        let problems = self.problems();
        if problems.is_empty() {
            writeln!(f, "result: CLEAN")
        } else {
            writeln!(f, "result: FAILED")?;
            problems.iter().try_for_each(|p| writeln!(f, "  - {p}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(at_s: u64, status: u16, code: &str) -> Answer {
        Answer {
            at: Duration::from_secs(at_s),
            failure: Failure::Status {
                status,
                code: code.into(),
            },
        }
    }

    fn fault(kind: FaultKind, start_s: u64, end_s: u64) -> FaultRecord {
        FaultRecord {
            kind,
            how: String::new(),
            start: Duration::from_secs(start_s),
            end: Duration::from_secs(end_s),
            error: None,
        }
    }

    #[test]
    fn a_503_is_degraded_only_while_the_replica_is_down() {
        let faults = [
            fault(FaultKind::Replica, 10, 14),
            fault(FaultKind::Agent, 30, 35),
        ];
        assert!(is_documented_degraded(
            &answer(12, 503, "database_unavailable"),
            &faults
        ));
        assert!(is_documented_degraded(
            &answer(15, 503, "pool_exhausted"),
            &faults
        ));
        // After the grace, during another fault, or another answer: failures.
        assert!(!is_documented_degraded(
            &answer(17, 503, "database_unavailable"),
            &faults
        ));
        assert!(!is_documented_degraded(
            &answer(32, 503, "no_credential"),
            &faults
        ));
        assert!(!is_documented_degraded(
            &answer(12, 500, "database_error"),
            &faults
        ));
        let timeout = Answer {
            at: Duration::from_secs(12),
            failure: Failure::Timeout,
        };
        assert!(!is_documented_degraded(&timeout, &faults));

        let mut report = SoakReport {
            faults: faults.to_vec(),
            ..SoakReport::default()
        };
        report.add_answers(&Recorded {
            ok: 10,
            failures: vec![
                answer(12, 503, "database_unavailable"),
                answer(32, 503, "no_credential"),
            ],
            ..Recorded::default()
        });
        assert_eq!(report.degraded["503 database_unavailable"], 1);
        assert_eq!(report.failures["503 no_credential"], 1);
        assert!(
            report.failure_groups[0]
                .to_string()
                .starts_with("1 x 503 no_credential during the agent fault at 30.0 s"),
            "{report}"
        );
        assert!(!report.is_clean());
    }

    #[test]
    fn a_run_that_proves_nothing_is_not_clean() {
        let report = SoakReport {
            enabled: vec![FaultKind::Vault],
            ..SoakReport::default()
        };
        let p = report.problems().join("\n");
        riskfeat_shared::testing::assert_contains_all(
            &p,
            &[
                "no request",
                "vault fault was never injected",
                "no credential rotation",
                "too few secrets",
            ],
        );
    }
}
