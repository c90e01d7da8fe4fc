//! One scheduling pass: for every wanted chunk not held, choose a source (site-mate that
//! holds it → the responsible site-mate brings it in → another site's edge node → the
//! origin) and batch the choices into requests. Split from the state machine so the order
//! of sources reads in one place; [`Pass`] is what the pass has decided so far.
//!
//! Each site walks a release's chunks from its own starting point (from its site id), so
//! when every site starts at once their first asks to the origin cover different chunks:
//! the origin hands each chunk to one site, and the sites then trade them over the WAN.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::{ChunkState, FetchScheduler, Inflight, Release, RequestId};
use crate::edge::bitfield::valid_bits;
use crate::edge::{rendezvous, Bitfield, NodeId, PeerRole, SourceClass};
use crate::time::Instant;
use crate::ChunkId;
use crate::ReleaseId;

/// What one pass has decided so far.
struct Pass {
    /// The site's live members, this node included.
    members: Vec<NodeId>,
    /// Where each in-flight chunk is being fetched (the first request by id), per release:
    /// built once per pass instead of scanning every request for every chunk, by release
    /// first so the per-chunk lookup compares indices, not 32-byte ids, and as a sorted list
    /// read with a forward cursor instead of a tree of small nodes.
    current: BTreeMap<ReleaseId, InFlightChunks>,
    /// Requests being built, per peer and release.
    building: BTreeMap<(NodeId, ReleaseId), Building>,
    /// Pipeline slots the requests being built take, per peer.
    planned: BTreeMap<NodeId, u32>,
    /// Have queries the decisions depend on (sent if due).
    have_polls: BTreeSet<(NodeId, ReleaseId)>,
    /// The release being planned, as the peers last said (built once per release and pass:
    /// looking each peer's view up per chunk was most of a busy node's CPU).
    views: ReleaseViews,
    /// Set once the origin was found to have no room for another chunk of the release being
    /// planned; cleared whenever a chunk is given a source (which changes slots and open
    /// requests). Without it, each chunk of our share left waiting for the origin asked
    /// again: a third of the chunks a pass looked at in fleet-1m.
    origin_full: bool,
}

/// A release's chunks in flight and the peer each is fetched from, sorted by index. A pass
/// asks about ascending indices (wrapping once, from its site's starting point), so a cursor
/// moves forward to each answer; only the first question and the wrap search.
#[derive(Default)]
struct InFlightChunks {
    chunks: Vec<(u32, NodeId)>,
    cursor: usize,
    last_asked: Option<u32>,
}

impl InFlightChunks {
    fn peer_of(&mut self, index: u32) -> Option<NodeId> {
        if self.last_asked.is_none_or(|last| index < last) {
            self.cursor = self.chunks.partition_point(|(i, _)| *i < index);
        } else {
            while self.chunks.get(self.cursor).is_some_and(|(i, _)| *i < index) {
                self.cursor += 1;
            }
        }
        self.last_asked = Some(index);
        self.chunks.get(self.cursor).filter(|(i, _)| *i == index).map(|(_, peer)| *peer)
    }
}

/// A chunk request a pass is filling.
pub(super) struct Building {
    pub(super) class: SourceClass,
    pub(super) indices: Vec<u32>,
    /// Their stored bytes.
    pub(super) bytes: u64,
    /// Tail duplicates (a pass asks for a release's chunks either all fresh or all again:
    /// duplicates only go out once no chunk is idle).
    pub(super) duplicate: bool,
}

/// What the peers hold of one release, and the site-mates' state, for one pass.
#[derive(Default)]
struct ReleaseViews {
    /// Edge peers that said what they hold: (id, a site-mate, what they hold).
    holders: Vec<(NodeId, bool, Bitfield)>,
    /// Site-mates that have not said what they hold yet.
    unheard: Vec<NodeId>,
    /// Site-mates whose progress on the release stalled.
    stalled: Vec<NodeId>,
    /// The origins.
    origins: Vec<NodeId>,
}

impl Pass {
    fn new(members: Vec<NodeId>, inflight: &BTreeMap<RequestId, Inflight>) -> Self {
        let mut current: BTreeMap<ReleaseId, InFlightChunks> = BTreeMap::new();
        for r in inflight.values() {
            current.entry(r.release).or_default().chunks.extend(r.indices.iter().map(|index| (*index, r.peer)));
        }
        for in_flight in current.values_mut() {
            // Stable: among requests for the same chunk, the first by id stays.
            in_flight.chunks.sort_by_key(|(index, _)| *index);
            in_flight.chunks.dedup_by_key(|(index, _)| *index);
        }
        Pass {
            members,
            current,
            building: BTreeMap::new(),
            planned: BTreeMap::new(),
            have_polls: BTreeSet::new(),
            views: ReleaseViews::default(),
            origin_full: false,
        }
    }
}

