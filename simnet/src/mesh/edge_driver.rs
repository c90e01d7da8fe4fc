//! The edge schedulers' driver: drains each `FetchScheduler` as the daemon does, routes its
//! requests over the simulated links, and answers them as the mesh's peers would.

use super::*;

impl World<'_> {
    /// Drains the scheduler's outputs after an input, as the daemon's `pump` does.
    pub(super) fn pump(&mut self, e: u32) {
        let Some(s) = self.edges[e as usize].sched.as_mut() else { return };
        let mut requests = Vec::new();
        while let Some(r) = s.poll_request() {
            requests.push(r);
        }
        let mut events = Vec::new();
        while let Some(ev) = s.poll_event() {
            events.push(ev);
        }
        let timeout = s.poll_timeout();
        for ev in events {
            self.edge_event(e, ev);
        }
        for r in requests {
            self.route(e, r);
        }
        self.set_timer(e, timeout.map(|t| t.0));
    }

    pub(super) fn set_timer(&mut self, e: u32, at: Option<Micros>) {
        let now = self.now;
        let r = self.resolution;
        let edge = &mut self.edges[e as usize];
        let Some(at) = at else {
            if edge.timer_at != Micros::MAX {
                edge.timer_at = Micros::MAX;
                edge.timer_gen = edge.timer_gen.wrapping_add(1);
            }
            return;
        };
        if at <= now + 1 {
            self.out.counters.immediate_wakeups += 1;
        }
        // Like tokio's timer wheel: a deadline fires on the next tick at or after it.
        let at = at.div_ceil(r).saturating_mul(r).max(now + 1);
        if edge.timer_at != at {
            edge.timer_at = at;
            edge.timer_gen = edge.timer_gen.wrapping_add(1);
            let gen = edge.timer_gen;
            self.q.push(at, Ev::Timer { edge: e, gen });
        }
    }

    pub(super) fn edge_event(&mut self, e: u32, ev: EdgeEvent) {
        match ev {
            EdgeEvent::Store { chunk } => {
                let Some(&i) = self.chunk_index.get(&chunk) else { return };
                let edge = &mut self.edges[e as usize];
                if edge.incoming_tainted.contains(&i) {
                    edge.tainted.insert(i);
                }
                if edge.stored.set(i) {
                    self.chunk_stored(e, i);
                }
            }
            EdgeEvent::Evict { chunk } => {
                let Some(&i) = self.chunk_index.get(&chunk) else { return };
                let edge = &mut self.edges[e as usize];
                if edge.stored.clear(i) {
                    edge.tainted.remove(&i);
                }
            }
            EdgeEvent::Discard { .. } => {}
            EdgeEvent::ReleaseComplete { .. } => {
                let edge = &mut self.edges[e as usize];
                edge.complete_at.get_or_insert(self.now);
            }
            EdgeEvent::Disconnect { peer, .. } => {
                self.out.counters.liar_disconnects += 1;
                // Closing the connection: the other side (if one of ours) notices.
                if let Some(&p) = self.by_id.get(&peer) {
                    if matches!(self.kind(p), NodeKind::Edge(_)) {
                        let (now, id) = (self.now, self.edges[e as usize].id);
                        if let Some(s) = self.edges[p as usize].sched.as_mut() {
                            s.handle_peer_down(Instant(now), id);
                            self.out.counters.scheduler_inputs += 1;
                        }
                    }
                }
            }
        }
    }

    pub(super) fn route(&mut self, e: u32, r: Request) {
        let inc = self.edges[e as usize].inc;
        let site = self.edges[e as usize].site;
        match r {
            Request::Have { peer, .. } => {
                let Some(&p) = self.by_id.get(&peer) else { return };
                if !self.reachable(e, p) {
                    self.q.push(self.now + self.detect, Ev::HaveReply { edge: e, inc, peer: p, bits: None });
                    return;
                }
                let (_, latency, loss, _) = self.path(p, site);
                let delay = self.topo.message_delay(loss, latency, &mut self.rng);
                self.q.push(self.now + delay, Ev::HaveAt { server: p, edge: e, inc });
            }
            Request::Chunks { id, peer, indices, .. } => {
                let Some(&p) = self.by_id.get(&peer) else { return };
                if !self.reachable(e, p) {
                    self.q.push(self.now + self.detect, Ev::ChunksFailed { edge: e, inc, req: id });
                    return;
                }
                let (_, latency, loss, _) = self.path(p, site);
                let delay = self.topo.message_delay(loss, latency, &mut self.rng);
                self.q.push(self.now + delay, Ev::ChunksAt { server: p, edge: e, inc, req: id, indices });
            }
        }
    }

    pub(super) fn have_at(&mut self, server: u32, edge: u32, inc: u32) {
        if self.edges[edge as usize].inc != inc {
            return;
        }
        let site = self.edges[edge as usize].site;
        if !self.reachable(server, edge) {
            self.q.push(self.now + self.detect, Ev::HaveReply { edge, inc, peer: server, bits: None });
            return;
        }
        let bits = match self.kind(server) {
            NodeKind::Edge(s) => {
                let sched = self.edges[s as usize].sched.as_ref();
                sched.and_then(|x| x.have(&self.rel.id)).map(|b| b.to_bytes()).unwrap_or_default()
            }
            // Liars claim everything; the origin is never asked (it holds everything).
            _ => vec![0xff; (self.rel.chunk_count() as usize).div_ceil(8)],
        };
        let (_, latency, loss, _) = self.path(server, site);
        let delay = self.topo.message_delay(loss, latency, &mut self.rng);
        self.q.push(self.now + delay, Ev::HaveReply { edge, inc, peer: server, bits: Some(bits) });
    }

    pub(super) fn chunks_at(&mut self, server: u32, edge: u32, inc: u32, req: RequestId, indices: Vec<u32>) {
        if self.edges[edge as usize].inc != inc {
            return;
        }
        if !self.reachable(server, edge) {
            self.q.push(self.now + self.detect, Ev::ChunksFailed { edge, inc, req });
            return;
        }
        let site = self.edges[edge as usize].site;
        let receiver_verifies = self.edges[edge as usize].verifies;
        let mut outcomes = Vec::with_capacity(indices.len());
        let mut tainted = Vec::new();
        let mut bytes = 0u64;
        let mut unverified_served = 0;
        let requester = self.edges[edge as usize].id;
        for &i in &indices {
            let Some(c) = self.rel.spec.chunks.get(i as usize) else { continue };
            let (sent, tampered) = match self.kind(server) {
                NodeKind::Origin => {
                    let served = self.handout.admit(Instant(self.now), &requester, &c.id);
                    self.out.counters.origin_busy_chunks += u64::from(!served);
                    (served, false)
                }
                NodeKind::Liar(_) => (true, true),
                NodeKind::Edge(s) => {
                    let srv = &self.edges[s as usize];
                    let held = srv.stored.get(i);
                    let bad = held && srv.tainted.contains(&i);
                    unverified_served += usize::from(bad);
                    (held, bad)
                }
            };
            if !sent {
                outcomes.push((i, ChunkOutcome::Missing));
                continue;
            }
            bytes += c.stored_len as u64;
            // The receiving driver hashes every chunk before the scheduler hears of it.
            if tampered && receiver_verifies {
                outcomes.push((i, ChunkOutcome::Corrupt));
            } else {
                if tampered {
                    tainted.push(i);
                }
                outcomes.push((i, ChunkOutcome::Verified));
            }
        }
        if let NodeKind::Edge(s) = self.kind(server) {
            let (ss, slot) = (self.edges[s as usize].site, self.edges[s as usize].slot);
            self.checkers.edge_serves(self.now, ss, slot, unverified_served);
        }
        let (path, latency, _, cap) = self.path(server, site);
        let slot = match self.pending_free.pop() {
            Some(s) => s,
            None => {
                self.pending.push(None);
                self.pending.len() as u32 - 1
            }
        };
        self.pending[slot as usize] = Some(Pending { edge, inc, req, server, outcomes, tainted, latency, flow: None });
        match self.net.start(self.now, &path, cap, 1, bytes, Tag::Chunks(slot)) {
            Ok(flow) => {
                if let Some(p) = self.pending[slot as usize].as_mut() {
                    p.flow = Some(flow);
                }
            }
            Err(_) => {
                self.pending[slot as usize] = None;
                self.pending_free.push(slot);
                self.q.push(self.now + self.detect, Ev::ChunksFailed { edge, inc, req });
            }
        }
    }
}
