//! The Kumar–Ross lower bound on distribution time, adapted to otamesh's hierarchy.
//!
//! Kumar and Ross bound the time to give a file of `F` bytes to `N` peers, with server upload
//! `u_s`, peer uploads `u_i` and slowest peer download `d_min`, by
//! `max(F/u_s, F/d_min, N·F/(u_s + Σu_i))`. otamesh has two levels, so we apply it twice and
//! take the largest term. For the time until `k` of the fleet's devices hold the image:
//!
//! - origin: `F / u_origin` — the origin sends at least one copy;
//! - site download: `F / backhaul_down` — every site that hosts a counted device receives
//!   the whole release over its backhaul;
//! - device download: `F / device_link`, after the `k`-th earliest check-in — the `k`
//!   devices include one that checked in no earlier, and it needs the whole image;
//! - WAN swarm (Kumar–Ross with sites as peers): `s·F / (u_origin + S·backhaul_up)` with
//!   `s = ⌈k / devices_per_site⌉` sites that must be served, every one of the `S` sites
//!   allowed to upload;
//! - LAN (Kumar–Ross with the site's edge nodes as server and devices as peers that do not
//!   upload, on a LAN every byte crosses): `⌈k / S⌉·F / lan` — some site hosts at least
//!   that many of the `k` devices.
//!
//! Install steps after the download (verify, write, reboot, health check) are not bounded;
//! the comparison is on download completion.

use serde::Serialize;

use crate::engine::mbps;
use crate::scenario::Scenario;

/// The bound for one fraction of the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct BoundTerms {
    /// Origin term, seconds.
    pub origin_s: f64,
    /// Site backhaul download term.
    pub site_download_s: f64,
    /// Check-in plus device link term.
    pub device_download_s: f64,
    /// WAN Kumar–Ross term.
    pub wan_swarm_s: f64,
    /// LAN Kumar–Ross term.
    pub lan_s: f64,
    /// The bound: the largest term.
    pub bound_s: f64,
}

/// The bound for `k` devices done. `sorted_checkins_s` are the devices' check-in times,
/// ascending, in seconds.
pub fn kumar_ross(scenario: &Scenario, release_bytes: u64, k: u64, sorted_checkins_s: &[f64]) -> BoundTerms {
    let f = release_bytes as f64;
    let s = &scenario.sites;
    let sites = s.count as f64;
    let k = k.max(1);
    let served_sites = k.div_ceil(s.devices_per_site.max(1) as u64) as f64;
    let per_site_devices = k.div_ceil(s.count as u64) as f64;
    let checkin = sorted_checkins_s.get(k as usize - 1).copied().unwrap_or(0.0);
    let mut t = BoundTerms {
        origin_s: f / mbps(scenario.origin.uplink_mbps),
        site_download_s: f / mbps(s.backhaul_down_mbps),
        device_download_s: checkin + f / mbps(s.device_mbps),
        wan_swarm_s: served_sites * f / (mbps(scenario.origin.uplink_mbps) + sites * mbps(s.backhaul_up_mbps)),
        lan_s: per_site_devices * f / mbps(s.lan_mbps),
        bound_s: 0.0,
    };
    t.bound_s =
        [t.origin_s, t.site_download_s, t.device_download_s, t.wan_swarm_s, t.lan_s].into_iter().fold(0.0, f64::max);
    t
}

/// One sentence for the report.
pub const ADAPTATION: &str = "Kumar-Ross applied at two levels; time for k devices >= max(F/u_origin, \
F/backhaul_down, checkin_k + F/device_link, ceil(k/devices_per_site)*F/(u_origin + sites*backhaul_up), \
ceil(k/sites)*F/lan): sites are the WAN swarm's peers, devices are LAN peers that do not upload";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_1m_is_lan_bound() {
        let sc = crate::scenario::load("fleet-1m").unwrap();
        let n = sc.device_count();
        let t = kumar_ross(&sc, sc.release.bytes, n, &[0.0; 1]);
        // 1,000 devices x 64 MiB over a 1 Gbit/s LAN: 537 s.
        assert!((t.lan_s - 536.87).abs() < 0.1, "{t:?}");
        assert_eq!(t.bound_s, t.lan_s);
    }
}
