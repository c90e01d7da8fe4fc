//! A rollout's [`Controller`] fed from the fleet database: every outcome an enrolled device
//! reported for the rollout (the database holds only reports that verified again and came
//! from enrolled keys), in the order they were stored.
//!
//! The database is the controller's memory: `seeder serve` rebuilds a controller from it on
//! start (and whenever an operator's command changed the policy under it), then feeds it
//! what arrives, by event id. A resume after a halt accepted the failures counted until
//! then; the rebuild replays that too (events stored before the resume are fed to a halted
//! copy of the policy, which is then resumed), so a restarted seeder does not halt again on
//! failures an operator already accepted. The previous rollout of the same release name is
//! its baseline: a release significantly worse than it halts even under the fixed threshold.

use std::collections::BTreeMap;

use crate::fleet::Db as Connection;
use anyhow::{anyhow, Result};
use protocol::rollout::{Controller, Outcome, RolloutPolicy, RolloutReport, RolloutState};

use super::{Counts, RolloutStatus, SiteStatus};

/// A controller, how far into the database it has read, and what its status shows besides
/// the controller's own tallies, kept up to date as outcomes are fed so a status is built
/// without reading the database (a million devices' outcomes take seconds to replay).
pub struct Tracked {
    /// The rollout's controller.
    pub controller: Controller,
    /// The last `status_events.id` fed.
    cursor: i64,
    /// Per site: its devices by latest outcome.
    site_counts: BTreeMap<String, Counts>,
    /// Enrolled devices of the release's hardware class, as last counted.
    targeted: Targeted,
    /// The newest enrolled device (`devices.id`) when they were counted.
    counted_up_to: i64,
}

/// Enrolled devices of a rollout's hardware class in each wave (not cumulative), in all and
/// per site.
#[derive(Default)]
pub struct Targeted {
    /// In each wave.
    pub per_wave: Vec<u32>,
    /// Per site, in each wave.
    pub per_site: BTreeMap<String, Vec<u32>>,
}

/// One stored outcome.
struct Stored {
    id: i64,
    site: String,
    report: RolloutReport,
}

impl Tracked {
    /// A controller for `policy` with every stored outcome of its rollout fed.
    pub fn rebuild(conn: &Connection, policy: RolloutPolicy) -> Result<Tracked> {
        let resumed_at = last_resume_after_halt(conn, &policy.id)?;
        let controller = match (resumed_at, &policy.state) {
            (Some(_), RolloutState::Running) if policy.seq > 1 => {
                let halted = RolloutPolicy {
                    seq: policy.seq - 1,
                    state: RolloutState::Halted { code: 0, reason: "before the resume".into() },
                    ..policy.clone()
                };
                super::controller_for(halted)?
            }
            _ => super::controller_for(policy.clone())?,
        };
        let mut tracked = Tracked {
            controller,
            cursor: 0,
            site_counts: BTreeMap::new(),
            targeted: Targeted::default(),
            counted_up_to: 0,
        };
        if let (Some(at), RolloutState::Running) = (resumed_at, &policy.state) {
            if tracked.controller.policy().seq + 1 == policy.seq {
                tracked.feed_while(conn, |report| report.at < at)?;
                tracked.controller.resume(policy.wave_started_at).map_err(|e| anyhow!("{e}"))?;
            }
        }
        tracked.feed(conn)?;
        tracked.count_targeted(conn)?;
        if let Some((committed, failed)) = previous_release_outcomes(conn, &policy)? {
            tracked.controller.handle_baseline(committed, failed);
        }
        Ok(tracked)
    }

    /// Tells the controller how many enrolled devices each wave targets (enrollment changes
    /// while a rollout runs, so `seeder serve` calls this now and then).
    ///
    /// A fleet with no enrolled device of the release's hardware class tells the controller
    /// nothing: its waves then wait for `min_reports` as usual, rather than advance with no
    /// health gate at all because nobody was enrolled.
    pub fn count_targeted(&mut self, conn: &Connection) -> Result<()> {
        self.counted_up_to = newest_device(conn)?;
        self.targeted = targeted(conn, self.controller.policy())?;
        if self.targeted.per_wave.iter().any(|&n| n > 0) {
            self.controller.handle_targeted(&self.targeted.per_wave);
        }
        Ok(())
    }

    /// Whether devices were enrolled since they were last counted (`newest`: the newest
    /// `devices.id` now; devices are never removed).
    pub fn enrolled_since_count(&self, newest: i64) -> bool {
        newest != self.counted_up_to
    }

    /// What `seeder rollout status` shows: the controller's waves and decisions, the
    /// devices each wave targets, and per site its targeted devices (those in a started
    /// wave) and their latest outcomes.
    pub fn status(&self) -> RolloutStatus {
        let mut status = super::status_of(&self.controller);
        for (wave, targeted) in status.waves.iter_mut().zip(&self.targeted.per_wave) {
            wave.targeted = *targeted;
        }
        let started = self.controller.policy().current_wave + 1;
        let mut sites: BTreeMap<&str, SiteStatus> = BTreeMap::new();
        for (site, per_wave) in &self.targeted.per_site {
            let entry = sites.entry(site).or_insert_with(|| SiteStatus { site: site.clone(), ..SiteStatus::default() });
            entry.targeted = per_wave.iter().take(started).sum();
        }
        for (site, counts) in &self.site_counts {
            let entry = sites.entry(site).or_insert_with(|| SiteStatus { site: site.clone(), ..SiteStatus::default() });
            entry.counts = counts.clone();
            entry.counts.failure_percent = counts.final_failure_percent();
        }
        status.sites = sites.into_values().collect();
        status
    }

