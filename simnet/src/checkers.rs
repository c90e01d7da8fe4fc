//! Invariant checkers, evaluated while the simulation runs (TigerBeetle's VOPR style): the
//! first violation stops the run, and the caller prints the seed that replays it.
//!
//! - no device installs bytes that do not match the signed manifest (checked when the install
//!   engine points the bootloader at the slot: `ActivateSlot`);
//! - no edge node serves a chunk it did not verify;
//! - every device's install engine ends committed, rolled back, or refusing the release for a
//!   reason it reports (wrong hardware class, old security counter, an image that never
//!   verified);
//! - each site's backhaul carries at most `max_backhaul_amplification` × the release;
//! - with a rollout: no device outside the waves the origin has started starts installing;
//!   no slot switch happens outside a window of the device's site; once a site knows of a
//!   halt (its edge nodes hold a policy that stops installs, or their guard halted the
//!   site), no device there starts installing or switches slots. The checkers judge from
//!   what the origin signed, the windows and the site's state, not from the gate's answer.

use serde::Serialize;

use crate::engine::Micros;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// Which checker.
    pub check: &'static str,
    /// Virtual time, seconds.
    pub at_s: f64,
    /// What exactly.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {:.3} s: {}", self.check, self.at_s, self.detail)
    }
}

/// Checker names, as reports and tests use them.
pub mod names {
    /// A device installed bytes that do not match the manifest.
    pub const INSTALLED_UNVERIFIED: &str = "device-installed-unverified-bytes";
    /// An edge node served a chunk it had not verified.
    pub const SERVED_UNVERIFIED: &str = "edge-served-unverified-chunk";
    /// A device's install engine ended neither committed, rolled back nor refusing.
    pub const NOT_CONVERGED: &str = "device-not-converged";
    /// A site's backhaul carried too much.
    pub const AMPLIFICATION: &str = "backhaul-amplification";
    /// A device outside the rollout's started waves started installing.
    pub const OUTSIDE_WAVE: &str = "rollout-install-outside-wave";
    /// A device switched slots outside its site's maintenance windows.
    pub const OUTSIDE_WINDOW: &str = "rollout-switch-outside-window";
    /// A device started installing (or switched) in a site that knew of a halt.
    pub const AFTER_HALT: &str = "rollout-install-after-halt";
}

/// Collects violations; the run stops at the first.
#[derive(Debug, Default)]
pub struct Checkers {
    /// Largest allowed backhaul bytes per site.
    pub max_backhaul_bytes: f64,
    /// What went wrong, in order.
    pub violations: Vec<Violation>,
}

fn at_s(now: Micros) -> f64 {
    now as f64 / 1e6
}

impl Checkers {
    /// Checkers for a release of `release_bytes` and an amplification limit.
    pub fn new(release_bytes: u64, max_amplification: f64) -> Self {
        Checkers { max_backhaul_bytes: release_bytes as f64 * max_amplification, violations: Vec::new() }
    }

    /// True once anything failed.
    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }

    /// A device's install engine activates a slot (the bootloader will boot it); `tainted`
    /// if any byte in the slot is not the signed one.
    pub fn device_activates(&mut self, now: Micros, device: u64, tainted: bool) {
        if tainted {
            self.violations.push(Violation {
                check: names::INSTALLED_UNVERIFIED,
                at_s: at_s(now),
                detail: format!("device {device} activated a slot whose image does not match the manifest"),
            });
        }
    }

    /// An edge node sends chunks; `unverified` of them were stored without verification.
    pub fn edge_serves(&mut self, now: Micros, site: u32, edge: u32, unverified: usize) {
        if unverified > 0 {
            self.violations.push(Violation {
                check: names::SERVED_UNVERIFIED,
                at_s: at_s(now),
                detail: format!("edge {edge} of site {site} served {unverified} chunk(s) it never verified"),
            });
        }
    }

    /// A site's backhaul has carried `bytes` so far.
    pub fn backhaul(&mut self, now: Micros, site: u32, bytes: f64) {
        if bytes > self.max_backhaul_bytes + 0.5 && !self.violations.iter().any(|v| v.check == names::AMPLIFICATION) {
            self.violations.push(Violation {
                check: names::AMPLIFICATION,
                at_s: at_s(now),
                detail: format!(
                    "site {site} backhaul carried {bytes:.0} bytes, over the limit of {:.0}",
                    self.max_backhaul_bytes
                ),
            });
        }
    }

    /// A device starts installing (or switches slots); `wave` is its wave, `current` the
    /// highest wave any policy the origin signed made current.
    pub fn rollout_wave(&mut self, now: Micros, device: u64, wave: usize, current: usize) {
        if wave > current {
            self.violations.push(Violation {
                check: names::OUTSIDE_WAVE,
                at_s: at_s(now),
                detail: format!(
                    "device {device} of wave {wave} proceeded while the rollout had started waves 0..={current}"
                ),
            });
        }
    }

    /// A device points its bootloader at the new slot; `open`: its site's window is open.
    pub fn rollout_window(&mut self, now: Micros, device: u64, site: &str, open: bool) {
        if !open {
            self.violations.push(Violation {
                check: names::OUTSIDE_WINDOW,
                at_s: at_s(now),
                detail: format!("device {device} of site {site} switched slots outside every window of its site"),
            });
        }
    }

    /// A device of `site` proceeds (`what`: starts installing, switches slots);
    /// `halt_known`: the site's edge nodes knew of a halt.
    pub fn rollout_halt(&mut self, now: Micros, device: u64, site: u32, halt_known: bool, what: &str) {
        if halt_known {
            self.violations.push(Violation {
                check: names::AFTER_HALT,
                at_s: at_s(now),
                detail: format!("device {device} {what} although site {site} knew the rollout or the site halted"),
            });
        }
    }

    /// At the end: devices whose engines did not finish, as (device, engine state name);
    /// reports up to ten of them.
    pub fn converged(&mut self, now: Micros, stuck: &[(u64, &'static str)], total_stuck: u64) {
        if total_stuck > 0 {
            let list: Vec<String> = stuck.iter().take(10).map(|(d, s)| format!("{d} ({s})")).collect();
            self.violations.push(Violation {
                check: names::NOT_CONVERGED,
                at_s: at_s(now),
                detail: format!(
                    "{total_stuck} device(s) ended neither committed, rolled back nor refusing, e.g. {}",
                    list.join(", ")
                ),
            });
        }
    }
}
