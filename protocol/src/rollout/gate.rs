//! The device's rollout gate: may this device download, or switch to, the rollout's release
//! now? No heap, no clock: the same code on an MCU, a Linux agent and in simnet.
//!
//! The device decides from the signed policy it verified itself. Its edge node also answers
//! ([`EdgeHold`]), but that answer can only *add* a hold — a site halt or a full concurrency
//! budget — never lift one: the edge is not trusted with the policy's authority, so a
//! hostile edge answering "go" for a device outside its wave or outside its window changes
//! nothing. An edge that holds a device back dishonestly only delays it, which an edge can
//! do anyway by not serving chunks.
//!
//! Two decision points, matching the install engine's two questions:
//! - [`Gate::download_decision`] (`Action::AskGate`): fetching into the inactive slot is
//!   harmless to the running system, so it may run outside maintenance windows (pre-staging)
//!   as soon as the device's wave is current;
//! - [`Gate::switch_decision`] (`Action::AskSwitch`): pointing the bootloader at the new
//!   slot and rebooting happen only inside a window.
//!
//! A paused, halted or aborted rollout starts no new download and no new switch. A device
//! that already switched is not asked again: its trial, commit or rollback run normally.
//!
//! Non-goals: checking the policy's signature or sequence number (the TUF client does), and
//! checking that the offered manifest is the release the policy names — the driver calls
//! [`super::RolloutRelease::matches`] before it asks the gate.

use super::policy::{Phase, PolicyView};
use super::{select, window};
use crate::install::GateDecision;
use crate::time::{Duration, Instant};

/// What the device's edge node says about its site. It can only hold a device back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdgeHold {
    /// No hold (or no edge reachable: the device's own evaluation stands).
    None,
    /// The site halted itself after local failures ([`super::SiteGuard`]).
    SiteHalted,
    /// The site's concurrent-install budget is used up; ask again at `retry_at` (unix s).
    ConcurrencyFull {
        /// When to ask again, unix seconds.
        retry_at: i64,
    },
}

/// Why no new install may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The publisher paused the rollout.
    Paused,
    /// The rollout halted; the code says why.
    Halted {
        /// The policy's halt code.
        code: u16,
    },
    /// The rollout was aborted.
    Aborted,
    /// The device's site halted itself.
    SiteHalted,
}

/// The gate's answer, in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateVerdict {
    /// Go ahead.
    Proceed,
    /// The device's wave is current but not now: a window or the site's concurrency budget.
    WaitUntil(i64),
    /// The device's wave has not started; ask again at `recheck_at` with a fresh policy.
    NotInRolloutYet {
        /// When the wave could have advanced at the earliest (or the recheck interval).
        recheck_at: i64,
    },
    /// The rollout (or the site) stopped new installs.
    Stopped(StopReason),
}

/// The gate's own timing policy; [`Gate::default`] suits devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// Longest a device waits before asking again, whatever the verdict: the policy may
    /// change (a resume, a halt, an advance) and the device only sees it when it asks.
    pub max_wait_secs: u32,
    /// Shortest wait an edge's concurrency hold imposes, so a `retry_at` in the past cannot
    /// make a device spin.
    pub min_edge_retry_secs: u32,
}

impl Default for Gate {
    /// Ask again at least hourly; an edge's concurrency hold lasts at least 10 s.
    fn default() -> Self {
        Gate { max_wait_secs: 3600, min_edge_retry_secs: 10 }
    }
}

impl Gate {
    /// May the device fetch the release into its inactive slot now? Windows do not apply
    /// (pre-staging); the wave, the rollout's state and the edge's hold do.
    pub fn download_decision(
        &self,
        policy: &PolicyView<'_>,
        device_id: &[u8; 32],
        unix_now: i64,
        edge_hold: EdgeHold,
    ) -> GateVerdict {
        match self.rollout_verdict(policy, device_id, unix_now) {
            Some(verdict) => verdict,
            None => self.apply_edge_hold(None, unix_now, edge_hold),
        }
    }

