//! The fetch scheduler: per-chunk source choice, batching, retries, penalties, and the
//! cache/pin bookkeeping that decides what stays on disk.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

mod chunk_states;
mod planner;

use super::bitfield::{held_in_word, valid_bits};
use super::cache::{AdmitError, ChunkCache};
use super::chunk_map::ChunkMap;
use super::{Bitfield, NodeId, PeerRole, SiteId, SourceClass};
use crate::time::{Duration, Instant};
use crate::ChunkId;
use crate::ReleaseId;
use chunk_states::{ChunkState, ChunkStates};

/// Tunables. Defaults suit a factory gateway on a 100 Mbit/s–1 Gbit/s backhaul.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Hardware classes whose releases this node pre-stages; empty means all.
    pub served_hw_classes: Vec<String>,
    /// Cache capacity in bytes.
    pub capacity_bytes: u64,
    /// Largest batch in one request (stored bytes).
    pub max_request_bytes: u64,
    /// Most chunks in one request.
    pub max_request_chunks: usize,
    /// Most requests in flight to one peer.
    pub max_inflight_per_peer: u32,
    /// A request unanswered this long has failed.
    pub request_timeout: Duration,
    /// How often to ask a site-mate what it holds while waiting on it.
    pub site_have_interval: Duration,
    /// How often to ask an edge node in another site what it holds.
    pub wan_have_interval: Duration,
    /// Edge nodes of other sites asked what they hold of a release (a stable choice per
    /// release and node): the chunks this node's share can come from without the origin.
    pub wan_have_peers: usize,
    /// First retry delay for a chunk a peer did not have; doubles per attempt.
    pub retry_backoff_min: Duration,
    /// Longest retry delay.
    pub retry_backoff_max: Duration,
    /// If the site-mate responsible for a chunk makes no progress on its release for this
    /// long, fetch its share ourselves (liveness beats amplification).
    pub site_stall_timeout: Duration,
    /// Ban for a peer that sent a corrupt chunk; doubles with each repeat.
    pub corrupt_ban: Duration,
    /// An in-flight chunk older than this may be requested once more from another site-mate
    /// when nothing else of its release is left to fetch.
    pub tail_duplicate_after: Duration,
    /// Releases pinned per hardware class: the current and the previous one.
    pub pinned_releases_per_class: usize,
    /// After the origin answers a chunk `Busy` (it handed the chunk to another site; see
    /// [`crate::edge::origin_handout`]), ask the origin for it again no sooner than this;
    /// meanwhile take it from another site's edge node as soon as one holds it.
    pub origin_busy_wait: Duration,
    /// Requests to other sites' edge nodes per chunk before only the origin is asked.
    pub wan_tries: u32,
    /// Chunks in a first request to the origin. Each request it serves in full doubles the
    /// next (up to `max_request_chunks`; requests in flight: one more than the size over
    /// this, up to `max_inflight_per_peer`); a `Busy` starts over. When every site starts
    /// at once, the origin's first copies are then spread over many sites instead of filling
    /// the pipelines of the first few to ask, whose uplinks would carry the whole swarm.
    pub origin_slow_start_chunks: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            served_hw_classes: Vec::new(),
            capacity_bytes: 16 << 30,
            max_request_bytes: 4 << 20,
            max_request_chunks: 64,
            max_inflight_per_peer: 4,
            request_timeout: Duration::from_secs(30),
            site_have_interval: Duration::from_millis(200),
            wan_have_interval: Duration::from_millis(500),
            wan_have_peers: 16,
            retry_backoff_min: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(10),
            site_stall_timeout: Duration::from_secs(20),
            corrupt_ban: Duration::from_secs(300),
            tail_duplicate_after: Duration::from_secs(2),
            pinned_releases_per_class: 2,
            origin_busy_wait: Duration::from_secs(2),
            wan_tries: 3,
            origin_slow_start_chunks: 8,
        }
    }
}

/// One chunk of a release as the scheduler needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpec {
    /// Its id.
    pub id: ChunkId,
    /// Stored (wire) length.
    pub stored_len: u32,
}

/// A verified release, as the driver registers it after TUF and manifest checks.
#[derive(Debug, Clone)]
pub struct ReleaseSpec {
    /// Hardware class, for pre-staging and pinning.
    pub hw_class: String,
    /// Chunks in manifest order.
    pub chunks: Vec<ChunkSpec>,
}

