//! Flow-level bandwidth sharing: bytes are never moved one by one, only the finishing time
//! of each transfer is computed.
//!
//! Model: every link has a capacity; a flow crosses a path of links and may carry its own
//! cap (the device's link, or a loss-limited TCP/QUIC rate). A flow of weight `w` counts as
//! `w` flows, which lets a baseline move a group of identical devices as one flow. Each link
//! computes a fair level by water-filling: flows that cannot use an equal share (held back by
//! their cap or another link's level) keep what they can use, the rest split what is left;
//! a link whose flows cannot fill it imposes no level at all. A flow runs at the lowest level
//! on its path. Levels are recomputed only on the links where a flow started or ended, from
//! the other links' last levels, so this approximates max-min fairness locally instead of
//! solving it globally: an event costs the bundles on its own links, not the whole network.
//!
//! Why bundles: flows with the same path and cap always run at the same rate, so they form
//! one processor-sharing queue with a virtual clock `v` (bytes served per unit of weight).
//! A flow ends when `v` reaches its key (`v` at its start + bytes / weight). A rate change
//! touches each bundle on the link once, not each flow, so a link carrying a thousand
//! sites' transfers costs a thousand updates, not a million.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::queue::Micros;

/// A link in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u32);

/// A flow in the network; stale ids (the flow ended) are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowId {
    idx: u32,
    gen: u32,
}

/// Fastest any flow runs, bytes per second (1 Tbit/s).
const MAX_RATE: f64 = 125e9;

/// The most links on one path (device → LAN → backhaul → origin is 3).
pub const MAX_PATH: usize = 4;

#[derive(Debug)]
struct Link {
    /// Bytes per second.
    capacity: f64,
    up: bool,
    /// Sum of the weights of the flows crossing it.
    load: u64,
    bundles: Vec<u32>,
    carried_bytes: f64,
    /// Fair level per unit of weight (infinite while the link is not saturated).
    level: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BundleKey {
    path: [u32; MAX_PATH],
    len: u8,
    cap_bits: u64,
}

#[derive(Debug, Clone, Copy)]
struct HeapItem {
    key: f64,
    idx: u32,
    gen: u32,
}
impl PartialEq for HeapItem {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapItem {
    // Reversed for a min-heap on (key, idx).
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.total_cmp(&self.key).then(other.idx.cmp(&self.idx))
    }
}

#[derive(Debug)]
struct Bundle {
    path: [u32; MAX_PATH],
    len: u8,
    /// Per unit of weight, bytes per second.
    cap: f64,
    rate: f64,
    v: f64,
    t: Micros,
    heap: BinaryHeap<HeapItem>,
    load: u64,
    /// When its next flow ends (`Micros::MAX`: none), as entered in `Network::due`.
    due: Micros,
    stamp: u64,
}

impl Bundle {
    fn links(&self) -> &[u32] {
        &self.path[..self.len as usize]
    }
    fn advance(&mut self, now: Micros) {
        if now > self.t {
            // An empty bundle's clock stands still: its rate may be unbounded (no flow holds
            // a level anywhere), and nothing is waiting on it.
            if self.load > 0 {
                self.v += self.rate * (now - self.t) as f64 / 1e6;
            }
            self.t = now;
        }
    }
}

#[derive(Debug)]
struct Slot<T> {
    gen: u32,
    live: bool,
    bundle: u32,
    key: f64,
    bytes: u64,
    weight: u32,
    start: Micros,
    tag: Option<T>,
}

/// A finished (or failed) flow.
#[derive(Debug, Clone)]
pub struct Ended<T> {
    /// What the owner attached.
    pub tag: T,
    /// Bytes moved (all of them for a finished flow, the part done for a failed one).
    pub bytes: u64,
    /// When it started.
    pub start: Micros,
    /// The links it crossed.
    pub path: Vec<LinkId>,
}

/// All links and flows.
pub struct Network<T> {
    links: Vec<Link>,
    bundles: Vec<Bundle>,
    index: HashMap<BundleKey, u32>,
    flows: Vec<Slot<T>>,
    free: Vec<u32>,
    dirty_links: Vec<u32>,
    dirty_bundles: Vec<u32>,
    stamp: u64,
    live_flows: usize,
    /// (when, bundle) for every bundle with a flow in progress: an indexed queue, so a rate
    /// change moves one entry instead of leaving stale events behind.
    due: std::collections::BTreeSet<(Micros, u32)>,
    scratch: Vec<(f64, u64)>,
}

impl<T> Default for Network<T> {
    fn default() -> Self {
        Network {
            links: Vec::new(),
            bundles: Vec::new(),
            index: HashMap::new(),
            flows: Vec::new(),
            free: Vec::new(),
            dirty_links: Vec::new(),
            dirty_bundles: Vec::new(),
            stamp: 0,
            live_flows: 0,
            due: std::collections::BTreeSet::new(),
            scratch: Vec::new(),
        }
    }
}

impl<T> Network<T> {
    /// Adds a link of `bytes_per_sec`.
    pub fn add_link(&mut self, bytes_per_sec: f64) -> LinkId {
        self.links.push(Link {
            capacity: bytes_per_sec.max(1.0),
            up: true,
            load: 0,
            bundles: Vec::new(),
            carried_bytes: 0.0,
            level: f64::INFINITY,
        });
        LinkId(self.links.len() as u32 - 1)
    }

