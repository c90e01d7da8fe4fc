//! An edge node's guard for its own site: a local halt and a concurrent-install budget.
//!
//! Why local: a site whose backhaul is down (or slow to forward reports) must still stop a
//! bad release on its own; the publisher's controller only learns of the failures when the
//! reports arrive. The guard counts the verified reports of its site's devices for one
//! rollout (latest outcome per device, as the controller counts) and answers each device's
//! question with an [`EdgeHold`], which the device's gate can only add to its own decision.
//!
//! **When a site halts.** The controller waits for `min_reports` outcomes per wave; a site
//! may never see that many, and must stop a release that bricks its devices after very few.
//! But one unlucky device must not halt a site either: a site halted with no newer policy to
//! lift it (the rollout completed) never updates again. So the guard halts when its failures
//! are *significantly* above the policy's threshold: at least [`SITE_MIN_FAILURES`] failures,
//! and the chance of seeing that many among its final outcomes if the true failure rate were
//! the threshold is below [`SITE_ALPHA`] (the exact binomial tail the controller uses). With a
//! 5 % limit a release that fails everywhere halts a site after 2 outcomes (p = 0.0025); a
//! release failing 0.1 % of installs essentially never halts one (2 failures among a site's
//! first 20 outcomes happen with p ≈ 2·10⁻⁴ at 0.1 %, and even then are not significant).
//!
//! **Sticky halt.** Once the site halted, it stays halted until a newer signed policy
//! (higher `seq` than the one in force when the site halted) says `Running`: that is the
//! publisher deciding, after the halt, that the rollout goes on — a resume, or an advance
//! made with the site's forwarded reports in hand. The outcomes counted before are then
//! accepted, as the controller accepts them on resume, and the site judges from there. A
//! replayed older policy cannot lift the halt (its `seq` is not higher); the publisher can
//! keep a site halted by halting the rollout. Limitation: a publisher that never received
//! the site's reports and advances a wave lifts the halt too; the site halts again on the
//! next failure.
//!
//! **Concurrency.** Devices whose latest outcome is `Installing` (heard from within
//! [`INSTALLING_STALE_SECS`], so a device that died mid-install frees its place) plus
//! devices just admitted but not yet reporting ([`RESERVATION_SECS`]) count against
//! `max_concurrent_per_site`.

use alloc::string::String;

use super::controller::Tally;
use super::device_map::{device_map, DeviceMap, MapSeed};
use super::gate::EdgeHold;
use super::policy::{limits, HealthGate, Phase, PolicyView};
use super::report::{Outcome, RolloutReport};
use crate::id_order::Bytes32;

/// Fewest failures that may halt a site: one device's bad luck never does.
pub const SITE_MIN_FAILURES: u32 = 2;
/// A site halts when its failures would happen with less than this chance at the policy's
/// failure threshold.
pub const SITE_ALPHA: f64 = 0.01;
/// A device reported `Installing` longer ago than this no longer holds a place.
pub const INSTALLING_STALE_SECS: i64 = 2 * 3600;
/// How long a device admitted by [`SiteGuard::hold`] holds a place before its first report.
pub const RESERVATION_SECS: i64 = 600;
/// When a device turned away for concurrency should ask again.
pub const CONCURRENCY_RETRY_SECS: i64 = 300;
/// Devices one guard remembers; past it the one heard from longest ago is forgotten.
pub const MAX_DEVICES: usize = 16_384;

/// How [`SiteGuard::handle_policy`] took a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyUpdate {
    /// Newer than the one in force: it is now.
    Accepted,
    /// Accepted, and it lifted the site's local halt.
    Resumed,
    /// Not newer (a replay, or the same one again): ignored.
    Stale,
    /// A policy of another rollout: ignored.
    OtherRollout,
}

#[derive(Debug, Clone, Copy)]
struct DeviceEntry {
    outcome: Outcome,
    /// The report's time (ordering of a device's reports).
    at: i64,
    /// The edge's time when it was last heard from (staleness, eviction).
    seen: i64,
}

/// One site's guard for one rollout.
#[derive(Debug, Clone)]
pub struct SiteGuard {
    rollout_id: String,
    seq: u64,
    phase: Phase,
    health: HealthGate,
    max_concurrent: u32,
    devices: DeviceMap<DeviceEntry>,
    reservations: DeviceMap<i64>,
    /// The site's tally, and the part of it a lifted halt accepted.
    tally: Tally,
    accepted: Tally,
    /// The policy `seq` in force when the site halted itself.
    halted_at_seq: Option<u64>,
}

impl SiteGuard {
    /// A guard for the rollout `policy` describes (a verified policy); `seed` keys its
    /// device maps (see [`MapSeed`]).
    pub fn new(policy: &PolicyView<'_>, seed: MapSeed) -> SiteGuard {
        SiteGuard {
            rollout_id: policy.id().into(),
            seq: policy.seq(),
            phase: policy.phase(),
            health: policy.health(),
            max_concurrent: policy.max_concurrent_per_site(),
            devices: device_map(seed),
            reservations: device_map(seed),
            tally: Tally::default(),
            accepted: Tally::default(),
            halted_at_seq: None,
        }
    }

