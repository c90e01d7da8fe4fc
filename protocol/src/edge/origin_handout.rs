//! The origin's side of keeping its egress near one copy per release: it hands each chunk
//! out to one site at a time and answers everyone else `Busy`, so the other sites take it
//! from each other over the WAN (BitTorrent's super-seeding, at the granularity of chunks).
//!
//! Without this, every site's edge node asks the origin for its share at the same moment,
//! nobody holds anything yet, and the origin sends a copy per site: the publisher pays for
//! the whole fleet's bytes although the mesh could have carried all but one copy of them.
//!
//! Rules, per chunk (`window` long):
//! - the first `copies` distinct requesters in a window are served; a requester that was
//!   served in the window is served again (its transfer failed: a retry, not a new copy);
//! - everyone else gets `Busy` until the window ends. A `Busy` costs an edge node nothing
//!   but a wait: it looks for the chunk at other sites' edge nodes and asks again later;
//! - after the window the next requester opens a new window (liveness first: the sites that
//!   took the chunk may have gone offline), except that when others were kept waiting, the
//!   requesters served in the window just ended cannot open the next one: a peer that takes
//!   chunks and never serves them cannot keep every other site waiting (it gets at most
//!   every other window), while a lone requester whose transfer failed late is served again;
//! - at most `max_tracked` chunks are remembered; past that, chunks are served to whoever
//!   asks (an overloaded tracker never stops a release).
//!
//! Sans-IO: the seeder's responder and simnet's origin both call [`OriginHandout::admit`].

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use super::NodeId;
use crate::time::{Duration, Instant};
use crate::ChunkId;

/// Tunables. The defaults suit a fleet on 10–100 Mbit/s backhauls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoutConfig {
    /// Distinct requesters served per chunk and window. 0 turns rationing off.
    pub copies: u32,
    /// How long a handout stands before the chunk is handed out again.
    pub window: Duration,
    /// Chunks remembered at once (each costs about 100 bytes).
    pub max_tracked: usize,
}

impl Default for HandoutConfig {
    fn default() -> Self {
        HandoutConfig { copies: 1, window: Duration::from_secs(12), max_tracked: 1 << 20 }
    }
}

#[derive(Debug, Clone)]
struct Handout {
    opened: Instant,
    /// Served in the current window (at most `copies`).
    current: Vec<NodeId>,
    /// Someone else was answered `Busy` in the current window.
    contended: bool,
}

/// Counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoutStats {
    /// Chunks handed out (first copies and new windows).
    pub handed_out: u64,
    /// Chunks served again to a requester of the same window.
    pub retries: u64,
    /// Chunks answered `Busy`.
    pub deferred: u64,
    /// Chunks served untracked because the table was full.
    pub untracked: u64,
}

/// Which chunks the origin serves now; see the module doc.
#[derive(Debug, Clone)]
pub struct OriginHandout {
    config: HandoutConfig,
    handouts: BTreeMap<ChunkId, Handout>,
    /// (opened, chunk) in opening order: when a chunk's entry may be forgotten.
    expiry: VecDeque<(Instant, ChunkId)>,
    stats: HandoutStats,
}

impl OriginHandout {
    /// An empty table.
    pub fn new(config: HandoutConfig) -> Self {
        OriginHandout { config, handouts: BTreeMap::new(), expiry: VecDeque::new(), stats: HandoutStats::default() }
    }

