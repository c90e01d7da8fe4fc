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

use anyhow::{anyhow, Result};
use protocol::rollout::{Controller, Outcome, RolloutPolicy, RolloutReport, RolloutState};
use rusqlite::{params, Connection, OptionalExtension};

/// A controller and how far into the database it has read.
pub struct Tracked {
    /// The rollout's controller.
    pub controller: Controller,
    /// The last `status_events.id` fed.
    cursor: i64,
    /// Latest outcome per device, by site, for `seeder rollout status`.
    pub by_site: BTreeMap<String, BTreeMap<[u8; 32], Outcome>>,
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
                Controller::new(halted).map_err(|e| anyhow!("{e}"))?
            }
            _ => Controller::new(policy.clone()).map_err(|e| anyhow!("{e}"))?,
        };
        let mut tracked = Tracked { controller, cursor: 0, by_site: BTreeMap::new() };
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
        let per_wave = targeted_per_wave(conn, self.controller.policy())?;
        if per_wave.iter().any(|&n| n > 0) {
            self.controller.handle_targeted(&per_wave);
        }
        Ok(())
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
            self.controller.handle_report(&event.report, now);
            self.by_site.entry(event.site).or_default().insert(event.report.device_id, event.report.outcome);
            fed += 1;
        }
        Ok(fed)
    }
}

/// The baseline a rollout is compared with: the final outcomes (latest per device) of the
/// previous rollout of the same release name and hardware class, if there was one.
fn previous_release_outcomes(conn: &Connection, policy: &RolloutPolicy) -> Result<Option<(u64, u64)>> {
    let previous: Option<String> = conn
        .query_row(
            "SELECT id FROM rollouts WHERE release_name = ?1 AND hw_class = ?2 AND id != ?3
             ORDER BY created_at DESC, rowid DESC LIMIT 1",
            params![policy.release.name, policy.release.hw_class, policy.id],
            |row| row.get(0),
        )
        .optional()?;
    let Some(previous) = previous else { return Ok(None) };
    // SQLite returns the bare column of the row that holds MAX(id): each device's latest.
    let mut stmt = conn.prepare(
        "SELECT result, MAX(id) FROM status_events
         WHERE rollout = ?1 AND result IN ('committed', 'rolled-back', 'failed') GROUP BY device",
    )?;
    let (mut committed, mut failed) = (0u64, 0u64);
    for result in stmt.query_map([&previous], |row| row.get::<_, String>(0))? {
        match result?.as_str() {
            "committed" => committed += 1,
            _ => failed += 1,
        }
    }
    Ok((committed + failed > 0).then_some((committed, failed)))
}

/// Enrolled devices of the policy's hardware class in each wave (not cumulative).
pub fn targeted_per_wave(conn: &Connection, policy: &RolloutPolicy) -> Result<Vec<u32>> {
    let mut per_wave = vec![0u32; policy.waves.len()];
    let mut stmt = conn.prepare_cached("SELECT public_key FROM devices WHERE hw_class = ?1")?;
    let keys = stmt.query_map([&policy.release.hw_class], |row| row.get::<_, Vec<u8>>(0))?;
    for key in keys {
        let Ok(key) = <[u8; 32]>::try_from(key?.as_slice()) else { continue };
        if let Some(wave) = policy.wave_of(&key) {
            per_wave[wave] += 1;
        }
    }
    Ok(per_wave)
}

/// When the rollout was last resumed after a halt, if it was.
fn last_resume_after_halt(conn: &Connection, rollout: &str) -> Result<Option<i64>> {
    let transitions = crate::fleet::rollouts::transitions(conn, rollout)?;
    Ok(transitions.iter().rev().find(|t| t.from == "halted" && t.to == "running").map(|t| t.at))
}

/// Outcomes of `rollout` stored after event `after`, oldest first, with the device's site.
/// The time of each is when the seeder stored it (a device's clock is not trusted).
fn stored_outcomes(conn: &Connection, rollout: &str, after: i64) -> Result<Vec<Stored>> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.id, d.public_key, d.site, e.result, e.error_code, e.received_at
         FROM status_events e JOIN devices d ON d.id = e.device
         WHERE e.rollout = ?1 AND e.id > ?2 AND e.result IS NOT NULL ORDER BY e.id",
    )?;
    let rows = stmt.query_map(params![rollout, after], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, Option<i64>>(4)?,
            row.get::<_, i64>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, key, site, result, error_code, at) = row?;
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
