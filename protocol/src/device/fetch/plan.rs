//! [`FetchPlan`]: the state machine of one download (needs `alloc`). See the parent module
//! for the rules it follows.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::ops::Range;

use super::{busy_backoff, fits_batch, hedge_after, stalled_too_long, Batch, FetchConfig};
use crate::time::{Duration, Instant};

/// A connection, as numbered by [`FetchPlan::add_edge`] within the current round.
pub type ConnId = usize;

/// A request to send: these units (indices into the chunks the plan was built with) on
/// this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The connection to send it on.
    pub conn: ConnId,
    /// The chunks, as indices into the plan's chunk list.
    pub units: Batch,
    /// It is a second request for a batch still outstanding on another edge.
    pub hedge: bool,
}

/// What the driver does about an edge or a connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FetchEvent<E> {
    /// A batch of `bytes` stored bytes arrived from `edge` in `took`: record its throughput.
    Batch {
        /// The edge.
        edge: E,
        /// Stored bytes it sent.
        bytes: u64,
        /// How long the request took.
        took: Duration,
    },
    /// A batch outstanding much longer than the others was also asked of another edge.
    Hedged {
        /// The slow edge.
        slow: E,
        /// The edge asked too.
        to: E,
        /// Chunks asked again.
        chunks: usize,
        /// How long the batch had been outstanding.
        waited: Duration,
    },
    /// Stop using this connection (its edge was stopped, or its request failed).
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// `edge` says it does not have `missing` chunks: demote it; it is stopped this round.
    LacksChunks {
        /// The edge.
        edge: E,
        /// Chunks it does not have.
        missing: usize,
    },
    /// `edge` answered "busy" for everything for longer than the stall limit: count a
    /// failure; it is stopped this round.
    Stalled {
        /// The edge.
        edge: E,
    },
    /// `edge` served a chunk that failed verification (or garbage): penalize it; it is
    /// stopped this round.
    Lied {
        /// The edge.
        edge: E,
    },
    /// A request to `edge` failed (timeout, connection): count a failure.
    Failed {
        /// The edge.
        edge: E,
    },
    /// The round ended with a batch of `edge`'s still out that another edge delivered: it
    /// was much slower than the others; demote it.
    TooSlow {
        /// The edge.
        edge: E,
    },
}

/// One unique chunk's state in one byte: [`DELIVERED`], and in the low bits how many
/// batches in flight hold it (an original and a hedge: at most 2).
type Unit = u8;
/// The chunk arrived.
const DELIVERED: u8 = 0x80;
/// The holder count's bits.
const HOLDERS: u8 = 0x7f;

#[derive(Debug, Clone)]
struct InFlight {
    units: Batch,
    sent: Instant,
    /// Its chunks were also asked of another edge.
    hedged: bool,
    /// It is itself such a second request.
    copy: bool,
}

#[derive(Debug, Clone)]
struct Conn<E> {
    edge: E,
    live: bool,
    flight: Option<InFlight>,
    /// After a "busy" answer: not handed a batch before this.
    rest_until: Option<Instant>,
}

/// One download's plan (see the module doc of `protocol::device::fetch`). `E` names an edge
/// the way the driver does (an address, an index); `L` holds the units' stored lengths (a
/// `Vec`, or an `Arc<[u32]>` many plans share). Per chunk the plan keeps one byte once its
/// first batch went out, plus four for each chunk asked again.
#[derive(Debug, Clone)]
pub struct FetchPlan<E, L = Vec<u32>> {
    config: FetchConfig,
    stored_lens: L,
    /// One [`Unit`] per chunk, allocated when the first batch goes out (empty: every unit
    /// 0). A download queued for a session holds no kilobyte per chunk list: in fleet-1m
    /// most of the fleet starts its download in the first minute and waits its turn.
    units: Vec<Unit>,
    /// Units never handed out are `fresh..`, in order; they come before `requeued`.
    fresh: u32,
    requeued: VecDeque<u32>,
    remaining: usize,
    rounds_started: u32,
    conns: Vec<Conn<E>>,
    /// Idle connections, used from the end (a stack: the last to answer goes first).
    idle: Vec<ConnId>,
    /// A transmit went out this round (connections added later go on top of the stack).
    dispatching: bool,
    slowest_batch: Option<Duration>,
    busy_answers: u32,
    last_delivery: Instant,
    events: VecDeque<FetchEvent<E>>,
}

impl<E: Copy + PartialEq, L: AsRef<[u32]>> FetchPlan<E, L> {
    /// A plan for the unique chunks whose stored lengths `stored_lens` gives, in manifest
    /// order; unit `i` is the `i`-th of them.
    pub fn new(config: FetchConfig, stored_lens: L) -> FetchPlan<E, L> {
        FetchPlan {
            config,
            remaining: stored_lens.as_ref().len(),
            units: Vec::new(),
            stored_lens,
            fresh: 0,
            requeued: VecDeque::new(),
            rounds_started: 0,
            conns: Vec::new(),
            idle: Vec::new(),
            dispatching: false,
            slowest_batch: None,
            busy_answers: 0,
            last_delivery: Instant(0),
            events: VecDeque::new(),
        }
    }

