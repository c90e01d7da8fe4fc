//! Staged rollouts in the simulation: the same `protocol::rollout` code the daemons run —
//! the origin's `Controller`, each site's `SiteGuard`, each device's `Gate` — driven on the
//! simulation's wall clock (`start_unix` + virtual time). This module holds what does not
//! need the event loop: the initial policy a scenario's `[rollout]` builds, device ids, which
//! engine reports are rollout outcomes, and the report's `rollout` object. The driver is
//! `mesh/rollout_driver.rs`.
//!
//! What simnet models and what the protocol decides:
//! - The origin holds the `Controller` (wave 0, running). Every policy `poll` returns is
//!   encoded once ("signed") and travels to every site over the backhaul (not while a site's
//!   WAN is down: a site cut off gets the newest policy when it reconnects). A site's edge
//!   nodes hold one policy and share one `SiteGuard` (as if they exchanged their devices'
//!   reports over the LAN).
//! - A device asks its gate at `AskGate` and `AskSwitch` on the policy its edge holds at
//!   that moment (the metadata check, or the refresh before a switch, brought it), read as a
//!   `PolicyView` over the shared bytes; its edge's hold comes from the site's guard.
//! - At each `Report` the engine asks for, the driver turns the engine's state into a
//!   `RolloutReport` outcome ([`outcome`]); the report reaches the site's guard after the LAN
//!   latency, and the origin after the backhaul latency in the edge's next batch (while the
//!   WAN is down, in the edge's bounded queue).
//!
//! Memory: per device two bytes of driver state (its wave and a few flags); ids are hashed
//! again when needed. The controller and the guards keep one entry per reporting device.

use protocol::install::{Engine, ErrorCode, State};
use protocol::rollout::{HealthGate, Outcome, RolloutPolicy, RolloutRelease, RolloutState, Wave, Window};
use protocol::ReleaseId;
use serde::Serialize;

use crate::devices;
use crate::release::HW_CLASS;
use crate::scenario::{RolloutParams, Scenario, WindowParams};

/// The simulated rollout's id.
pub const ROLLOUT_ID: &str = "simnet-rollout";

/// blake3 `derive_key` context of simulated device ids.
const DEVICE_ID_CONTEXT: &str = "otamesh simnet 2026 device id v1";

