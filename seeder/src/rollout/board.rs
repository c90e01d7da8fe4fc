//! The rollouts' statuses as `seeder serve`'s controller loop last computed them, so the
//! API answers a rollout's status from memory instead of replaying every outcome of it
//! from the fleet database on each request (seconds at a million devices).
//!
//! The loop publishes after every pass ([`super::drive::TICK`]), so counts are at most a
//! tick old. The policy itself is read from the repository on each request: when an
//! operator's pause, resume or abort signed a policy the loop has not seen yet, the answer
//! has the new state and the counts the loop last had. A rollout the loop has not reached
//! yet (the serve just started, or a rollout started a moment ago) is computed from the
//! database as `seeder rollout status` does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};
use protocol::rollout::RolloutPolicy;

use super::RolloutStatus;
use crate::repo::Repo;
use crate::{fleet, rollouts_role};

/// The last status of each rollout, by release name.
#[derive(Default)]
pub struct Board {
    statuses: Mutex<HashMap<String, Arc<RolloutStatus>>>,
    /// Whether this replica holds the controller's lease (`fleet::lease`) and decides.
    leading: AtomicBool,
}

impl Board {
    /// Whether this replica runs the rollout controller (decides waves) now.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
    }

    /// Replaces every status with those of the loop's latest pass.
    pub fn publish(&self, statuses: HashMap<String, Arc<RolloutStatus>>) {
        *self.statuses.lock().unwrap_or_else(|p| p.into_inner()) = statuses;
    }

    fn get(&self, release: &str) -> Option<Arc<RolloutStatus>> {
        self.statuses.lock().unwrap_or_else(|p| p.into_inner()).get(release).cloned()
    }

    /// Every rollout's status, or the one of release `name`; what `seeder rollout status`
    /// prints, from the loop's counts where it has them.
    pub fn status(&self, repo: &Repo, name: Option<&str>) -> Result<Vec<RolloutStatus>> {
        let mut out = Vec::new();
        let mut conn = None;
        for (release, bytes) in rollouts_role::current_policies(repo)? {
            if name.is_some_and(|n| n != release) {
                continue;
            }
            let policy = RolloutPolicy::decode(&bytes).map_err(|e| anyhow!("policy for {release}: {e}"))?;
            match self.get(&release) {
                Some(known) if known.id == policy.id => out.push(with_policy(&known, policy)?),
                _ => {
                    if conn.is_none() {
                        conn = Some(fleet::open_read(&fleet::location(&repo.dir))?);
                    }
                    out.push(super::status_from_database(conn.as_ref().and_then(Option::as_ref), policy)?);
                }
            }
        }
        if let (true, Some(n)) = (out.is_empty(), name) {
            bail!("no rollout of {n}; start one with `seeder rollout start {n} VERSION`");
        }
        Ok(out)
    }
}

/// `known` with the state of `policy`, which may be newer (an operator's command the loop
/// has not seen yet): the counts are the loop's, the state, wave and gates the policy's.
fn with_policy(known: &RolloutStatus, policy: RolloutPolicy) -> Result<RolloutStatus> {
    if known.seq == policy.seq {
        return Ok(known.clone());
    }
    let mut status = super::status_of(&super::controller_for(policy)?);
    for (wave, seen) in status.waves.iter_mut().zip(&known.waves) {
        wave.targeted = seen.targeted;
        wave.counts = seen.counts.clone();
    }
    status.sites = known.sites.clone();
    Ok(status)
}
