//! The mesh run: every edge node is the real `protocol::edge::FetchScheduler`, driven the way
//! the daemon drives it (edge-node/src/daemon): feed one input, drain `poll_request` and
//! `poll_event`, arm a timer at `poll_timeout`. The origin and hostile nodes are simple
//! responders; links are flows (see `engine::flows`). Every device is the real install
//! engine, `protocol::install::Engine`, driven the way the Linux agent drives it
//! (device-client/src/agent.rs): feed one input, carry out `poll_action` in order, arm a timer
//! at `poll_timeout` (see `devices` for what each action costs in simulated time).
//!
//! Files: `mod.rs` (set-up, the event loop and dispatch, flows), `edge_driver.rs` (the
//! edge schedulers' driver and the mesh's responders), `device_driver.rs` (each device's
//! install engine and its download, whose decisions are `protocol::device`'s), `faults.rs`
//! (crashes, restarts, backhaul and LAN partitions).
//!
//! Verification is simulated, not skipped: a chunk in flight carries a "tampered" flag, and
//! a receiving driver reports `Corrupt` for a tampered chunk exactly where the daemon's
//! `verify_stored` would fail. Planted driver bugs (`scenario::PlantParams`) turn individual
//! checks off so the tests can prove the checkers notice.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use protocol::device::fetch::FetchConfig;
use protocol::device::ReleaseCandidate;
use protocol::edge::origin_handout::{HandoutConfig, OriginHandout};
use protocol::edge::{
    Bitfield, ChunkOutcome, EdgeEvent, EdgeStats, FetchScheduler, NodeId, PeerRole, Request, RequestId,
    SchedulerConfig, SiteId,
};
use protocol::install::{Action, BootInfo, Engine, ErrorCode, GateDecision, HealthOutcome, Offer, Record, Slot};
use protocol::time::Instant;
use protocol::ChunkId;

use crate::checkers::Checkers;
use crate::devices::{self, Device, EndState, Op};
use crate::engine::{secs, Ended, EventQueue, FlowId, LinkId, Micros, Network, SECOND};
use crate::release::Release;
use crate::rng::Rng;
use crate::scenario::{PartitionKind, Scenario};
use crate::topology::{self, Topology};

mod device_driver;
mod edge_driver;
mod faults;
mod rollout_driver;

use rollout_driver::{QueuedReport, RolloutRun};

/// Delay before a dropped connection is re-established once its path is back.
const RECONNECT: Micros = SECOND;

/// What the mesh run measured.
#[derive(Debug, Clone, Default)]
pub struct MeshOutcome {
    /// Per device: when its last download finished (`Micros::MAX` if never, or if that
    /// image then failed the whole-image hash).
    pub downloaded_at: Vec<Micros>,
    /// Per device: when its install engine finished — committed, rolled back or refusing
    /// (`Micros::MAX` if never).
    pub finished_at: Vec<Micros>,
    /// Devices whose engines ended committed on the release.
    pub committed: u64,
    /// Devices whose engines rolled back.
    pub rolled_back: u64,
    /// Devices whose engines refused the release.
    pub refused: u64,
    /// Devices by how their engines ended (`devices::EndState::name`).
    pub end_states: BTreeMap<String, u64>,
    /// Per site: bytes the backhaul carried inbound (link level, including wasted bytes).
    pub backhaul_bytes: Vec<f64>,
    /// Per site: verified bytes the edge nodes counted from outside the site.
    pub backhaul_verified_bytes: Vec<u64>,
    /// Per site: bytes carried by the LAN.
    pub lan_bytes: Vec<f64>,
    /// Origin transfers: (start, end, bytes).
    pub origin_flows: Vec<(Micros, Micros, u64)>,
    /// Per edge node: when it held the whole release.
    pub edge_complete_at: Vec<Option<Micros>>,
    /// Counters.
    pub counters: MeshCounters,
    /// Virtual time at the end.
    pub end: Micros,
    /// Checkers' findings.
    pub violations: Vec<crate::checkers::Violation>,
    /// The rollout's figures, if the scenario has one.
    pub rollout: Option<crate::rollout::RolloutReport>,
}