    /// A newer verified policy for this rollout.
    pub fn handle_policy(&mut self, policy: &PolicyView<'_>) -> PolicyUpdate {
        if policy.id() != self.rollout_id {
            return PolicyUpdate::OtherRollout;
        }
        if policy.seq() <= self.seq {
            return PolicyUpdate::Stale;
        }
        self.seq = policy.seq();
        self.phase = policy.phase();
        self.health = policy.health();
        self.max_concurrent = policy.max_concurrent_per_site();
        match self.halted_at_seq {
            // A newer Running or Complete policy is the publisher deciding, after the halt,
            // that the rollout goes on (a Complete one is an advance like any other).
            Some(at) if matches!(policy.phase(), Phase::Running | Phase::Complete) && policy.seq() > at => {
                self.halted_at_seq = None;
                self.accepted = self.tally;
                PolicyUpdate::Resumed
            }
            _ => PolicyUpdate::Accepted,
        }
    }

    /// Counts a verified report from a device of this site; returns whether it counted.
    /// May halt the site.
    pub fn handle_report(&mut self, report: &RolloutReport, now_unix: i64) -> bool {
        if report.rollout_id != self.rollout_id {
            return false;
        }
        let at = report.at.min(now_unix);
        let device = Bytes32(report.device_id);
        let entry = DeviceEntry { outcome: report.outcome, at, seen: now_unix };
        // A device reporting again is updated in place: one probe of the site's map.
        match self.devices.get_mut(&device) {
            Some(previous) => {
                if !report.supersedes_at(at, previous.outcome, previous.at) {
                    return false;
                }
                self.tally.count(previous.outcome, false);
                self.tally.count(report.outcome, true);
                *previous = entry;
            }
            None => {
                if self.devices.len() >= MAX_DEVICES {
                    self.forget_oldest();
                }
                self.tally.count(report.outcome, true);
                self.devices.insert(device, entry);
            }
        }
        // (Most sites admit without a concurrency budget, and hold no reservations.)
        if !self.reservations.is_empty() {
            self.reservations.remove(&device);
        }
        if self.halted_at_seq.is_none() && self.over_threshold() {
            self.halted_at_seq = Some(self.seq);
        }
        true
    }

    /// What the edge tells `device_id` at `now_unix`. Admitting a device (`EdgeHold::None`
    /// under a concurrency budget) reserves its place until it reports.
    pub fn hold(&mut self, device_id: &[u8; 32], now_unix: i64) -> EdgeHold {
        if self.halted_at_seq.is_some() {
            return EdgeHold::SiteHalted;
        }
        if self.max_concurrent == 0 {
            return EdgeHold::None;
        }
        self.reservations.retain(|_, at| now_unix.saturating_sub(*at) < RESERVATION_SECS);
        let device_id = &Bytes32(*device_id);
        let installing = |id: &Bytes32, entry: &DeviceEntry| {
            id != device_id
                && entry.outcome == Outcome::Installing
                && now_unix.saturating_sub(entry.seen) < INSTALLING_STALE_SECS
        };
        let busy = self.devices.iter().filter(|(id, e)| installing(id, e)).count()
            + self
                .reservations
                .keys()
                .filter(|id| *id != device_id && !self.devices.get(*id).is_some_and(|e| installing(id, e)))
                .count();
        if busy >= self.max_concurrent as usize {
            return EdgeHold::ConcurrencyFull { retry_at: now_unix.saturating_add(CONCURRENCY_RETRY_SECS) };
        }
        self.reservations.insert(*device_id, now_unix);
        EdgeHold::None
    }

    /// Whether the site halted itself.
    pub fn is_halted(&self) -> bool {
        self.halted_at_seq.is_some()
    }

    /// The site's counts (latest outcome per device).
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// The rollout this guard is for.
    pub fn rollout_id(&self) -> &str {
        &self.rollout_id
    }

    fn over_threshold(&self) -> bool {
        let judged = self.tally.saturating_sub(&self.accepted);
        let (failures, finals) = (judged.failures(), judged.finals());
        if failures < SITE_MIN_FAILURES {
            return false;
        }
        let threshold = self.health.max_failure_ppm as f64 / limits::FULL_PPM as f64;
        super::controller::binomial_upper_tail(failures as u64, finals as u64, threshold) < SITE_ALPHA
    }

    /// Forgets the device heard from longest ago; of several heard from at once, the one
    /// with the smallest id, so the choice does not depend on the map's order.
    fn forget_oldest(&mut self) {
        let oldest = self.devices.iter().min_by_key(|(id, e)| (e.seen, **id)).map(|(id, e)| (*id, e.outcome));
        if let Some((id, outcome)) = oldest {
            self.devices.remove(&id);
            self.tally.count(outcome, false);
        }
    }
}
