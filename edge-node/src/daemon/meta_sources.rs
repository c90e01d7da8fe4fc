//! Which peers an edge node asks for repository metadata, in which order, and what it
//! remembers of how they answered.
//!
//! Every byte of metadata is verified against the pinned root, so the choice of source is
//! about liveness: one hostile peer must not be able to win the first place in line and stop
//! refreshes by answering with forgeries. Hence:
//! - the order is by standing, not by anything a peer says about itself or by its peer id:
//!   configured origins, then peers that served metadata that verified, then site-mates,
//!   then the rest — shuffled within each class;
//! - a peer whose metadata failed verification (not merely older: see
//!   `protocol::tuf::Error::source_is_behind`) is skipped for [`LIAR_TIMEOUT`];
//! - the only trust placed in a peer, pinning a root when none is configured, is limited to
//!   configured origins: `--origin-peer` ids, and `--bootstrap` peers that identify as the
//!   origin.

use libp2p::PeerId;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// How long a peer that served forged metadata is not asked again.
pub const LIAR_TIMEOUT: Duration = Duration::from_secs(600);

/// Most peers remembered as liars or as proven sources (oldest forgotten first).
const MAX_REMEMBERED: usize = 4096;

/// How the peers asked during one refresh answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SourceOutcomes {
    /// Served metadata or a manifest that failed verification.
    pub lied: Vec<PeerId>,
    /// Served metadata that verified.
    pub verified: Vec<PeerId>,
}

/// What a peer is to this node, for metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Standing {
    ConfiguredOrigin,
    Proven,
    SiteMate,
    Other,
}

/// A connected peer as the daemon knows it.
#[derive(Debug, Clone, Copy)]
pub struct PeerInfo<'a> {
    /// The peer.
    pub peer: PeerId,
    /// Its site (from identify).
    pub site: &'a str,
    /// It identifies as the origin (a claim, not a proof).
    pub claims_origin: bool,
}

/// The node's memory of metadata sources.
#[derive(Debug)]
pub struct MetaSources {
    origin_peers: HashSet<PeerId>,
    bootstrap_peers: HashSet<PeerId>,
    proven: HashMap<PeerId, Instant>,
    liars: HashMap<PeerId, Instant>,
    shuffle: RandomState,
}

impl MetaSources {
    /// From the configured origin peer ids and the peer ids of bootstrap addresses.
    pub fn new(
        origin_peers: impl IntoIterator<Item = PeerId>,
        bootstrap_peers: impl IntoIterator<Item = PeerId>,
    ) -> Self {
        MetaSources {
            origin_peers: origin_peers.into_iter().collect(),
            bootstrap_peers: bootstrap_peers.into_iter().collect(),
            proven: HashMap::new(),
            liars: HashMap::new(),
            shuffle: RandomState::new(),
        }
    }

    /// Whether `peer` is a configured origin: named by `--origin-peer`, or a bootstrap peer
    /// that identifies as the origin. Only these may supply a root pinned on first use.
    pub fn is_configured_origin(&self, peer: &PeerId, claims_origin: bool) -> bool {
        self.origin_peers.contains(peer) || (claims_origin && self.bootstrap_peers.contains(peer))
    }

    /// Whether the fetch scheduler should treat `peer` as the origin (holding every chunk):
    /// a configured origin, or a peer that claims to be it and has served metadata that
    /// verified. A false claim costs the claimant its standing once its chunks fail.
    pub fn acts_as_origin(&self, peer: &PeerId, claims_origin: bool) -> bool {
        self.is_configured_origin(peer, claims_origin) || (claims_origin && self.proven.contains_key(peer))
    }

    /// Whether `peer` is skipped for metadata at `now`.
    pub fn is_liar(&self, peer: &PeerId, now: Instant) -> bool {
        self.liars.get(peer).is_some_and(|until| *until > now)
    }

