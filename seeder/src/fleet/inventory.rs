//! The fleet's inventory as operators read it: each device's entry with its staleness
//! decided (`seeder devices list` and `show`, as text or JSON).
//!
//! Why a view over [`DeviceRow`]: staleness depends on "now" and on the operator's
//! threshold, not on what is stored, so it is computed when the inventory is read.

use serde::Serialize;

use super::query::{DeviceRow, DeviceState, HistoryEvent};

/// One device as the inventory shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The enrolled device and its last report.
    #[serde(flatten)]
    pub row: DeviceRow,
    /// Seconds since its last report; `None` if it never reported.
    pub last_report_age_secs: Option<i64>,
    /// Not heard from within the threshold (or never).
    pub stale: bool,
}

impl Listed {
    /// `row` as of `now` with staleness threshold `stale_after` (seconds).
    pub fn new(row: &DeviceRow, now: i64, stale_after: i64) -> Listed {
        let age = row.state.as_ref().map(|s| now.saturating_sub(s.updated_at).max(0));
        Listed { row: row.clone(), last_report_age_secs: age, stale: age.is_none_or(|a| a > stale_after) }
    }
}

/// "3m ago", "2h ago", "5d ago".
fn ago(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

fn state_text(s: &DeviceState) -> String {
    let mut out = format!("{} {} {}", s.release, s.version, s.state);
    if let Some(slot) = &s.active_slot {
        out += &format!(" slot {slot}");
    }
    if let Some(target) = &s.target_version {
        out += &format!(" → {target}");
    }
    if let Some(floor) = s.security_floor {
        out += &format!(" floor {floor}");
    }
    if let Some(e) = &s.error {
        out += &format!(" error {e}");
    }
    out
}

/// The list as a table, one device per line.
pub fn render_list(total: u64, devices: &[Listed]) -> String {
    let mut out = if devices.len() as u64 == total {
        format!("{total} devices")
    } else {
        format!("{} of {total} devices", devices.len())
    };
    for d in devices {
        let r = &d.row;
        out += &format!("\n  {:<20} {:<12} {:<10} ", r.id, r.site, r.hw_class);
        match (&r.state, d.last_report_age_secs) {
            (Some(s), Some(age)) => out += &format!("{} (heard {})", state_text(s), ago(age)),
            _ => out += "(no report yet)",
        }
        if d.stale {
            out += " STALE";
        }
    }
    out
}

/// One device and its history.
pub fn render_show(d: &Listed, history: &[HistoryEvent]) -> String {
    let r = &d.row;
    let mut out = format!(
        "{}  site {}  hardware {}  key {}\n  enrolled {}",
        r.id,
        r.site,
        r.hw_class,
        r.key,
        crate::time::format_expiry(r.enrolled_at)
    );
    match (&r.state, d.last_report_age_secs) {
        (Some(s), Some(age)) => {
            out += &format!("\n  {}\n  last report seq {} {}", state_text(s), s.last_seq, ago(age));
            if let (Some(rollout), Some(result)) = (&s.rollout, &s.result) {
                out += &format!("\n  rollout {rollout}: {result}");
            }
        }
        _ => out += "\n  no report yet",
    }
    if d.stale {
        out += "\n  STALE: not heard from within the threshold";
    }
    out += &format!("\nhistory ({} newest first):", history.len());
    for e in history {
        out += &format!("\n  {} seq {:<6} {:<14}", crate::time::format_expiry(e.received_at), e.seq, e.state);
        if let (Some(rollout), Some(result)) = (&e.rollout, &e.result) {
            out += &format!(" {rollout} {result}");
        }
        if let Some(err) = &e.error {
            out += &format!(" error {err}");
        }
        if let Some(secs) = e.install_secs {
            out += &format!(" after {secs}s");
        }
    }
    out
}
