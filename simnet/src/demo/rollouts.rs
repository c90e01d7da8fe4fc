//! Following a rollout from `seeder rollout status`: when each wave started and how it ended,
//! for the demo's summary.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

/// One wave as the summary shows it.
#[derive(Debug, Clone, Default)]
pub struct WaveLine {
    /// Cumulative share of the fleet, percent.
    pub percent: f64,
    /// Enrolled devices in the wave.
    pub targeted: u64,
    /// Committed.
    pub committed: u64,
    /// Rolled back.
    pub rolled_back: u64,
    /// Seconds after the rollout started that the wave started; `None` if it never did.
    pub started_s: Option<f64>,
}

/// A rollout as the summary shows it.
#[derive(Debug, Clone, Default)]
pub struct RolloutLine {
    /// Rollout id.
    pub id: String,
    /// Its last state.
    pub state: String,
    /// Why it halted.
    pub halt_reason: Option<String>,
    /// Its waves.
    pub waves: Vec<WaveLine>,
    /// Seconds after it started that it completed or halted.
    pub ended_s: Option<f64>,
}

/// Polls `seeder rollout status` and notes when the wave and the state change.
pub struct Watch {
    seeder: PathBuf,
    repo: String,
    id: String,
    started: Instant,
    line: RolloutLine,
}

impl Watch {
    /// Follows rollout `id` of release `gw`, started now.
    pub fn new(seeder: &Path, repo: &str, id: &str) -> Watch {
        let mut line = RolloutLine { id: id.to_string(), ..RolloutLine::default() };
        line.waves.push(WaveLine { started_s: Some(0.0), ..WaveLine::default() });
        Watch {
            seeder: seeder.to_path_buf(),
            repo: repo.to_string(),
            id: id.to_string(),
            started: Instant::now(),
            line,
        }
    }

    /// One look; a failed look changes nothing.
    pub fn poll(&mut self) {
        let Ok(out) = super::procs::run(&self.seeder, &["--json", "rollout", "status", "--repo", &self.repo, "gw"])
        else {
            return;
        };
        let Ok(all) = serde_json::from_str::<Value>(&out) else { return };
        let status = &all[0];
        // Another rollout of the release (the one before, read a moment before this one was
        // signed, or the next one) says nothing about this one.
        if status["id"] != self.id.as_str() {
            return;
        }
        let now = self.started.elapsed().as_secs_f64();
        let state = status["state"].as_str().unwrap_or("?").to_string();
        let current = status["current_wave"].as_u64().unwrap_or(0) as usize;
        let waves = status["waves"].as_array().cloned().unwrap_or_default();
        self.line.waves.resize(waves.len().max(self.line.waves.len()), WaveLine::default());
        for (i, wave) in waves.iter().enumerate() {
            let line = &mut self.line.waves[i];
            line.percent = wave["cumulative_percent"].as_f64().unwrap_or(0.0);
            line.targeted = wave["targeted"].as_u64().unwrap_or(0);
            line.committed = wave["committed"].as_u64().unwrap_or(0);
            line.rolled_back = wave["rolled_back"].as_u64().unwrap_or(0);
            let reached = i <= current || state == "complete";
            if reached && line.started_s.is_none() {
                line.started_s = Some(now);
            }
        }
        if matches!(state.as_str(), "complete" | "halted") && self.line.ended_s.is_none() {
            self.line.ended_s = Some(now);
        }
        self.line.halt_reason = status["halt_reason"].as_str().map(String::from);
        self.line.state = state;
    }

    /// The last state seen.
    pub fn state(&self) -> &str {
        &self.line.state
    }

    /// What was seen so far.
    pub fn seen(&self) -> &RolloutLine {
        &self.line
    }

    /// Devices counted as committed, over all waves.
    pub fn committed(&self) -> u64 {
        self.line.waves.iter().map(|w| w.committed).sum()
    }

    /// A last look, and what was seen.
    pub fn finish(mut self) -> RolloutLine {
        self.poll();
        self.line
    }
}