    /// The peers to ask, best first; liars left out.
    pub fn order<'a>(&self, peers: impl IntoIterator<Item = PeerInfo<'a>>, my_site: &str, now: Instant) -> Vec<PeerId> {
        let mut ranked: Vec<(Standing, u64, PeerId)> = peers
            .into_iter()
            .filter(|p| !self.is_liar(&p.peer, now))
            .map(|p| {
                let standing = if self.is_configured_origin(&p.peer, p.claims_origin) {
                    Standing::ConfiguredOrigin
                } else if self.proven.contains_key(&p.peer) {
                    Standing::Proven
                } else if p.site == my_site {
                    Standing::SiteMate
                } else {
                    Standing::Other
                };
                (standing, self.shuffle.hash_one((now, p.peer)), p.peer)
            })
            .collect();
        ranked.sort();
        ranked.into_iter().map(|(_, _, peer)| peer).collect()
    }

    /// The configured origins among `peers`, in [`MetaSources::order`]'s order.
    pub fn root_sources<'a>(&self, peers: impl IntoIterator<Item = PeerInfo<'a>>, now: Instant) -> Vec<PeerId> {
        let configured: Vec<PeerInfo<'a>> =
            peers.into_iter().filter(|p| self.is_configured_origin(&p.peer, p.claims_origin)).collect();
        self.order(configured, "", now)
    }

    /// Records a refresh's outcomes at `now`.
    pub fn record(&mut self, outcomes: &SourceOutcomes, now: Instant) {
        for peer in &outcomes.lied {
            self.penalize(*peer, now);
        }
        for peer in &outcomes.verified {
            if !self.is_liar(peer, now) {
                bounded_insert(&mut self.proven, *peer, now);
            }
        }
    }

    /// Marks `peer` as a liar until `now + LIAR_TIMEOUT`; it loses any proven standing.
    pub fn penalize(&mut self, peer: PeerId, now: Instant) {
        self.proven.remove(&peer);
        bounded_insert(&mut self.liars, peer, now + LIAR_TIMEOUT);
    }
}

fn bounded_insert(map: &mut HashMap<PeerId, Instant>, peer: PeerId, at: Instant) {
    if map.len() >= MAX_REMEMBERED && !map.contains_key(&peer) {
        if let Some(oldest) = map.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p) {
            map.remove(&oldest);
        }
    }
    map.insert(peer, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(peer: PeerId, site: &str, claims_origin: bool) -> PeerInfo<'_> {
        PeerInfo { peer, site, claims_origin }
    }

    #[test]
    fn a_peer_claiming_to_be_the_origin_is_not_ranked_above_the_configured_one() {
        let (origin, impostor, mate) = (PeerId::random(), PeerId::random(), PeerId::random());
        let sources = MetaSources::new([], [origin]);
        let now = Instant::now();
        for _ in 0..20 {
            let order =
                sources.order([info(impostor, "x", true), info(mate, "a", false), info(origin, "o", true)], "a", now);
            assert_eq!(order[0], origin);
            assert_eq!(order[1], mate, "a site-mate ranks above a stranger's claim");
        }
        assert!(!sources.is_configured_origin(&impostor, true));
        assert_eq!(sources.root_sources([info(impostor, "x", true), info(origin, "o", true)], now), [origin]);
        // A bootstrap peer that does not identify as the origin supplies no root either.
        let edge = PeerId::random();
        let sources = MetaSources::new([], [edge]);
        assert!(sources.root_sources([info(edge, "a", false)], now).is_empty());
    }

    #[test]
    fn a_peer_that_served_forged_metadata_is_skipped_and_a_proven_one_promoted() {
        let (liar, honest, other) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut sources = MetaSources::new([], []);
        let now = Instant::now();
        sources.record(&SourceOutcomes { lied: vec![liar], verified: vec![honest] }, now);
        let order = sources.order([info(liar, "a", true), info(other, "a", false), info(honest, "z", false)], "a", now);
        assert_eq!(order, [honest, other]);
        assert!(sources.acts_as_origin(&honest, true) && !sources.acts_as_origin(&liar, true));
        let later = now + LIAR_TIMEOUT + Duration::from_secs(1);
        assert_eq!(sources.order([info(liar, "a", false)], "a", later), [liar], "the penalty expires");
    }

    #[test]
    fn the_order_within_a_class_is_not_the_peer_id_order() {
        let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let sources = MetaSources::new([], []);
        let start = Instant::now();
        let firsts: HashSet<PeerId> = (0..64u64)
            .map(|i| {
                let now = start + Duration::from_millis(i);
                sources.order(peers.iter().map(|p| info(*p, "a", false)), "a", now)[0]
            })
            .collect();
        assert!(firsts.len() > 1, "one peer is always asked first");
    }
}
