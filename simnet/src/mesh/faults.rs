//! Faults: backhaul and LAN partitions, edge node crashes and restarts.

use super::*;

impl World<'_> {
    pub(super) fn set_backhaul(&mut self, site: u32, down: bool) {
        let count = &mut self.backhaul_down[site as usize];
        let was_down = *count > 0;
        if down {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        let is_down = *count > 0;
        if was_down == is_down {
            return;
        }
        let now = self.now;
        self.rollout_backhaul(site, is_down);
        for link in [self.topo.backhaul_down[site as usize], self.topo.backhaul_up[site as usize]] {
            for ended in self.net.set_up(now, link, !is_down) {
                self.flow_failed(ended);
            }
        }
        let members: Vec<u32> = (site * self.per_site..(site + 1) * self.per_site).collect();
        if is_down {
            for e in members {
                for p in self.adjacency[e as usize].clone() {
                    if self.site_of(p) != Some(site) {
                        self.q.push(now + self.detect, Ev::PeerDown { edge: e, peer: p });
                        if p < self.edges.len() as u32 {
                            self.q.push(now + self.detect, Ev::PeerDown { edge: p, peer: e });
                        }
                    }
                }
            }
        } else {
            self.reconnect_all();
        }
    }

    pub(super) fn set_lan_split(&mut self, site: u32, split: bool) {
        let count = &mut self.lan_split[site as usize];
        let was = *count > 0;
        if split {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        let is = *count > 0;
        if was == is {
            return;
        }
        if is {
            // In-flight transfers between site-mates die with the connection.
            let now = self.now;
            let doomed: Vec<FlowId> = self
                .pending
                .iter()
                .flatten()
                .filter(|p| {
                    self.site_of(p.server) == Some(site)
                        && self.edges[p.edge as usize].site == site
                        && p.server != p.edge
                })
                .filter_map(|p| p.flow)
                .collect();
            for f in doomed {
                if let Some(ended) = self.net.cancel(now, f) {
                    self.flow_failed(ended);
                }
            }
            for e in site * self.per_site..(site + 1) * self.per_site {
                for p in self.adjacency[e as usize].clone() {
                    if self.site_of(p) == Some(site) {
                        self.q.push(now + self.detect, Ev::PeerDown { edge: e, peer: p });
                    }
                }
            }
        } else {
            self.reconnect_all();
        }
    }

    /// Schedules reconnection of every dropped connection whose path is back.
    pub(super) fn reconnect_all(&mut self) {
        let back: Vec<(u32, u32)> = self.conn_down.iter().copied().filter(|(a, b)| self.reachable(*a, *b)).collect();
        for (a, b) in back {
            self.q.push(self.now + RECONNECT, Ev::PeerUp { edge: a, peer: b });
        }
    }

    pub(super) fn crash(&mut self, e: u32, restart: Option<Micros>) {
        let now = self.now;
        let Some(sched) = self.edges[e as usize].sched.take() else { return };
        let edge = &mut self.edges[e as usize];
        add_stats(&mut edge.stats_before, &sched.stats());
        edge.inc += 1;
        edge.timer_gen = edge.timer_gen.wrapping_add(1);
        edge.timer_at = Micros::MAX;
        let (site, slot) = (edge.site, edge.slot);
        // Transfers to and from the dead process stop.
        let mine: Vec<(u32, Option<FlowId>, bool)> = self
            .pending
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as u32, p)))
            .filter(|(_, p)| p.edge == e || p.server == e)
            .map(|(i, p)| (i, p.flow, p.edge == e))
            .collect();
        for (slot_i, flow, requester_died) in mine {
            let ended = flow.and_then(|f| self.net.cancel(now, f));
            if requester_died {
                self.pending[slot_i as usize] = None;
                self.pending_free.push(slot_i);
            } else if let Some(ended) = ended {
                self.flow_failed(ended);
            }
        }
        // Its devices' requests and queued sessions fail; their fetch plans go on with the
        // other edge node (or fail the download, and their engines retry).
        let per = self.sc.sites.devices_per_site as usize;
        for d in site as usize * per..(site as usize + 1) * per {
            let dev = &self.devices[d];
            if dev.downloading && dev.edge_slot as u32 == slot {
                self.request_failed(d as u32);
            }
        }
        let edge = &mut self.edges[e as usize];
        edge.sessions = 0;
        edge.queue.clear();
        edge.waiting.clear();
        self.conn_down.retain(|(a, _)| *a != e);
        for p in self.adjacency[e as usize].clone() {
            if p < self.edges.len() as u32 {
                self.q.push(now + self.detect, Ev::PeerDown { edge: p, peer: e });
            }
        }
        if let Some(after) = restart {
            self.q.push(now + after, Ev::Restart { edge: e });
        }
    }

    pub(super) fn restart(&mut self, e: u32) {
        if self.edges[e as usize].sched.is_some() {
            return;
        }
        self.boot_edge(e);
        let now = Instant(self.now);
        let my_id = self.edges[e as usize].id;
        let my_site = Self::site_id(self.edges[e as usize].site);
        for p in self.adjacency[e as usize].clone() {
            if !self.reachable(e, p) {
                self.conn_down.insert((e, p));
                continue;
            }
            let (pid, site, role) = (self.node_ids[p as usize], self.peer_site_id(p), self.role_of(p));
            if let Some(s) = self.edges[e as usize].sched.as_mut() {
                s.handle_peer_up(now, pid, site, role);
            }
            if p < self.edges.len() as u32 {
                // A peer that never noticed the crash sees the old connection close first.
                let noticed = self.conn_down.remove(&(p, e));
                if let Some(s) = self.edges[p as usize].sched.as_mut() {
                    if !noticed {
                        s.handle_peer_down(now, my_id);
                    }
                    s.handle_peer_up(now, my_id, my_site, PeerRole::Edge);
                    self.out.counters.scheduler_inputs += 2;
                }
                self.pump(p);
            }
        }
        let (rid, spec) = (self.rel.id, self.rel.spec.clone());
        if let Some(s) = self.edges[e as usize].sched.as_mut() {
            s.handle_release(now, rid, spec);
        }
        self.pump(e);
    }
}
