//! What operators would run without the mesh, on the same topology, check-in times and
//! backhaul outages:
//!
//! - `DirectOrigin`: every device downloads the image from the origin (a CDN) itself;
//! - `PlainCache`: one pull-through HTTP cache per site, no pre-staging and no cooperation:
//!   the first request for a batch fetches it from the origin (concurrent requests wait for
//!   that fetch, as nginx's `proxy_cache_lock` does); devices fetch from the cache over the LAN.
//!
//! Devices of a site that check in within the same window (a 32nd of the check-in spread)
//! move together as one weighted flow: a group of `k` devices takes `k` fair shares, which is
//! what `k` separate flows would get. Each group starts at its first member's check-in, which
//! favours the baselines slightly. Edge crashes and LAN partitions have no counterpart here;
//! backhaul flaps and backhaul partitions do.

use crate::engine::{secs, Ended, EventQueue, LinkId, Micros, Network, SECOND};
use crate::release::Release;
use crate::scenario::{PartitionKind, Scenario};
use crate::topology::{self, Topology};

/// Which baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// Every device from the origin.
    DirectOrigin,
    /// One plain cache per site.
    PlainCache,
}

impl Baseline {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::DirectOrigin => "direct_origin",
            Baseline::PlainCache => "plain_cache",
        }
    }
}

/// What a baseline run measured.
#[derive(Debug, Clone, Default)]
pub struct BaselineOutcome {
    /// (time, devices) that finished downloading then.
    pub downloaded: Vec<(Micros, u64)>,
    /// Per site: bytes the backhaul carried inbound.
    pub backhaul_bytes: Vec<f64>,
    /// Origin transfers: (start, end, bytes).
    pub origin_flows: Vec<(Micros, Micros, u64)>,
    /// Virtual time at the end.
    pub end: Micros,
    /// Events processed.
    pub events: u64,
}

struct Group {
    site: u32,
    devices: u32,
    batch: u32,
}

#[derive(Debug, Clone, Copy)]
enum Tag {
    Group(u32),
    CacheFill { site: u32, batch: u32 },
}

enum Ev {
    Request(u32),
    CacheFill {
        site: u32,
        batch: u32,
    },
    Flap {
        site: u32,
        down: bool,
    },
    Partition {
        index: u32,
        start: bool,
    },
    /// Flows that just ended (never queued).
    Ended(Vec<Ended<Tag>>),
}

struct Cache {
    cached: Vec<bool>,
    filling: Vec<bool>,
    waiters: Vec<Vec<u32>>,
}