/// Counters from the edge schedulers and the driver.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MeshCounters {
    /// Chunk requests the schedulers sent.
    pub chunk_requests: u64,
    /// Requests that failed or timed out.
    pub failed_requests: u64,
    /// Chunks that failed verification at an edge node.
    pub corrupt_chunks: u64,
    /// Tail duplicate requests.
    pub tail_duplicates: u64,
    /// Peers disconnected for lying.
    pub liar_disconnects: u64,
    /// `handle_timeout` calls.
    pub scheduler_wakeups: u64,
    /// Wakeups the scheduler asked for at `now + 1 µs` (a deadline already past): a busy
    /// loop in a real daemon, where only the timer resolution slows it down.
    pub immediate_wakeups: u64,
    /// Every `handle_*` call.
    pub scheduler_inputs: u64,
    /// Chunks the origin answered `Busy` (handed to another site for now).
    pub origin_busy_chunks: u64,
    /// Batches a device rejected after verification and fetched again.
    pub device_refetches: u64,
    /// Every `handle_*` call on a device's install engine.
    pub engine_inputs: u64,
    /// `Persist` actions (record writes).
    pub device_persists: u64,
    /// `Report` actions (status reports).
    pub device_reports: u64,
    /// Metadata checks that failed (no live edge node in the site).
    pub device_check_failures: u64,
    /// Downloads that stopped short (`handle_download_failed`); the engine retried them.
    pub device_download_failures: u64,
    /// Whole-image hashes that did not match (`handle_image_verified(false)`).
    pub device_image_mismatches: u64,
    /// Device reboots.
    pub device_reboots: u64,
    /// Events processed.
    pub events: u64,
}

#[derive(Debug, Clone, Copy)]
enum Tag {
    Chunks(u32),
    Device(u32),
}

#[derive(Debug)]
enum Ev {
    Timer { edge: u32, gen: u32 },
    HaveAt { server: u32, edge: u32, inc: u32 },
    HaveReply { edge: u32, inc: u32, peer: u32, bits: Option<Vec<u8>> },
    ChunksAt { server: u32, edge: u32, inc: u32, req: RequestId, indices: Vec<u32> },
    ChunksReply { slot: u32 },
    ChunksFailed { edge: u32, inc: u32, req: RequestId },
    PeerDown { edge: u32, peer: u32 },
    PeerUp { edge: u32, peer: u32 },
    Crash { edge: u32, restart: Option<Micros> },
    Restart { edge: u32 },
    Flap { site: u32, down: bool },
    Partition { index: u32, start: bool },
    Checkin(u32),
    BatchDone(u32),
    DeviceOp { d: u32, gen: u8 },
    DeviceTimer { d: u32, at: Micros },
    PolicyAt { site: u32, version: u16 },
    ReportAtEdge(QueuedReport),
    ReportFlush { site: u32 },
    ReportsAtOrigin(Vec<QueuedReport>),
    RolloutTick,
}

struct Pending {
    edge: u32,
    inc: u32,
    req: RequestId,
    server: u32,
    outcomes: Vec<(u32, ChunkOutcome)>,
    tainted: Vec<u32>,
    latency: Micros,
    flow: Option<FlowId>,
}

struct Edge {
    id: NodeId,
    site: u32,
    slot: u32,
    sched: Option<FetchScheduler>,
    /// Incarnation: bumped on crash so late replies to the old process are dropped.
    inc: u32,
    stats_before: EdgeStats,
    timer_gen: u32,
    timer_at: Micros,
    /// The chunk store (survives crashes): which chunks (a bit each: a device's request
    /// checks a run of them a word at a time), and which were never verified.
    stored: Bitfield,
    tainted: BTreeSet<u32>,
    incoming_tainted: Vec<u32>,
    sessions: u32,
    queue: VecDeque<u32>,
    /// Devices whose request waits for a chunk, by that chunk (stale entries are skipped
    /// when the chunk arrives).
    waiting: HashMap<u32, Vec<u32>>,
    complete_at: Option<Micros>,
    verifies: bool,
}

enum NodeKind {
    Edge(u32),
    Origin,
    Liar(u32),
}

/// Runs the mesh for `scenario` with `seed`. `progress(now, finished devices)` is called now
/// and then.
pub fn run(scenario: &Scenario, seed: u64, release: &Release, progress: &mut dyn FnMut(Micros, u64)) -> MeshOutcome {
    let mut world = World::new(scenario, seed, release);
    world.start();
    world.run(progress);
    let out = world.finish();
    world.free_in_background();
    out
}

