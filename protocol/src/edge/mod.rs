//! The edge node's decisions, sans-IO: which announced releases to pre-stage, which chunk to
//! fetch from whom, what the cache keeps.
//!
//! Goals:
//! - each release crosses each site's backhaul once: rendezvous hashing over the site's live
//!   members makes exactly one member responsible for bringing each chunk in from outside,
//!   and its site-mates take the chunk from it over the LAN;
//! - one peer per chunk, ranked same site → other sites → origin and by measured throughput;
//!   duplicate requests only at the tail, and only inside the site;
//! - liars lose: a peer whose chunk fails verification is disconnected and banned, and the
//!   chunk is fetched elsewhere;
//! - everything bounded: requests per peer, bytes per request, time per request;
//! - about one copy of each release leaves the origin: the origin hands each chunk to one
//!   site at a time ([`origin_handout`]) and answers the others `Busy`; a node told `Busy`
//!   waits for the chunk to reach another site's edge node and takes it from there. Each
//!   site asks for its share in its own order, so the first copies spread over many sites.
//!
//! Non-goals: moving bytes, verifying them (drivers call [`crate::codec::verify_stored`] and
//! report the outcome), clocks. The daemon and simnet drive the same [`FetchScheduler`]:
//! feed one input (`handle_*`), then drain `poll_request`, `poll_event` and `poll_timeout`.
//! The `now` each input carries should never go back (a monotonic clock); a step back is
//! taken as time standing still.

mod bitfield;
pub mod cache;
mod chunk_map;
pub mod origin_handout;
pub mod rendezvous;
mod scheduler;
pub mod status;

pub use bitfield::Bitfield;
pub use scheduler::{
    ChunkOutcome, ChunkSpec, EdgeEvent, EdgeStats, FetchScheduler, ReleaseSpec, Request, RequestId, SchedulerConfig,
};

/// A node's identity in the protocol: 32 bytes derived from its transport identity (the
/// daemon hashes the libp2p peer id; simnet numbers its nodes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub [u8; 32]);

crate::id_order::order_by_bytes32!(NodeId);

impl NodeId {
    /// Derives a node id from any stable identity bytes.
    pub fn from_identity(bytes: &[u8]) -> Self {
        NodeId(*blake3::hash(bytes).as_bytes())
    }
}

impl core::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NodeId(")?;
        crate::hex::write(f, &self.0[..4])?;
        f.write_str(")")
    }
}

/// A site (a factory, a LAN behind one backhaul), from its configured name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SiteId(pub u64);

impl SiteId {
    /// Hashes a site name; operators configure names, the protocol compares ids.
    pub fn from_name(name: &str) -> Self {
        let mut id = [0u8; 8];
        id.copy_from_slice(&blake3::hash(name.as_bytes()).as_bytes()[..8]);
        SiteId(u64::from_le_bytes(id))
    }
}

/// What a peer is to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// Another edge node; it holds what its Have messages say.
    Edge,
    /// The seeder's origin; it holds every chunk of every release it announced.
    Origin,
}

/// Where bytes came from, for source ranking and for the backhaul counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceClass {
    /// A member of our own site, over the LAN.
    Site = 0,
    /// An edge node in another site, over the backhaul.
    Wan = 1,
    /// The origin, over the backhaul.
    Origin = 2,
}

impl SourceClass {
    /// True for bytes that cross the site's backhaul.
    pub fn is_backhaul(self) -> bool {
        !matches!(self, SourceClass::Site)
    }
    /// Lowercase name, as metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            SourceClass::Site => "site",
            SourceClass::Wan => "wan",
            SourceClass::Origin => "origin",
        }
    }
}
