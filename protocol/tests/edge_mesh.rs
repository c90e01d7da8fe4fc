//! Many edge schedulers on virtual time, without sockets: the mesh's claims checked
//! deterministically. A tiny network model delivers each request after latency plus its
//! bytes over the link's bandwidth (LAN fast, backhaul slow); the origin and any liar are
//! simple responders, every edge node is the real `FetchScheduler`.

use protocol::edge::origin_handout::{HandoutConfig, OriginHandout};
use protocol::edge::{
    ChunkOutcome, ChunkSpec, EdgeEvent, FetchScheduler, NodeId, PeerRole, ReleaseSpec, Request, RequestId,
    SchedulerConfig, SiteId, SourceClass,
};
use protocol::time::{Duration, Instant};
use protocol::ChunkId;
use protocol::ReleaseId;
use std::collections::{BTreeMap, BTreeSet};

const LAN_BYTES_PER_SEC: u64 = 125_000_000;
const WAN_BYTES_PER_SEC: u64 = 12_500_000;
const LATENCY: Duration = Duration(2_000);

#[derive(Debug)]
enum Delivery {
    Chunks { to: usize, id: RequestId, outcomes: Vec<(u32, ChunkOutcome)> },
    Have { to: usize, from: NodeId, release: ReleaseId, bits: Vec<u8> },
}

/// How a scripted (non-scheduler) peer misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Claims every chunk and sends garbage.
    Liar,
}

struct Net {
    now: Instant,
    nodes: Vec<Option<FetchScheduler>>, // None = crashed
    ids: Vec<NodeId>,
    sites: Vec<SiteId>,
    origin: NodeId,
    liars: BTreeMap<NodeId, Behaviour>,
    queue: BTreeMap<(Instant, u64), Delivery>,
    seq: u64,
    release: ReleaseId,
    spec: ReleaseSpec,
    stored: Vec<BTreeSet<ChunkId>>,
    disconnected: Vec<(usize, NodeId)>,
    /// Nodes that have not heard of the release yet.
    late: BTreeSet<usize>,
    /// Chunk requests sent to a peer after the sender had disconnected it.
    requests_after_ban: u64,
    /// Every chunk request sent: (sender, chunks, stored bytes).
    chunk_requests: Vec<(usize, usize, u64)>,
    /// The origin's rationing, when the test turns it on.
    handout: Option<OriginHandout>,
}

fn node_id(i: u64) -> NodeId {
    NodeId::from_identity(&i.to_le_bytes())
}

impl Net {
    fn new(sites: usize, per_site: usize, chunks: u32, liar_in_site: Option<usize>) -> Net {
        Net::build(sites, per_site, chunks, liar_in_site, None)
    }