    /// May the device point its bootloader at the verified new slot and reboot now? All of
    /// the download's conditions, and the site must be inside a maintenance window.
    pub fn switch_decision(
        &self,
        policy: &PolicyView<'_>,
        device_id: &[u8; 32],
        site: &str,
        unix_now: i64,
        edge_hold: EdgeHold,
    ) -> GateVerdict {
        if let Some(verdict) = self.rollout_verdict(policy, device_id, unix_now) {
            return verdict;
        }
        let window_wait = match window::next_open(policy.windows(), site, unix_now) {
            Some(at) if at <= unix_now => None,
            Some(at) => Some(at),
            // Cannot happen with a validated policy; waiting is the safe reading.
            None => Some(unix_now.saturating_add(self.max_wait_secs as i64)),
        };
        self.apply_edge_hold(window_wait, unix_now, edge_hold)
    }

    /// The engine's form of a verdict: a time on the driver's [`Instant`] clock. Every wait
    /// is capped at [`Gate::max_wait_secs`] so the device asks again (with a fresh policy)
    /// at least that often; `Stopped` waits exactly that long.
    pub fn engine_decision(&self, verdict: GateVerdict, now: Instant, unix_now: i64) -> GateDecision {
        let until = match verdict {
            GateVerdict::Proceed => return GateDecision::Proceed,
            GateVerdict::WaitUntil(at) | GateVerdict::NotInRolloutYet { recheck_at: at } => at,
            GateVerdict::Stopped(_) => unix_now.saturating_add(self.max_wait_secs as i64),
        };
        let wait_secs = until.saturating_sub(unix_now).clamp(1, self.max_wait_secs.max(1) as i64) as u64;
        GateDecision::WaitUntil(now + Duration(wait_secs.saturating_mul(1_000_000)))
    }

    /// The verdict the policy alone gives when it says no: state, then wave.
    fn rollout_verdict(&self, policy: &PolicyView<'_>, device_id: &[u8; 32], unix_now: i64) -> Option<GateVerdict> {
        match policy.phase() {
            Phase::Running | Phase::Complete => {}
            Phase::Paused => return Some(GateVerdict::Stopped(StopReason::Paused)),
            Phase::Halted => {
                let code = policy.halt().map_or(0, |(code, _)| code);
                return Some(GateVerdict::Stopped(StopReason::Halted { code }));
            }
            Phase::Aborted => return Some(GateVerdict::Stopped(StopReason::Aborted)),
        }
        let current = policy.current_wave();
        match select::wave_of(policy, device_id) {
            Some(wave) if wave <= current => None,
            _ => {
                // The controller advances no earlier than the current wave's soak time.
                let soak = policy.wave(current).map_or(0, |w| w.min_soak_secs as i64);
                let soak_end = policy.wave_started_at().saturating_add(soak);
                let recheck_at = soak_end.max(unix_now.saturating_add(self.max_wait_secs as i64));
                Some(GateVerdict::NotInRolloutYet { recheck_at })
            }
        }
    }

    /// Adds the edge's hold to what the device decided itself (`wait`: a closed window's
    /// opening). The hold can only make the answer later, never earlier.
    fn apply_edge_hold(&self, wait: Option<i64>, unix_now: i64, edge_hold: EdgeHold) -> GateVerdict {
        let edge_wait = match edge_hold {
            EdgeHold::None => None,
            EdgeHold::SiteHalted => return GateVerdict::Stopped(StopReason::SiteHalted),
            EdgeHold::ConcurrencyFull { retry_at } => {
                let earliest = unix_now.saturating_add(self.min_edge_retry_secs as i64);
                Some(retry_at.max(earliest))
            }
        };
        match wait.max(edge_wait) {
            Some(at) => GateVerdict::WaitUntil(at),
            None => GateVerdict::Proceed,
        }
    }
}