struct World<'a> {
    sc: &'a Scenario,
    rel: &'a Release,
    topo: Topology,
    net: Network<Tag>,
    q: EventQueue<Ev>,
    now: Micros,
    edges: Vec<Edge>,
    per_site: u32,
    node_ids: Vec<NodeId>,
    by_id: HashMap<NodeId, u32>,
    origin: u32,
    liar_sites: Vec<u32>,
    adjacency: Vec<Vec<u32>>,
    conn_down: BTreeSet<(u32, u32)>,
    backhaul_down: Vec<u32>,
    lan_split: Vec<u32>,
    pending: Vec<Option<Pending>>,
    pending_free: Vec<u32>,
    chunk_index: HashMap<ChunkId, u32>,
    /// The driver's per-device state and the install engines, in separate arrays so the
    /// driver's hot bookkeeping stays in few cache lines.
    devices: Vec<Device>,
    engines: Vec<Engine>,
    /// What each device last persisted, kept only in debug builds: a reboot builds the new
    /// engine from the old one's record, which is what was persisted because nothing changes
    /// the record between the engine's last `Persist` and its `Reboot`. Debug builds (the
    /// tests) check that on every boot; a release run skips the copy, 256 bytes into cold
    /// memory on each of fleet-1m's 11 million persists.
    #[cfg(debug_assertions)]
    persisted: Vec<Record>,
    /// Each downloading device's fetch plan and edge records, in the slot its `Device::fetch`
    /// names.
    downloads: devices::Downloads,
    fetch_config: FetchConfig,
    /// The release's stored chunk lengths, shared by every device's plan.
    chunk_lens: std::sync::Arc<[u32]>,
    /// Where each chunk starts in the release's stored bytes, and their total last: a run
    /// of chunks' bytes in two lookups.
    stored_offsets: Vec<u64>,
    checkin: Vec<Micros>,
    out: MeshOutcome,
    flaps: Vec<Option<Rng>>,
    rng: Rng,
    checkers: Checkers,
    /// The origin's rationing of chunks over sites (as `seeder serve` runs it).
    handout: OriginHandout,
    offer: Offer,
    published: [ReleaseCandidate<'static>; 1],
    terminal: u64,
    never_checking_in: u64,
    resolution: Micros,
    detect: Micros,
    /// The staged rollout, if the scenario has one.
    rollout: Option<Box<RolloutRun>>,
}

