//! The network every run shares: one origin uplink, per site a backhaul (down and up) and a
//! LAN, per device a link (modelled as a per-flow cap: a device runs one transfer at a time).
//! The mesh and the baselines build the same topology, so their numbers compare.

use crate::engine::{loss_cap, mbps, secs, LinkId, Micros, Network};
use crate::rng::Rng;
use crate::scenario::Scenario;

/// Links and their properties.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The origin's uplink.
    pub origin_up: LinkId,
    /// Per site: internet → site.
    pub backhaul_down: Vec<LinkId>,
    /// Per site: site → internet.
    pub backhaul_up: Vec<LinkId>,
    /// Per site: the LAN.
    pub lan: Vec<LinkId>,
    /// One-way latencies.
    pub origin_latency: Micros,
    /// One-way backhaul latency.
    pub backhaul_latency: Micros,
    /// One-way LAN latency.
    pub lan_latency: Micros,
    /// Backhaul packet loss.
    pub backhaul_loss: f64,
    /// A device's link, bytes per second.
    pub device_rate: f64,
}

impl Topology {
    /// Adds the scenario's links to `net`.
    pub fn build<T>(scenario: &Scenario, net: &mut Network<T>) -> Topology {
        let s = &scenario.sites;
        let origin_up = net.add_link(mbps(scenario.origin.uplink_mbps));
        let mut t = Topology {
            origin_up,
            backhaul_down: Vec::with_capacity(s.count as usize),
            backhaul_up: Vec::with_capacity(s.count as usize),
            lan: Vec::with_capacity(s.count as usize),
            origin_latency: secs(scenario.origin.latency_ms / 1e3),
            backhaul_latency: secs(s.backhaul_latency_ms / 1e3),
            lan_latency: secs(s.lan_latency_ms / 1e3),
            backhaul_loss: s.backhaul_loss,
            device_rate: mbps(s.device_mbps),
        };
        for _ in 0..s.count {
            t.backhaul_down.push(net.add_link(mbps(s.backhaul_down_mbps)));
            t.backhaul_up.push(net.add_link(mbps(s.backhaul_up_mbps)));
            t.lan.push(net.add_link(mbps(s.lan_mbps)));
        }
        t
    }

    /// Origin → site: path, one-way latency, per-flow loss cap.
    pub fn from_origin(&self, site: u32) -> ([LinkId; 2], Micros, f64) {
        let latency = self.origin_latency + self.backhaul_latency;
        ([self.origin_up, self.backhaul_down[site as usize]], latency, loss_cap(self.backhaul_loss, 2 * latency))
    }

    /// Site → site across both backhauls.
    pub fn between_sites(&self, from: u32, to: u32) -> ([LinkId; 2], Micros, f64) {
        let latency = 2 * self.backhaul_latency;
        let loss = 1.0 - (1.0 - self.backhaul_loss) * (1.0 - self.backhaul_loss);
        ([self.backhaul_up[from as usize], self.backhaul_down[to as usize]], latency, loss_cap(loss, 2 * latency))
    }

    /// Extra delay of a small message across lossy links: each loss costs a retransmission
    /// timeout (three round trips, at least 200 ms), drawn per message.
    pub fn message_delay(&self, loss: f64, latency: Micros, rng: &mut Rng) -> Micros {
        let rto = (6 * latency).max(200_000);
        let mut extra = 0;
        let mut tries = 0;
        while tries < 8 && rng.chance(loss) {
            extra += rto << tries;
            tries += 1;
        }
        latency + extra
    }
}

/// Check-in time of every device, in device order (site-major), from the seed.
pub fn checkin_times(scenario: &Scenario, seed: u64) -> Vec<Micros> {
    let mut rng = Rng::stream(seed, 0x00c4_ecc1);
    let spread = secs(scenario.devices.checkin_spread_s);
    (0..scenario.device_count()).map(|_| rng.below(spread + 1)).collect()
}

/// Which sites' backhauls flap, and each one's own random stream for the flap times, so the
/// mesh and the baselines see the same outages.
pub fn flap_streams(scenario: &Scenario, seed: u64) -> Vec<Option<Rng>> {
    let Some(flaps) = &scenario.faults.flaps else { return vec![None; scenario.sites.count as usize] };
    let mut pick = Rng::stream(seed, 0xf1a9);
    (0..scenario.sites.count)
        .map(|site| pick.chance(flaps.site_fraction).then(|| Rng::stream(seed, 0xf1a9_0000_0000 + site as u64)))
        .collect()
}
