//! The soak's faults: which kinds there are ([`FaultKind`]), when each
//! comes and for how long ([`Plan`], from the seed), and what happened
//! ([`FaultRecord`]). The injection itself is [`super::pod::Pod::inject`].
//!
//! The plan goes round the enabled kinds in a seeded order that changes
//! every round, so every enabled kind is injected once before any kind
//! comes twice; gaps and down times are drawn from the same seed. One
//! fault at a time: each ends (the component is back) before the next
//! gap starts.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// A kind of fault the soak can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Vault unavailable for 1-4 s: the server (on integrated storage) stopped
    /// with SIGTERM and started again, then unsealed; or cut at the TCP
    /// proxy in front of it (connections dropped and refused); or its
    /// process frozen with SIGSTOP (connections hang) and continued with
    /// SIGCONT.
    Vault,
    /// configd killed with SIGKILL, down 1-5 s, started again on its port.
    Configd,
    /// The PostgreSQL replica the worker reads stopped (fast shutdown),
    /// down 0-3 s more, started again.
    Replica,
    /// The agent container restarted: SIGTERM, down 1-5 s, started again
    /// with the same config and shared dir, the worker running throughout.
    Agent,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Vault,
        FaultKind::Configd,
        FaultKind::Replica,
        FaultKind::Agent,
    ];

    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Vault => "vault",
            FaultKind::Configd => "configd",
            FaultKind::Replica => "replica",
            FaultKind::Agent => "agent",
        }
    }

    /// The range the down time is drawn from.
    fn down_range(self) -> (Duration, Duration) {
        let s = Duration::from_secs;
        match self {
            FaultKind::Vault => (s(1), s(4)),
            FaultKind::Configd | FaultKind::Agent => (s(1), s(5)),
            FaultKind::Replica => (s(0), s(3)),
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {s:?}; known: {}", names.join(", "))
            })
    }
}

/// The next fault: wait `gap`, then inject `kind` for `down`.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub kind: FaultKind,
    pub gap: Duration,
    pub down: Duration,
    /// Picks a variant where a kind has several (Vault: 0 restart, 1 cut,
    /// 2 SIGSTOP): the kind's injections so far, plus a seeded offset, so
    /// consecutive injections of a kind go through its variants in turn.
    pub variant: u32,
}

/// Gaps between faults are drawn from this range.
const GAP: (Duration, Duration) = (Duration::from_secs(4), Duration::from_secs(12));

/// The seeded sequence of faults.
pub struct Plan {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    round: Vec<FaultKind>,
    /// The kinds handed out so far.
    given: Vec<FaultKind>,
    offset: u32,
}

impl Plan {
    /// A plan over `kinds` (duplicates ignored) from `seed`.
    pub fn new(seed: u64, kinds: &[FaultKind]) -> Plan {
        let mut kinds = kinds.to_vec();
        kinds.sort();
        kinds.dedup();
        let mut rng = StdRng::seed_from_u64(seed);
        Plan {
            offset: rng.random_range(0..6),
            rng,
            kinds,
            round: Vec::new(),
            given: Vec::new(),
        }
    }

    /// The next step; `None` when no kind is enabled.
    pub fn next_step(&mut self) -> Option<Step> {
        if self.round.is_empty() {
            self.round = self.kinds.clone();
            self.round.shuffle(&mut self.rng);
        }
        let kind = self.round.pop()?;
        self.given.push(kind);
        let (lo, hi) = kind.down_range();
        Some(Step {
            kind,
            gap: self.between(GAP.0, GAP.1),
            down: self.between(lo, hi),
            variant: self.offset + self.injected(kind),
        })
    }

    /// How many times `kind` was handed out before the last one.
    fn injected(&self, kind: FaultKind) -> u32 {
        self.given.iter().filter(|k| **k == kind).count() as u32 - 1
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let ms = self
            .rng
            .random_range(lo.as_millis() as u64..=hi.as_millis() as u64);
        Duration::from_millis(ms)
    }
}

/// One injected fault: what, how, when (since the soak started), and
/// whether the component came back.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// What was done, e.g. "SIGSTOP for 2.3 s".
    pub how: String,
    pub start: Duration,
    /// When the component was back (ready again).
    pub end: Duration,
    /// Set when it did not come back (a soak failure, not a harness one).
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enabled_kind_comes_once_per_round_and_the_seed_decides_the_rest() {
        let kinds = [FaultKind::Vault, FaultKind::Configd, FaultKind::Replica];
        let take = |seed| {
            let mut p = Plan::new(seed, &kinds);
            (0..6)
                .map(|_| p.next_step().unwrap())
                .map(|s| (s.kind, s.gap, s.down, s.variant))
                .collect::<Vec<_>>()
        };
        let a = take(7);
        assert_eq!(a, take(7), "same seed, same plan");
        assert_ne!(a, take(8), "another seed, another plan");
        for round in a.chunks(3) {
            let mut got: Vec<FaultKind> = round.iter().map(|s| s.0).collect();
            got.sort();
            assert_eq!(got, kinds.to_vec(), "{a:?}");
        }
        assert!(a.iter().all(|s| s.1 >= GAP.0 && s.1 <= GAP.1));
        // A kind's injections go through its variants in turn.
        let vault: Vec<u32> = a
            .iter()
            .filter(|s| s.0 == FaultKind::Vault)
            .map(|s| s.3)
            .collect();
        assert_eq!(vault[1], vault[0] + 1, "{a:?}");
        assert!(Plan::new(1, &[]).next_step().is_none());
        assert_eq!("agent".parse::<FaultKind>(), Ok(FaultKind::Agent));
        assert!("vaults"
            .parse::<FaultKind>()
            .unwrap_err()
            .contains("known: vault"));
    }
}