/// Device `index`'s stable 32-byte id (its "public key"): blake3 of a domain string and its
/// index, so every run and every party computes the same id.
pub fn device_id(index: u32) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(DEVICE_ID_CONTEXT);
    hasher.update(&(index as u64).to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// The canaries: `count` devices spread evenly over the fleet (0, n/k, 2n/k, …).
pub fn canaries(count: u32, devices: u64) -> Vec<u32> {
    (0..count as u64).map(|i| (i * devices / count.max(1) as u64) as u32).collect()
}

fn minute_of_day(key: &str, text: &str) -> Result<u16, String> {
    let bad = || format!("{key} = \"{text}\" is not a time of day HH:MM");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn weekdays(days: &[String]) -> Result<u8, String> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let mut mask = 0u8;
    for day in days {
        match NAMES.iter().position(|n| n.eq_ignore_ascii_case(day)) {
            Some(i) => mask |= 1 << i,
            None if day == "*" => mask |= 0x7f,
            None => return Err(format!("rollout.windows.days: `{day}` is not one of mon … sun or *")),
        }
    }
    Ok(mask)
}

/// A scenario window as the policy carries it.
pub fn window(w: &WindowParams) -> Result<Window<String>, String> {
    Ok(Window {
        site_pattern: w.sites.clone(),
        weekdays: weekdays(&w.days)?,
        start_minute: minute_of_day("rollout.windows.start", &w.start)?,
        end_minute: minute_of_day("rollout.windows.end", &w.end)?,
        utc_offset_minutes: w.utc_offset_minutes,
    })
}

/// The policy the origin's controller starts from (seq 1, wave 0, running), validated by
/// the protocol's own rules (their one-line error names the field).
pub fn initial_policy(scenario: &Scenario) -> Result<RolloutPolicy, String> {
    let Some(r) = &scenario.rollout else { return Err("the scenario has no [rollout]".into()) };
    policy_from(r, scenario.device_count())
}

fn policy_from(r: &RolloutParams, devices: u64) -> Result<RolloutPolicy, String> {
    let mut waves = Vec::new();
    for p in &r.waves_percent {
        if !(p.is_finite() && *p > 0.0 && *p <= 100.0) {
            return Err(format!("rollout.waves_percent: {p} is not in (0, 100]"));
        }
        waves.push(Wave { cumulative_ppm: (p * 10_000.0).round() as u32, min_soak_secs: r.soak_s });
    }
    if !(r.max_failure_rate.is_finite() && (0.0..=1.0).contains(&r.max_failure_rate)) {
        return Err(format!("rollout.max_failure_rate = {} is out of range [0, 1]", r.max_failure_rate));
    }
    let policy = RolloutPolicy {
        id: ROLLOUT_ID.into(),
        release: RolloutRelease {
            name: devices::RELEASE_NAME.into(),
            version: devices::RELEASE_VERSION.into(),
            hw_class: HW_CLASS.into(),
        },
        seq: 1,
        waves,
        canaries: canaries(r.canaries, devices).into_iter().map(device_id).collect(),
        health: HealthGate { max_failure_ppm: (r.max_failure_rate * 1e6).round() as u32, min_reports: r.min_reports },
        windows: r.windows.iter().map(window).collect::<Result<_, _>>()?,
        max_concurrent_per_site: r.max_concurrent_per_site,
        state: RolloutState::Running,
        current_wave: 0,
        wave_started_at: r.start_unix,
    };
    policy.encode().map_err(|e| format!("[rollout]: {e}"))?;
    Ok(policy)
}

/// The rollout outcome a `Report` action carries, from the engine's state after the input
/// that asked for it: `Installing` when a download starts after the gate (and again when the
/// slot switch is under way), `Committed`, `RolledBack`, `Failed` for a release refused
/// after its image never verified or a storage failure. Other reports (a check that failed,
/// a wait for the gate, a staged image, the trial starting) are not rollout outcomes.
pub fn outcome(engine: &Engine, release: &ReleaseId) -> Option<Outcome> {
    let r = engine.record();
    let targets_release = r.target.is_some_and(|t| &t.id == release);
    match r.state {
        State::Downloading if targets_release && r.last_error.is_none() => Some(Outcome::Installing),
        State::PendingReboot if targets_release => Some(Outcome::Installing),
        State::Committed if &r.installed.id == release && r.target.is_none() => Some(Outcome::Committed),
        State::RolledBack if &r.refused == release && r.target.is_none() => Some(Outcome::RolledBack),
        State::Idle | State::Committed | State::RolledBack if r.target.is_none() => match r.last_error {
            Some(e @ ErrorCode::ImageMismatch) if &r.refused == release => Some(Outcome::Failed(e as u16)),
            Some(e @ ErrorCode::Storage) => Some(Outcome::Failed(e as u16)),
            _ => None,
        },
        _ => None,
    }
}

/// Seconds of `[from, to)` (unix seconds, fractional) during which `site` may switch slots
/// under `windows`. Windows open and close on whole minutes (minute starts and offsets), so
/// openness is constant within each UTC minute.
pub fn seconds_in_window(windows: &[Window<String>], site: &str, from: f64, to: f64) -> f64 {
    let mut total = 0.0;
    let mut minute = (from / 60.0).floor() as i64;
    while (minute as f64) * 60.0 < to {
        let (lo, hi) = ((minute as f64 * 60.0).max(from), ((minute + 1) as f64 * 60.0).min(to));
        if hi > lo && protocol::rollout::window::is_open(windows.iter().map(|w| w.as_str()), site, minute * 60) {
            total += hi - lo;
        }
        minute += 1;
    }
    total
}

/// Per-device rollout flags (one byte; see `devices::Device::rollout`).
pub mod flags {
    /// The device switched slots (activated the new slot).
    pub const TOUCHED: u8 = 1;
    /// Its last gate answer was a stop (halted, aborted, paused rollout or halted site): it
    /// counts as settled.
    pub const HELD: u8 = 2;
    /// A final outcome was reported.
    pub const FINAL_REPORTED: u8 = 4;
}

/// One wave in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WaveReport {
    /// Cumulative share of the fleet.
    pub fraction: f64,
    /// When the controller started it, seconds of virtual time (wave 0: 0).
    pub started_s: Option<f64>,
    /// When the next wave started, the rollout completed or halted.
    pub ended_s: Option<f64>,
    /// Devices of the wave the controller counted committed.
    pub committed: u32,
    /// Devices of the wave the controller counted rolled back.
    pub rolled_back: u32,
    /// Devices of the wave the controller counted failed before the switch.
    pub failed: u32,
}

/// A site cut off from its WAN during the run (a backhaul partition names it).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CutOffSite {
    /// The site.
    pub site: u32,
    /// Its name.
    pub name: String,
    /// Devices of the site that switched slots.
    pub touched: u64,
    /// Devices of the site in the waves the site's policy allowed when the WAN went down.
    pub eligible_when_cut: u64,
    /// When its guard halted the site, seconds (`null`: never).
    pub local_halt_s: Option<f64>,
    /// When the site learnt of the rollout's halt by policy, seconds (`null`: never).
    pub policy_halt_s: Option<f64>,
}

