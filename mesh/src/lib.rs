//! otamesh's libp2p mesh, shared by the roles that join it: the edge node (`edge-node run`)
//! and the origin (`seeder serve`). Each role answers peers' requests through its own
//! [`Responder`]; everything else — transports, behaviours, the event loop, the codec, the
//! node key file, socket tuning, serving chunk batches from a [`chunk_store::ChunkStore`] —
//! lives here once.
//!
//! Shape (after rust-libp2p's file-sharing example): [`new`] builds a swarm and returns a
//! cloneable [`NetworkClient`], a bounded receiver of [`NetworkEvent`]s, and an
//! [`EventLoop`] that the caller spawns. The event loop owns the swarm; the client sends it
//! commands over a bounded channel, each carrying a oneshot for its answer, and the loop
//! keeps pending maps keyed by libp2p's request and query ids to route answers back.
//!
//! Architecture invariant: the event loop never awaits the application. Events go out with
//! `try_send`; when the application falls behind, inbound chunk requests are answered
//! `Busy` and other events are dropped (counted in logs), because a loop blocked on a
//! full event channel would also stop serving the application's own commands.
//! [`NetworkClient::connected_peers`] is the authoritative view of who is connected.
//!
//! Transports: QUIC (quic-v1) first, TCP + noise + yamux as fallback; the dialer picks by
//! the address it is given. Behaviours: identify (carrying the site name), Kademlia
//! (provider records per release, peer routing), gossipsub (signed release announcements),
//! request-response for chunk batches and chunk inventories with our own binary codec,
//! and mDNS when enabled.

mod behaviour;
pub mod chunk_server;
pub mod codec;
mod event_loop;
mod keyfile;
pub mod messages;
mod responder;
pub mod sockets;

use std::{collections::HashSet, fmt, time::Duration};

use libp2p::{
    identity::Keypair, noise, request_response::ResponseChannel, swarm::DialError, tcp, yamux, Multiaddr, PeerId,
};
use protocol::ReleaseId;
use tokio::sync::{mpsc, oneshot};

pub use behaviour::{
    release_key, SiteName, SiteNameError, AGENT_PREFIX, CHUNK_PROTOCOL, HAVE_PROTOCOL, HAVE_TOPIC,
    IDENTIFY_PROTOCOL_VERSION, KAD_PROTOCOL, MAX_ANNOUNCEMENT_BYTES, MAX_SITE_NAME_BYTES, RELEASES_TOPIC,
    STATUS_PROTOCOL,
};
pub use event_loop::EventLoop;
pub use keyfile::{load_keypair, load_or_create_keypair, save_keypair};
pub use messages::{
    ChunkItem, ChunkRange, ChunkRequest, ChunkResponse, ChunkResult, HaveRequest, HaveResponse, MetaRequest,
    MetaResponse, StatusAck, StatusBatch, MAX_STATUS_BATCH_BYTES, MAX_STATUS_REPORTS,
};

pub use responder::Responder;

use behaviour::Behaviour;

/// Settings of the mesh layer. Construct with [`NetworkConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// This node's site, announced to peers through identify.
    pub site: SiteName,
    /// Announce this node as the origin (the seeder) rather than an edge node.
    pub origin: bool,
    /// Discover peers on the local network by mDNS. Off in tests: it multicasts on every
    /// interface.
    pub enable_mdns: bool,
    /// How long an outbound chunk or have request may take end to end.
    pub request_timeout: Duration,
    /// Most concurrent inbound plus outbound streams per connection, per request-response
    /// protocol; bounds the memory a peer can tie up with 8 MiB batches.
    pub max_concurrent_streams: usize,
    /// How long a connection without open streams is kept.
    pub idle_connection_timeout: Duration,
    /// Timeout of a Kademlia query (providing, finding providers).
    pub kad_query_timeout: Duration,
    /// Gossipsub heartbeat (mesh maintenance, gossip emission).
    pub gossip_heartbeat: Duration,
    /// Capacity of the command channel from clients to the event loop.
    pub command_capacity: usize,
    /// Capacity of the event channel from the event loop to the application.
    pub event_capacity: usize,
    /// Most outstanding commands awaiting a network answer (requests, queries, dials).
    pub max_pending: usize,
}