    /// Like `new`, but the nodes of `late_site` hear of the release only at `announce_late`.
    fn build(sites: usize, per_site: usize, chunks: u32, liar_in_site: Option<usize>, late_site: Option<usize>) -> Net {
        let spec = ReleaseSpec {
            hw_class: "gw".into(),
            chunks: (0..chunks)
                .map(|i| ChunkSpec { id: ChunkId::of(&i.to_le_bytes()), stored_len: 60_000 + (i % 7) * 1000 })
                .collect(),
        };
        let release = ReleaseId([7; 32]);
        let origin = node_id(9999);
        let mut net = Net {
            now: Instant(0),
            nodes: Vec::new(),
            ids: Vec::new(),
            sites: Vec::new(),
            origin,
            liars: BTreeMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            release,
            spec,
            stored: Vec::new(),
            disconnected: Vec::new(),
            requests_after_ban: 0,
            chunk_requests: Vec::new(),
            late: BTreeSet::new(),
            handout: None,
        };
        for s in 0..sites {
            for m in 0..per_site {
                let id = node_id((s * 100 + m) as u64);
                let site = SiteId(s as u64);
                net.ids.push(id);
                net.sites.push(site);
                net.nodes.push(Some(FetchScheduler::new(id, site, SchedulerConfig::default())));
                net.stored.push(BTreeSet::new());
            }
        }
        if let Some(s) = liar_in_site {
            net.liars.insert(node_id(666), Behaviour::Liar);
            let _ = s;
        }
        // Everyone connects to everyone in its site, to the origin, to one node per other site.
        for i in 0..net.nodes.len() {
            for j in 0..net.nodes.len() {
                if i != j && (net.sites[i] == net.sites[j] || j % per_site == 0) {
                    let (id, site) = (net.ids[j], net.sites[j]);
                    net.node(i).handle_peer_up(Instant(0), id, site, PeerRole::Edge);
                }
            }
            net.node(i).handle_peer_up(Instant(0), origin, SiteId(u64::MAX - 1), PeerRole::Origin);
            if let Some(s) = liar_in_site {
                if net.sites[i] == SiteId(s as u64) {
                    let site = net.sites[i];
                    net.node(i).handle_peer_up(Instant(0), node_id(666), site, PeerRole::Edge);
                }
            }
            if late_site.is_some_and(|s| net.sites[i] == SiteId(s as u64)) {
                net.late.insert(i);
                continue;
            }
            let spec = net.spec.clone();
            net.node(i).handle_release(Instant(0), release, spec);
        }
        net
    }

    /// The late site hears of the release now.
    fn announce_late(&mut self) {
        let (now, release) = (self.now, self.release);
        for i in std::mem::take(&mut self.late) {
            let spec = self.spec.clone();
            self.node(i).handle_release(now, release, spec);
        }
    }

    fn node(&mut self, i: usize) -> &mut FetchScheduler {
        self.nodes[i].as_mut().expect("node is up")
    }

    fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.ids.iter().position(|x| x == id)
    }

    fn push(&mut self, at: Instant, d: Delivery) {
        self.seq += 1;
        self.queue.insert((at, self.seq), d);
    }

    /// Drains every node's outputs into the network.
    fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(node) = self.nodes[i].as_mut() else { continue };
            let mut requests = Vec::new();
            while let Some(r) = node.poll_request() {
                requests.push(r);
            }
            while let Some(e) = node.poll_event() {
                match e {
                    EdgeEvent::Store { chunk } => {
                        self.stored[i].insert(chunk);
                    }
                    EdgeEvent::Evict { chunk } => {
                        self.stored[i].remove(&chunk);
                    }
                    EdgeEvent::Disconnect { peer, .. } => self.disconnected.push((i, peer)),
                    _ => {}
                }
            }
            for r in requests {
                self.route(i, r);
            }
        }
    }

    fn route(&mut self, from: usize, request: Request) {
        let now = self.now;
        match request {
            Request::Have { peer, release } => {
                let bits = match self.index_of(&peer) {
                    Some(j) => match &self.nodes[j] {
                        Some(n) => n.have(&release).map(|b| b.to_bytes()).unwrap_or_default(),
                        None => return, // crashed: never answers; the requester's peer_down comes separately
                    },
                    None if self.liars.contains_key(&peer) => vec![0xff; 1 + self.spec.chunks.len() / 8],
                    None => return,
                };
                self.push(now + LATENCY, Delivery::Have { to: from, from: peer, release, bits });
            }
            Request::Chunks { id, peer, indices, class, bytes, .. } => {
                self.chunk_requests.push((from, indices.len(), bytes));
                if self.disconnected.contains(&(from, peer)) {
                    self.requests_after_ban += 1;
                }
                let outcomes: Vec<(u32, ChunkOutcome)> = if peer == self.origin {
                    let requester = self.ids[from];
                    let spec = &self.spec;
                    indices
                        .iter()
                        .map(|i| {
                            let chunk = spec.chunks[*i as usize].id;
                            let served = self.handout.as_mut().is_none_or(|h| h.admit(now, &requester, &chunk));
                            (*i, if served { ChunkOutcome::Verified } else { ChunkOutcome::Missing })
                        })
                        .collect()
                } else if self.liars.contains_key(&peer) {
                    indices.iter().map(|i| (*i, ChunkOutcome::Corrupt)).collect()
                } else {
                    let Some(j) = self.index_of(&peer) else { return };
                    let Some(_) = &self.nodes[j] else { return };
                    indices
                        .iter()
                        .map(|i| {
                            let chunk = self.spec.chunks[*i as usize].id;
                            let ok = self.stored[j].contains(&chunk);
                            (*i, if ok { ChunkOutcome::Verified } else { ChunkOutcome::Missing })
                        })
                        .collect()
                };
                let rate = if class == SourceClass::Site { LAN_BYTES_PER_SEC } else { WAN_BYTES_PER_SEC };
                let at = now + LATENCY + Duration(bytes * 1_000_000 / rate);
                self.push(at, Delivery::Chunks { to: from, id, outcomes });
            }
        }
    }

    fn all_complete(&self) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.late.contains(i))
            .filter_map(|(_, n)| n.as_ref())
            .all(|n| n.is_complete(&self.release))
    }

    /// Runs until every live node has the release, or `limit` of virtual time passes.
    fn run(&mut self, limit: Instant) {
        self.drain();
        while !self.all_complete() && self.now < limit {
            let next_timer = self.nodes.iter().flatten().filter_map(|n| n.poll_timeout()).min();
            let next_delivery = self.queue.keys().next().map(|(t, _)| *t);
            let Some(next) = [next_timer, next_delivery].into_iter().flatten().min() else { break };
            self.now = next.max(self.now);
            if next_delivery == Some(next) {
                let key = *self.queue.keys().next().unwrap();
                let d = self.queue.remove(&key).unwrap();
                match d {
                    Delivery::Chunks { to, id, outcomes } => {
                        if let Some(n) = self.nodes[to].as_mut() {
                            n.handle_response(self.now, id, &outcomes);
                        }
                    }
                    Delivery::Have { to, from, release, bits } => {
                        if let Some(n) = self.nodes[to].as_mut() {
                            n.handle_have(self.now, from, release, &bits);
                        }
                    }
                }
            } else {
                let now = self.now;
                for n in self.nodes.iter_mut().flatten() {
                    if n.poll_timeout().is_some_and(|t| t <= now) {
                        n.handle_timeout(now);
                    }
                }
            }
            self.drain();
        }
    }

    fn backhaul_by_site(&self) -> BTreeMap<SiteId, u64> {
        let mut out = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(n) = n {
                *out.entry(self.sites[i]).or_insert(0) += n.stats().backhaul_bytes();
            }
        }
        out
    }

    fn release_bytes(&self) -> u64 {
        self.spec.chunks.iter().map(|c| c.stored_len as u64).sum()
    }
}

#[test]
fn three_sites_fetch_each_chunk_over_their_backhaul_once() {
    let mut net = Net::new(3, 2, 300, None);
    net.run(Instant(600_000_000));
    assert!(net.all_complete(), "not every node completed by {:?}", net.now);
    let release_bytes = net.release_bytes();
    for (site, bytes) in net.backhaul_by_site() {
        let amplification = bytes as f64 / release_bytes as f64;
        assert!(amplification <= 1.0, "site {site:?} backhaul amplification {amplification:.3}");
        assert!(amplification >= 1.0, "site {site:?} got bytes without fetching them? {amplification:.3}");
    }
    // Each member brought in roughly half its site's bytes: the share is balanced.
    for n in net.nodes.iter().flatten() {
        let share = n.stats().backhaul_bytes() as f64 / release_bytes as f64;
        assert!((0.35..=0.65).contains(&share), "unbalanced share {share:.2}");
        assert_eq!(n.stats().corrupt_chunks, 0);
    }
}