/// One chunk the pass looks for a source for.
#[derive(Clone, Copy)]
struct Ask {
    rid: ReleaseId,
    index: u32,
    /// The site member rendezvous hashing makes responsible for bringing it in.
    responsible: NodeId,
    /// The peer it is already being fetched from, if any (never asked twice).
    current: Option<NodeId>,
    /// A tail duplicate: only a site-mate may serve it.
    duplicate: bool,
    /// Some other site asked about this release has not answered yet: wait before the origin.
    wan_unheard: bool,
    /// Another site's edge node may be tried (`wan_tries` per chunk).
    wan_ok: bool,
    /// The origin answered `Busy` for it: not asked again before this.
    origin_after: Instant,
}

/// A chunk a pass may look for a source for, read in one walk of its release.
#[derive(Clone, Copy)]
struct Due {
    index: u32,
    /// Requests for it that failed so far.
    attempts: u32,
    /// In flight long enough to be asked again (a tail duplicate), not idle.
    duplicate: bool,
    origin_after: Instant,
    /// Its index in `FetchScheduler::responsible_members` (`u16::MAX`: none).
    responsible: u16,
}

impl FetchScheduler {
    /// Up to `wan_have_peers` edge nodes of other sites to ask what they hold of `rid`,
    /// chosen by rendezvous weight keyed by the release and this node: a stable choice per
    /// release, and a different one for each node. (Keyed by the release alone, every node
    /// picked the same few peers of its neighbourhood, and their uplinks carried the swarm.)
    fn wan_have_peers(&mut self, rid: &ReleaseId) -> Vec<NodeId> {
        let epoch = self.peers_epoch;
        if self.wan_ranking.get(rid).is_none_or(|(at, _)| *at != epoch) {
            let key = ChunkId::of(&[rid.0, self.me.0].concat());
            let mut ranked: Vec<(u64, NodeId)> = self
                .peers
                .iter()
                .filter(|(_, p)| p.site != self.site && p.role == PeerRole::Edge)
                .map(|(id, _)| (rendezvous::weight(id, &key), *id))
                .collect();
            ranked.sort_unstable_by(|a, b| b.cmp(a));
            self.wan_ranking.insert(*rid, (epoch, ranked.into_iter().map(|(_, id)| id).collect()));
        }
        let ranked = self.wan_ranking.get(rid).map(|(_, r)| r.as_slice()).unwrap_or_default();
        ranked.iter().filter(|id| self.usable(id)).take(self.config.wan_have_peers).copied().collect()
    }

