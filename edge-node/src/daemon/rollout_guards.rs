//! The node's rollout state for its site: one [`SiteGuard`] per rollout whose signed policy
//! it holds, fed by the verified status reports of the devices it serves, answering each
//! device's "do you hold me back?" ([`EdgeHoldAnswer`]).
//!
//! A guard can only hold devices back — its site halted itself, or the site's install
//! budget is used up — never push one: each device evaluates the signed policy itself
//! (`protocol::rollout::Gate`). That is also why this state may be lost with a restart
//! without risk: a forgotten halt costs at most the failures it takes to halt again.

use protocol::edge::status::RolloutGuardStatus;
use protocol::rollout::{EdgeHold, MapSeed, PolicyView, RolloutReport, SiteGuard};
use protocol::wire::device::EdgeHoldAnswer;
use std::collections::BTreeMap;

/// Most rollouts a node keeps guards for: one per release name in practice; the cap keeps a
/// repository with many policies from growing the node's memory without bound.
const MAX_GUARDS: usize = 64;

/// Guards by rollout id.
#[derive(Default)]
pub struct RolloutGuards {
    guards: BTreeMap<String, SiteGuard>,
    /// The newest policy seen per rollout: (seq, state name), for status.
    policies: BTreeMap<String, (u64, &'static str)>,
}

/// A secret seed for a new guard's device maps (device ids are keys devices choose).
/// Should the OS's random source fail, the guard still runs, keyed by a fixed seed: losing
/// the site's local halt would cost more than hashing that ground ids could slow.
fn guard_seed() -> MapSeed {
    host::random::map_seed().unwrap_or_else(|e| {
        tracing::warn!("{e:#}; this rollout's site guard hashes device ids with a fixed seed");
        MapSeed([0; 16])
    })
}

impl RolloutGuards {
    /// A verified policy (its bytes): a new rollout gets a guard, a known one hears of the
    /// newer state. Bytes that do not parse are ignored (the device refuses them too).
    pub fn handle_policy(&mut self, bytes: &[u8]) {
        let Ok(policy) = PolicyView::parse(bytes) else {
            tracing::warn!("a signed rollout policy does not parse; devices will refuse it too");
            return;
        };
        let newest = self.policies.get(policy.id()).map_or(0, |(seq, _)| *seq);
        if policy.seq() >= newest {
            self.policies.insert(policy.id().to_string(), (policy.seq(), policy.phase().name()));
        }
        match self.guards.get_mut(policy.id()) {
            Some(guard) => {
                let update = guard.handle_policy(&policy);
                tracing::debug!(rollout = policy.id(), seq = policy.seq(), ?update, "rollout policy");
            }
            None => {
                if self.guards.len() >= MAX_GUARDS {
                    // The oldest ids go first; a current rollout is always re-added by its policy.
                    let oldest = self.guards.keys().next().cloned();
                    if let Some(id) = oldest {
                        self.guards.remove(&id);
                        self.policies.remove(&id);
                    }
                }
                self.guards.insert(policy.id().to_string(), SiteGuard::new(&policy, guard_seed()));
            }
        }
    }

    /// A verified, admitted report from a device of this site.
    pub fn handle_report(&mut self, report: &RolloutReport, now_unix: i64) {
        if let Some(guard) = self.guards.get_mut(&report.rollout_id) {
            let was_halted = guard.is_halted();
            guard.handle_report(report, now_unix);
            if guard.is_halted() && !was_halted {
                tracing::warn!(rollout = %report.rollout_id, tally = ?guard.tally(),
                    "this site's failures crossed the rollout's threshold: new installs here are held");
            }
        }
    }

    /// The answer for `device` in `rollout`: a rollout without a guard here holds nothing.
    pub fn hold(&mut self, rollout: &str, device: &[u8; 32], now_unix: i64) -> EdgeHoldAnswer {
        match self.guards.get_mut(rollout).map(|g| g.hold(device, now_unix)) {
            None | Some(EdgeHold::None) => EdgeHoldAnswer::None,
            Some(EdgeHold::SiteHalted) => EdgeHoldAnswer::SiteHalted,
            Some(EdgeHold::ConcurrencyFull { retry_at }) => EdgeHoldAnswer::ConcurrencyFull { retry_at },
        }
    }

    /// What `edge-node status` shows per rollout.
    pub fn status(&self) -> Vec<RolloutGuardStatus> {
        self.guards
            .iter()
            .map(|(id, guard)| {
                let tally = guard.tally();
                let (seq, state) = self.policies.get(id).copied().unwrap_or((0, ""));
                RolloutGuardStatus {
                    rollout: id.clone(),
                    policy_seq: seq,
                    state: state.to_string(),
                    site_halted: guard.is_halted(),
                    installing: tally.installing,
                    committed: tally.committed,
                    rolled_back: tally.rolled_back,
                    failed: tally.failed,
                }
            })
            .collect()
    }
}