impl NetworkConfig {
    /// Defaults for a production edge node at `site` (mDNS on).
    pub fn new(site: SiteName) -> Self {
        NetworkConfig {
            site,
            origin: false,
            enable_mdns: true,
            request_timeout: Duration::from_secs(30),
            max_concurrent_streams: 32,
            idle_connection_timeout: behaviour::DEFAULT_IDLE_CONNECTION_TIMEOUT,
            kad_query_timeout: Duration::from_secs(30),
            gossip_heartbeat: Duration::from_secs(1),
            command_capacity: 64,
            event_capacity: 256,
            max_pending: 1024,
        }
    }
}

/// Why a network operation failed. `Request` and `Io`-flavoured failures of a peer are kept
/// apart from local misuse (`Setup`, `TooManyPending`, `AnnouncementTooLarge`).
#[derive(Debug)]
pub enum NetworkError {
    /// The swarm could not be built (bad configuration, no mDNS socket, ...).
    Setup(String),
    /// The event loop has stopped; the client is no longer usable.
    EventLoopStopped,
    /// Too many commands await an answer; try again later.
    TooManyPending,
    /// Listening on an address failed (unsupported address, bind error, listener closed).
    Listen(std::io::Error),
    /// Dialing failed.
    Dial(DialError),
    /// A chunk or have request failed: timeout, connection closed, unsupported protocol,
    /// or an I/O error, which includes the codec refusing a message over a limit.
    Request(libp2p::request_response::OutboundFailure),
    /// Our response could not be sent: the requester is gone or the request timed out.
    ResponseNotSent,
    /// Announcing ourselves as provider failed (local record store).
    Provide(String),
    /// Publishing an announcement failed (no subscribed peers, duplicate, ...).
    Publish(libp2p::gossipsub::PublishError),
    /// An announcement is over [`MAX_ANNOUNCEMENT_BYTES`].
    AnnouncementTooLarge(usize),
}

impl fmt::Display for NetworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkError::Setup(e) => write!(f, "network setup failed: {e}"),
            NetworkError::EventLoopStopped => write!(f, "network event loop has stopped"),
            NetworkError::TooManyPending => write!(f, "too many network operations pending"),
            NetworkError::Listen(e) => write!(f, "listen failed: {e}"),
            NetworkError::Dial(e) => write!(f, "dial failed: {e}"),
            NetworkError::Request(e) => write!(f, "request failed: {e}"),
            NetworkError::ResponseNotSent => write!(f, "response not sent: requester gone"),
            NetworkError::Provide(e) => write!(f, "start providing failed: {e}"),
            NetworkError::Publish(e) => write!(f, "publish failed: {e}"),
            NetworkError::AnnouncementTooLarge(n) => {
                write!(f, "announcement of {n} bytes over the limit of {MAX_ANNOUNCEMENT_BYTES}")
            }
        }
    }
}

impl std::error::Error for NetworkError {}

/// How the application answers an inbound chunk request; consumed by
/// [`NetworkClient::respond_chunks`]. Dropping it makes the requester see a failure.
#[derive(Debug)]
pub struct ChunkReply(ResponseChannel<ChunkResponse>);

/// How the application answers an inbound have request; consumed by
/// [`NetworkClient::respond_have`].
#[derive(Debug)]
pub struct HaveReply(ResponseChannel<HaveResponse>);

/// How the application answers an inbound repository file request; consumed by
/// [`NetworkClient::respond_meta`].
#[derive(Debug)]
pub struct MetaReply(ResponseChannel<MetaResponse>);