#[test]
fn sites_trade_what_the_origin_hands_out_once_instead_of_each_taking_a_copy() {
    let sites = 6;
    let origin_copies = |handout: Option<OriginHandout>| {
        let mut net = Net::new(sites, 2, 300, None);
        net.handout = handout;
        net.run(Instant(600_000_000));
        assert!(net.all_complete(), "not every node completed by {:?}", net.now);
        let release_bytes = net.release_bytes();
        for (site, bytes) in net.backhaul_by_site() {
            let amplification = bytes as f64 / release_bytes as f64;
            assert!((1.0..=1.0).contains(&amplification), "site {site:?} backhaul amplification {amplification:.3}");
        }
        let origin: u64 = net.nodes.iter().flatten().map(|n| n.stats().bytes_in[SourceClass::Origin as usize]).sum();
        (origin as f64 / release_bytes as f64, net.now)
    };
    let (without, t_without) = origin_copies(None);
    let (with, t_with) = origin_copies(Some(OriginHandout::new(HandoutConfig::default())));
    eprintln!("origin egress: {without:.2} copies in {t_without:?} without handouts, {with:.2} in {t_with:?} with");
    assert!(without > 4.0, "the origin already sent only {without:.2} copies");
    assert!(with <= 1.3, "the origin sent {with:.2} copies of the release to {sites} sites");
}

#[test]
fn same_seed_same_run() {
    let run = || {
        let mut net = Net::new(2, 3, 120, None);
        net.run(Instant(600_000_000));
        (net.now, net.nodes.iter().flatten().map(|n| n.stats()).collect::<Vec<_>>())
    };
    assert_eq!(run(), run());
}

#[test]
fn a_liar_is_disconnected_and_the_release_still_arrives_whole() {
    let mut net = Net::new(2, 2, 200, Some(0));
    net.run(Instant(600_000_000));
    assert!(net.all_complete());
    let liar = node_id(666);
    let accusers: BTreeSet<usize> = net.disconnected.iter().filter(|(_, p)| *p == liar).map(|(i, _)| *i).collect();
    assert!(!accusers.is_empty(), "nobody noticed the liar");
    for i in accusers {
        assert_eq!(net.sites[i], SiteId(0));
        assert!(net.nodes[i].as_ref().unwrap().stats().corrupt_chunks >= 1);
    }
    // An unproven peer gets one batch at a time, so a liar costs each victim one batch; once
    // banned it is never asked again (the ban outlasts the run).
    for n in net.nodes.iter().flatten() {
        assert!(
            n.stats().corrupt_chunks <= 64,
            "{} corrupt chunks before the liar was caught",
            n.stats().corrupt_chunks
        );
    }
    assert_eq!(net.requests_after_ban, 0);
}

#[test]
fn when_a_site_member_dies_its_share_moves_to_the_survivor() {
    let mut net = Net::new(1, 2, 200, None);
    // Let the transfer get going, then crash node 1.
    net.run(Instant(300_000));
    assert!(!net.all_complete());
    let dead = net.ids[1];
    net.nodes[1] = None;
    let now = net.now;
    net.node(0).handle_peer_down(now, dead);
    net.run(Instant(600_000_000));
    let survivor = net.nodes[0].as_ref().unwrap();
    assert!(survivor.is_complete(&net.release));
    // The survivor fetched what it needed; total backhaul is at most one release plus what
    // the dead node had already pulled in and took with it.
    assert!(survivor.stats().backhaul_bytes() <= net.release_bytes());
}