/// The report's `rollout` object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RolloutReport {
    /// The controller's last policy halted the rollout.
    pub halted: bool,
    /// Its reason, as the policy carries it.
    pub halt_reason: Option<String>,
    /// When the controller halted it, seconds of virtual time.
    pub halted_at_s: Option<f64>,
    /// When the last site holding the halted policy got it (sites never reached excluded).
    pub halt_known_at_all_sites_s: Option<f64>,
    /// When the controller completed the rollout (every wave passed).
    pub completed_at_s: Option<f64>,
    /// The final phase ("running", "halted", "complete", …).
    pub final_phase: &'static str,
    /// Devices that switched slots ÷ fleet.
    pub touched_fraction: f64,
    /// Devices that switched slots.
    pub touched: u64,
    /// Of those touched, the share whose engines ended rolled back.
    pub touched_rolled_back_fraction: f64,
    /// Slot switches outside the device's site's windows (must be 0).
    pub out_of_window_switches: u64,
    /// Sites whose guard halted them at least once.
    pub local_site_halts: u64,
    /// Devices the gate held at the end (stopped rollout or site).
    pub held_devices: u64,
    /// Of the device-seconds spent downloading, the share inside the device's site's window
    /// (`null` without windows): low means downloads ran before the windows opened.
    pub download_in_window_fraction: Option<f64>,
    /// Downloads that started while the device's site's window was closed (`null` without
    /// windows).
    pub downloads_before_window: Option<u64>,
    /// Status reports sent with a rollout outcome.
    pub reports_sent: u64,
    /// Reports the origin's controller received.
    pub reports_at_origin: u64,
    /// Reports lost to a full edge queue while the WAN was down.
    pub reports_lost: u64,
    /// Policies the controller signed after the initial one.
    pub policies_signed: u64,
    /// Per wave.
    pub waves: Vec<WaveReport>,
    /// Sites a backhaul partition cut off.
    pub cut_off_sites: Vec<CutOffSite>,
}

impl RolloutReport {
    /// A few lines for the terminal.
    pub fn summary_text(&self) -> String {
        use std::fmt::Write;
        let t = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.0} s"));
        let mut s = String::new();
        let _ = write!(
            s,
            "rollout: {}; touched {:.4}% of the fleet ({}), {:.1}% of them rolled back; {} out-of-window switches; {} local site halts",
            self.final_phase,
            self.touched_fraction * 100.0,
            self.touched,
            self.touched_rolled_back_fraction * 100.0,
            self.out_of_window_switches,
            self.local_site_halts
        );
        if let Some(f) = self.download_in_window_fraction {
            let _ = write!(s, "; {:.1}% of download time inside windows", f * 100.0);
        }
        s.push('\n');
        if self.halted {
            let _ = writeln!(
                s,
                "rollout halted at {} ({}); known at every reachable site by {}",
                t(self.halted_at_s),
                self.halt_reason.as_deref().unwrap_or(""),
                t(self.halt_known_at_all_sites_s)
            );
        }
        let waves: Vec<String> = self
            .waves
            .iter()
            .map(|w| {
                format!(
                    "{}% {}..{} ({}/{}/{})",
                    w.fraction * 100.0,
                    t(w.started_s),
                    t(w.ended_s),
                    w.committed,
                    w.rolled_back,
                    w.failed
                )
            })
            .collect();
        let _ = writeln!(s, "waves (start..end, committed/rolled back/failed): {}", waves.join(", "));
        for c in &self.cut_off_sites {
            let _ = writeln!(
                s,
                "cut-off site {} ({}): {} touched of {} eligible; local halt at {}, halted policy at {}",
                c.site,
                c.name,
                c.touched,
                c.eligible_when_cut,
                t(c.local_halt_s),
                t(c.policy_halt_s)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_measure() {
        let w = window(&WindowParams {
            sites: "eu-*".into(),
            days: vec!["*".into()],
            start: "02:00".into(),
            end: "04:00".into(),
            utc_offset_minutes: 60,
        })
        .unwrap();
        assert_eq!((w.weekdays, w.start_minute, w.end_minute), (0x7f, 120, 240));
        let monday = 1_767_571_200.0;
        // 01:00-03:00 UTC is the window; 00:30-01:30 overlaps it by 30 minutes.
        let ws = [w];
        assert_eq!(seconds_in_window(&ws, "eu-site-0", monday + 1800.0, monday + 5400.0), 1800.0);
        assert_eq!(seconds_in_window(&ws, "us-site-1", monday, monday + 60.0), 60.0, "unrestricted site");
        assert!(minute_of_day("k", "24:00").is_err() && weekdays(&["mon".into(), "xyz".into()]).is_err());
    }

    #[test]
    fn device_ids_are_stable_and_distinct() {
        assert_eq!(device_id(7), device_id(7));
        assert_ne!(device_id(7), device_id(8));
        assert_eq!(canaries(4, 100), vec![0, 25, 50, 75]);
    }
}