/// How the application answers an inbound status batch; consumed by
/// [`NetworkClient::respond_status`].
#[derive(Debug)]
pub struct StatusReply(ResponseChannel<StatusAck>);

/// Something the mesh tells the application.
#[derive(Debug)]
pub enum NetworkEvent {
    /// identify completed with a peer (again after every identify push).
    PeerIdentified {
        /// The peer.
        peer: PeerId,
        /// Its site, `None` if it is not an otamesh node or sent an invalid name.
        site: Option<SiteName>,
        /// It claims to be the origin (the seeder).
        origin: bool,
        /// The addresses it listens on, as it reports them.
        addrs: Vec<Multiaddr>,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A peer subscribed to the release announcement topic; from now on publishing reaches it.
    AnnouncementSubscriber {
        /// The peer.
        peer: PeerId,
    },
    /// A release announcement arrived (signature of the gossipsub message checked; the
    /// announcement's own release signature is for the application to verify).
    Announcement {
        /// The peer that published it.
        source: Option<PeerId>,
        /// The announcement.
        bytes: Vec<u8>,
    },
    /// A peer asks something of us; answer it with [`NetworkClient::answer`] and the role's
    /// [`Responder`] (or with the `respond_*` method for its kind).
    Inbound(InboundRequest),
}

/// A peer's request, with the handle to answer it through.
#[derive(Debug)]
pub enum InboundRequest {
    /// Chunk ranges; answered by [`NetworkClient::respond_chunks`].
    Chunks {
        /// The requester.
        peer: PeerId,
        /// What it asks for (already checked against the wire limits).
        request: ChunkRequest,
        /// The handle to answer through.
        reply: ChunkReply,
    },
    /// Which chunks of a release we hold; answered by [`NetworkClient::respond_have`].
    Have {
        /// The requester.
        peer: PeerId,
        /// What it asks for.
        request: HaveRequest,
        /// The handle to answer through.
        reply: HaveReply,
    },
    /// A repository file; answered by [`NetworkClient::respond_meta`].
    Meta {
        /// The requester.
        peer: PeerId,
        /// What it asks for.
        request: MetaRequest,
        /// The handle to answer through.
        reply: MetaReply,
    },
    /// Device status reports forwarded by an edge node; answered by
    /// [`NetworkClient::respond_status`] (see [`Responder::status`]).
    Status {
        /// The sender.
        peer: PeerId,
        /// The reports (each unverified: the receiver checks every signature).
        request: StatusBatch,
        /// The handle to answer through.
        reply: StatusReply,
    },
}

/// A connected peer, as returned by [`NetworkClient::connected_peers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedPeer {
    /// The peer.
    pub peer: PeerId,
    /// Its site once identify has completed and if it is an otamesh edge node.
    pub site: Option<SiteName>,
}

/// Outcome sent back for a command.
type Reply<T> = oneshot::Sender<Result<T, NetworkError>>;

/// A request to the event loop. Every variant that expects an answer carries its oneshot.
#[derive(Debug)]
enum Command {
    Listen { addr: Multiaddr, reply: Reply<Multiaddr> },
    ListenAddrs { reply: oneshot::Sender<Vec<Multiaddr>> },
    Dial { addr: Multiaddr, reply: Reply<PeerId> },
    StartProviding { release: ReleaseId, reply: Reply<()> },
    GetProviders { release: ReleaseId, reply: Reply<HashSet<PeerId>> },
    Publish { bytes: Vec<u8>, reply: Reply<()> },
    RequestChunks { peer: PeerId, request: ChunkRequest, reply: Reply<ChunkResponse> },
    RequestHave { peer: PeerId, request: HaveRequest, reply: Reply<HaveResponse> },
    RespondChunks { reply_to: ChunkReply, response: ChunkResponse, reply: Reply<()> },
    RespondHave { reply_to: HaveReply, response: HaveResponse, reply: Reply<()> },
    RequestMeta { peer: PeerId, request: MetaRequest, reply: Reply<MetaResponse> },
    RespondMeta { reply_to: MetaReply, response: MetaResponse, reply: Reply<()> },
    SendStatus { peer: PeerId, request: StatusBatch, reply: Reply<StatusAck> },
    RespondStatus { reply_to: StatusReply, response: StatusAck, reply: Reply<()> },
    ConnectedPeers { reply: oneshot::Sender<Vec<ConnectedPeer>> },
    Disconnect { peer: PeerId },
}

