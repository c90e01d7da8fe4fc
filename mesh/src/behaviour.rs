//! The composed libp2p behaviour of an edge node and the small facts peers exchange about
//! each other (site name in identify's agent version, protocol names, topics).

use protocol::ReleaseId;
use std::{fmt, time::Duration};

use libp2p::{
    gossipsub, identify,
    identity::Keypair,
    kad,
    request_response::{self, ProtocolSupport},
    swarm::{behaviour::toggle::Toggle, NetworkBehaviour},
    StreamProtocol,
};

use super::{
    codec::{ChunkCodec, HaveCodec, MetaCodec, StatusCodec},
    NetworkConfig, NetworkError,
};

/// identify's protocol version: peers that differ speak a different mesh.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/otamesh/1.0.0";
/// Prefix of an edge node's identify agent version; the site name follows `site=`.
pub const AGENT_PREFIX: &str = "otamesh-edge/0.1 site=";
/// Prefix of the origin's (the seeder's) agent version. The claim is not trusted for
/// content: an "origin" that sends a bad chunk is caught and banned like any peer.
pub const ORIGIN_AGENT_PREFIX: &str = "otamesh-origin/0.1 site=";
/// Chunk batches.
pub const CHUNK_PROTOCOL: StreamProtocol = StreamProtocol::new("/otamesh/chunks/2");
/// Chunk inventories. A separate protocol from chunks so its small messages get their own
/// stream budget and never queue behind 8 MiB batches.
pub const HAVE_PROTOCOL: StreamProtocol = StreamProtocol::new("/otamesh/have/2");
/// Repository files (TUF metadata, manifests), fetched from any peer and verified locally.
pub const META_PROTOCOL: StreamProtocol = StreamProtocol::new("/otamesh/meta/2");
/// Device status reports forwarded by edge nodes toward the origin (store and forward).
pub const STATUS_PROTOCOL: StreamProtocol = StreamProtocol::new("/otamesh/status/1");
/// Our own Kademlia protocol name, so the mesh's DHT never merges with the public IPFS DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/otamesh/kad/1.0.0");
/// Gossipsub topic of signed release announcements.
pub const RELEASES_TOPIC: &str = "otamesh/releases/1";
/// Gossipsub topic reserved for inventory gossip (not subscribed yet).
pub const HAVE_TOPIC: &str = "otamesh/have/1";
/// Largest announcement we publish or accept over gossipsub.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 64 * 1024;
/// Longest site name, in bytes of UTF-8.
pub const MAX_SITE_NAME_BYTES: usize = 64;

/// The name of a factory site, as configured on every edge node there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteName(String);

/// Why a string is not a [`SiteName`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteNameError {
    /// Empty.
    Empty,
    /// Longer than [`MAX_SITE_NAME_BYTES`].
    TooLong(usize),
    /// Contains a control character (it travels inside a text field of identify).
    ControlCharacter,
}

impl fmt::Display for SiteNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SiteNameError::Empty => write!(f, "site name is empty"),
            SiteNameError::TooLong(n) => write!(f, "site name is {n} bytes, over {MAX_SITE_NAME_BYTES}"),
            SiteNameError::ControlCharacter => write!(f, "site name contains a control character"),
        }
    }
}

impl std::error::Error for SiteNameError {}