    /// The configuration.
    pub fn config(&self) -> HandoutConfig {
        self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> HandoutStats {
        self.stats
    }

    /// Chunks currently remembered.
    pub fn tracked(&self) -> usize {
        self.handouts.len()
    }

    /// Whether to serve `chunk` to `requester` now (`false`: answer `Busy`).
    pub fn admit(&mut self, now: Instant, requester: &NodeId, chunk: &ChunkId) -> bool {
        if self.config.copies == 0 {
            return true;
        }
        self.forget_expired(now);
        let window = self.config.window;
        let copies = self.config.copies as usize;
        let Some(h) = self.handouts.get_mut(chunk) else {
            if self.handouts.len() >= self.config.max_tracked {
                self.stats.untracked += 1;
                return true;
            }
            self.handouts.insert(*chunk, Handout { opened: now, current: alloc::vec![*requester], contended: false });
            self.expiry.push_back((now, *chunk));
            self.stats.handed_out += 1;
            return true;
        };
        if now < h.opened + window {
            if h.current.contains(requester) {
                self.stats.retries += 1;
                return true;
            }
            if h.current.len() < copies {
                h.current.push(*requester);
                self.stats.handed_out += 1;
                return true;
            }
            h.contended = true;
            self.stats.deferred += 1;
            return false;
        }
        // The window ended: a new one opens, but not for those served in the one that ended
        // while others were kept waiting.
        if h.contended && h.current.contains(requester) {
            self.stats.deferred += 1;
            return false;
        }
        h.current.clear();
        h.current.push(*requester);
        h.contended = false;
        h.opened = now;
        self.expiry.push_back((now, *chunk));
        self.stats.handed_out += 1;
        true
    }

    /// Drops chunks whose last window ended a whole window ago: by then nobody is held back
    /// by them, and an absent chunk is served to its first requester.
    fn forget_expired(&mut self, now: Instant) {
        let keep_for = Duration(self.config.window.as_micros().saturating_mul(2));
        while let Some(&(opened, chunk)) = self.expiry.front() {
            if now < opened + keep_for {
                break;
            }
            self.expiry.pop_front();
            // A later window re-queued the chunk; only its last opening counts.
            if self.handouts.get(&chunk).is_some_and(|h| h.opened == opened) {
                self.handouts.remove(&chunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId([n; 32])
    }
    fn chunk(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }
    const S: u64 = 1_000_000;

    #[test]
    fn a_chunk_goes_to_one_site_per_window_and_retries_are_served() {
        let mut h = OriginHandout::new(HandoutConfig { copies: 1, window: Duration(10 * S), max_tracked: 100 });
        assert!(h.admit(Instant(0), &node(1), &chunk(1)));
        assert!(!h.admit(Instant(S), &node(2), &chunk(1)), "a second site waits");
        assert!(h.admit(Instant(2 * S), &node(1), &chunk(1)), "the taker's retry is served");
        assert!(h.admit(Instant(2 * S), &node(2), &chunk(2)), "another chunk is handed out");
        // The window ends: the next requester is served, the last taker waits a window more.
        assert!(!h.admit(Instant(11 * S), &node(1), &chunk(1)));
        assert!(h.admit(Instant(11 * S), &node(3), &chunk(1)));
        assert!(!h.admit(Instant(12 * S), &node(2), &chunk(1)));
        assert!(h.admit(Instant(12 * S), &node(3), &chunk(1)));
        assert_eq!(h.stats(), HandoutStats { handed_out: 3, retries: 2, deferred: 3, untracked: 0 });
    }

    #[test]
    fn a_taker_that_never_serves_gets_at_most_every_other_window() {
        let mut h = OriginHandout::new(HandoutConfig { copies: 1, window: Duration(10 * S), max_tracked: 100 });
        let (hog, honest) = (node(9), node(1));
        let mut honest_served = 0;
        let mut hog_served = 0;
        // The hog asks first at every instant; the honest site right after.
        for t in 0..100 {
            hog_served += u32::from(h.admit(Instant(t * S), &hog, &chunk(1)));
            honest_served += u32::from(h.admit(Instant(t * S), &honest, &chunk(1)));
        }
        assert!(honest_served >= 4, "honest site served {honest_served} times in 100 s");
        assert!(hog_served <= 60, "hog served {hog_served}");
    }

    #[test]
    fn a_lone_requester_is_served_again_after_the_window() {
        let mut h = OriginHandout::new(HandoutConfig { copies: 1, window: Duration(10 * S), max_tracked: 100 });
        assert!(h.admit(Instant(0), &node(1), &chunk(1)));
        assert!(h.admit(Instant(12 * S), &node(1), &chunk(1)), "nobody else wants it: no wait");
        assert!(h.admit(Instant(40 * S), &node(1), &chunk(1)));
    }

    #[test]
    fn copies_and_forgetting_and_the_table_bound() {
        let mut h = OriginHandout::new(HandoutConfig { copies: 2, window: Duration(10 * S), max_tracked: 2 });
        assert!(h.admit(Instant(0), &node(1), &chunk(1)));
        assert!(h.admit(Instant(0), &node(2), &chunk(1)));
        assert!(!h.admit(Instant(0), &node(3), &chunk(1)));
        assert!(h.admit(Instant(0), &node(3), &chunk(2)));
        // The table is full: a third chunk is served untracked.
        assert!(h.admit(Instant(0), &node(3), &chunk(3)));
        assert!(h.admit(Instant(0), &node(4), &chunk(3)));
        assert_eq!(h.stats().untracked, 2);
        // Two windows on, everything is forgotten and served afresh.
        assert!(h.admit(Instant(20 * S), &node(1), &chunk(1)));
        assert_eq!(h.tracked(), 1);
        let off = &mut OriginHandout::new(HandoutConfig { copies: 0, ..HandoutConfig::default() });
        assert!((0..10).all(|n| off.admit(Instant(0), &node(n), &chunk(1))));
    }
}