    /// Whether the link is up.
    pub fn is_up(&self, link: LinkId) -> bool {
        self.links[link.0 as usize].up
    }

    /// Bytes that crossed the link (finished flows, and the done part of failed ones).
    pub fn carried_bytes(&self, link: LinkId) -> f64 {
        self.links[link.0 as usize].carried_bytes
    }

    /// Flows in progress.
    pub fn live_flows(&self) -> usize {
        self.live_flows
    }

    /// Starts a flow of `bytes` over `path`, at most `cap` bytes per second per unit of
    /// `weight` (infinite for none). Fails, handing the tag back, if a link is down.
    pub fn start(
        &mut self,
        now: Micros,
        path: &[LinkId],
        cap: f64,
        weight: u32,
        bytes: u64,
        tag: T,
    ) -> Result<FlowId, T> {
        if path.is_empty() || path.len() > MAX_PATH || path.iter().any(|l| !self.links[l.0 as usize].up) {
            return Err(tag);
        }
        let weight = weight.max(1);
        let mut key = BundleKey { path: [u32::MAX; MAX_PATH], len: path.len() as u8, cap_bits: cap.to_bits() };
        for (i, l) in path.iter().enumerate() {
            key.path[i] = l.0;
        }
        let b = match self.index.get(&key) {
            Some(b) => *b,
            None => {
                let b = self.bundles.len() as u32;
                self.bundles.push(Bundle {
                    path: key.path,
                    len: key.len,
                    cap: if cap > 0.0 { cap } else { f64::INFINITY },
                    rate: 0.0,
                    v: 0.0,
                    t: now,
                    heap: BinaryHeap::new(),
                    load: 0,
                    due: Micros::MAX,
                    stamp: 0,
                });
                for l in path {
                    self.links[l.0 as usize].bundles.push(b);
                }
                self.index.insert(key, b);
                b
            }
        };
        let bundle = &mut self.bundles[b as usize];
        bundle.advance(now);
        let flow_key = bundle.v + bytes as f64 / weight as f64;
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.flows.push(Slot {
                    gen: 0,
                    live: false,
                    bundle: 0,
                    key: 0.0,
                    bytes: 0,
                    weight: 0,
                    start: 0,
                    tag: None,
                });
                self.flows.len() as u32 - 1
            }
        };
        let slot = &mut self.flows[idx as usize];
        slot.gen = slot.gen.wrapping_add(1);
        slot.live = true;
        slot.bundle = b;
        slot.key = flow_key;
        slot.bytes = bytes;
        slot.weight = weight;
        slot.start = now;
        slot.tag = Some(tag);
        let gen = slot.gen;
        bundle.heap.push(HeapItem { key: flow_key, idx, gen });
        bundle.load += weight as u64;
        for l in path {
            self.links[l.0 as usize].load += weight as u64;
            self.dirty_links.push(l.0);
        }
        self.dirty_bundles.push(b);
        self.live_flows += 1;
        Ok(FlowId { idx, gen })
    }

    /// Stops a flow early; returns its tag and the bytes it had moved.
    pub fn cancel(&mut self, now: Micros, id: FlowId) -> Option<Ended<T>> {
        let slot = self.flows.get(id.idx as usize)?;
        if !slot.live || slot.gen != id.gen {
            return None;
        }
        let b = slot.bundle;
        self.bundles[b as usize].advance(now);
        let (key, bytes, weight) = (slot.key, slot.bytes, slot.weight);
        let left = ((key - self.bundles[b as usize].v) * weight as f64).max(0.0);
        let done = (bytes as f64 - left).clamp(0.0, bytes as f64) as u64;
        Some(self.retire(id.idx, done))
    }

    /// Removes a live flow from its bundle and links, counting `done` bytes on its links.
    fn retire(&mut self, idx: u32, done: u64) -> Ended<T> {
        let slot = &mut self.flows[idx as usize];
        slot.live = false;
        let tag = slot.tag.take().expect("a live flow has a tag");
        let (b, weight, start) = (slot.bundle, slot.weight as u64, slot.start);
        self.free.push(idx);
        self.live_flows -= 1;
        let bundle = &mut self.bundles[b as usize];
        bundle.load -= weight;
        let path: Vec<LinkId> = bundle.links().iter().map(|l| LinkId(*l)).collect();
        for l in &path {
            let link = &mut self.links[l.0 as usize];
            link.load -= weight;
            link.carried_bytes += done as f64;
            self.dirty_links.push(l.0);
        }
        self.dirty_bundles.push(b);
        Ended { tag, bytes: done, start, path }
    }

    /// Takes a link down (every flow on it fails and is returned) or brings it back up.
    pub fn set_up(&mut self, now: Micros, link: LinkId, up: bool) -> Vec<Ended<T>> {
        self.links[link.0 as usize].up = up;
        if up {
            return Vec::new();
        }
        let mut failed = Vec::new();
        for b in self.links[link.0 as usize].bundles.clone() {
            let items: Vec<HeapItem> = std::mem::take(&mut self.bundles[b as usize].heap).into_vec();
            for item in items {
                let id = FlowId { idx: item.idx, gen: item.gen };
                if let Some(ended) = self.cancel(now, id) {
                    failed.push(ended);
                }
            }
        }
        failed
    }

    /// Recomputes levels and rates where flows started or ended since the last call. Call
    /// after handling every batch of inputs, before asking for [`Network::next_due`].
    pub fn settle(&mut self, now: Micros) {
        self.stamp += 1;
        let stamp = self.stamp;
        let mut links = std::mem::take(&mut self.dirty_links);
        links.sort_unstable();
        links.dedup();
        for &l in &links {
            self.links[l as usize].level = self.water_fill(l);
        }
        let forced = std::mem::take(&mut self.dirty_bundles);
        for b in &forced {
            self.bundles[*b as usize].stamp = stamp;
        }
        for b in forced.iter().copied() {
            self.recompute(now, b, true);
        }
        for l in links {
            for i in 0..self.links[l as usize].bundles.len() {
                let b = self.links[l as usize].bundles[i];
                if self.bundles[b as usize].stamp == stamp {
                    continue;
                }
                self.bundles[b as usize].stamp = stamp;
                self.recompute(now, b, false);
            }
        }
    }

    /// The link's fair level per unit of weight: infinite if its flows, each limited by its
    /// cap and the other links' levels, cannot fill it.
    fn water_fill(&mut self, l: u32) -> f64 {
        let capacity = self.links[l as usize].capacity;
        let mut items = std::mem::take(&mut self.scratch);
        items.clear();
        let mut demand = 0.0;
        for &b in &self.links[l as usize].bundles {
            let bundle = &self.bundles[b as usize];
            if bundle.load == 0 {
                continue;
            }
            let mut c = bundle.cap;
            for &other in bundle.links() {
                if other != l {
                    c = c.min(self.links[other as usize].level);
                }
            }
            demand += c * bundle.load as f64;
            items.push((c, bundle.load));
        }
        let level = if demand <= capacity {
            f64::INFINITY
        } else {
            items.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
            let mut left = capacity;
            let mut weight: u64 = items.iter().map(|i| i.1).sum();
            let mut level = capacity / weight.max(1) as f64;
            for &(c, w) in &items {
                if c * (weight as f64) <= left {
                    left -= c * w as f64;
                    weight -= w;
                } else {
                    level = left / weight as f64;
                    break;
                }
            }
            level
        };
        self.scratch = items;
        level
    }

    fn recompute(&mut self, now: Micros, b: u32, force: bool) {
        let mut rate = self.bundles[b as usize].cap;
        for l in self.bundles[b as usize].links() {
            rate = rate.min(self.links[*l as usize].level);
        }
        // Finite even when no link is saturated and the flow has no cap (keeps `v` finite).
        let rate = rate.min(MAX_RATE);
        let bundle = &mut self.bundles[b as usize];
        if !force && rate == bundle.rate {
            return; // its due time is still right
        }
        bundle.advance(now);
        bundle.rate = rate;
        // Drop entries of flows that were cancelled.
        while let Some(top) = bundle.heap.peek() {
            let slot = &self.flows[top.idx as usize];
            if slot.live && slot.gen == top.gen {
                break;
            }
            bundle.heap.pop();
        }
        let due = match bundle.heap.peek() {
            Some(top) if bundle.load > 0 => {
                let dt = ((top.key - bundle.v) / rate * 1e6).ceil();
                now + if dt.is_finite() { dt.clamp(0.0, 1e15) as u64 } else { 1_000_000_000_000_000 }
            }
            _ => Micros::MAX,
        };
        if due != bundle.due {
            if bundle.due != Micros::MAX {
                self.due.remove(&(bundle.due, b));
            }
            if due != Micros::MAX {
                self.due.insert((due, b));
            }
            bundle.due = due;
        }
    }

    /// When the next flow ends, if any flow is in progress.
    pub fn next_due(&self) -> Option<Micros> {
        self.due.first().map(|(t, _)| *t)
    }

    /// Ends the flows whose time has come at [`Network::next_due`] (that time is returned);
    /// call [`Network::settle`] afterwards.
    pub fn complete_next(&mut self) -> Option<(Micros, Vec<Ended<T>>)> {
        let (now, b) = self.due.pop_first()?;
        let bundle = &mut self.bundles[b as usize];
        bundle.due = Micros::MAX;
        bundle.advance(now);
        let v = bundle.v;
        let mut finished = Vec::new();
        while let Some(top) = bundle.heap.peek().copied() {
            if top.key > v + 1e-9 * top.key.abs() + 1e-3 {
                break;
            }
            bundle.heap.pop();
            let slot = &self.flows[top.idx as usize];
            if slot.live && slot.gen == top.gen {
                finished.push(top.idx);
            }
        }
        // Always re-arm this bundle, even if nothing finished (float rounding).
        self.dirty_bundles.push(b);
        let mut out = Vec::with_capacity(finished.len());
        for idx in finished {
            let bytes = self.flows[idx as usize].bytes;
            out.push(self.retire(idx, bytes));
        }
        Some((now, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the network alone until every flow ends; returns (tag, end time).
    fn run(net: &mut Network<u32>, now: Micros) -> Vec<(u32, Micros)> {
        let mut ends = Vec::new();
        net.settle(now);
        while let Some((now, done)) = net.complete_next() {
            for e in done {
                ends.push((e.tag, now));
            }
            net.settle(now);
        }
        ends
    }

    #[test]
    fn equal_shares_and_release_on_finish() {
        let mut net = Network::default();
        let l = net.add_link(1_000_000.0); // 1 MB/s
        net.start(0, &[l], f64::INFINITY, 1, 1_000_000, 1).unwrap();
        net.start(0, &[l], f64::INFINITY, 1, 2_000_000, 2).unwrap();
        let ends = run(&mut net, 0);
        // Both at 0.5 MB/s until flow 1 ends at 2 s; flow 2 then has 1 MB left at 1 MB/s.
        assert_eq!(ends, vec![(1, 2_000_000), (2, 3_000_000)]);
        assert_eq!(net.carried_bytes(l), 3_000_000.0);
    }

    #[test]
    fn bottleneck_and_cap_and_weight() {
        let mut net = Network::default();
        let fast = net.add_link(10_000_000.0);
        let slow = net.add_link(1_000_000.0);
        net.start(0, &[fast, slow], f64::INFINITY, 1, 1_000_000, 1).unwrap();
        net.start(0, &[fast], 500_000.0, 1, 1_000_000, 2).unwrap();
        net.start(0, &[fast], f64::INFINITY, 4, 4_000_000, 3).unwrap();
        let ends = run(&mut net, 0);
        let near = |(tag, at): (u32, Micros), (want_tag, want_at): (u32, Micros)| {
            assert_eq!(tag, want_tag);
            assert!(at.abs_diff(want_at) <= 1, "flow {tag} ended at {at}, want {want_at}");
        };
        // Flow 1 is held to 1 MB/s by the slow link and flow 2 to its cap of 0.5 MB/s; flow 3
        // (weight 4) gets more than an equal share of the fast link (10/6 MB/s per unit, which
        // would end it at 0.6 s) because the other two cannot use theirs.
        assert_eq!(ends[0].0, 3);
        assert!((400_000..600_000).contains(&ends[0].1), "{ends:?}");
        near(ends[1], (1, 1_000_000));
        near(ends[2], (2, 2_000_000));
    }

    /// Regression: a bundle left empty while no link on its path was saturated had an
    /// unbounded rate, its virtual clock became infinite, and its next flow never ended.
    #[test]
    fn a_bundle_reused_after_idling_uncapped_still_finishes() {
        let mut net = Network::default();
        let l = net.add_link(1_000_000.0);
        net.start(0, &[l], f64::INFINITY, 1, 1_000_000, 1).unwrap();
        assert_eq!(run(&mut net, 0), vec![(1, 1_000_000)]);
        net.start(5_000_000, &[l], f64::INFINITY, 1, 1_000_000, 2).unwrap();
        assert_eq!(run(&mut net, 5_000_000), vec![(2, 6_000_000)]);
    }

    #[test]
    fn link_down_fails_flows_with_partial_bytes() {
        let mut net = Network::default();
        let l = net.add_link(1_000_000.0);
        net.start(0, &[l], f64::INFINITY, 1, 4_000_000, 7).unwrap();
        net.settle(0);
        let failed = net.set_up(1_000_000, l, false);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].bytes, 1_000_000);
        assert!(net.start(1_000_000, &[l], f64::INFINITY, 1, 1, 8).is_err());
        assert_eq!(net.live_flows(), 0);
    }
}