/// A site-mate that stays connected and answers but never brings in its share (here it does
/// not serve the release's hardware class) is waited for until `site_stall_timeout`, then taken
/// to have stalled: the node fetches that share itself, and each chunk crosses the backhaul once.
#[test]
fn a_site_mate_that_makes_no_progress_has_its_share_taken_over() {
    let mut net = Net::new(1, 2, 200, None);
    let (id, site, origin) = (net.ids[1], net.sites[1], net.origin);
    let config = SchedulerConfig { served_hw_classes: vec!["sensor".into()], ..SchedulerConfig::default() };
    let mut idle = FetchScheduler::new(id, site, config);
    idle.handle_peer_up(Instant(0), net.ids[0], site, PeerRole::Edge);
    idle.handle_peer_up(Instant(0), origin, SiteId(u64::MAX - 1), PeerRole::Origin);
    idle.handle_release(Instant(0), net.release, net.spec.clone());
    net.nodes[1] = Some(idle);
    let stall = SchedulerConfig::default().site_stall_timeout;
    net.run(Instant(stall.0 / 2));
    let release = net.release;
    let waiting = net.node(0).have(&release).unwrap().count();
    assert!(waiting > 0 && waiting < 200, "its own share only while the mate may still come: {waiting}");
    net.run(Instant(stall.0 * 6));
    let release_bytes = net.release_bytes();
    assert!(net.node(0).is_complete(&release));
    assert_eq!(net.node(0).stats().backhaul_bytes(), release_bytes);
    assert_eq!(net.node(1).stats().backhaul_bytes(), 0);
}

#[test]
fn pre_staging_follows_served_hardware_classes() {
    let me = node_id(1);
    let config = SchedulerConfig { served_hw_classes: vec!["gw".into()], ..SchedulerConfig::default() };
    let mut node = FetchScheduler::new(me, SiteId(1), config);
    node.handle_peer_up(Instant(0), node_id(2), SiteId(9), PeerRole::Origin);
    let spec = |hw: &str| ReleaseSpec {
        hw_class: hw.into(),
        chunks: vec![ChunkSpec { id: ChunkId([1; 32]), stored_len: 10 }],
    };
    node.handle_release(Instant(0), ReleaseId([1; 32]), spec("sensor"));
    assert_eq!(node.poll_request(), None, "an unserved class is not pre-staged");
    node.handle_release(
        Instant(0),
        ReleaseId([2; 32]),
        ReleaseSpec { hw_class: "gw".into(), chunks: vec![ChunkSpec { id: ChunkId([2; 32]), stored_len: 10 }] },
    );
    assert!(matches!(node.poll_request(), Some(Request::Chunks { class: SourceClass::Origin, .. })));
    node.handle_demand(Instant(0), &ReleaseId([1; 32]));
    assert!(matches!(node.poll_request(), Some(Request::Chunks { .. })), "a demanded release is fetched");
}

#[test]
fn cache_pins_current_and_previous_release_and_evicts_older() {
    let me = node_id(1);
    let config = SchedulerConfig { capacity_bytes: 2_500, ..SchedulerConfig::default() };
    let mut node = FetchScheduler::new(me, SiteId(1), config);
    let origin = node_id(2);
    node.handle_peer_up(Instant(0), origin, SiteId(9), PeerRole::Origin);
    let mut now = Instant(0);
    for v in 0..3u8 {
        let chunks = (0..10u8).map(|c| ChunkSpec { id: ChunkId([v * 16 + c; 32]), stored_len: 100 }).collect();
        node.handle_release(now, ReleaseId([v; 32]), ReleaseSpec { hw_class: "gw".into(), chunks });
        while let Some(r) = node.poll_request() {
            if let Request::Chunks { id, indices, .. } = r {
                now = now + Duration(1000);
                let outcomes: Vec<_> = indices.iter().map(|i| (*i, ChunkOutcome::Verified)).collect();
                node.handle_response(now, id, &outcomes);
            }
        }
        assert!(node.is_complete(&ReleaseId([v; 32])));
    }
    // Release 0 is neither current nor previous: it was evicted to make room.
    assert!(!node.is_complete(&ReleaseId([0; 32])));
    assert!(node.is_complete(&ReleaseId([1; 32])) && node.is_complete(&ReleaseId([2; 32])));
    assert!(node.cache().used_bytes() <= 2_500);
    let mut evicted = 0;
    while let Some(e) = node.poll_event() {
        if matches!(e, EdgeEvent::Evict { .. }) {
            evicted += 1;
        }
    }
    assert_eq!(evicted, 5);
}