/// Runs `baseline` for `scenario` with `seed`.
pub fn run(
    scenario: &Scenario,
    seed: u64,
    release: &Release,
    baseline: Baseline,
    progress: &mut dyn FnMut(Micros, u64),
) -> BaselineOutcome {
    let mut net: Network<Tag> = Network::default();
    let topo = Topology::build(scenario, &mut net);
    let mut q: EventQueue<Ev> = EventQueue::default();
    let checkins = topology::checkin_times(scenario, seed);
    let window = (secs(scenario.devices.checkin_spread_s) / 32).max(1);
    let per_site = scenario.sites.devices_per_site as usize;
    let mut groups: Vec<Group> = Vec::new();
    for site in 0..scenario.sites.count as usize {
        let mut times: Vec<Micros> = checkins[site * per_site..(site + 1) * per_site].to_vec();
        times.sort_unstable();
        let mut i = 0;
        while i < times.len() {
            let start = times[i];
            let mut j = i;
            while j < times.len() && times[j] < start + window {
                j += 1;
            }
            q.push(start, Ev::Request(groups.len() as u32));
            groups.push(Group { site: site as u32, devices: (j - i) as u32, batch: 0 });
            i = j;
        }
    }
    let n_batches = release.batches.len();
    let mut caches: Vec<Cache> = (0..scenario.sites.count)
        .map(|_| Cache {
            cached: vec![false; n_batches],
            filling: vec![false; n_batches],
            waiters: vec![Vec::new(); n_batches],
        })
        .collect();
    let mut flaps = topology::flap_streams(scenario, seed);
    if let Some(f) = &scenario.faults.flaps {
        for (site, rng) in flaps.iter_mut().enumerate() {
            if let Some(rng) = rng.as_mut() {
                q.push(secs(rng.exp(f.mean_up_s)), Ev::Flap { site: site as u32, down: true });
            }
        }
    }
    for (i, p) in scenario.faults.partition.iter().enumerate() {
        if p.kind == PartitionKind::Backhaul {
            q.push(secs(p.at_s), Ev::Partition { index: i as u32, start: true });
            q.push(secs(p.at_s + p.duration_s), Ev::Partition { index: i as u32, start: false });
        }
    }
    let mut down = vec![0u32; scenario.sites.count as usize];
    let mut out = BaselineOutcome::default();
    let total = scenario.device_count();
    let mut done = 0u64;
    let limit = secs(scenario.max_sim_s);
    let mut now: Micros = 0;
    let origin_rtt = 2 * (topo.origin_latency + topo.backhaul_latency + topo.lan_latency);
    let lan_rtt = 2 * topo.lan_latency;

    // Starts the next transfer for group `g` (or waits for the cache).
    let request = |g: u32,
                   now: Micros,
                   groups: &mut Vec<Group>,
                   caches: &mut Vec<Cache>,
                   net: &mut Network<Tag>,
                   q: &mut EventQueue<Ev>| {
        let group = &groups[g as usize];
        let batch = release.batches[group.batch as usize];
        let site = group.site as usize;
        let k = group.devices;
        match baseline {
            Baseline::DirectOrigin => {
                let (p, _, loss_cap) = topo.from_origin(site as u32);
                let path = [p[0], p[1], topo.lan[site]];
                let cap = loss_cap.min(topo.device_rate);
                if net.start(now, &path, cap, k, batch.bytes * k as u64, Tag::Group(g)).is_err() {
                    q.push(now + SECOND, Ev::Request(g));
                }
            }
            Baseline::PlainCache => {
                let b = group.batch as usize;
                let cache = &mut caches[site];
                if cache.cached[b] {
                    let path = [topo.lan[site]];
                    if net.start(now, &path, topo.device_rate, k, batch.bytes * k as u64, Tag::Group(g)).is_err() {
                        q.push(now + SECOND, Ev::Request(g));
                    }
                } else {
                    cache.waiters[b].push(g);
                    if !cache.filling[b] {
                        cache.filling[b] = true;
                        q.push(now + origin_rtt / 2, Ev::CacheFill { site: site as u32, batch: b as u32 });
                    }
                }
            }
        }
    };

    loop {
        let (tq, tn) = (q.peek_time(), net.next_due());
        let Some(at) = [tq, tn].into_iter().flatten().min() else { break };
        if at > limit || done >= total {
            break;
        }
        out.events += 1;
        let ev = if tn == Some(at) {
            let Some((t, ended)) = net.complete_next() else { break };
            now = t;
            Ev::Ended(ended)
        } else {
            let Some((t, ev)) = q.pop() else { break };
            now = t;
            ev
        };
        match ev {
            Ev::Request(g) => request(g, now, &mut groups, &mut caches, &mut net, &mut q),
            Ev::CacheFill { site, batch } => {
                let (path, _, cap) = topo.from_origin(site);
                let bytes = release.batches[batch as usize].bytes;
                if net.start(now, &path, cap, 1, bytes, Tag::CacheFill { site, batch }).is_err() {
                    q.push(now + SECOND, Ev::CacheFill { site, batch });
                }
            }
            Ev::Ended(ended) => {
                for ended in ended {
                    let Ended { tag, bytes, start, path } = ended;
                    if path.first() == Some(&topo.origin_up) {
                        out.origin_flows.push((start, now, bytes));
                    }
                    match tag {
                        Tag::Group(g) => {
                            let group = &mut groups[g as usize];
                            group.batch += 1;
                            if group.batch as usize == n_batches {
                                let finished = now + topo.lan_latency;
                                out.downloaded.push((finished, group.devices as u64));
                                done += group.devices as u64;
                            } else {
                                let rtt = if baseline == Baseline::DirectOrigin { origin_rtt } else { lan_rtt };
                                q.push(now + rtt, Ev::Request(g));
                            }
                        }
                        Tag::CacheFill { site, batch } => {
                            let cache = &mut caches[site as usize];
                            cache.cached[batch as usize] = true;
                            cache.filling[batch as usize] = false;
                            for g in std::mem::take(&mut cache.waiters[batch as usize]) {
                                q.push(now + topo.backhaul_latency + topo.origin_latency, Ev::Request(g));
                            }
                        }
                    }
                }
            }
            Ev::Flap { site, down: going_down } => {
                set_backhaul(&mut down, site, going_down, now, &topo, &mut net, &mut q, &mut out);
                if let (Some(f), Some(rng)) = (&scenario.faults.flaps, flaps[site as usize].as_mut()) {
                    let mean = if going_down { f.mean_down_s } else { f.mean_up_s };
                    q.push(now + secs(rng.exp(mean)).max(1), Ev::Flap { site, down: !going_down });
                }
            }
            Ev::Partition { index, start } => {
                for site in scenario.faults.partition[index as usize].sites.clone() {
                    set_backhaul(&mut down, site, start, now, &topo, &mut net, &mut q, &mut out);
                }
            }
        }
        net.settle(now);
        if out.events.is_multiple_of(65_536) {
            progress(now, done);
        }
    }
    progress(now, done);
    out.backhaul_bytes = topo.backhaul_down.iter().map(|l: &LinkId| net.carried_bytes(*l)).collect();
    out.end = now;
    out
}

#[allow(clippy::too_many_arguments)]
fn set_backhaul(
    down: &mut [u32],
    site: u32,
    going_down: bool,
    now: Micros,
    topo: &Topology,
    net: &mut Network<Tag>,
    q: &mut EventQueue<Ev>,
    out: &mut BaselineOutcome,
) {
    let count = &mut down[site as usize];
    let was = *count > 0;
    if going_down {
        *count += 1;
    } else {
        *count = count.saturating_sub(1);
    }
    if was == (*count > 0) {
        return;
    }
    for link in [topo.backhaul_down[site as usize], topo.backhaul_up[site as usize]] {
        for ended in net.set_up(now, link, !going_down) {
            if ended.path.first() == Some(&topo.origin_up) {
                out.origin_flows.push((ended.start, now, ended.bytes));
            }
            // The transfer is retried from the start once the link is back (HTTP clients
            // without range resumption).
            match ended.tag {
                Tag::Group(g) => q.push(now + SECOND, Ev::Request(g)),
                Tag::CacheFill { site, batch } => q.push(now + SECOND, Ev::CacheFill { site, batch }),
            }
        }
    }
}