/// A handle to the mesh; cheap to clone, usable from any task.
///
/// Every method is cancel-safe in the sense that dropping its future never corrupts the
/// event loop: the loop finds the oneshot closed and discards the answer. A dropped
/// request may still complete on the wire.
#[derive(Debug, Clone)]
pub struct NetworkClient {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
}

impl NetworkClient {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, NetworkError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| NetworkError::EventLoopStopped)?;
        rx.await.map_err(|_| NetworkError::EventLoopStopped)?
    }

    /// Starts listening on `addr` (e.g. `/ip4/127.0.0.1/udp/0/quic-v1`) and returns the
    /// first concrete address bound (port 0 resolved). Wildcard listens may bind more
    /// addresses later; [`NetworkClient::listen_addrs`] lists them all.
    pub async fn listen(&self, addr: Multiaddr) -> Result<Multiaddr, NetworkError> {
        let bound = self.call(|reply| Command::Listen { addr, reply }).await?;
        // QUIC dials go out through the listening socket too, so this covers all mesh traffic.
        let mut udp_port = None;
        for protocol in bound.iter() {
            match protocol {
                libp2p::multiaddr::Protocol::Udp(port) => udp_port = Some(port),
                libp2p::multiaddr::Protocol::QuicV1 => {
                    if let Some(port) = udp_port {
                        let changed = sockets::enlarge_udp_buffers(port, sockets::QUIC_SOCKET_BUFFER_BYTES);
                        tracing::debug!(port, changed, "QUIC socket buffers enlarged");
                    }
                }
                _ => {}
            }
        }
        Ok(bound)
    }

    /// The addresses this node currently listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::ListenAddrs { reply: tx }).await.map_err(|_| NetworkError::EventLoopStopped)?;
        rx.await.map_err(|_| NetworkError::EventLoopStopped)
    }

    /// Dials `addr` and waits until a connection is established; returns the remote peer
    /// id. If `addr` ends in `/p2p/<id>`, the remote must be that peer.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetworkError> {
        self.call(|reply| Command::Dial { addr, reply }).await
    }

    /// Announces in the DHT that this node provides `release`; returns when the provider
    /// record has been stored locally and offered to the closest peers.
    pub async fn start_providing(&self, release: ReleaseId) -> Result<(), NetworkError> {
        self.call(|reply| Command::StartProviding { release, reply }).await
    }

    /// Providers of `release` known to the DHT: the first non-empty set found, or an empty
    /// set once the query has finished without one.
    pub async fn get_providers(&self, release: ReleaseId) -> Result<HashSet<PeerId>, NetworkError> {
        self.call(|reply| Command::GetProviders { release, reply }).await
    }

    /// Publishes a release announcement on [`RELEASES_TOPIC`]; fails if no peer subscribes.
    pub async fn publish_announcement(&self, bytes: Vec<u8>) -> Result<(), NetworkError> {
        if bytes.len() > MAX_ANNOUNCEMENT_BYTES {
            return Err(NetworkError::AnnouncementTooLarge(bytes.len()));
        }
        self.call(|reply| Command::Publish { bytes, reply }).await
    }

    /// Asks `peer` for chunk ranges. A request over the wire limits is refused by the codec
    /// before anything is sent ([`NetworkError::Request`] with an I/O error).
    pub async fn request_chunks(&self, peer: PeerId, request: ChunkRequest) -> Result<ChunkResponse, NetworkError> {
        self.call(|reply| Command::RequestChunks { peer, request, reply }).await
    }

    /// Asks `peer` which chunks of `release` it holds.
    pub async fn request_have(&self, peer: PeerId, release: ReleaseId) -> Result<HaveResponse, NetworkError> {
        let request = HaveRequest { release };
        self.call(|reply| Command::RequestHave { peer, request, reply }).await
    }

    /// Answers an inbound chunk request.
    pub async fn respond_chunks(&self, reply_to: ChunkReply, response: ChunkResponse) -> Result<(), NetworkError> {
        self.call(|reply| Command::RespondChunks { reply_to, response, reply }).await
    }

    /// Answers an inbound have request.
    pub async fn respond_have(&self, reply_to: HaveReply, response: HaveResponse) -> Result<(), NetworkError> {
        self.call(|reply| Command::RespondHave { reply_to, response, reply }).await
    }

    /// Asks `peer` for a repository file (unverified; the caller checks it).
    pub async fn request_meta(&self, peer: PeerId, name: &str) -> Result<MetaResponse, NetworkError> {
        let request = MetaRequest { name: name.to_owned() };
        self.call(|reply| Command::RequestMeta { peer, request, reply }).await
    }

    /// Answers an inbound repository file request.
    pub async fn respond_meta(&self, reply_to: MetaReply, response: MetaResponse) -> Result<(), NetworkError> {
        self.call(|reply| Command::RespondMeta { reply_to, response, reply }).await
    }

    /// Sends a batch of device status reports to `peer` (the origin); the answer says how
    /// many from the batch's start it stored. A batch over the wire limits is refused by the
    /// codec before anything is sent.
    pub async fn send_status(&self, peer: PeerId, request: StatusBatch) -> Result<StatusAck, NetworkError> {
        self.call(|reply| Command::SendStatus { peer, request, reply }).await
    }

    /// Answers an inbound status batch.
    pub async fn respond_status(&self, reply_to: StatusReply, response: StatusAck) -> Result<(), NetworkError> {
        self.call(|reply| Command::RespondStatus { reply_to, response, reply }).await
    }

    /// Closes every connection to `peer` (it sent data that failed verification).
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.commands.send(Command::Disconnect { peer }).await.map_err(|_| NetworkError::EventLoopStopped)
    }

    /// Peers with at least one open connection, with their site if identified.
    pub async fn connected_peers(&self) -> Result<Vec<ConnectedPeer>, NetworkError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::ConnectedPeers { reply: tx }).await.map_err(|_| NetworkError::EventLoopStopped)?;
        rx.await.map_err(|_| NetworkError::EventLoopStopped)
    }
}

/// Builds the swarm for `keypair` and `config`.
///
/// Returns the client, the event receiver and the event loop; spawn `event_loop.run()` on a
/// tokio runtime. The loop stops when every client has been dropped.
pub fn new(
    keypair: Keypair,
    config: NetworkConfig,
) -> Result<(NetworkClient, mpsc::Receiver<NetworkEvent>, EventLoop), NetworkError> {
    let local_peer_id = keypair.public().to_peer_id();
    // Built before the swarm builder so its errors keep their type.
    let behaviour = Behaviour::new(&keypair, &config)?;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| NetworkError::Setup(format!("tcp transport: {e}")))?
        .with_quic()
        .with_behaviour(|_| behaviour)
        .map_err(|e| NetworkError::Setup(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        .build();

    let (command_tx, command_rx) = mpsc::channel(config.command_capacity.max(1));
    let (event_tx, event_rx) = mpsc::channel(config.event_capacity.max(1));
    let client = NetworkClient { commands: command_tx, local_peer_id };
    Ok((client, event_rx, EventLoop::new(swarm, command_rx, event_tx, config.max_pending)))
}