#[test]
fn a_node_that_joins_late_takes_its_share_from_its_site_mate_not_the_backhaul() {
    let mut net = Net::new(1, 2, 150, None);
    // Node 1 starts alone in the site: it is responsible for everything and fetches it all.
    let late = net.ids[1];
    let now = Instant(0);
    net.node(0).handle_peer_down(now, late);
    let early = net.nodes[1].take();
    net.run(Instant(600_000_000));
    assert!(net.nodes[0].as_ref().unwrap().is_complete(&net.release));
    // Node 1 joins: it must take everything from node 0 over the LAN.
    net.nodes[1] = early;
    let (id0, site) = (net.ids[0], net.sites[0]);
    let now = net.now;
    net.node(1).handle_peer_up(now, id0, site, PeerRole::Edge);
    net.node(0).handle_peer_up(now, late, site, PeerRole::Edge);
    net.run(Instant(1_200_000_000));
    let joined = net.nodes[1].as_ref().unwrap();
    assert!(joined.is_complete(&net.release));
    assert_eq!(joined.stats().backhaul_bytes(), 0, "the late node used the backhaul: {:?}", joined.stats());
}

#[test]
fn requests_stay_full_batches_once_the_pipeline_is_full() {
    // Regression: when a response freed one of a peer's request slots, the next pass started
    // a request with one chunk and then found the peer "without a free slot" for every
    // following chunk, so every request after the first few carried a single chunk.
    let mut net = Net::new(1, 1, 2000, None);
    net.run(Instant(600_000_000));
    assert!(net.all_complete());
    let config = SchedulerConfig::default();
    let full = |(_, chunks, bytes): &(usize, usize, u64)| {
        *chunks >= config.max_request_chunks || *bytes >= config.max_request_bytes
    };
    // The origin's slow start: requests of 8, 16, 32 chunks first, then full batches.
    let ramp = net.chunk_requests.iter().take_while(|r| !full(r)).count();
    assert_eq!(net.chunk_requests[0].1, config.origin_slow_start_chunks as usize);
    assert!(ramp <= 8, "{ramp} requests before the first full batch");
    let partial = net.chunk_requests.iter().skip(ramp).filter(|r| !full(r)).count();
    // After it, only the tail of the release (fewer idle chunks than a batch) may go out
    // partial: at most one request per pipeline slot.
    assert!(
        partial <= config.max_inflight_per_peer as usize,
        "{partial} of {} requests were partial batches: {:?}",
        net.chunk_requests.len(),
        net.chunk_requests.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    let expected = 2000usize.div_ceil(config.max_request_chunks);
    assert!(net.chunk_requests.len() <= expected + config.max_inflight_per_peer as usize);
}

/// Regression (found by simnet): requests older than `tail_duplicate_after` while other
/// chunks of the release were still idle made `poll_timeout` answer `now + 1 µs` forever, so
/// a daemon on a slow backhaul woke up a thousand times a second for nothing.
#[test]
fn slow_requests_with_idle_chunks_left_do_not_make_the_timer_spin() {
    let me = node_id(1);
    let origin = node_id(9999);
    let mut node = FetchScheduler::new(me, SiteId(1), SchedulerConfig::default());
    let spec = ReleaseSpec {
        hw_class: "gw".into(),
        chunks: (0..2000u32).map(|i| ChunkSpec { id: ChunkId::of(&i.to_le_bytes()), stored_len: 64_000 }).collect(),
    };
    node.handle_peer_up(Instant(0), origin, SiteId(0), PeerRole::Origin);
    node.handle_release(Instant(0), ReleaseId([3; 32]), spec);
    let mut sent = 0;
    while let Some(request) = node.poll_request() {
        if matches!(request, Request::Chunks { .. }) {
            sent += 1;
        }
    }
    assert!(sent > 0, "nothing requested");
    // Nothing answers; time passes beyond the tail-duplicate age while most chunks are idle.
    let now = Instant(0) + Duration::from_secs(3);
    node.handle_timeout(now);
    while node.poll_request().is_some() {}
    let next = node.poll_timeout().expect("a pending release has a timer");
    assert!(next >= now + Duration::from_millis(100), "timer spins: next wake-up at {:?}, now {:?}", next, now);
}

/// A site that hears of a release after other sites hold it takes its share from their edge
/// nodes, not from the origin: the origin's egress does not grow with the number of sites.
#[test]
fn a_late_site_takes_its_share_from_other_sites_not_the_origin() {
    let mut net = Net::build(3, 2, 200, None, Some(2));
    net.run(Instant(600_000_000));
    assert!(net.all_complete(), "sites 0 and 1 did not complete");
    net.announce_late();
    net.run(Instant(1_200_000_000));
    assert!(net.all_complete(), "the late site did not complete");
    let release_bytes = net.release_bytes();
    let (mut wan, mut origin) = (0, 0);
    for (i, n) in net.nodes.iter().enumerate() {
        if net.sites[i] == SiteId(2) {
            let stats = n.as_ref().unwrap().stats();
            wan += stats.bytes_in[SourceClass::Wan as usize];
            origin += stats.bytes_in[SourceClass::Origin as usize];
        }
    }
    assert_eq!(wan + origin, release_bytes, "the late site's backhaul carried the release once");
    assert!(origin * 10 <= release_bytes, "late site took {origin} of {release_bytes} bytes from the origin");
}

#[test]
fn a_chunk_the_origin_answers_busy_comes_from_another_site_and_the_origin_is_asked_again_later() {
    let config = SchedulerConfig::default();
    let (me, origin, other) = (node_id(1), node_id(2), node_id(3));
    let mut node = FetchScheduler::new(me, SiteId(1), config.clone());
    node.handle_peer_up(Instant(0), origin, SiteId(9), PeerRole::Origin);
    node.handle_peer_up(Instant(0), other, SiteId(2), PeerRole::Edge);
    let chunks: Vec<ChunkSpec> =
        (0..40u32).map(|i| ChunkSpec { id: ChunkId::of(&i.to_le_bytes()), stored_len: 1000 }).collect();
    let release = ReleaseId([5; 32]);
    node.handle_release(Instant(0), release, ReleaseSpec { hw_class: "gw".into(), chunks });
    let drain = |node: &mut FetchScheduler| std::iter::from_fn(|| node.poll_request()).collect::<Vec<_>>();
    // The other site holds nothing yet: the first asks go to the origin, two small requests.
    let first = drain(&mut node);
    node.handle_have(Instant(0), other, release, &[0; 5]);
    let mut to_origin: Vec<(RequestId, Vec<u32>)> = first
        .iter()
        .chain(drain(&mut node).iter())
        .filter_map(|r| match r {
            Request::Chunks { id, peer, indices, .. } if *peer == origin => Some((*id, indices.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(to_origin.len(), 2, "{to_origin:?}");
    assert!(to_origin.iter().all(|(_, i)| i.len() == config.origin_slow_start_chunks as usize));
    // The origin serves the first request and answers Busy for the second.
    let (served, busy) = (to_origin.remove(0), to_origin.remove(0));
    let t = Instant(10_000);
    node.handle_response(t, served.0, &served.1.iter().map(|i| (*i, ChunkOutcome::Verified)).collect::<Vec<_>>());
    node.handle_response(t, busy.0, &busy.1.iter().map(|i| (*i, ChunkOutcome::Missing)).collect::<Vec<_>>());
    let asked: Vec<Request> = drain(&mut node);
    for r in &asked {
        if let Request::Chunks { peer, indices, .. } = r {
            assert!(
                !(*peer == origin && indices.iter().any(|i| busy.1.contains(i))),
                "asked the origin again at once for a chunk it answered Busy: {r:?}"
            );
        }
    }
    // The other site now holds the Busy chunks: they come from it, over the WAN.
    let mut bits = protocol::edge::Bitfield::new(40);
    for i in &busy.1 {
        bits.set(*i);
    }
    let t = Instant(20_000);
    node.handle_have(t, other, release, &bits.to_bytes());
    let wan: Vec<u32> = drain(&mut node)
        .into_iter()
        .filter_map(|r| match r {
            Request::Chunks { peer, indices, class, .. } if peer == other => {
                assert_eq!(class, SourceClass::Wan);
                Some(indices)
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert!(!wan.is_empty() && wan.iter().all(|i| busy.1.contains(i)), "{wan:?} vs {:?}", busy.1);
    // What no other site holds is asked of the origin again once `origin_busy_wait` is over.
    let later = Instant(10_000 + config.origin_busy_wait.as_micros() + 1);
    node.handle_timeout(later);
    let again: Vec<u32> = drain(&mut node)
        .into_iter()
        .filter_map(|r| match r {
            Request::Chunks { peer, indices, .. } if peer == origin => Some(indices),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(!again.is_empty() && again.iter().all(|i| !served.1.contains(i) && !wan.contains(i)), "{again:?}");
}

/// Tail duplicates: once every chunk has been asked for and a request has been out for
/// `tail_duplicate_after`, its chunks are asked again of another site-mate that holds them
/// (never of the same one, and not a moment before that age).
#[test]
fn a_request_outstanding_past_the_tail_age_is_asked_again_of_another_site_mate() {
    let config = SchedulerConfig::default();
    let (me, slow, other) = (node_id(1), node_id(2), node_id(3));
    let site = SiteId(1);
    let release = ReleaseId([6; 32]);
    let mut node = FetchScheduler::new(me, site, config.clone());
    let chunks: Vec<ChunkSpec> =
        (0..8u32).map(|i| ChunkSpec { id: ChunkId::of(&i.to_le_bytes()), stored_len: 1000 }).collect();
    let drain = |node: &mut FetchScheduler| std::iter::from_fn(|| node.poll_request()).collect::<Vec<_>>();
    let chunk_requests = |requests: &[Request]| -> Vec<(NodeId, Vec<u32>)> {
        requests
            .iter()
            .filter_map(|r| match r {
                Request::Chunks { peer, indices, .. } => {
                    // The walk starts at a per-site offset: compare which chunks, not order.
                    let mut indices = indices.clone();
                    indices.sort_unstable();
                    Some((*peer, indices))
                }
                _ => None,
            })
            .collect()
    };
    let start = Instant(1_000_000);
    node.handle_peer_up(start, slow, site, PeerRole::Edge);
    node.handle_release(start, release, ReleaseSpec { hw_class: "gw".into(), chunks });
    node.handle_have(start, slow, release, &[0xff]);
    let first = chunk_requests(&drain(&mut node));
    assert_eq!(first, vec![(slow, (0..8).collect::<Vec<u32>>())], "every chunk from the one holder");
    // A second holder appears; the request to the first is still out.
    node.handle_peer_up(start, other, site, PeerRole::Edge);
    node.handle_have(start, other, release, &[0xff]);
    assert!(chunk_requests(&drain(&mut node)).is_empty(), "asked again before the tail age");
    let due = start + config.tail_duplicate_after;
    let wake = node.poll_timeout().expect("a pending release has a timer");
    assert!(wake > start && wake <= due, "next wake-up {wake:?}, the duplicate is due at {due:?}");
    node.handle_timeout(Instant(due.0 - 1));
    assert!(chunk_requests(&drain(&mut node)).is_empty(), "asked again a microsecond early");
    node.handle_timeout(due);
    let again = chunk_requests(&drain(&mut node));
    assert_eq!(again, vec![(other, (0..8).collect::<Vec<u32>>())], "the tail goes to the other holder");
    assert_eq!(node.stats().tail_duplicates, 1);
    // Both requests out and both already duplicated: no further copies, however long.
    node.handle_timeout(due + config.tail_duplicate_after);
    assert!(chunk_requests(&drain(&mut node)).is_empty(), "a chunk was asked a third time");
}