    /// Feeds every outcome stored since the last call.
    pub fn feed(&mut self, conn: &Connection) -> Result<usize> {
        self.feed_while(conn, |_| true)
    }

    fn feed_while(&mut self, conn: &Connection, mut take: impl FnMut(&RolloutReport) -> bool) -> Result<usize> {
        let events = stored_outcomes(conn, &self.controller.policy().id, self.cursor)?;
        let mut fed = 0;
        for event in events {
            if !take(&event.report) {
                break;
            }
            self.cursor = event.id;
            let now = event.report.at;
            // Per site, each device's latest outcome as the controller counts it (the
            // controller keeps it; a superseded one is un-counted).
            let previous = self.controller.outcome_of(&event.report.device_id);
            if self.controller.handle_report(&event.report, now) {
                let counts = self.site_counts.entry(event.site).or_default();
                if let Some(previous) = previous {
                    counts.add(previous, -1);
                }
                counts.add(event.report.outcome, 1);
            }
            fed += 1;
        }
        Ok(fed)
    }
}

/// The baseline a rollout is compared with: the final outcomes (latest per device) of the
/// previous rollout of the same release name and hardware class, if there was one.
fn previous_release_outcomes(conn: &Connection, policy: &RolloutPolicy) -> Result<Option<(u64, u64)>> {
    let previous: Option<String> = conn.query_opt(
        "SELECT id FROM rollouts WHERE release_name = ?1 AND hw_class = ?2 AND id != ?3
         ORDER BY created_at DESC, rowid DESC LIMIT 1",
        &[&policy.release.name, &policy.release.hw_class, &policy.id],
        |row| row.get(0),
    )?;
    let Some(previous) = previous else { return Ok(None) };
    // Each device's latest final outcome: the event with the highest id per device.
    let results = conn.query(
        "SELECT result FROM status_events WHERE id IN
           (SELECT max(id) FROM status_events
            WHERE rollout = ?1 AND result IN ('committed', 'rolled-back', 'failed') GROUP BY device)",
        &[&previous],
        |row| row.get::<String>(0),
    )?;
    let (mut committed, mut failed) = (0u64, 0u64);
    for result in results {
        match result.as_str() {
            "committed" => committed += 1,
            _ => failed += 1,
        }
    }
    Ok((committed + failed > 0).then_some((committed, failed)))
}

/// The newest enrolled device's row id (0 with none): it moves with every enrollment.
pub fn newest_device(conn: &Connection) -> Result<i64> {
    conn.query_one("SELECT coalesce(max(id), 0) FROM devices", &[], |r| r.get(0))
}

/// Enrolled devices of the policy's hardware class in each wave, in all and per site.
pub fn targeted(conn: &Connection, policy: &RolloutPolicy) -> Result<Targeted> {
    let waves = policy.waves.len();
    let mut out = Targeted { per_wave: vec![0; waves], per_site: BTreeMap::new() };
    conn.query("SELECT public_key, site FROM devices WHERE hw_class = ?1", &[&policy.release.hw_class], |row| {
        let Ok(key) = <[u8; 32]>::try_from(row.get::<Vec<u8>>(0)?) else { return Ok(()) };
        let Some(wave) = policy.wave_of(&key) else { return Ok(()) };
        out.per_wave[wave] += 1;
        let site: String = row.get(1)?;
        match out.per_site.get_mut(&site) {
            Some(per_wave) => per_wave[wave] += 1,
            None => {
                let mut per_wave = vec![0; waves];
                per_wave[wave] = 1;
                out.per_site.insert(site, per_wave);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// When the rollout was last resumed after a halt, if it was.
fn last_resume_after_halt(conn: &Connection, rollout: &str) -> Result<Option<i64>> {
    let transitions = crate::fleet::rollouts::transitions(conn, rollout)?;
    Ok(transitions.iter().rev().find(|t| t.from == "halted" && t.to == "running").map(|t| t.at))
}

/// Outcomes of `rollout` stored after event `after`, oldest first, with the device's site.
/// The time of each is when the seeder stored it (a device's clock is not trusted).
fn stored_outcomes(conn: &Connection, rollout: &str, after: i64) -> Result<Vec<Stored>> {
    let rows = conn.query(
        "SELECT e.id, d.public_key, d.site, e.result, e.error_code, e.received_at
         FROM status_events e JOIN devices d ON d.id = e.device
         WHERE e.rollout = ?1 AND e.id > ?2 AND e.result IS NOT NULL ORDER BY e.id",
        &[&rollout, &after],
        |row| {
            Ok((
                row.get::<i64>(0)?,
                row.get::<Vec<u8>>(1)?,
                row.get::<String>(2)?,
                row.get::<String>(3)?,
                row.get::<Option<i64>>(4)?,
                row.get::<i64>(5)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for (id, key, site, result, error_code, at) in rows {
        let Ok(device_id) = <[u8; 32]>::try_from(key.as_slice()) else { continue };
        let outcome = match result.as_str() {
            "installing" => Outcome::Installing,
            "committed" => Outcome::Committed,
            "rolled-back" => Outcome::RolledBack,
            "failed" => Outcome::Failed(error_code.unwrap_or(0).clamp(0, u16::MAX as i64) as u16),
            _ => continue,
        };
        out.push(Stored {
            id,
            site,
            report: RolloutReport { device_id, rollout_id: rollout.to_string(), outcome, at },
        });
    }
    Ok(out)
}
