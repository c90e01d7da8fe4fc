//! The demo's closing table: where the fleet ended up and what each release cost the
//! backhaul, next to the naive figure of every device fetching from the origin.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// Bytes that crossed one site's backhaul.
#[derive(Debug, Clone)]
pub struct SiteBytes {
    /// Site name.
    pub site: String,
    /// Devices in the site.
    pub devices: u64,
    /// Bytes into the site's edge nodes from outside it, for v1 and for v2.
    pub backhaul_v1: u64,
    /// See `backhaul_v1`.
    pub backhaul_v2: u64,
    /// Every device of the site fetching the release from the origin.
    pub naive_v1: u64,
    /// See `naive_v1`.
    pub naive_v2: u64,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Device agents.
    pub devices: usize,
    /// Final state → devices.
    pub states: BTreeMap<String, usize>,
    /// Stored (compressed, encrypted) bytes of each release.
    pub stored_v1: u64,
    /// See `stored_v1`.
    pub stored_v2: u64,
    /// Plaintext image bytes.
    pub image_bytes: u64,
    /// Bytes the origin sent, per release.
    pub origin_v1: u64,
    /// See `origin_v1`.
    pub origin_v2: u64,
    /// Per site.
    pub sites: Vec<SiteBytes>,
    /// Plaintext bytes devices copied from their active slot instead of fetching (v2).
    pub reused_v2: u64,
    /// Stored bytes devices fetched from edge nodes (v2).
    pub fetched_v2: u64,
    /// From the devices' start until all committed v1.
    pub v1_time: Duration,
    /// From publishing v2 until every device committed it.
    pub v2_time: Duration,
    /// The v2 and v3 rollouts.
    pub rollouts: Vec<super::rollouts::RolloutLine>,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn ratio(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.3}×", part as f64 / whole as f64)
    }
}

impl Summary {
    /// The table as printed at the end of the demo.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\notamesh demo summary");
        let _ = writeln!(out, "====================");
        let _ = writeln!(out, "devices by final state ({} in all):", self.devices);
        for (state, n) in &self.states {
            let _ = writeln!(out, "  {n:>3}  {state}");
        }
        for r in &self.rollouts {
            let ended = r.ended_s.map_or(String::new(), |s| format!(" after {s:.1} s"));
            let _ = writeln!(out, "\nrollout {}: {}{ended}", r.id, r.state);
            if let Some(reason) = &r.halt_reason {
                let _ = writeln!(out, "  halted: {reason}");
            }
            let _ = writeln!(
                out,
                "  {:>4} {:>7} {:>8} {:>9} {:>11} {:>9}",
                "wave", "fleet%", "devices", "committed", "rolled back", "started"
            );
            for (i, w) in r.waves.iter().enumerate() {
                let started = w.started_s.map_or("never".to_string(), |s| format!("+{s:.1} s"));
                let _ = writeln!(
                    out,
                    "  {i:>4} {:>7.1} {:>8} {:>9} {:>11} {:>9}",
                    w.percent, w.targeted, w.committed, w.rolled_back, started
                );
            }
        }
        let _ = writeln!(
            out,
            "\nrelease sizes: image {}, stored v1 {}, stored v2 {}",
            mib(self.image_bytes),
            mib(self.stored_v1),
            mib(self.stored_v2)
        );
        let _ = writeln!(
            out,
            "\n{:<10} {:>7} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8}",
            "backhaul", "devices", "v1 actual", "v1 naive", "ratio", "v2 actual", "v2 naive", "ratio"
        );
        for s in &self.sites {
            let _ = writeln!(
                out,
                "{:<10} {:>7} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8}",
                s.site,
                s.devices,
                mib(s.backhaul_v1),
                mib(s.naive_v1),
                ratio(s.backhaul_v1, s.naive_v1),
                mib(s.backhaul_v2),
                mib(s.naive_v2),
                ratio(s.backhaul_v2, s.naive_v2)
            );
        }
        let naive_origin_v1 = self.devices as u64 * self.stored_v1;
        let naive_origin_v2 = self.devices as u64 * self.stored_v2;
        let _ = writeln!(
            out,
            "{:<10} {:>7} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8}",
            "origin",
            self.devices,
            mib(self.origin_v1),
            mib(naive_origin_v1),
            ratio(self.origin_v1, naive_origin_v1),
            mib(self.origin_v2),
            mib(naive_origin_v2),
            ratio(self.origin_v2, naive_origin_v2)
        );
        let _ = writeln!(
            out,
            "\nv2 on devices: {} fetched from edge nodes over the LAN, {} reused from the active slot \
             (chunk reuse saved {} of a full download)",
            mib(self.fetched_v2),
            mib(self.reused_v2),
            ratio(self.reused_v2, self.reused_v2 + self.fetched_v2)
        );
        let _ = writeln!(
            out,
            "time: all devices on v1 {:.1} s after they started; v2 committed on every device {:.1} s after it was published",
            self.v1_time.as_secs_f64(),
            self.v2_time.as_secs_f64()
        );
        out
    }
}