impl<'a> World<'a> {
    fn new(sc: &'a Scenario, seed: u64, rel: &'a Release) -> World<'a> {
        let mut net = Network::default();
        let topo = Topology::build(sc, &mut net);
        let per_site = sc.sites.edges_per_site;
        let n_edges = sc.sites.count * per_site;
        let n_chunks = rel.chunk_count() as usize;
        let mut node_ids = Vec::new();
        let mut edges = Vec::with_capacity(n_edges as usize);
        for e in 0..n_edges {
            let mut label = b"simnet edge ".to_vec();
            label.extend_from_slice(&e.to_le_bytes());
            let id = NodeId::from_identity(&label);
            node_ids.push(id);
            edges.push(Edge {
                id,
                site: e / per_site,
                slot: e % per_site,
                sched: None,
                inc: 0,
                stats_before: EdgeStats::default(),
                timer_gen: 0,
                timer_at: Micros::MAX,
                stored: Bitfield::new(n_chunks as u32),
                tainted: BTreeSet::new(),
                incoming_tainted: Vec::new(),
                sessions: 0,
                queue: VecDeque::new(),
                waiting: HashMap::new(),
                complete_at: None,
                verifies: !(sc.plant.edge_skips_verification && e == 0),
            });
        }
        let origin = n_edges;
        node_ids.push(NodeId::from_identity(b"simnet origin"));
        let liar_sites: Vec<u32> = sc.faults.liar.iter().map(|l| l.site).collect();
        for i in 0..liar_sites.len() {
            let mut label = b"simnet liar ".to_vec();
            label.extend_from_slice(&(i as u64).to_le_bytes());
            node_ids.push(NodeId::from_identity(&label));
        }
        let by_id = node_ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect();
        // Connections: site-mates, the origin, a few edge nodes elsewhere (as Kademlia and
        // bootstrap would find them), and any liar planted in the site.
        let mut adjacency: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); node_ids.len()];
        let mut topo_rng = Rng::stream(seed, 0x70_b0);
        for e in 0..n_edges {
            let site = e / per_site;
            adjacency[e as usize].insert(origin);
            adjacency[origin as usize].insert(e);
            if !sc.plant.edges_ignore_site_mates {
                for m in site * per_site..(site + 1) * per_site {
                    if m != e {
                        adjacency[e as usize].insert(m);
                    }
                }
            }
            if sc.sites.count > 1 {
                for _ in 0..sc.sites.wan_peers {
                    let other_site = (site + 1 + topo_rng.below(sc.sites.count as u64 - 1) as u32) % sc.sites.count;
                    let peer = other_site * per_site + topo_rng.below(per_site as u64) as u32;
                    adjacency[e as usize].insert(peer);
                    adjacency[peer as usize].insert(e);
                }
            }
        }
        for (i, site) in liar_sites.iter().enumerate() {
            let liar = origin + 1 + i as u32;
            for e in site * per_site..(site + 1) * per_site {
                adjacency[e as usize].insert(liar);
                adjacency[liar as usize].insert(e);
            }
        }
        let chunk_index = rel.spec.chunks.iter().enumerate().map(|(i, c)| (c.id, i as u32)).collect();
        let n_devices = sc.device_count() as usize;
        // Devices planted in another hardware class or ahead of the release, if asked for.
        let (wrong, ahead) = (sc.devices.wrong_hw_class_fraction, sc.devices.ahead_of_release_fraction);
        let mut plant_rng = Rng::stream(seed, 0x0c1a_55e5);
        let engines: Vec<Engine> = (0..n_devices)
            .map(|_| {
                let wrong_class = wrong > 0.0 && plant_rng.chance(wrong);
                let is_ahead = ahead > 0.0 && plant_rng.chance(ahead);
                let config = devices::engine_config(&sc.devices, wrong_class);
                Engine::new(config, Record::factory(Slot::A, devices::factory_release(is_ahead)))
            })
            .collect();
        #[cfg(debug_assertions)]
        let persisted = engines.iter().map(|e| *e.record()).collect();
        let mut devices: Vec<Device> = (0..n_devices).map(|d| Device::new((d as u32 % per_site) as u8)).collect();
        let rollout = RolloutRun::new(sc, seed, rel.id, &mut devices);
        let out = MeshOutcome {
            downloaded_at: vec![Micros::MAX; n_devices],
            finished_at: vec![Micros::MAX; n_devices],
            ..MeshOutcome::default()
        };
        World {
            sc,
            rel,
            topo,
            net,
            q: EventQueue::default(),
            now: 0,
            edges,
            per_site,
            node_ids,
            by_id,
            origin,
            liar_sites,
            adjacency: adjacency.into_iter().map(|s| s.into_iter().collect()).collect(),
            conn_down: BTreeSet::new(),
            backhaul_down: vec![0; sc.sites.count as usize],
            lan_split: vec![0; sc.sites.count as usize],
            pending: Vec::new(),
            pending_free: Vec::new(),
            chunk_index,
            devices,
            engines,
            #[cfg(debug_assertions)]
            persisted,
            downloads: devices::Downloads::default(),
            fetch_config: devices::fetch_config(&sc.devices),
            chunk_lens: rel.spec.chunks.iter().map(|c| c.stored_len).collect(),
            stored_offsets: devices::stored_offsets(&rel.spec.chunks),
            checkin: topology::checkin_times(sc, seed),
            out,
            flaps: topology::flap_streams(sc, seed),
            rng: Rng::stream(seed, 0x00de_71ce),
            checkers: Checkers::new(rel.bytes, sc.checks.max_backhaul_amplification),
            handout: OriginHandout::new(HandoutConfig {
                copies: sc.origin.handout_copies,
                window: protocol::time::Duration(secs(sc.origin.handout_window_s)),
                ..HandoutConfig::default()
            }),
            offer: devices::offer(rel),
            published: devices::published(),
            terminal: 0,
            never_checking_in: u64::from(sc.plant.device_never_checks_in && n_devices > 0),
            resolution: secs(sc.edge.timer_resolution_ms / 1e3).max(1),
            detect: secs(sc.edge.crash_detect_ms / 1e3),
            rollout,
        }
    }

    // ----- topology helpers ---------------------------------------------------------

    fn kind(&self, node: u32) -> NodeKind {
        let n_edges = self.edges.len() as u32;
        if node < n_edges {
            NodeKind::Edge(node)
        } else if node == self.origin {
            NodeKind::Origin
        } else {
            NodeKind::Liar(node - self.origin - 1)
        }
    }

    fn site_of(&self, node: u32) -> Option<u32> {
        match self.kind(node) {
            NodeKind::Edge(e) => Some(self.edges[e as usize].site),
            NodeKind::Origin => None,
            NodeKind::Liar(i) => Some(self.liar_sites[i as usize]),
        }
    }

    fn site_id(site: u32) -> SiteId {
        SiteId::from_name(&format!("site-{site}"))
    }

    fn alive(&self, node: u32) -> bool {
        match self.kind(node) {
            NodeKind::Edge(e) => self.edges[e as usize].sched.is_some(),
            _ => true,
        }
    }

    fn reachable(&self, a: u32, b: u32) -> bool {
        if !self.alive(a) || !self.alive(b) {
            return false;
        }
        match (self.site_of(a), self.site_of(b)) {
            (Some(x), Some(y)) if x == y => self.lan_split[x as usize] == 0,
            (Some(x), Some(y)) => self.backhaul_down[x as usize] == 0 && self.backhaul_down[y as usize] == 0,
            (Some(x), None) | (None, Some(x)) => self.backhaul_down[x as usize] == 0,
            (None, None) => true,
        }
    }

    /// Path from `server` to `client` (an edge node): links, one-way latency, loss, cap.
    fn path(&self, server: u32, client_site: u32) -> (Vec<LinkId>, Micros, f64, f64) {
        match self.site_of(server) {
            None => {
                let (p, lat, cap) = self.topo.from_origin(client_site);
                (p.to_vec(), lat, self.topo.backhaul_loss, cap)
            }
            Some(s) if s == client_site => (vec![self.topo.lan[s as usize]], self.topo.lan_latency, 0.0, f64::INFINITY),
            Some(s) => {
                let (p, lat, cap) = self.topo.between_sites(s, client_site);
                (p.to_vec(), lat, 2.0 * self.topo.backhaul_loss, cap)
            }
        }
    }

    fn role_of(&self, node: u32) -> PeerRole {
        if node == self.origin {
            PeerRole::Origin
        } else {
            PeerRole::Edge
        }
    }

    fn peer_site_id(&self, node: u32) -> SiteId {
        match self.site_of(node) {
            Some(s) => Self::site_id(s),
            None => SiteId(u64::MAX - 1),
        }
    }

    // ----- set-up and main loop -----------------------------------------------------

    fn config(&self) -> SchedulerConfig {
        SchedulerConfig { capacity_bytes: self.sc.edge.capacity_mib << 20, ..SchedulerConfig::default() }
    }

    fn boot_edge(&mut self, e: u32) {
        let edge = &self.edges[e as usize];
        let mut sched = FetchScheduler::new(edge.id, Self::site_id(edge.site), self.config());
        // The store survives a crash: report what is on disk, as the daemon does at start-up.
        for i in (0..edge.stored.len()).filter(|&i| edge.stored.get(i)) {
            let c = self.rel.spec.chunks[i as usize];
            let _ = sched.handle_local_chunk(c.id, c.stored_len as u64);
        }
        self.edges[e as usize].sched = Some(sched);
        self.out.counters.scheduler_inputs += 1;
    }

    fn start(&mut self) {
        for e in 0..self.edges.len() as u32 {
            self.boot_edge(e);
        }
        for e in 0..self.edges.len() as u32 {
            for p in self.adjacency[e as usize].clone() {
                let (id, site, role) = (self.node_ids[p as usize], self.peer_site_id(p), self.role_of(p));
                if let Some(s) = self.edges[e as usize].sched.as_mut() {
                    s.handle_peer_up(Instant(0), id, site, role);
                }
                self.out.counters.scheduler_inputs += 1;
            }
            let (rid, spec) = (self.rel.id, self.rel.spec.clone());
            if let Some(s) = self.edges[e as usize].sched.as_mut() {
                s.handle_release(Instant(0), rid, spec);
            }
            self.out.counters.scheduler_inputs += 1;
            self.pump(e);
        }
        for (d, at) in self.checkin.iter().enumerate() {
            if !(self.never_checking_in == 1 && d == 0) {
                self.q.push(*at, Ev::Checkin(d as u32));
            }
        }
        for c in &self.sc.faults.crash {
            let edge = c.site * self.per_site + c.edge;
            self.q.push(secs(c.at_s), Ev::Crash { edge, restart: c.restart_after_s.map(secs) });
        }
        for (i, p) in self.sc.faults.partition.iter().enumerate() {
            self.q.push(secs(p.at_s), Ev::Partition { index: i as u32, start: true });
            self.q.push(secs(p.at_s + p.duration_s), Ev::Partition { index: i as u32, start: false });
        }
        self.rollout_start();
        if let Some(f) = &self.sc.faults.flaps {
            for site in 0..self.flaps.len() {
                if let Some(rng) = self.flaps[site].as_mut() {
                    let at = secs(rng.exp(f.mean_up_s));
                    self.q.push(at, Ev::Flap { site: site as u32, down: true });
                }
            }
        }
    }

    fn run(&mut self, progress: &mut dyn FnMut(Micros, u64)) {
        let limit = secs(self.sc.max_sim_s);
        let total = self.devices.len() as u64;
        self.net.settle(self.now);
        loop {
            // Flows ending and events at the same instant: flows first, a fixed rule.
            let (tq, tn) = (self.q.peek_time(), self.net.next_due());
            let Some(at) = [tq, tn].into_iter().flatten().min() else { break };
            if at > limit {
                self.now = limit;
                break;
            }
            self.out.counters.events += 1;
            if tn == Some(at) {
                let Some((now, ended)) = self.net.complete_next() else { break };
                self.now = now;
                for e in ended {
                    self.flow_done(e);
                }
            } else {
                let Some((now, ev)) = self.q.pop() else { break };
                self.now = now;
                self.handle(ev);
            }
            self.net.settle(self.now);
            let settled = self.terminal + self.never_checking_in >= total && !self.rollout_blocks_end();
            if self.checkers.failed() || settled {
                break;
            }
            if self.out.counters.events.is_multiple_of(65_536) {
                progress(self.now, self.terminal);
            }
        }
        progress(self.now, self.terminal);
    }

    fn finish(&mut self) -> MeshOutcome {
        let now = self.now;
        // Final states come from the engines themselves.
        let mut stuck = Vec::new();
        let mut total_stuck = 0;
        let mut ends: HashMap<EndState, u64> = HashMap::new();
        let mut held: BTreeMap<String, u64> = BTreeMap::new();
        for (d, engine) in self.engines.iter().enumerate() {
            let end = devices::end_state(engine, &self.rel.id);
            if let EndState::Unfinished(state) = end {
                // Held by the rollout's gate after a halt: settled, not stuck.
                if self.rollout_hold_is_settled(d as u32) {
                    *held.entry(format!("held ({})", state.name())).or_default() += 1;
                    continue;
                }
            }
            *ends.entry(end).or_default() += 1;
            match end {
                EndState::Committed => self.out.committed += 1,
                EndState::RolledBack(_) => self.out.rolled_back += 1,
                EndState::Refused(_) => self.out.refused += 1,
                EndState::Unfinished(state) => {
                    total_stuck += 1;
                    if stuck.len() < 10 {
                        stuck.push((d as u64, state.name()));
                    }
                }
            }
        }
        self.out.end_states = ends.into_iter().map(|(end, count)| (end.name(), count)).collect();
        self.out.end_states.extend(held);
        self.out.rollout = self.rollout_outcome();
        if !self.checkers.failed() {
            self.checkers.converged(now, &stuck, total_stuck);
        }
        let sites = self.sc.sites.count as usize;
        let mut verified = vec![0u64; sites];
        let c = &mut self.out.counters;
        for edge in &self.edges {
            let mut s = edge.stats_before;
            if let Some(sched) = &edge.sched {
                add_stats(&mut s, &sched.stats());
            }
            verified[edge.site as usize] += s.backhaul_bytes();
            c.chunk_requests += s.requests_sent;
            c.failed_requests += s.failed_requests;
            c.corrupt_chunks += s.corrupt_chunks;
            c.tail_duplicates += s.tail_duplicates;
        }
        self.out.backhaul_verified_bytes = verified;
        self.out.backhaul_bytes = self.topo.backhaul_down.iter().map(|l| self.net.carried_bytes(*l)).collect();
        self.out.lan_bytes = self.topo.lan.iter().map(|l| self.net.carried_bytes(*l)).collect();
        self.out.edge_complete_at = self.edges.iter().map(|e| e.complete_at).collect();
        self.out.end = now;
        self.out.violations = std::mem::take(&mut self.checkers.violations);
        std::mem::take(&mut self.out)
    }

    /// Frees the run's tables on a thread of their own: at a million devices they are
    /// millions of allocations (engines, downloads, the edge nodes' and the rollout's maps)
    /// that take the better part of a second to give back, while the caller has a report to
    /// write and plots to draw. A process that exits first simply never frees them.
    fn free_in_background(self) {
        let World { edges, devices, engines, downloads, rollout, net, q, pending, chunk_index, checkin, .. } = self;
        let tables = (edges, devices, engines, downloads, rollout, net, q, pending, chunk_index, checkin);
        // If no thread can be started, the closure and the tables are dropped here instead.
        let _ = std::thread::Builder::new().name("simnet-free".into()).spawn(move || drop(tables));
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Timer { edge, gen } => {
                let now = self.now;
                let e = &mut self.edges[edge as usize];
                if e.timer_gen != gen {
                    return;
                }
                e.timer_at = Micros::MAX;
                if let Some(s) = e.sched.as_mut() {
                    s.handle_timeout(Instant(now));
                    self.out.counters.scheduler_wakeups += 1;
                    self.out.counters.scheduler_inputs += 1;
                    self.pump(edge);
                }
            }
            Ev::HaveAt { server, edge, inc } => self.have_at(server, edge, inc),
            Ev::HaveReply { edge, inc, peer, bits } => {
                let (now, rid, pid) = (self.now, self.rel.id, self.node_ids[peer as usize]);
                let e = &mut self.edges[edge as usize];
                if e.inc != inc {
                    return;
                }
                let Some(s) = e.sched.as_mut() else { return };
                match bits {
                    Some(bits) => s.handle_have(Instant(now), pid, rid, &bits),
                    None => s.handle_have_failed(Instant(now), pid, rid),
                }
                self.out.counters.scheduler_inputs += 1;
                self.pump(edge);
            }
            Ev::ChunksAt { server, edge, inc, req, indices } => self.chunks_at(server, edge, inc, req, indices),
            Ev::ChunksReply { slot } => {
                let Some(p) = self.pending.get_mut(slot as usize).and_then(Option::take) else { return };
                self.pending_free.push(slot);
                let now = self.now;
                let e = &mut self.edges[p.edge as usize];
                if e.inc != p.inc {
                    return;
                }
                let Some(s) = e.sched.as_mut() else { return };
                e.incoming_tainted = p.tainted;
                s.handle_response(Instant(now), p.req, &p.outcomes);
                self.out.counters.scheduler_inputs += 1;
                self.pump(p.edge);
                self.edges[p.edge as usize].incoming_tainted.clear();
            }
            Ev::ChunksFailed { edge, inc, req } => {
                let now = self.now;
                let e = &mut self.edges[edge as usize];
                if e.inc != inc {
                    return;
                }
                let Some(s) = e.sched.as_mut() else { return };
                s.handle_request_failed(Instant(now), req);
                self.out.counters.scheduler_inputs += 1;
                self.pump(edge);
            }
            Ev::PeerDown { edge, peer } => {
                if !self.alive(edge) || self.reachable(edge, peer) || self.conn_down.contains(&(edge, peer)) {
                    return;
                }
                self.conn_down.insert((edge, peer));
                let (now, pid) = (self.now, self.node_ids[peer as usize]);
                if let Some(s) = self.edges[edge as usize].sched.as_mut() {
                    s.handle_peer_down(Instant(now), pid);
                    self.out.counters.scheduler_inputs += 1;
                }
                self.pump(edge);
            }
            Ev::PeerUp { edge, peer } => {
                if !self.reachable(edge, peer) || !self.conn_down.remove(&(edge, peer)) {
                    return;
                }
                let (now, pid, site, role) =
                    (self.now, self.node_ids[peer as usize], self.peer_site_id(peer), self.role_of(peer));
                if let Some(s) = self.edges[edge as usize].sched.as_mut() {
                    s.handle_peer_up(Instant(now), pid, site, role);
                    self.out.counters.scheduler_inputs += 1;
                }
                self.pump(edge);
            }
            Ev::Crash { edge, restart } => self.crash(edge, restart),
            Ev::Restart { edge } => self.restart(edge),
            Ev::Flap { site, down } => {
                self.set_backhaul(site, down);
                if let (Some(f), Some(rng)) = (&self.sc.faults.flaps, self.flaps[site as usize].as_mut()) {
                    let next = secs(rng.exp(if down { f.mean_down_s } else { f.mean_up_s })).max(1);
                    self.q.push(self.now + next, Ev::Flap { site, down: !down });
                }
            }
            Ev::Partition { index, start } => {
                let p = &self.sc.faults.partition[index as usize];
                for site in p.sites.clone() {
                    match p.kind {
                        PartitionKind::Backhaul => self.set_backhaul(site, start),
                        PartitionKind::SiteLan => self.set_lan_split(site, start),
                    }
                }
            }
            Ev::Checkin(d) => self.device_start(d),
            Ev::BatchDone(d) => self.batch_done(d),
            Ev::DeviceOp { d, gen } => self.device_op_done(d, gen),
            Ev::DeviceTimer { d, at } => {
                let dev = &mut self.devices[d as usize];
                if dev.timer_at != at {
                    return;
                }
                dev.timer_at = Micros::MAX;
                let now = Instant(self.now);
                self.engine(d).handle_timeout(now);
                self.drive(d);
            }
            Ev::PolicyAt { site, version } => self.rollout_policy_at(site, version),
            Ev::ReportAtEdge(report) => self.rollout_report_at_edge(report),
            Ev::ReportFlush { site } => self.rollout_flush(site),
            Ev::ReportsAtOrigin(batch) => self.rollout_reports_at_origin(batch),
            Ev::RolloutTick => self.rollout_tick(),
        }
    }

    fn flow_done(&mut self, ended: Ended<Tag>) {
        match ended.tag {
            Tag::Chunks(slot) => {
                let Some(p) = self.pending[slot as usize].as_mut() else { return };
                p.flow = None;
                let (server, edge, latency) = (p.server, p.edge, p.latency);
                if server == self.origin {
                    self.out.origin_flows.push((ended.start, self.now, ended.bytes));
                }
                if self.site_of(server) != Some(self.edges[edge as usize].site) {
                    let site = self.edges[edge as usize].site;
                    let carried = self.net.carried_bytes(self.topo.backhaul_down[site as usize]);
                    self.checkers.backhaul(self.now, site, carried);
                }
                self.q.push(self.now + latency, Ev::ChunksReply { slot });
            }
            Tag::Device(d) => {
                self.devices[d as usize].flow = None;
                self.q.push(self.now + self.topo.lan_latency, Ev::BatchDone(d));
            }
        }
    }

    /// A flow ended early (link down, node crashed).
    fn flow_failed(&mut self, ended: Ended<Tag>) {
        match ended.tag {
            Tag::Chunks(slot) => {
                let Some(p) = self.pending[slot as usize].take() else { return };
                self.pending_free.push(slot);
                if p.server == self.origin {
                    self.out.origin_flows.push((ended.start, self.now, ended.bytes));
                }
                self.q.push(self.now + self.detect, Ev::ChunksFailed { edge: p.edge, inc: p.inc, req: p.req });
            }
            Tag::Device(d) => {
                self.devices[d as usize].flow = None;
                self.request_failed(d);
            }
        }
    }
}

fn add_stats(acc: &mut EdgeStats, s: &EdgeStats) {
    for i in 0..3 {
        acc.bytes_in[i] += s.bytes_in[i];
        acc.chunks_in[i] += s.chunks_in[i];
    }
    acc.corrupt_chunks += s.corrupt_chunks;
    acc.failed_requests += s.failed_requests;
    acc.requests_sent += s.requests_sent;
    acc.tail_duplicates += s.tail_duplicates;
    acc.evictions += s.evictions;
}