    /// Back to the plan [`FetchPlan::new`] builds for the same chunks and configuration,
    /// keeping this one's small buffers (the per-chunk list is given back): simnet starts a
    /// million downloads and hands each the plan of one that finished.
    pub fn reset(&mut self) {
        // Every field named: a field added later must be reset here too, or this fails to build.
        let FetchPlan {
            config: _,
            stored_lens,
            units,
            fresh,
            requeued,
            remaining,
            rounds_started,
            conns,
            idle,
            dispatching,
            slowest_batch,
            busy_answers,
            last_delivery,
            events,
        } = self;
        // Given back, not kept: the next download may wait long before its first batch.
        *units = Vec::new();
        *remaining = stored_lens.as_ref().len();
        *fresh = 0;
        requeued.clear();
        *rounds_started = 0;
        conns.clear();
        idle.clear();
        *dispatching = false;
        *slowest_batch = None;
        *busy_answers = 0;
        *last_delivery = Instant(0);
        events.clear();
    }

    /// The configuration.
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Chunks not delivered yet.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Every chunk arrived.
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    /// Whether `unit` arrived.
    pub fn is_delivered(&self, unit: u32) -> bool {
        self.unit(unit) & DELIVERED != 0
    }

    /// The batch outstanding on `conn`, if any: what an answer in full
    /// ([`Self::handle_done_in_full`]) says arrived.
    pub fn in_flight(&self, conn: ConnId) -> Option<&Batch> {
        self.conns.get(conn)?.flight.as_ref().map(|f| &f.units)
    }

    fn chunk_count(&self) -> usize {
        self.stored_lens.as_ref().len()
    }

    /// `unit`'s state (0 before the list is allocated, and past its end).
    fn unit(&self, unit: u32) -> Unit {
        self.units.get(unit as usize).copied().unwrap_or(0)
    }

    /// Allocates the per-chunk list before its first change.
    fn allocate_units(&mut self) {
        if self.units.is_empty() {
            self.units.resize(self.chunk_count(), 0);
        }
    }

    /// Starts a round at `now` with no connections; `false` if the download is complete or
    /// every round was used (the download failed).
    pub fn start_round(&mut self, now: Instant) -> bool {
        if self.is_complete() || self.rounds_started >= self.config.rounds {
            return false;
        }
        self.rounds_started += 1;
        self.conns.clear();
        self.idle.clear();
        self.dispatching = false;
        self.slowest_batch = None;
        self.busy_answers = 0;
        self.last_delivery = now;
        true
    }

    /// A new download attempt over the same plan (the install engine's retry after a failed
    /// download): what arrived stays, the rounds start over. The Linux agent builds a new
    /// plan from its progress file instead, which comes to the same.
    pub fn new_attempt(&mut self) {
        self.rounds_started = 0;
    }

    /// Whether the round could use another edge: fewer than `parallel_edges` have a
    /// connection still in use.
    pub fn wants_edge(&self) -> bool {
        self.live_edges() < self.config.parallel_edges
    }

    /// `connections` new connections to `edge`; returns their ids. Before the first transmit
    /// of a round edges are used in the order they were added (best first); an edge added
    /// later (replacing a stopped one) is used at once.
    pub fn add_edge(&mut self, edge: E, connections: usize) -> Range<ConnId> {
        let first = self.conns.len();
        for _ in 0..connections {
            let id = self.conns.len();
            self.conns.push(Conn { edge, live: true, flight: None, rest_until: None });
            if self.dispatching {
                self.idle.push(id);
            } else {
                self.idle.insert(0, id);
            }
        }
        first..self.conns.len()
    }