impl SiteName {
    /// Checks and wraps a site name.
    pub fn new(name: impl Into<String>) -> Result<Self, SiteNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(SiteNameError::Empty);
        }
        if name.len() > MAX_SITE_NAME_BYTES {
            return Err(SiteNameError::TooLong(name.len()));
        }
        if name.chars().any(char::is_control) {
            return Err(SiteNameError::ControlCharacter);
        }
        Ok(SiteName(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// identify's agent version announcing this site: `otamesh-edge/0.1 site=<name>`.
    pub fn to_agent_version(&self) -> String {
        format!("{AGENT_PREFIX}{}", self.0)
    }

    /// The site of a peer from its agent version; `None` for anything that is not an
    /// otamesh edge node or carries an invalid name.
    pub fn from_agent_version(agent_version: &str) -> Option<Self> {
        SiteName::new(agent_version.strip_prefix(AGENT_PREFIX)?).ok()
    }

    /// The origin's agent version: `otamesh-origin/0.1 site=<name>`.
    pub fn to_origin_agent_version(&self) -> String {
        format!("{ORIGIN_AGENT_PREFIX}{}", self.0)
    }

    /// The site of a peer claiming to be the origin, from its agent version.
    pub fn from_origin_agent_version(agent_version: &str) -> Option<Self> {
        SiteName::new(agent_version.strip_prefix(ORIGIN_AGENT_PREFIX)?).ok()
    }
}

impl fmt::Display for SiteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The record key under which providers of a release are stored in the DHT. Namespaced so
/// a release id can never collide with another kind of key we may add.
pub fn release_key(release: &ReleaseId) -> kad::RecordKey {
    kad::RecordKey::new(&format!("otamesh/release/{release}"))
}

/// Everything an edge node speaks, composed; the derive generates `BehaviourEvent`.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) identify: identify::Behaviour,
    pub(crate) kademlia: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) chunks: request_response::Behaviour<ChunkCodec>,
    pub(crate) have: request_response::Behaviour<HaveCodec>,
    pub(crate) meta: request_response::Behaviour<MetaCodec>,
    pub(crate) status: request_response::Behaviour<StatusCodec>,
    pub(crate) mdns: Toggle<libp2p::mdns::tokio::Behaviour>,
}

impl Behaviour {
    pub(crate) fn new(key: &Keypair, config: &NetworkConfig) -> Result<Self, NetworkError> {
        let peer_id = key.public().to_peer_id();

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL_VERSION.into(), key.public()).with_agent_version(
                if config.origin { config.site.to_origin_agent_version() } else { config.site.to_agent_version() },
            ),
        );

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(config.kad_query_timeout);
        let mut kademlia = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Edge nodes are reachable infrastructure: always answer DHT queries, rather than
        // waiting for kad's automatic mode to confirm an external address.
        kademlia.set_mode(Some(kad::Mode::Server));

        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(config.gossip_heartbeat)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .max_transmit_size(MAX_ANNOUNCEMENT_BYTES + 1024)
            .build()
            .map_err(|e| NetworkError::Setup(format!("gossipsub config: {e}")))?;
        let mut gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)
                .map_err(|e| NetworkError::Setup(format!("gossipsub: {e}")))?;
        gossipsub
            .subscribe(&gossipsub::IdentTopic::new(RELEASES_TOPIC))
            .map_err(|e| NetworkError::Setup(format!("gossipsub subscribe: {e}")))?;

        let rr_config = request_response::Config::default()
            .with_request_timeout(config.request_timeout)
            .with_max_concurrent_streams(config.max_concurrent_streams);
        let chunks = request_response::Behaviour::new([(CHUNK_PROTOCOL, ProtocolSupport::Full)], rr_config.clone());
        let have = request_response::Behaviour::new([(HAVE_PROTOCOL, ProtocolSupport::Full)], rr_config.clone());
        let meta = request_response::Behaviour::new([(META_PROTOCOL, ProtocolSupport::Full)], rr_config.clone());
        let status = request_response::Behaviour::new([(STATUS_PROTOCOL, ProtocolSupport::Full)], rr_config);

        let mdns = if config.enable_mdns {
            let mdns = libp2p::mdns::tokio::Behaviour::new(libp2p::mdns::Config::default(), peer_id)
                .map_err(|e| NetworkError::Setup(format!("mdns: {e}")))?;
            Some(mdns)
        } else {
            None
        };

        Ok(Behaviour { identify, kademlia, gossipsub, chunks, have, meta, status, mdns: Toggle::from(mdns) })
    }
}

/// How long an idle connection is kept; long enough to span the gaps between chunk batches.
pub(crate) const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