    fn usable(&self, peer: &NodeId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.connected && p.banned_until.is_none_or(|t| t <= self.now))
    }

    /// An edge peer that has not yet delivered a verified byte gets one request at a time: a
    /// liar then costs at most one batch before it is caught, not a whole pipeline. The
    /// origin's pipeline follows its slow start (`origin_slow_start_chunks`): two small
    /// requests at first, growing while it serves them in full, and none for
    /// `origin_busy_wait` after it answered a whole request `Busy`.
    fn has_free_slot(&self, peer: &NodeId, extra: u32) -> bool {
        self.peers.get(peer).is_some_and(|p| {
            let limit = match p.role {
                PeerRole::Origin if p.origin_quiet_until > self.now => 0,
                PeerRole::Origin => (p.origin_ask / self.config.origin_slow_start_chunks.max(1) + 1)
                    .min(self.config.max_inflight_per_peer.max(1)),
                PeerRole::Edge if p.verified_bytes > 0 => self.config.max_inflight_per_peer,
                PeerRole::Edge => 1,
            };
            p.inflight + extra < limit
        })
    }

    /// Most chunks in one request to `peer`: an origin's slow-start size, else the maximum.
    fn request_chunk_limit(&self, peer: &NodeId) -> usize {
        match self.peers.get(peer) {
            Some(p) if p.role == PeerRole::Origin => (p.origin_ask as usize).min(self.config.max_request_chunks),
            _ => self.config.max_request_chunks,
        }
    }

    /// Expected speed of one more request to `peer`: measured throughput shared over its
    /// in-flight requests, with a prior by class until measured.
    fn score(&self, peer: &NodeId, extra: u32) -> u64 {
        let Some(p) = self.peers.get(peer) else { return 0 };
        let prior = if p.site == self.site { 100e6 } else { 10e6 };
        (p.throughput.unwrap_or(prior) / f64::from(p.inflight + extra + 1)) as u64
    }

    /// What every peer said it holds of `rid`, and the site-mates' state, for one pass.
    fn release_views(&self, members: &[NodeId], rid: &ReleaseId) -> ReleaseViews {
        let mut views = ReleaseViews::default();
        for (id, p) in &self.peers {
            match p.role {
                PeerRole::Origin => views.origins.push(*id),
                PeerRole::Edge => {
                    let have = p.haves.get(rid);
                    if let Some(bits) = have.and_then(|h| h.bits.as_ref()) {
                        views.holders.push((*id, p.site == self.site, bits.clone()));
                    }
                    if p.site == self.site && members.contains(id) && *id != self.me {
                        if have.is_none_or(|h| h.bits.is_none()) {
                            views.unheard.push(*id);
                        }
                        if have
                            .is_some_and(|h| self.now.saturating_since(h.progress_at) >= self.config.site_stall_timeout)
                        {
                            views.stalled.push(*id);
                        }
                    }
                }
            }
        }
        views
    }

    fn site_members(&self) -> Vec<NodeId> {
        let mut members: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(id, p)| p.site == self.site && p.role == PeerRole::Edge && self.usable(id))
            .map(|(id, _)| *id)
            .collect();
        members.push(self.me);
        members
    }

    /// Brings the cached rendezvous choice of `release`'s chunks up to date with `members`.
    fn refresh_responsible(&mut self, members: &[NodeId], rid: &ReleaseId) {
        if members != self.responsible_members.as_slice() {
            self.responsible_members = members.to_vec();
            self.responsible_epoch += 1;
        }
        let epoch = self.responsible_epoch;
        let Some(r) = self.releases.get_mut(rid) else { return };
        if r.responsible_epoch == epoch {
            return;
        }
        r.responsible = r
            .spec
            .chunks
            .iter()
            .map(|c| {
                let mut best: Option<(u64, NodeId, usize)> = None;
                for (i, m) in members.iter().enumerate() {
                    let key = (rendezvous::weight(m, &c.id), *m, i);
                    if best.is_none_or(|b| (key.0, key.1) > (b.0, b.1)) {
                        best = Some(key);
                    }
                }
                best.map_or(u16::MAX, |b| b.2 as u16)
            })
            .collect();
        r.responsible_sets = alloc::vec![Bitfield::new(r.have.len()); members.len()];
        for (index, who) in r.responsible.iter().enumerate() {
            if let Some(set) = r.responsible_sets.get_mut(usize::from(*who)) {
                set.set(index as u32);
            }
        }
        r.responsible_epoch = epoch;
    }

    /// The chunks of `rid` a pass may ask for now, in the order the pass walks them (from
    /// this site's starting point): not held, and idle past their retry time, or — once no
    /// missing chunk is idle — in flight for `tail_duplicate_after` and not duplicated yet.
    ///
    /// A node schedules after every input, over a release it may mostly hold, so the walk
    /// reads a chunk's state only once [`Self::candidates`] has left it in: a tenth of
    /// fleet-1m's samples were this pass when it read every missing chunk's state.
    fn due_chunks(&self, rid: &ReleaseId, views: &ReleaseViews, origin_closed: bool) -> Vec<Due> {
        let Some(r) = self.releases.get(rid) else { return Vec::new() };
        let n = r.have.len();
        let start = if n == 0 { 0 } else { (self.site.0 % u64::from(n)) as u32 };
        let candidates = self.candidates(r, views, origin_closed);
        let mut due = Vec::new();
        for index in candidates.held(start..n).chain(candidates.held(0..start)) {
            let (duplicate, attempts) = match r.state.get(index) {
                Some(ChunkState::Idle { attempts, retry_at }) => {
                    if retry_at > self.now {
                        continue;
                    }
                    (false, attempts)
                }
                Some(ChunkState::Inflight { attempts, since, duplicated: false })
                    if self.now.saturating_since(since) >= self.config.tail_duplicate_after =>
                {
                    (true, attempts)
                }
                Some(ChunkState::Inflight { .. }) | None => continue,
            };
            let i = index as usize;
            let responsible = r.responsible.get(i).copied().unwrap_or(u16::MAX);
            due.push(Due { index, attempts, duplicate, origin_after: r.origin_after[i], responsible });
        }
        due
    }

    /// The chunks of `r` whose state [`Self::due_chunks`] reads, as a set built a word at a
    /// time: not held, and then
    /// - not left to another site member: one it is responsible for, that no site-mate holds
    ///   yet, while that member makes progress. [`Self::choose_source`] would only wait for
    ///   them (the member brings them in), and they were most of what a pass looked at (59 %
    ///   in fleet-1m, where every site has two edge nodes);
    /// - while `origin_closed`, held by some peer: the origin is the only source of the rest
    ///   (most of what is left while the origin hands chunks out to other sites);
    /// - idle, while any chunk not held is idle (counting those left out above): tail
    ///   duplicates wait until every chunk has been asked for once.
    fn candidates(&self, r: &Release, views: &ReleaseViews, origin_closed: bool) -> Bitfield {
        let n = r.have.len();
        let word = |set: &Bitfield, w: usize| set.words().get(w).copied().unwrap_or(0);
        // The sets of the site members chunks are left to: not us, and not a member that
        // stalled (`responsible_sets` is indexed like `responsible_members`).
        let left: Vec<&Bitfield> = r
            .responsible_sets
            .iter()
            .zip(&self.responsible_members)
            .filter(|(_, m)| **m != self.me && !views.stalled.contains(m))
            .map(|(set, _)| set)
            .collect();
        let mates_holding: Vec<&Bitfield> =
            views.holders.iter().filter(|(_, mate, _)| *mate).map(|(_, _, bits)| bits).collect();
        let mut idle_left = false;
        let mut words: Vec<u64> = (0..r.have.words().len())
            .map(|w| {
                let missing = !word(&r.have, w) & valid_bits(n, w);
                idle_left |= missing & !word(r.state.inflight(), w) != 0;
                let left_to_others = left.iter().fold(0, |acc, set| acc | word(set, w));
                let held_by_mates = mates_holding.iter().fold(0, |acc, set| acc | word(set, w));
                let mut candidates = missing & !(left_to_others & !held_by_mates);
                if origin_closed {
                    candidates &= views.holders.iter().fold(0, |acc, (_, _, set)| acc | word(set, w));
                }
                candidates
            })
            .collect();
        if idle_left {
            for (w, candidates) in words.iter_mut().enumerate() {
                *candidates &= !word(r.state.inflight(), w);
            }
        }
        Bitfield::from_words(n, words)
    }

    pub(super) fn schedule(&mut self) {
        let now = self.now;
        let mut pass = Pass::new(self.site_members(), &self.inflight);
        let release_ids: Vec<ReleaseId> =
            self.releases.iter().filter(|(_, r)| r.wanted && !r.have.is_full()).map(|(id, _)| *id).collect();

        for rid in release_ids {
            // Keep site-mates' Have views fresh while their share of this release is pending.
            for member in pass.members.iter().filter(|m| **m != self.me) {
                pass.have_polls.insert((*member, rid));
            }
            // And learn what a few edge nodes in other sites hold, so our share can come from
            // them instead of the origin (at WAN polling pace; a bounded, stable choice per
            // release spreads the load across sites).
            let wan_peers = self.wan_have_peers(&rid);
            // Until each of them has answered once, our share waits rather than going to the
            // origin (an unreachable one is taken to hold nothing, so this wait is bounded).
            let wan_unheard = wan_peers
                .iter()
                .any(|p| self.peers.get(p).is_some_and(|p| p.haves.get(&rid).is_none_or(|h| h.bits.is_none())));
            for peer in wan_peers {
                pass.have_polls.insert((peer, rid));
            }
            self.refresh_responsible(&pass.members, &rid);
            pass.views = self.release_views(&pass.members, &rid);
            // The origin can take none of this release's chunks in this pass: no free slot
            // now, and slots only fill as a pass goes on (a request to it is only started in
            // a free slot).
            let origin_closed = !pass
                .views
                .origins
                .iter()
                .any(|o| self.usable(o) && self.has_free_slot(o, pass.planned.get(o).copied().unwrap_or(0)));
            pass.origin_full = origin_closed;
            let mut current = pass.current.remove(&rid).unwrap_or_default();
            for due in self.due_chunks(&rid, &pass.views, origin_closed) {
                let Due { index, attempts, duplicate, origin_after, responsible } = due;
                let responsible = self.responsible_members.get(usize::from(responsible)).copied().unwrap_or(self.me);
                // Other sites' edge nodes are tried a few times per chunk: their batches cross
                // two backhauls, and after repeated failures the origin is the surer source.
                let wan_ok = !duplicate && attempts < self.config.wan_tries;
                let ask = Ask {
                    rid,
                    index,
                    responsible,
                    current: current.peer_of(index),
                    duplicate,
                    wan_unheard: wan_unheard && wan_ok,
                    wan_ok,
                    origin_after,
                };
                let Some((peer, class)) = self.choose_source(&mut pass, &ask) else {
                    continue;
                };
                pass.origin_full = false;
                let entry = pass.building.entry((peer, rid)).or_insert(Building {
                    class,
                    indices: Vec::new(),
                    bytes: 0,
                    duplicate,
                });
                if entry.indices.is_empty() {
                    // The request being built takes one of the peer's slots.
                    *pass.planned.entry(peer).or_insert(0) += 1;
                }
                entry.indices.push(index);
                // Read only for a chunk given a source: most due chunks wait (for a site-mate,
                // a free slot), and their entries would only cost cache misses.
                entry.bytes += u64::from(self.releases[&rid].spec.chunks[index as usize].stored_len);
                let full = entry.indices.len() >= self.request_chunk_limit(&peer)
                    || entry.bytes >= self.config.max_request_bytes;
                if full {
                    if let Some(request) = pass.building.remove(&(peer, rid)) {
                        // Emitting moves the slot from `planned` to the peer's in-flight count.
                        if let Some(p) = pass.planned.get_mut(&peer) {
                            *p -= 1;
                        }
                        self.emit_chunk_request(peer, rid, request);
                    }
                }
                if let Some(r) = self.releases.get_mut(&rid) {
                    r.state.set(index, ChunkState::Inflight { attempts, since: now, duplicated: duplicate }, now);
                }
            }
        }
        for ((peer, rid), request) in core::mem::take(&mut pass.building) {
            self.emit_chunk_request(peer, rid, request);
        }
        for (peer, rid) in pass.have_polls {
            self.maybe_poll_have(peer, rid);
        }
    }

    /// Where `ask`'s chunk should come from now, or `None` to wait (see the module doc for
    /// the order). Records in `pass` the Have polls the decision depends on.
    fn choose_source(&self, pass: &mut Pass, ask: &Ask) -> Option<(NodeId, SourceClass)> {
        let Ask { rid, index, responsible, current, duplicate, wan_unheard, wan_ok, origin_after } = *ask;
        let rid = &rid;
        let origin_full = pass.origin_full && current.is_none();
        let planned = &pass.planned;
        let building = &pass.building;
        let extra = |p: &NodeId| planned.get(p).copied().unwrap_or(0);
        let open_request = |p: &NodeId| building.contains_key(&(*p, *rid));
        let best = |candidates: &mut dyn Iterator<Item = &NodeId>| -> (Option<NodeId>, bool) {
            let mut any = false;
            let mut best: Option<(u64, NodeId)> = None;
            for peer in candidates {
                if Some(*peer) == current || !self.usable(peer) {
                    continue;
                }
                any = true;
                // A request to this peer for this release is being built and has room: the
                // chunk joins it without taking another slot. (Asking for a free slot here
                // made every request after the pipeline filled carry a single chunk.)
                if open_request(peer) || self.has_free_slot(peer, extra(peer)) {
                    let score = (self.score(peer, extra(peer)), *peer);
                    if best.is_none_or(|b| score > b) {
                        best = Some(score);
                    }
                }
            }
            (best.map(|(_, p)| p), any)
        };

        // 1. A site-mate that already holds it, over the LAN.
        let views = &pass.views;
        let mut lan = views.holders.iter().filter(|(_, mate, bits)| *mate && bits.get(index)).map(|(id, _, _)| id);
        match best(&mut lan) {
            (Some(peer), _) => return Some((peer, SourceClass::Site)),
            (None, true) => return None, // a site-mate has it but is busy: wait for it
            (None, false) => {}
        }
        if duplicate {
            return None; // tail duplicates stay inside the site
        }
        // 2. The site-mate responsible for it will bring it in: wait, unless it stalled.
        if responsible != self.me {
            // (The pass polls every site-mate of a pending release.)
            if !views.stalled.contains(&responsible) {
                return None;
            }
        }
        // Before spending backhaul on our share, hear from every site-mate once: one of them
        // may hold the chunk already (a node that joins late must not re-fetch what its site
        // has). The pass polls them.
        if !views.unheard.is_empty() {
            return None;
        }
        // 3. Our share: another site's edge node that has it, then the origin — once the
        // other sites we ask have said what they hold.
        if wan_unheard {
            return None;
        }
        let mut wan = views.holders.iter().filter(|(_, mate, bits)| !*mate && bits.get(index)).map(|(id, _, _)| id);
        if let (true, (Some(peer), _)) = (wan_ok, best(&mut wan)) {
            return Some((peer, SourceClass::Wan));
        }
        // The origin handed it to another site a moment ago: wait for it to arrive there.
        // (The pass already polls a few of them for this release.)
        if origin_after > self.now {
            return None;
        }
        if origin_full {
            return None;
        }
        let mut origin = views.origins.iter();
        let chosen = best(&mut origin).0;
        if chosen.is_none() && current.is_none() {
            pass.origin_full = true;
        }
        chosen.map(|peer| (peer, SourceClass::Origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::bitfield::xorshift;
    use crate::edge::scheduler::{ChunkOutcome, ChunkSpec, ReleaseSpec, Request, SchedulerConfig};
    use crate::edge::SiteId;
    use crate::time::Duration;

    /// The walk `due_chunks` replaced, kept as the model its answers are checked against:
    /// every missing chunk's state read in pass order, then tail duplicates dropped while any
    /// missing chunk is idle.
    fn due_chunks_one_by_one(
        s: &FetchScheduler,
        rid: &ReleaseId,
        views: &ReleaseViews,
        origin_closed: bool,
    ) -> Vec<(u32, u32, bool, Instant, u16)> {
        let r = &s.releases[rid];
        let n = r.have.len();
        let start = if n == 0 { 0 } else { (s.site.0 % u64::from(n)) as u32 };
        let left_to: Vec<bool> =
            s.responsible_members.iter().map(|m| *m != s.me && !views.stalled.contains(m)).collect();
        let mut due = Vec::new();
        for index in (start..n).chain(0..start).filter(|i| !r.have.get(*i)) {
            let i = index as usize;
            let responsible = r.responsible.get(i).copied().unwrap_or(u16::MAX);
            if left_to.get(usize::from(responsible)).copied().unwrap_or(false)
                && !views.holders.iter().any(|(_, mate, bits)| *mate && bits.get(index))
            {
                continue;
            }
            if origin_closed && !views.holders.iter().any(|(_, _, bits)| bits.get(index)) {
                continue;
            }
            let (duplicate, attempts) = match r.state.get(index).unwrap() {
                ChunkState::Idle { attempts, retry_at } if retry_at <= s.now => (false, attempts),
                ChunkState::Inflight { attempts, since, duplicated: false }
                    if s.now.saturating_since(since) >= s.config.tail_duplicate_after =>
                {
                    (true, attempts)
                }
                _ => continue,
            };
            due.push((index, attempts, duplicate, r.origin_after[i], responsible));
        }
        let idle = (0..n).any(|i| !r.have.get(i) && matches!(r.state.get(i), Some(ChunkState::Idle { .. })));
        if idle {
            due.retain(|d| !d.2);
        }
        due
    }

    /// The release deadlines `poll_timeout` replaced, read chunk by chunk (the model): the
    /// next retry of an idle chunk, and the next tail duplicate once no chunk is idle.
    fn release_deadline_one_by_one(s: &FetchScheduler, rid: &ReleaseId) -> Option<Instant> {
        let r = &s.releases[rid];
        let mut next: Option<Instant> = None;
        let mut idle_left = false;
        let mut next_duplicate: Option<Instant> = None;
        for index in (0..r.have.len()).filter(|i| !r.have.get(*i)) {
            match r.state.get(index).unwrap() {
                ChunkState::Idle { retry_at, .. } => {
                    idle_left = true;
                    if retry_at > s.now {
                        next = Some(next.map_or(retry_at, |t| t.min(retry_at)));
                    }
                }
                ChunkState::Inflight { since, duplicated: false, .. }
                    if since + s.config.tail_duplicate_after > s.now =>
                {
                    let at = since + s.config.tail_duplicate_after;
                    next_duplicate = Some(next_duplicate.map_or(at, |t| t.min(at)));
                }
                ChunkState::Inflight { .. } => {}
            }
        }
        match (idle_left, next_duplicate) {
            (false, Some(at)) => Some(next.map_or(at, |t| t.min(at))),
            _ => next,
        }
    }

    /// What the model comparisons reached, so the test can tell its cases did their job.
    #[derive(Debug, Default)]
    struct Reached {
        due: usize,
        due_duplicates: usize,
        some_mates_stalled: usize,
        retry_deadlines: usize,
        duplicate_deadlines: usize,
        driven_requests: usize,
    }

    /// Compares `due_chunks` (origin open and closed) and the release's deadline with the
    /// chunk-by-chunk models, from the scheduler's current state.
    fn check_against_the_walks(s: &mut FetchScheduler, rid: &ReleaseId, what: &str, reached: &mut Reached) {
        let members = s.site_members();
        s.refresh_responsible(&members, rid);
        let views = s.release_views(&members, rid);
        if !views.stalled.is_empty() && views.stalled.len() + 1 < members.len() {
            reached.some_mates_stalled += 1;
        }
        for origin_closed in [false, true] {
            let got: Vec<_> = s
                .due_chunks(rid, &views, origin_closed)
                .iter()
                .map(|d| (d.index, d.attempts, d.duplicate, d.origin_after, d.responsible))
                .collect();
            let want = due_chunks_one_by_one(s, rid, &views, origin_closed);
            assert_eq!(got, want, "{what}, origin closed {origin_closed}");
            reached.due += want.len();
            reached.due_duplicates += want.iter().filter(|d| d.2).count();
        }
        let want = release_deadline_one_by_one(s, rid);
        assert_eq!(s.release_deadline(&s.releases[rid]), want, "{what}: the release's deadline");
        let idle = |r: &Release| (0..r.have.len()).any(|i| !r.have.get(i) && !r.state.inflight().get(i));
        match want {
            Some(_) if idle(&s.releases[rid]) => reached.retry_deadlines += 1,
            Some(_) => reached.duplicate_deadlines += 1,
            None => {}
        }
    }

    /// The chunks a pass reads, and the deadlines the scheduler asks to be woken for, are
    /// the ones a chunk-by-chunk walk finds: for random holdings, states (idle, backing off,
    /// in flight, duplicated; the tail, where every missing chunk is in flight), site-mates
    /// that stalled, progress or were not heard, responsibility split over two or three
    /// members, and the origin open or closed, over release lengths around word edges; then
    /// again after the scheduler's own passes and answers (delivered, missing, failed) have
    /// moved the states on.
    #[test]
    fn due_chunks_and_deadlines_are_the_chunk_by_chunk_walks() {
        let mut next = xorshift(0x5eed_1234);
        let node = |b: u8| NodeId([b; 32]);
        let (me, mate, mate2, wan, wan2, origin) = (node(1), node(2), node(3), node(4), node(5), node(9));
        let mut reached = Reached::default();
        for case in 0..300u32 {
            let n = [1u32, 2, 63, 64, 65, 127, 130, 300, 1021][case as usize % 9];
            let mut s = FetchScheduler::new(me, SiteId(u64::from(next())), SchedulerConfig::default());
            let t0 = Instant(10_000_000);
            s.handle_peer_up(t0, mate, s.site, PeerRole::Edge);
            let two_mates = next().is_multiple_of(2);
            if two_mates {
                s.handle_peer_up(t0, mate2, s.site, PeerRole::Edge);
            }
            s.handle_peer_up(t0, wan, SiteId(s.site.0.wrapping_add(1)), PeerRole::Edge);
            s.handle_peer_up(t0, wan2, SiteId(s.site.0.wrapping_add(2)), PeerRole::Edge);
            s.handle_peer_up(t0, origin, SiteId(0), PeerRole::Origin);
            let chunks = (0..n)
                .map(|i| ChunkSpec {
                    id: ChunkId::of(&[case.to_le_bytes(), i.to_le_bytes()].concat()),
                    stored_len: 1000,
                })
                .collect();
            let rid = ReleaseId([case as u8; 32]);
            s.handle_release(t0, rid, ReleaseSpec { hw_class: "x".into(), chunks });
            // Holdings: dense, sparse or none, for us and each peer (a peer may stay unheard).
            let density = |random: u32| [0u32, 1, 2, 3][random as usize % 4];
            let ours = density(next());
            let r = s.releases.get_mut(&rid).unwrap();
            for i in 0..n {
                if ours > 0 && next() % 4 < ours {
                    r.have.set(i);
                }
            }
            for peer in [mate, mate2, wan, wan2] {
                let d = density(next());
                if d == 0 && next().is_multiple_of(2) {
                    continue; // not heard
                }
                let mut bits = Bitfield::new(n);
                for i in 0..n {
                    if next() % 4 < d {
                        bits.set(i);
                    }
                }
                s.handle_have(t0, peer, rid, &bits.to_bytes());
            }
            let now = t0 + Duration(u64::from(next() % 30_000_000));
            // The second site-mate made progress at some point up to now: with the first
            // stalled (20 s), the two differ.
            if let Some(h) = s.peers.get_mut(&mate2).and_then(|p| p.haves.get_mut(&rid)) {
                h.progress_at = Instant(t0.0 + (now.0 - t0.0) * u64::from(next() % 4) / 3);
            }
            s.now = now;
            // Chunk states at random; in the tail cases every missing chunk is in flight and
            // the held ones are idle, as the scheduler leaves them.
            let tail = next().is_multiple_of(4);
            let r = s.releases.get_mut(&rid).unwrap();
            for i in 0..n {
                let since = Instant(now.0.saturating_sub(u64::from(next() % 4_000_000)));
                let state = match next() % 5 {
                    _ if tail && r.have.get(i) => ChunkState::Idle { attempts: 0, retry_at: since },
                    _ if tail => ChunkState::Inflight { attempts: 1, since, duplicated: next().is_multiple_of(3) },
                    0 | 1 => ChunkState::Idle { attempts: next() % 3, retry_at: t0 },
                    2 => ChunkState::Idle { attempts: 2, retry_at: now + Duration(u64::from(next() % 900_000)) },
                    3 => ChunkState::Inflight { attempts: 0, since, duplicated: false },
                    _ => ChunkState::Inflight { attempts: 1, since, duplicated: true },
                };
                // Set as of a time before now, so some chunks backing off are due by now.
                r.state.set(i, state, Instant(since.0.min(t0.0)));
                if next().is_multiple_of(3) {
                    r.origin_after[i as usize] = now + Duration(u64::from(next() % 1000));
                }
            }
            let what = format!("case {case}, {n} chunks");
            check_against_the_walks(&mut s, &rid, &what, &mut reached);
            // The release's deadline also bounds the scheduler's, with nothing else to wake
            // for (no requests, no bans) but the have-poll interval.
            let poll = now + s.config.site_have_interval;
            if !s.releases[&rid].have.is_full() {
                let want = release_deadline_one_by_one(&s, &rid).map_or(poll, |t| t.min(poll));
                assert_eq!(s.poll_timeout(), Some(want), "{what}");
            }
            // Then the scheduler's own passes and answers change the states, at the times
            // its handlers pass on.
            for round in 0..3 {
                let mut now = s.now;
                while let Some(request) = s.poll_request() {
                    let Request::Chunks { id, indices, .. } = request else { continue };
                    reached.driven_requests += 1;
                    now = now + Duration(u64::from(next() % 300_000));
                    match next() % 4 {
                        0 => s.handle_request_failed(now, id),
                        1 => {} // still in flight
                        _ => {
                            let outcomes: Vec<(u32, ChunkOutcome)> = indices
                                .iter()
                                .filter_map(|i| match next() % 4 {
                                    0 => None,
                                    1 => Some((*i, ChunkOutcome::Missing)),
                                    _ => Some((*i, ChunkOutcome::Verified)),
                                })
                                .collect();
                            s.handle_response(now, id, &outcomes);
                        }
                    }
                }
                check_against_the_walks(&mut s, &rid, &format!("{what}, round {round} answered"), &mut reached);
                s.handle_timeout(now + Duration(u64::from(next() % 3_000_000)));
                check_against_the_walks(&mut s, &rid, &format!("{what}, round {round} later"), &mut reached);
            }
        }
        // The cases reached what they are for.
        assert!(
            reached.due > 5_000
                && reached.due_duplicates > 100
                && reached.some_mates_stalled > 10
                && reached.retry_deadlines > 50
                && reached.duplicate_deadlines > 10
                && reached.driven_requests > 300,
            "{reached:?}"
        );
    }

    /// The cursor answers like a search whatever order the questions come in: ascending from
    /// a starting point with one wrap (a pass), and scattered.
    #[test]
    fn chunks_in_flight_answer_the_same_in_any_order_of_questions() {
        let peer = |i: u32| NodeId([i as u8; 32]);
        let held: BTreeMap<u32, NodeId> =
            (0..200u32).filter(|i| i % 3 == 0 || i % 7 == 1).map(|i| (i, peer(i))).collect();
        let fresh = || InFlightChunks { chunks: held.iter().map(|(i, p)| (*i, *p)).collect(), ..Default::default() };
        let start = 77;
        let pass: Vec<u32> = (start..210).chain(0..start).collect();
        let mut state = 12345u32;
        let scattered: Vec<u32> = (0..500)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 8) % 210
            })
            .collect();
        for order in [pass, scattered] {
            let mut in_flight = fresh();
            for index in order {
                assert_eq!(in_flight.peer_of(index), held.get(&index).copied(), "index {index}");
            }
        }
    }
}