    /// The next request to send, if any (see the module doc for the rules).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        loop {
            if !self.queue_is_empty() {
                if let Some(transmit) = self.dispatch(now) {
                    return Some(transmit);
                }
                return None;
            }
            let (at, slow, to) = self.next_hedge(now)?;
            if at > now {
                return None;
            }
            let flight = self.conns[slow].flight.as_mut()?;
            flight.hedged = true;
            let waited = now.saturating_since(flight.sent);
            let units: Batch = flight
                .units
                .iter()
                .filter(|u| self.units.get(*u as usize).is_none_or(|unit| unit & DELIVERED == 0))
                .collect();
            self.idle.retain(|&i| i != to);
            if units.is_empty() {
                self.idle.push(to);
                continue;
            }
            self.hold(&units);
            let (slow_edge, to_edge) = (self.conns[slow].edge, self.conns[to].edge);
            self.events.push_back(FetchEvent::Hedged { slow: slow_edge, to: to_edge, chunks: units.len(), waited });
            self.conns[to].flight = Some(InFlight { units: units.clone(), sent: now, hedged: true, copy: true });
            return Some(Transmit { conn: to, units, hedge: true });
        }
    }

    /// Hands the next batch from the queue to the idle connection used first.
    fn dispatch(&mut self, now: Instant) -> Option<Transmit> {
        // The stack's top-most live connection not resting; dead ones are dropped.
        self.idle.retain(|&i| self.conns[i].live);
        let pos = self.idle.iter().rposition(|&i| self.conns[i].rest_until.is_none_or(|t| t <= now))?;
        let conn = self.idle.remove(pos);
        let units = self.take_batch();
        if units.is_empty() {
            self.idle.push(conn);
            return None;
        }
        self.hold(&units);
        self.dispatching = true;
        let c = &mut self.conns[conn];
        c.rest_until = None;
        c.flight = Some(InFlight { units: units.clone(), sent: now, hedged: false, copy: false });
        Some(Transmit { conn, units, hedge: false })
    }

    fn queue_is_empty(&self) -> bool {
        self.fresh as usize >= self.chunk_count() && self.requeued.is_empty()
    }

    /// The unit at the front of the queue.
    fn queue_front(&self) -> Option<u32> {
        if (self.fresh as usize) < self.chunk_count() {
            Some(self.fresh)
        } else {
            self.requeued.front().copied()
        }
    }

    fn queue_pop(&mut self) {
        if (self.fresh as usize) < self.chunk_count() {
            self.fresh += 1;
        } else {
            self.requeued.pop_front();
        }
    }

    /// The next batch from the queue, skipping chunks delivered meanwhile (by a hedge, or
    /// reported by a driver unasked).
    fn take_batch(&mut self) -> Batch {
        let (mut batch, mut bytes) = self.take_fresh_run();
        while let Some(next) = self.queue_front() {
            if self.unit(next) & DELIVERED != 0 {
                self.queue_pop();
                continue;
            }
            let stored_len = self.stored_lens.as_ref().get(next as usize).copied().unwrap_or(0);
            if !fits_batch(&self.config, batch.len(), bytes, stored_len) {
                break;
            }
            bytes += stored_len as u64;
            batch.push(next);
            self.queue_pop();
        }
        batch
    }

    /// The longest run at the front of the units never handed out that fits a batch, taken
    /// from the queue, and its stored bytes. A batch is nearly always just that run, and
    /// finding it walks the stored lengths alone instead of the queue unit by unit;
    /// `take_batch` goes on from where it stops exactly as it would have.
    fn take_fresh_run(&mut self) -> (Batch, u64) {
        let start = self.fresh as usize;
        let lens = self.stored_lens.as_ref().get(start..).unwrap_or(&[]);
        let (mut n, mut bytes) = (0usize, 0u64);
        for &len in lens {
            if !fits_batch(&self.config, n, bytes, len) {
                break;
            }
            bytes += len as u64;
            n += 1;
        }
        // A unit never handed out has arrived only if a driver reported one it had not been
        // asked for: the run stops before it, and `take_batch` skips it.
        if let Some(first) = self.units.get(start..start + n).and_then(|s| s.iter().position(|u| u & DELIVERED != 0)) {
            n = first;
            bytes = lens[..n].iter().map(|&len| len as u64).sum();
        }
        self.fresh += n as u32;
        (Batch::of_run(start as u32..self.fresh), bytes)
    }

    fn hold(&mut self, units: &Batch) {
        self.allocate_units();
        self.each_unit(units, |unit| *unit = (*unit & DELIVERED) | ((*unit & HOLDERS) + 1).min(HOLDERS));
    }

    /// Applies `change` to the state of each of `units` the list has (one pass over the
    /// run's bytes, then the rest one by one).
    fn each_unit(&mut self, units: &Batch, mut change: impl FnMut(&mut Unit)) {
        let run = units.run();
        let (start, end) = (run.start as usize, (run.end as usize).min(self.units.len()));
        if let Some(states) = self.units.get_mut(start..end.max(start)) {
            states.iter_mut().for_each(&mut change);
        }
        for u in units.rest() {
            if let Some(unit) = self.units.get_mut(*u as usize) {
                change(unit);
            }
        }
    }

    /// The earliest moment a batch becomes due for hedging, its connection and an idle
    /// connection to another edge to ask: `None` if no batch can be hedged.
    fn next_hedge(&self, now: Instant) -> Option<(Instant, ConnId, ConnId)> {
        let after = hedge_after(self.config.request_timeout, self.slowest_batch);
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.flight.as_ref().map(|f| (i, c.edge, f)))
            .filter(|(_, _, f)| !f.hedged && !f.copy)
            .filter_map(|(slow, edge, f)| {
                let to = self.idle.iter().rev().copied().find(|&i| {
                    let c = &self.conns[i];
                    c.live && c.edge != edge && c.flight.is_none() && c.rest_until.is_none_or(|t| t <= now)
                })?;
                Some((f.sent + after, slow, to))
            })
            .min_by_key(|(at, _, _)| *at)
    }

    /// When the driver must call `poll_transmit` again even if no answer arrived: a batch
    /// due for hedging, or a resting connection that may take a batch.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let hedge = if self.queue_is_empty() { self.next_hedge(now).map(|(at, _, _)| at) } else { None };
        let rest = self
            .idle
            .iter()
            .filter_map(|&i| self.conns[i].rest_until.filter(|_| self.conns[i].live && !self.queue_is_empty()))
            .min();
        [hedge, rest].into_iter().flatten().min()
    }

    /// The next thing the driver must do about an edge or connection.
    pub fn poll_event(&mut self) -> Option<FetchEvent<E>> {
        self.events.pop_front()
    }

    /// The round is over: every chunk arrived, or nothing is in flight after the driver
    /// took every transmit.
    pub fn round_over(&self) -> bool {
        self.is_complete() || self.conns.iter().all(|c| c.flight.is_none())
    }

    /// Ends the round: an edge whose original batch is still out was much slower than the
    /// others ([`FetchEvent::TooSlow`]), and every connection closes.
    pub fn end_round(&mut self) {
        let mut slow: Vec<E> = Vec::new();
        for conn in 0..self.conns.len() {
            let Some(flight) = self.conns[conn].flight.take() else { continue };
            let edge = self.conns[conn].edge;
            if !flight.copy && !slow.contains(&edge) {
                slow.push(edge);
            }
            self.release(&flight.units);
            self.requeue(&flight.units);
        }
        for edge in slow {
            self.events.push_back(FetchEvent::TooSlow { edge });
        }
        for conn in 0..self.conns.len() {
            self.conns[conn].live = false;
        }
        self.idle.clear();
    }

    /// `conn`'s batch was answered: `delivered` arrived verified (and are written), the edge
    /// said "not found" for `missing` chunks, the rest were "busy"; `bytes` stored bytes in
    /// `took`.
    pub fn handle_done(
        &mut self,
        now: Instant,
        conn: ConnId,
        delivered: &[u32],
        missing: usize,
        bytes: u64,
        took: Duration,
    ) {
        self.answered(now, conn, Some(delivered), missing, bytes, took);
    }

    /// `conn`'s batch was answered in full: every chunk asked for arrived verified (and is
    /// written); `bytes` stored bytes in `took`. The same as [`Self::handle_done`] with the
    /// batch's own units, without the driver keeping or the plan comparing a list.
    pub fn handle_done_in_full(&mut self, now: Instant, conn: ConnId, bytes: u64, took: Duration) {
        self.answered(now, conn, None, 0, bytes, took);
    }

    /// [`Self::handle_done`]; `delivered` is `None` when every unit asked for arrived.
    fn answered(
        &mut self,
        now: Instant,
        conn: ConnId,
        delivered: Option<&[u32]>,
        missing: usize,
        bytes: u64,
        took: Duration,
    ) {
        let Some(flight) = self.conns.get_mut(conn).and_then(|c| c.flight.take()) else { return };
        let edge = self.conns[conn].edge;
        let in_full = delivered.is_none_or(|units| flight.units.equals(units));
        let any_delivered = match delivered {
            Some(units) => !units.is_empty(),
            None => !flight.units.is_empty(),
        };
        let stalled = !any_delivered && !flight.units.is_empty();
        if any_delivered {
            self.last_delivery = now;
            self.slowest_batch = Some(self.slowest_batch.map_or(took, |s| s.max(took)));
        }
        match delivered.filter(|_| !in_full) {
            // The usual answer, everything asked for: one pass instead of release, deliver
            // and requeue (nothing delivered goes back in the queue).
            None => self.release_delivered(&flight.units),
            Some(units) => {
                self.release(&flight.units);
                self.deliver(units);
                self.requeue(&flight.units);
            }
        }
        self.events.push_back(FetchEvent::Batch { edge, bytes, took });
        if missing > 0 {
            self.events.push_back(FetchEvent::LacksChunks { edge, missing });
            self.stop_edge(edge);
        } else if stalled && stalled_too_long(&self.config, self.last_delivery, now) {
            self.events.push_back(FetchEvent::Stalled { edge });
            self.stop_edge(edge);
        } else if stalled {
            // Everything was busy (the edge is still fetching): this connection rests a
            // little, and any other idle connection takes the batch first — otherwise this
            // one, last to go idle, would get the same batch back at once.
            self.busy_answers += 1;
            self.conns[conn].rest_until = Some(now + busy_backoff(self.busy_answers));
            self.idle.insert(0, conn);
        } else {
            self.busy_answers = 0;
            self.idle.push(conn);
        }
    }

    /// `conn`'s edge sent a chunk that failed verification (or garbage); `delivered` did
    /// verify and are written.
    pub fn handle_lied(&mut self, conn: ConnId, delivered: &[u32]) {
        let Some(flight) = self.take_flight(conn) else { return };
        let edge = self.conns[conn].edge;
        self.deliver(delivered);
        self.requeue(&flight.units);
        self.events.push_back(FetchEvent::Lied { edge });
        self.stop_edge(edge);
    }

    /// `conn`'s request failed (timeout, connection): that connection stops.
    pub fn handle_failed(&mut self, conn: ConnId) {
        let Some(flight) = self.take_flight(conn) else { return };
        self.requeue(&flight.units);
        self.events.push_back(FetchEvent::Failed { edge: self.conns[conn].edge });
        self.close(conn);
    }

    /// The driver could not hand `conn` its transmit (the connection is gone): the batch
    /// goes back to the queue and the connection stops.
    pub fn handle_closed(&mut self, conn: ConnId) {
        if let Some(flight) = self.take_flight(conn) {
            self.requeue(&flight.units);
        }
        if let Some(c) = self.conns.get_mut(conn) {
            c.live = false;
        }
    }

    fn take_flight(&mut self, conn: ConnId) -> Option<InFlight> {
        let flight = self.conns.get_mut(conn)?.flight.take()?;
        self.release(&flight.units);
        Some(flight)
    }

    fn release(&mut self, units: &Batch) {
        self.each_unit(units, |unit| *unit = (*unit & DELIVERED) | (*unit & HOLDERS).saturating_sub(1));
    }

    /// [`Self::release`] then [`Self::deliver`] of the same units.
    fn release_delivered(&mut self, units: &Batch) {
        let mut newly = 0;
        self.each_unit(units, |unit| {
            newly += usize::from(*unit & DELIVERED == 0);
            *unit = DELIVERED | (*unit & HOLDERS).saturating_sub(1);
        });
        self.remaining -= newly;
    }

    /// Puts `units` back in the queue, except chunks delivered or still asked of another
    /// edge (a hedge).
    fn requeue(&mut self, units: &Batch) {
        for u in units.iter() {
            if (u as usize) < self.chunk_count() && self.unit(u) == 0 {
                self.requeued.push_back(u);
            }
        }
    }

    fn deliver(&mut self, delivered: &[u32]) {
        self.allocate_units();
        for u in delivered {
            if let Some(unit) = self.units.get_mut(*u as usize) {
                if *unit & DELIVERED == 0 {
                    *unit |= DELIVERED;
                    self.remaining -= 1;
                }
            }
        }
    }

    /// Stops every connection to `edge` for the round.
    fn stop_edge(&mut self, edge: E) {
        for conn in 0..self.conns.len() {
            if self.conns[conn].edge == edge && self.conns[conn].live {
                self.close(conn);
            }
        }
    }

    fn close(&mut self, conn: ConnId) {
        self.conns[conn].live = false;
        self.events.push_back(FetchEvent::Close { conn });
    }

    fn live_edges(&self) -> usize {
        let live = |i: usize| self.conns[i].live;
        (0..self.conns.len())
            .filter(|&i| live(i) && !(0..i).any(|j| live(j) && self.conns[j].edge == self.conns[i].edge))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const MS: u64 = 1_000;

    fn at(ms: u64) -> Instant {
        Instant(ms * MS)
    }

    fn plan(chunks: usize, parallel_edges: usize) -> FetchPlan<char> {
        let config = FetchConfig {
            batch_chunks: 2,
            batch_bytes: 1 << 20,
            ..FetchConfig::new(parallel_edges, Duration::from_secs(10))
        };
        FetchPlan::new(config, vec![1000; chunks])
    }

    fn events(p: &mut FetchPlan<char>) -> Vec<FetchEvent<char>> {
        core::iter::from_fn(|| p.poll_event()).collect()
    }

    fn transmits(p: &mut FetchPlan<char>, now: Instant) -> Vec<Transmit> {
        core::iter::from_fn(|| p.poll_transmit(now)).collect()
    }

    /// A plan used mid-download (batches out, some delivered, a failure, a hedge due) and then
    /// reset is the plan `new` builds, and runs the same afterwards.
    #[test]
    fn a_reset_plan_is_a_new_plan() {
        let mut used = plan(7, 2);
        used.start_round(at(0));
        used.add_edge('a', 2);
        used.add_edge('b', 1);
        let sent = transmits(&mut used, at(0));
        used.handle_done(at(5), sent[0].conn, &sent[0].units.to_vec(), 0, 2000, Duration::from_millis(5));
        used.handle_failed(sent[1].conn);
        let _ = transmits(&mut used, at(6));
        let _ = events(&mut used);
        used.handle_done(at(7), sent[2].conn, &[], 1, 0, Duration::from_millis(1));
        used.reset();
        let fresh = plan(7, 2);
        assert_eq!(format!("{used:?}"), format!("{fresh:?}"));
        for p in [&mut used, &mut fresh.clone()] {
            assert!(p.start_round(at(100)));
            p.add_edge('a', 1);
            assert_eq!(
                transmits(p, at(100)).into_iter().map(|t| t.units.to_vec()).collect::<Vec<_>>(),
                vec![vec![0, 1]]
            );
        }
    }

    #[test]
    fn batches_go_to_the_best_edge_first_in_manifest_order() {
        let mut p = plan(5, 2);
        assert!(p.start_round(at(0)));
        assert_eq!(p.add_edge('a', 2), 0..2);
        assert!(p.wants_edge());
        assert_eq!(p.add_edge('b', 1), 2..3);
        assert!(!p.wants_edge());
        let t = transmits(&mut p, at(0));
        let sent: Vec<(ConnId, Vec<u32>)> = t.into_iter().map(|t| (t.conn, t.units.to_vec())).collect();
        assert_eq!(sent, vec![(0, vec![0, 1]), (1, vec![2, 3]), (2, vec![4])]);
        // A connection that answered is reused first.
        p.handle_done(at(10), 2, &[4], 0, 1000, Duration::from_millis(10));
        p.handle_done(at(11), 0, &[0, 1], 0, 2000, Duration::from_millis(11));
        assert!(!p.round_over());
        p.handle_done(at(12), 1, &[2, 3], 0, 2000, Duration::from_millis(12));
        assert!(p.round_over() && p.is_complete());
        assert!(!p.start_round(at(13)), "a complete download starts no round");
    }

    #[test]
    fn an_edge_answering_busy_rests_with_growing_backoff_and_others_go_first() {
        let mut p = plan(2, 2);
        p.start_round(at(0));
        p.add_edge('a', 1);
        let t = transmits(&mut p, at(0));
        assert_eq!(t.len(), 1);
        // Busy for everything: the connection rests 20 ms, then 40 ms.
        p.handle_done(at(5), 0, &[], 0, 0, Duration::from_millis(5));
        assert_eq!(p.poll_transmit(at(5)), None, "a resting connection was handed the batch back at once");
        assert_eq!(p.poll_timeout(at(5)), Some(at(25)));
        assert_eq!(p.poll_transmit(at(24)), None);
        let again = p.poll_transmit(at(25)).expect("rested connection takes the batch");
        assert_eq!(again.units.to_vec(), vec![0, 1]);
        p.handle_done(at(30), 0, &[], 0, 0, Duration::from_millis(5));
        assert_eq!(p.poll_timeout(at(30)), Some(at(70)), "the second busy answer rests 40 ms");
        // Another edge's idle connection takes the batch meanwhile.
        p.add_edge('b', 1);
        let t = p.poll_transmit(at(31)).expect("the other edge takes it first");
        assert_eq!(t.conn, 1);
        // A delivery resets the backoff.
        p.handle_done(at(40), 1, &[0, 1], 0, 2000, Duration::from_millis(9));
        assert!(p.is_complete());
    }

    #[test]
    fn an_edge_busy_past_the_stall_limit_is_given_up_on() {
        let mut p = plan(2, 1);
        p.start_round(at(0));
        p.add_edge('a', 1);
        let t = transmits(&mut p, at(0));
        assert_eq!(t.len(), 1);
        let mut now = 0;
        let mut retries = 0;
        // Busy answers for 120 s: rested and retried, never stopped.
        while now <= 120_000 {
            p.handle_done(at(now), 0, &[], 0, 0, Duration::from_millis(1));
            assert!(events(&mut p).iter().all(|e| matches!(e, FetchEvent::Batch { .. })), "stopped at {now} ms");
            now = p.poll_timeout(at(now)).map(|t| t.0 / MS).expect("a resting connection wakes up");
            let again = p.poll_transmit(at(now)).expect("retried after resting");
            assert_eq!((again.conn, again.units.to_vec()), (0, vec![0, 1]));
            retries += 1;
            now += 1;
        }
        assert!(retries > 200, "backoff capped at 500 ms: {retries} retries in 120 s");
        // One more busy answer past the limit: the edge is stopped and its connection closes.
        p.handle_done(at(now), 0, &[], 0, 0, Duration::from_millis(1));
        let ev = events(&mut p);
        assert!(
            ev.contains(&FetchEvent::Stalled { edge: 'a' }) && ev.contains(&FetchEvent::Close { conn: 0 }),
            "{ev:?}"
        );
        assert!(p.wants_edge());
        assert_eq!(p.poll_transmit(at(now + 1_000)), None);
        assert!(p.round_over());
    }

    #[test]
    fn a_slow_batch_is_hedged_to_another_edge_and_the_slow_edge_demoted() {
        let mut p = plan(4, 2);
        p.start_round(at(0));
        p.add_edge('a', 1);
        p.add_edge('b', 1);
        let t = transmits(&mut p, at(0));
        assert_eq!((t[0].conn, t[1].conn), (0, 1));
        // b answers in 100 ms; a trickles. Hedge after max(4 × 100 ms, 500 ms) = 500 ms.
        p.handle_done(at(100), 1, &[2, 3], 0, 2000, Duration::from_millis(100));
        assert_eq!(p.poll_transmit(at(100)), None);
        assert_eq!(p.poll_timeout(at(100)), Some(at(500)));
        assert_eq!(p.poll_transmit(at(499)), None, "hedged too early");
        let hedge = p.poll_transmit(at(500)).expect("hedge due");
        assert_eq!(hedge, Transmit { conn: 1, units: Batch::from_iter([0, 1]), hedge: true });
        assert!(events(&mut p).iter().any(|e| matches!(e, FetchEvent::Hedged { slow: 'a', to: 'b', chunks: 2, .. })));
        assert_eq!(p.poll_transmit(at(10_000)), None, "a batch is hedged once");
        // The copy wins; the round ends with the original out and its edge too slow.
        p.handle_done(at(600), 1, &[0, 1], 0, 2000, Duration::from_millis(100));
        assert!(p.round_over() && p.is_complete());
        p.end_round();
        let ev = events(&mut p);
        assert!(ev.contains(&FetchEvent::TooSlow { edge: 'a' }) && !ev.contains(&FetchEvent::TooSlow { edge: 'b' }));
        // A late answer from the slow edge changes nothing.
        p.handle_done(at(700), 0, &[0, 1], 0, 2000, Duration::from_millis(700));
        assert_eq!(p.remaining(), 0);
    }

    proptest::proptest! {
        /// Answering a batch with `handle_done_in_full` is answering it with every unit it
        /// asked for, whatever came before: partial answers, failures and "busy" leave units
        /// asked again, so later batches mix a run with single units, and slow answers hedge.
        #[test]
        fn an_answer_in_full_is_the_same_as_naming_every_unit(
            steps in proptest::collection::vec((0u8..4, 0usize..8, 0u64..900), 1..80),
        ) {
            let (mut listed, mut in_full) = (plan(9, 2), plan(9, 2));
            for p in [&mut listed, &mut in_full] {
                p.start_round(at(0));
                p.add_edge('a', 2);
                p.add_edge('b', 1);
            }
            let (mut out, mut now) = (Vec::<Transmit>::new(), 0);
            for (action, pick, step) in steps {
                now += step;
                let sent = transmits(&mut listed, at(now));
                proptest::prop_assert_eq!(&sent, &transmits(&mut in_full, at(now)));
                out.extend(sent);
                if out.is_empty() {
                    continue;
                }
                let t = out.remove(pick % out.len());
                let units = t.units.to_vec();
                let (took, bytes) = (Duration::from_millis(step), 1000 * units.len() as u64);
                let answered = |p: &mut FetchPlan<char>, delivered: &[u32]| {
                    p.handle_done(at(now), t.conn, delivered, 0, 1000 * delivered.len() as u64, took)
                };
                match action {
                    0 => {
                        listed.handle_done(at(now), t.conn, &units, 0, bytes, took);
                        in_full.handle_done_in_full(at(now), t.conn, bytes, took);
                    }
                    1 => [&mut listed, &mut in_full].into_iter().for_each(|p| answered(p, &units[..units.len() / 2])),
                    2 => [&mut listed, &mut in_full].into_iter().for_each(|p| p.handle_failed(t.conn)),
                    _ => [&mut listed, &mut in_full].into_iter().for_each(|p| answered(p, &[])),
                }
                proptest::prop_assert!(action != 0 || in_full.in_flight(t.conn).is_none());
                proptest::prop_assert_eq!(events(&mut listed), events(&mut in_full));
                proptest::prop_assert_eq!(listed.remaining(), in_full.remaining());
                proptest::prop_assert_eq!(listed.poll_timeout(at(now)), in_full.poll_timeout(at(now)));
            }
        }
    }

    /// The unit-by-unit walk `take_batch` made before the fresh run was found from the
    /// stored lengths alone: the model the plan's batches are checked against.
    fn take_batch_unit_by_unit(p: &mut FetchPlan<char>) -> Vec<u32> {
        let (mut batch, mut bytes) = (Vec::new(), 0u64);
        while let Some(next) = p.queue_front() {
            if p.unit(next) & DELIVERED != 0 {
                p.queue_pop();
                continue;
            }
            let stored_len = p.stored_lens.get(next as usize).copied().unwrap_or(0);
            if !fits_batch(&p.config, batch.len(), bytes, stored_len) {
                break;
            }
            bytes += stored_len as u64;
            batch.push(next);
            p.queue_pop();
        }
        batch
    }

    proptest::proptest! {
        /// Every batch a plan hands out is the one the unit-by-unit walk takes from the same
        /// state, and leaves the queue as it would: uneven chunk lengths, batches cut by bytes
        /// or by count, partial answers and failures putting chunks back, and drivers reporting
        /// chunks they were never asked for (at the queue's front or further on).
        #[test]
        fn batches_are_the_unit_by_unit_walks(
            lens in proptest::collection::vec(1u32..3000, 1..40),
            batch_chunks in 1usize..6,
            batch_bytes in 1000u64..9000,
            steps in proptest::collection::vec((0u8..4, 0usize..8, 0u32..48), 1..60),
        ) {
            let config = FetchConfig { batch_chunks, batch_bytes, ..FetchConfig::new(2, Duration::from_secs(10)) };
            let count = lens.len() as u32;
            let mut p: FetchPlan<char> = FetchPlan::new(config, lens);
            p.start_round(at(0));
            p.add_edge('a', 2);
            p.add_edge('b', 1);
            let mut out: Vec<Transmit> = Vec::new();
            for (i, (action, pick, unasked)) in steps.into_iter().enumerate() {
                let now = at(i as u64);
                loop {
                    let mut model = p.clone();
                    let Some(t) = p.poll_transmit(now) else { break };
                    if !t.hedge {
                        proptest::prop_assert_eq!(t.units.to_vec(), take_batch_unit_by_unit(&mut model));
                        proptest::prop_assert_eq!((p.fresh, &p.requeued), (model.fresh, &model.requeued));
                    }
                    out.push(t);
                }
                if out.is_empty() {
                    continue;
                }
                let t = out.remove(pick % out.len());
                let mut delivered = t.units.to_vec();
                match action {
                    0 => {}
                    1 => delivered.truncate(delivered.len() / 2),
                    2 => {
                        p.handle_failed(t.conn);
                        continue;
                    }
                    // A chunk it was not asked for, often one never handed out.
                    _ => delivered.push(unasked % count),
                }
                p.handle_done(now, t.conn, &delivered, 0, 0, Duration::from_millis(1));
            }
        }
    }

    /// A driver that reports a chunk it was not asked for (it verified, so it is written):
    /// the chunk is not asked for again, and the batch around it goes on in manifest order.
    #[test]
    fn a_chunk_that_arrived_unasked_is_left_out_of_later_batches() {
        let mut p = plan(6, 1);
        p.start_round(at(0));
        p.add_edge('a', 1);
        let first = p.poll_transmit(at(0)).expect("a batch");
        assert_eq!(first.units.to_vec(), vec![0, 1]);
        p.handle_done(at(1), first.conn, &[0, 1, 3], 0, 3000, Duration::from_millis(1));
        let second = p.poll_transmit(at(1)).expect("another batch");
        assert_eq!((second.units.run(), second.units.rest()), (2..3, &[4][..]));
        assert_eq!(p.remaining(), 3);
    }

    #[test]
    fn with_nothing_completed_a_batch_is_hedged_at_half_the_request_timeout() {
        let mut p = plan(1, 2);
        p.start_round(at(0));
        p.add_edge('a', 1);
        assert_eq!(transmits(&mut p, at(0)).len(), 1);
        p.add_edge('b', 1);
        assert_eq!(p.poll_timeout(at(0)), Some(at(5_000)));
        assert_eq!(p.poll_transmit(at(4_999)), None);
        assert_eq!(p.poll_transmit(at(5_000)).map(|t| t.conn), Some(1));
    }

    #[test]
    fn a_liar_is_stopped_and_its_unverified_chunks_go_elsewhere() {
        let mut p = plan(4, 2);
        p.start_round(at(0));
        p.add_edge('a', 1);
        p.add_edge('b', 1);
        transmits(&mut p, at(0));
        p.handle_lied(0, &[0]);
        let ev = events(&mut p);
        assert!(ev.contains(&FetchEvent::Lied { edge: 'a' }) && ev.contains(&FetchEvent::Close { conn: 0 }));
        p.handle_done(at(5), 1, &[2, 3], 0, 2000, Duration::from_millis(5));
        let t = p.poll_transmit(at(5)).expect("the liar's chunk goes to b");
        assert_eq!((t.conn, t.units.to_vec()), (1, vec![1]));
        p.handle_done(at(9), 1, &[1], 0, 1000, Duration::from_millis(4));
        assert!(p.is_complete());
    }

    #[test]
    fn an_edge_lacking_chunks_is_stopped_and_rounds_run_out() {
        let mut p = plan(2, 1);
        for round in 0..3 {
            assert!(p.start_round(at(round)), "round {round}");
            p.add_edge('a', 2);
            let t = transmits(&mut p, at(round));
            p.handle_done(at(round), t[0].conn, &[], 2, 0, Duration::from_millis(1));
            let ev = events(&mut p);
            assert!(ev.contains(&FetchEvent::LacksChunks { edge: 'a', missing: 2 }), "{ev:?}");
            assert_eq!(p.poll_transmit(at(round)), None);
            assert!(p.round_over());
            p.end_round();
        }
        assert!(!p.start_round(at(10)), "a fourth round");
        assert_eq!(p.remaining(), 2);
        p.new_attempt();
        assert!(p.start_round(at(11)), "a new attempt has its rounds again");
    }
}