/// Correlates a response with its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Something the driver must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Ask `peer` for these chunks of `release`.
    Chunks {
        /// Answer with [`FetchScheduler::handle_response`] or `handle_request_failed`.
        id: RequestId,
        /// Who to ask.
        peer: NodeId,
        /// Which release.
        release: ReleaseId,
        /// Chunk indices in the release's manifest.
        indices: Vec<u32>,
        /// Site, wan or origin: which counter the bytes go to.
        class: SourceClass,
        /// Stored bytes requested.
        bytes: u64,
    },
    /// Ask `peer` which chunks of `release` it holds; answer with `handle_have`.
    Have {
        /// Who to ask.
        peer: NodeId,
        /// Which release.
        release: ReleaseId,
    },
}

/// What happened to one requested chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The bytes matched the chunk id (the driver checked before reporting).
    Verified,
    /// The bytes did not match: the peer lied or its store is damaged.
    Corrupt,
    /// The peer did not send it (not held, busy, or left out).
    Missing,
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeEvent {
    /// Keep this verified chunk: write it to the store.
    Store {
        /// The chunk.
        chunk: ChunkId,
    },
    /// Do not keep this verified chunk: the cache is full of pinned chunks.
    Discard {
        /// The chunk.
        chunk: ChunkId,
    },
    /// Delete this chunk from the store to make room.
    Evict {
        /// The chunk.
        chunk: ChunkId,
    },
    /// Every chunk of the release is stored.
    ReleaseComplete {
        /// The release.
        release: ReleaseId,
    },
    /// The peer sent a chunk that failed verification; disconnect it. It is banned until
    /// `until`.
    Disconnect {
        /// The liar.
        peer: NodeId,
        /// End of the ban.
        until: Instant,
    },
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EdgeStats {
    /// Verified stored bytes received, by [`SourceClass`] (site, wan, origin).
    pub bytes_in: [u64; 3],
    /// Verified chunks received, by class.
    pub chunks_in: [u64; 3],
    /// Chunks that failed verification.
    pub corrupt_chunks: u64,
    /// Requests that failed or timed out.
    pub failed_requests: u64,
    /// Chunk requests sent.
    pub requests_sent: u64,
    /// Duplicate (tail) requests sent.
    pub tail_duplicates: u64,
    /// Chunks evicted.
    pub evictions: u64,
    /// Chunks the origin answered `Busy` (handed to another site for now).
    pub origin_busy: u64,
}

impl EdgeStats {
    /// Bytes that crossed the site's backhaul.
    pub fn backhaul_bytes(&self) -> u64 {
        self.bytes_in[SourceClass::Wan as usize] + self.bytes_in[SourceClass::Origin as usize]
    }
}

#[derive(Debug, Clone)]
struct Peer {
    /// Its site while connected; after a disconnect only its strikes and ban are kept.
    site: SiteId,
    /// False once it disconnected: remembered for its ban, never a source or site member.
    connected: bool,
    role: PeerRole,
    /// Smoothed verified bytes per second, once measured.
    throughput: Option<f64>,
    /// Verified bytes received from it: a peer earns its request pipeline.
    verified_bytes: u64,
    inflight: u32,
    /// Chunks per request to an origin (see `origin_slow_start_chunks`).
    origin_ask: u32,
    /// An origin that answered a whole request `Busy` is not asked again before this: it
    /// has handed out what we would ask for, and asking in a loop only loads it.
    origin_quiet_until: Instant,
    strikes: u32,
    banned_until: Option<Instant>,
    haves: BTreeMap<ReleaseId, PeerHave>,
}

#[derive(Debug, Clone)]
struct PeerHave {
    bits: Option<Bitfield>,
    query_inflight: bool,
    last_query: Option<Instant>,
    /// When its count last grew (or when we started watching).
    progress_at: Instant,
}

#[derive(Debug, Clone)]
struct Release {
    spec: ReleaseSpec,
    have: Bitfield,
    state: ChunkStates,
    /// Being fetched: pinned (pre-staged) or demanded by a device and not yet complete.
    wanted: bool,
    /// A device asked for it; cleared once it is complete, so an old release that is later
    /// evicted is not fetched again until someone asks.
    demanded: bool,
    completed: bool,
    /// Announcement order, for pinning "current and previous".
    seq: u64,
    /// Per chunk, when the origin may be asked for it again (it answered `Busy`).
    origin_after: Vec<Instant>,
    /// Per chunk, the index in `FetchScheduler::responsible_members` of the site member
    /// responsible for it; valid while `responsible_epoch` matches the scheduler's.
    responsible: Vec<u16>,
    /// The same choice as sets, one per site member (by index): for combining with other
    /// sets a word at a time.
    responsible_sets: Vec<Bitfield>,
    responsible_epoch: u64,
}

#[derive(Debug, Clone)]
struct Inflight {
    peer: NodeId,
    release: ReleaseId,
    indices: Vec<u32>,
    class: SourceClass,
    sent_at: Instant,
}

/// The edge node's fetch and cache state machine. See the module docs for the driver
/// contract.
#[derive(Debug, Clone)]
pub struct FetchScheduler {
    me: NodeId,
    site: SiteId,
    config: SchedulerConfig,
    now: Instant,
    peers: BTreeMap<NodeId, Peer>,
    releases: BTreeMap<ReleaseId, Release>,
    /// Where each chunk id appears: a chunk shared by releases is stored once.
    locations: ChunkMap<Vec<(ReleaseId, u32)>>,
    inflight: BTreeMap<RequestId, Inflight>,
    next_request: u64,
    next_seq: u64,
    cache: ChunkCache,
    pinned: BTreeSet<ReleaseId>,
    requests: VecDeque<Request>,
    events: VecDeque<EdgeEvent>,
    dirty: bool,
    stats: EdgeStats,
    /// The site's live members the cached rendezvous choices were computed over (hashing
    /// every chunk against every member on every pass would dominate a busy node's CPU).
    responsible_members: Vec<NodeId>,
    /// Bumped whenever `responsible_members` changes; starts at 1 so new releases are stale.
    responsible_epoch: u64,
    /// Per release, other sites' edge nodes by their rendezvous weight for this node and
    /// release (highest first), and the `peers_epoch` it was ranked at: hashing every peer on
    /// every pass was a waiting node's largest cost after the pass itself.
    wan_ranking: BTreeMap<ReleaseId, (u64, Vec<NodeId>)>,
    /// Bumped whenever a peer connects or disconnects.
    peers_epoch: u64,
}

impl FetchScheduler {
    /// A scheduler for node `me` in `site`.
    pub fn new(me: NodeId, site: SiteId, config: SchedulerConfig) -> Self {
        let cache = ChunkCache::new(config.capacity_bytes);
        FetchScheduler {
            me,
            site,
            config,
            now: Instant(0),
            peers: BTreeMap::new(),
            releases: BTreeMap::new(),
            locations: ChunkMap::default(),
            inflight: BTreeMap::new(),
            next_request: 0,
            next_seq: 0,
            cache,
            pinned: BTreeSet::new(),
            requests: VecDeque::new(),
            events: VecDeque::new(),
            dirty: true,
            stats: EdgeStats::default(),
            responsible_members: Vec::new(),
            responsible_epoch: 1,
            wan_ranking: BTreeMap::new(),
            peers_epoch: 0,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }
    /// This node's site.
    pub fn site(&self) -> SiteId {
        self.site
    }
    /// Counters so far.
    pub fn stats(&self) -> EdgeStats {
        self.stats
    }
    /// The cache's view of the store.
    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }
    /// Whether the chunk is stored (and so may be served).
    pub fn has_chunk(&self, chunk: &ChunkId) -> bool {
        self.cache.contains(chunk)
    }
    /// What we hold of `release`, for answering Have requests.
    pub fn have(&self, release: &ReleaseId) -> Option<&Bitfield> {
        self.releases.get(release).map(|r| &r.have)
    }
    /// Whether every chunk of `release` is stored.
    pub fn is_complete(&self, release: &ReleaseId) -> bool {
        self.releases.get(release).is_some_and(|r| r.have.is_full())
    }
    /// Known releases.
    pub fn releases(&self) -> impl Iterator<Item = &ReleaseId> {
        self.releases.keys()
    }
    /// Connected, unbanned peers with their site and role.
    pub fn peers(&self) -> impl Iterator<Item = (&NodeId, SiteId, PeerRole)> {
        self.peers.iter().map(|(id, p)| (id, p.site, p.role))
    }

    // ----- inputs -------------------------------------------------------------------

    /// A peer connected and told us its site and role.
    pub fn handle_peer_up(&mut self, now: Instant, peer: NodeId, site: SiteId, role: PeerRole) {
        self.advance_to(now);
        if peer == self.me {
            return;
        }
        self.peers_epoch += 1;
        let banned_until = self.peers.get(&peer).and_then(|p| p.banned_until);
        let strikes = self.peers.get(&peer).map_or(0, |p| p.strikes);
        self.peers.insert(
            peer,
            Peer {
                site,
                connected: true,
                role,
                throughput: None,
                verified_bytes: 0,
                inflight: 0,
                origin_ask: self.config.origin_slow_start_chunks.max(1),
                origin_quiet_until: now,
                strikes,
                banned_until,
                haves: BTreeMap::new(),
            },
        );
        self.dirty = true;
    }

    /// A peer disconnected: its requests fail and its share of the site moves.
    pub fn handle_peer_down(&mut self, now: Instant, peer: NodeId) {
        self.advance_to(now);
        self.peers_epoch += 1;
        let lost: Vec<RequestId> = self.inflight.iter().filter(|(_, r)| r.peer == peer).map(|(id, _)| *id).collect();
        for id in lost {
            self.fail_request(id);
        }
        // Keep strikes and bans across reconnects; forget the rest.
        if let Some(p) = self.peers.get(&peer) {
            if p.banned_until.is_none() && p.strikes == 0 {
                self.peers.remove(&peer);
            } else if let Some(p) = self.peers.get_mut(&peer) {
                p.haves.clear();
                p.inflight = 0;
                p.role = PeerRole::Edge;
                p.connected = false;
                p.banned_until = Some(p.banned_until.unwrap_or(now).max(now));
            }
        }
        self.dirty = true;
    }

    /// A verified release (TUF checked, manifest decoded). Pre-staged when its hardware
    /// class is served.
    pub fn handle_release(&mut self, now: Instant, release: ReleaseId, spec: ReleaseSpec) {
        self.advance_to(now);
        if self.releases.contains_key(&release) {
            return;
        }
        let n = spec.chunks.len() as u32;
        let mut have = Bitfield::new(n);
        for (i, chunk) in spec.chunks.iter().enumerate() {
            // Most chunks sit in one place: a list of exactly one, not the four a first push
            // reserves (that was 147 KB per edge node of a 1,021-chunk release in fleet-1m).
            let places = self.locations.entry(chunk.id).or_insert_with(|| Vec::with_capacity(1));
            places.push((release, i as u32));
            if self.cache.contains(&chunk.id) {
                have.set(i as u32);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.releases.insert(
            release,
            Release {
                state: ChunkStates::new(n, now),
                origin_after: alloc::vec![now; n as usize],
                spec,
                have,
                wanted: false,
                demanded: false,
                completed: false,
                seq,
                responsible: Vec::new(),
                responsible_sets: Vec::new(),
                responsible_epoch: 0,
            },
        );
        // Pre-staging: a served class's newest releases become pinned, and pinned means wanted.
        self.update_pins();
        self.check_complete(release);
        self.dirty = true;
    }

    /// A device asked for a release this node does not pre-stage: fetch it now.
    pub fn handle_demand(&mut self, now: Instant, release: &ReleaseId) {
        self.advance_to(now);
        if let Some(r) = self.releases.get_mut(release) {
            if !r.have.is_full() && !r.wanted {
                r.wanted = true;
                r.demanded = true;
                self.dirty = true;
            }
        }
    }

    /// A chunk found intact in the store at start-up.
    pub fn handle_local_chunk(&mut self, chunk: ChunkId, stored_len: u64) -> Vec<ChunkId> {
        match self.cache.admit(chunk, stored_len) {
            Ok(evicted) => {
                self.mark_have(chunk);
                for victim in &evicted {
                    self.mark_gone(*victim);
                }
                self.dirty = true;
                evicted
            }
            Err(_) => alloc::vec![chunk],
        }
    }

    /// A device or peer was served `chunk`: it is recently used.
    pub fn handle_served(&mut self, chunk: &ChunkId) {
        self.cache.touch(chunk);
    }

    /// The store lost a chunk (damaged on disk, or a write failed).
    pub fn handle_chunk_lost(&mut self, chunk: ChunkId) {
        self.cache.remove(&chunk);
        self.mark_gone(chunk);
        self.dirty = true;
    }

    /// `peer` holds `bits` of `release` (the answer to [`Request::Have`], or unsolicited).
    pub fn handle_have(&mut self, now: Instant, peer: NodeId, release: ReleaseId, bits: &[u8]) {
        self.advance_to(now);
        let Some(n) = self.releases.get(&release).map(|r| r.have.len()) else { return };
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let new = Bitfield::from_bytes(n, bits);
        let entry = p.haves.entry(release).or_insert(PeerHave {
            bits: None,
            query_inflight: false,
            last_query: None,
            progress_at: now,
        });
        // An answer that changes nothing (the peer polled again, holding what it held) needs
        // no scheduling pass: with many peers polled twice a second those passes were most of
        // a node's work while it waited for other sites.
        let changed = entry.bits.as_ref().is_none_or(|old| *old != new);
        if entry.bits.as_ref().is_none_or(|old| new.count() > old.count()) {
            entry.progress_at = now;
        }
        entry.bits = Some(new);
        entry.query_inflight = false;
        if changed {
            self.dirty = true;
        }
    }

    /// A Have request failed.
    pub fn handle_have_failed(&mut self, now: Instant, peer: NodeId, release: ReleaseId) {
        self.advance_to(now);
        let n = self.releases.get(&release).map_or(0, |r| r.have.len());
        if let Some(h) = self.peers.get_mut(&peer).and_then(|p| p.haves.get_mut(&release)) {
            h.query_inflight = false;
            // A site-mate that cannot answer is taken to hold nothing, so waiting on it ends.
            h.bits.get_or_insert_with(|| Bitfield::new(n));
        }
        self.dirty = true;
    }

    /// The answer to a chunk request: an outcome per index (indices left out count as
    /// missing).
    pub fn handle_response(&mut self, now: Instant, id: RequestId, outcomes: &[(u32, ChunkOutcome)]) {
        self.advance_to(now);
        let Some(req) = self.inflight.remove(&id) else { return };
        if let Some(p) = self.peers.get_mut(&req.peer) {
            p.inflight = p.inflight.saturating_sub(1);
        }
        let mut verified_bytes = 0u64;
        let mut lied = false;
        let mut served = 0usize;
        for &index in &req.indices {
            let outcome = outcomes.iter().find(|(i, _)| *i == index).map_or(ChunkOutcome::Missing, |(_, o)| *o);
            served += usize::from(outcome == ChunkOutcome::Verified);
            let Some(release) = self.releases.get(&req.release) else { continue };
            let Some(spec) = release.spec.chunks.get(index as usize).copied() else { continue };
            match outcome {
                ChunkOutcome::Verified => {
                    if !release.have.get(index) {
                        verified_bytes += spec.stored_len as u64;
                        self.stats.bytes_in[req.class as usize] += spec.stored_len as u64;
                        self.stats.chunks_in[req.class as usize] += 1;
                        self.store(spec);
                    }
                    self.settle(req.release, index, now, false);
                }
                ChunkOutcome::Corrupt => {
                    self.stats.corrupt_chunks += 1;
                    lied = true;
                    self.settle(req.release, index, now, false);
                }
                ChunkOutcome::Missing if req.class == SourceClass::Origin => {
                    // Handed to another site for now: look for it there, ask again later.
                    let wait = self.config.origin_busy_wait;
                    if let Some(after) =
                        self.releases.get_mut(&req.release).and_then(|r| r.origin_after.get_mut(index as usize))
                    {
                        *after = now + wait;
                    }
                    self.stats.origin_busy += 1;
                    self.settle(req.release, index, now, false);
                }
                ChunkOutcome::Missing => {
                    if let Some(bits) = self
                        .peers
                        .get_mut(&req.peer)
                        .and_then(|p| p.haves.get_mut(&req.release))
                        .and_then(|h| h.bits.as_mut())
                    {
                        bits.clear(index);
                    }
                    self.settle(req.release, index, now, true);
                }
            }
        }
        let elapsed = now.saturating_since(req.sent_at).as_secs_f64().max(1e-4);
        let (start, most) = (self.config.origin_slow_start_chunks.max(1), self.config.max_request_chunks as u32);
        if let Some(p) = self.peers.get_mut(&req.peer).filter(|p| p.role == PeerRole::Origin) {
            let all_served = served == req.indices.len();
            p.origin_ask = if all_served { p.origin_ask.saturating_mul(2).min(most.max(start)) } else { start };
            if served == 0 {
                p.origin_quiet_until = now + self.config.origin_busy_wait;
            }
        }
        if let Some(p) = self.peers.get_mut(&req.peer) {
            p.verified_bytes += verified_bytes;
            if verified_bytes > 0 {
                let sample = verified_bytes as f64 / elapsed;
                p.throughput = Some(p.throughput.map_or(sample, |old| 0.7 * old + 0.3 * sample));
            }
        }
        if lied {
            self.penalize(req.peer, now);
        }
        self.check_complete(req.release);
        self.dirty = true;
    }

    /// A chunk request failed (timeout, stream error). Its chunks are retried with backoff.
    pub fn handle_request_failed(&mut self, now: Instant, id: RequestId) {
        self.advance_to(now);
        self.fail_request(id);
        self.dirty = true;
    }

    /// Time passed: requests past their deadline fail; retries and polls become due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance_to(now);
        let expired: Vec<RequestId> = self
            .inflight
            .iter()
            .filter(|(_, r)| now.saturating_since(r.sent_at) >= self.config.request_timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.fail_request(id);
        }
        for p in self.peers.values_mut() {
            if p.banned_until.is_some_and(|t| t <= now) && p.connected {
                p.banned_until = None;
            }
        }
        self.dirty = true;
    }

    // ----- outputs ------------------------------------------------------------------

    /// The next request to send. Call until `None` after every input.
    pub fn poll_request(&mut self) -> Option<Request> {
        if self.dirty {
            self.dirty = false;
            self.schedule();
        }
        self.requests.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<EdgeEvent> {
        self.events.pop_front()
    }

    /// When to call [`FetchScheduler::handle_timeout`] next. Changes after any input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for r in self.inflight.values() {
            consider(r.sent_at + self.config.request_timeout);
        }
        let mut waiting = false;
        for release in self.releases.values().filter(|r| r.wanted && !r.have.is_full()) {
            waiting = true;
            if let Some(t) = self.release_deadline(release) {
                consider(t);
            }
        }
        if waiting {
            consider(self.now + self.config.site_have_interval);
        }
        for p in self.peers.values() {
            if let Some(t) = p.banned_until {
                consider(t);
            }
        }
        next.filter(|t| *t > self.now).or(next.map(|_| self.now + Duration(1)))
    }

    // ----- internals ----------------------------------------------------------------

    /// Takes the driver's time from an input. A clock that steps back is taken as standing
    /// still: what is due when is kept on the understanding that time only moves forward
    /// (a chunk settled as due now is not in `ChunkStates`' backing-off set, so an earlier
    /// `now` would hide its retry from `poll_timeout`).
    fn advance_to(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// The next time a chunk of `release` becomes due: the soonest retry of an idle chunk
    /// and, once no chunk is idle, the soonest tail duplicate.
    ///
    /// Tail duplicates are only sent once no chunk of the release is idle, and a due
    /// duplicate that found no source waits for the next input; counting either as a
    /// deadline would wake the driver in a loop (`now + 1 µs`) for nothing. Only chunks not
    /// held count: a held chunk is neither retried nor duplicated. States are read only for
    /// chunks backing off, and for missing chunks in flight once none is idle (the tail).
    fn release_deadline(&self, release: &Release) -> Option<Instant> {
        let (have, inflight, backing_off) =
            (release.have.words(), release.state.inflight().words(), release.state.backing_off().words());
        let missing = |w: usize| !have[w] & valid_bits(release.have.len(), w);
        let mut next_retry: Option<Instant> = None;
        let mut idle_left = false;
        for (w, inflight) in inflight.iter().enumerate() {
            let idle = missing(w) & !inflight;
            idle_left |= idle != 0;
            for index in held_in_word(w, idle & backing_off[w]) {
                if let Some(ChunkState::Idle { retry_at, .. }) = release.state.get(index) {
                    if retry_at > self.now {
                        next_retry = Some(next_retry.map_or(retry_at, |n| n.min(retry_at)));
                    }
                }
            }
        }
        if idle_left {
            return next_retry;
        }
        let mut next_duplicate: Option<Instant> = None;
        for (w, inflight) in inflight.iter().enumerate() {
            for index in held_in_word(w, missing(w) & inflight) {
                if let Some(ChunkState::Inflight { since, duplicated: false, .. }) = release.state.get(index) {
                    let at = since + self.config.tail_duplicate_after;
                    if at > self.now {
                        next_duplicate = Some(next_duplicate.map_or(at, |n| n.min(at)));
                    }
                }
            }
        }
        // No idle chunk: nothing backs off, so the duplicates' deadline is the release's.
        next_duplicate
    }

    fn current_peer_of(&self, rid: &ReleaseId, index: u32) -> Option<NodeId> {
        self.inflight.values().find(|r| r.release == *rid && r.indices.contains(&index)).map(|r| r.peer)
    }

    fn emit_chunk_request(&mut self, peer: NodeId, release: ReleaseId, request: planner::Building) {
        let planner::Building { class, indices, bytes, duplicate } = request;
        if indices.is_empty() {
            return;
        }
        let id = RequestId(self.next_request);
        self.next_request += 1;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.inflight += 1;
        }
        self.stats.requests_sent += 1;
        if duplicate {
            self.stats.tail_duplicates += 1;
        }
        self.inflight.insert(id, Inflight { peer, release, indices: indices.clone(), class, sent_at: self.now });
        self.requests.push_back(Request::Chunks { id, peer, release, indices, class, bytes });
    }

    fn maybe_poll_have(&mut self, peer: NodeId, release: ReleaseId) {
        let now = self.now;
        let site = self.site;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if p.role != PeerRole::Edge {
            return;
        }
        let interval = if p.site == site { self.config.site_have_interval } else { self.config.wan_have_interval };
        let h = p.haves.entry(release).or_insert(PeerHave {
            bits: None,
            query_inflight: false,
            last_query: None,
            progress_at: now,
        });
        let full = h.bits.as_ref().is_some_and(|b| b.is_full());
        if h.query_inflight || full || h.last_query.is_some_and(|t| now.saturating_since(t) < interval) {
            return;
        }
        h.query_inflight = true;
        h.last_query = Some(now);
        self.requests.push_back(Request::Have { peer, release });
    }

    fn fail_request(&mut self, id: RequestId) {
        let Some(req) = self.inflight.remove(&id) else { return };
        self.stats.failed_requests += 1;
        if let Some(p) = self.peers.get_mut(&req.peer) {
            p.inflight = p.inflight.saturating_sub(1);
            p.throughput = p.throughput.map(|t| t * 0.5);
        }
        for index in req.indices {
            self.settle(req.release, index, self.now, true);
        }
    }

    /// Returns a chunk to Idle after a request ended; with `backoff`, not before its retry
    /// delay. A chunk still in flight elsewhere (a tail duplicate) stays in flight.
    fn settle(&mut self, rid: ReleaseId, index: u32, now: Instant, backoff: bool) {
        let still_inflight = self.current_peer_of(&rid, index).is_some();
        let (min, max) = (self.config.retry_backoff_min, self.config.retry_backoff_max);
        let Some(release) = self.releases.get_mut(&rid) else { return };
        let Some(state) = release.state.get(index) else { return };
        if still_inflight && !release.have.get(index) {
            return;
        }
        let attempts = match state {
            ChunkState::Idle { attempts, .. } | ChunkState::Inflight { attempts, .. } => attempts,
        };
        let (attempts, retry_at) = if backoff {
            let delay = min.as_micros().saturating_mul(1 << attempts.min(20)).min(max.as_micros());
            (attempts + 1, now + Duration(delay))
        } else {
            (attempts, now)
        };
        release.state.set(index, ChunkState::Idle { attempts, retry_at }, now);
    }

    fn penalize(&mut self, peer: NodeId, now: Instant) {
        let ban = self.config.corrupt_ban;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.strikes += 1;
            let until = now + Duration(ban.as_micros().saturating_mul(1 << (p.strikes - 1).min(16)));
            p.banned_until = Some(until);
            p.haves.clear();
            self.events.push_back(EdgeEvent::Disconnect { peer, until });
        }
    }

    fn store(&mut self, spec: ChunkSpec) {
        match self.cache.admit(spec.id, spec.stored_len as u64) {
            Ok(evicted) => {
                self.events.push_back(EdgeEvent::Store { chunk: spec.id });
                self.mark_have(spec.id);
                for victim in evicted {
                    self.stats.evictions += 1;
                    self.events.push_back(EdgeEvent::Evict { chunk: victim });
                    self.mark_gone(victim);
                }
            }
            Err(AdmitError::FullOfPinned | AdmitError::TooLarge) => {
                self.events.push_back(EdgeEvent::Discard { chunk: spec.id });
            }
        }
    }

    fn mark_have(&mut self, chunk: ChunkId) {
        // Borrowed field by field, not cloned: this runs for every chunk stored.
        let Some(places) = self.locations.get(&chunk) else { return };
        for &(rid, index) in places {
            if let Some(r) = self.releases.get_mut(&rid) {
                r.have.set(index);
                Self::note_if_complete(r, rid, &self.pinned, &mut self.events);
            }
        }
    }

    fn mark_gone(&mut self, chunk: ChunkId) {
        let Some(places) = self.locations.get(&chunk) else { return };
        for &(rid, index) in places {
            if let Some(r) = self.releases.get_mut(&rid) {
                r.have.clear(index);
                r.completed = false;
                r.state.set(index, ChunkState::Idle { attempts: 0, retry_at: self.now }, self.now);
            }
        }
    }

    fn check_complete(&mut self, rid: ReleaseId) {
        if let Some(r) = self.releases.get_mut(&rid) {
            Self::note_if_complete(r, rid, &self.pinned, &mut self.events);
        }
    }

    /// Marks `r` complete once it holds every chunk, telling the driver if it was wanted;
    /// a release fetched on demand is wanted no longer unless pinned.
    fn note_if_complete(
        r: &mut Release,
        rid: ReleaseId,
        pinned: &BTreeSet<ReleaseId>,
        events: &mut VecDeque<EdgeEvent>,
    ) {
        if r.have.is_full() && !r.completed {
            r.completed = true;
            if r.wanted {
                events.push_back(EdgeEvent::ReleaseComplete { release: rid });
            }
            if r.demanded {
                r.demanded = false;
                r.wanted = pinned.contains(&rid);
            }
        }
    }

    /// Pins the newest `pinned_releases_per_class` wanted releases of each served class.
    fn update_pins(&mut self) {
        let mut by_class: BTreeMap<&str, Vec<(u64, ReleaseId)>> = BTreeMap::new();
        for (id, r) in &self.releases {
            let served =
                self.config.served_hw_classes.is_empty() || self.config.served_hw_classes.contains(&r.spec.hw_class);
            if served {
                by_class.entry(r.spec.hw_class.as_str()).or_default().push((r.seq, *id));
            }
        }
        let mut want: BTreeSet<ReleaseId> = BTreeSet::new();
        for list in by_class.values_mut() {
            list.sort();
            want.extend(list.iter().rev().take(self.config.pinned_releases_per_class).map(|(_, id)| *id));
        }
        let unpin: Vec<ReleaseId> = self.pinned.difference(&want).copied().collect();
        let pin: Vec<ReleaseId> = want.difference(&self.pinned).copied().collect();
        for id in unpin {
            let ids: Vec<ChunkId> = self.releases[&id].spec.chunks.iter().map(|c| c.id).collect();
            self.cache.unpin(ids);
        }
        for id in pin {
            let ids: Vec<ChunkId> = self.releases[&id].spec.chunks.iter().map(|c| c.id).collect();
            self.cache.pin(ids);
        }
        for (id, r) in self.releases.iter_mut() {
            r.wanted = want.contains(id) || r.demanded;
        }
        self.pinned = want;
    }
}
