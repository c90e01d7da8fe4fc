//! The task that owns the swarm: selects between swarm events and client commands.

use std::{
    collections::{HashMap, HashSet},
    io,
};

use futures::StreamExt;
use libp2p::{
    core::transport::ListenerId,
    gossipsub, identify, kad,
    request_response::{self, OutboundRequestId},
    swarm::{dial_opts::DialOpts, ConnectionId, SwarmEvent},
    Multiaddr, PeerId, Swarm, TransportError,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{
    behaviour::{release_key, Behaviour, BehaviourEvent, KAD_PROTOCOL, RELEASES_TOPIC},
    ChunkReply, ChunkResponse, ChunkResult, Command, ConnectedPeer, HaveReply, HaveResponse, InboundRequest, MetaReply,
    MetaRequest, MetaResponse, NetworkError, NetworkEvent, Reply, SiteName, StatusAck, StatusBatch, StatusReply,
};

/// Most addresses taken from one identify message into the DHT routing table; identify
/// data comes from the peer and must not grow our tables without bound.
const MAX_IDENTIFY_ADDRS: usize = 16;

/// Drives the swarm. Spawn [`EventLoop::run`]; it returns when all clients are dropped.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetworkEvent>,
    max_pending: usize,
    /// Peers with an open connection: site (once identified) and open connection count.
    peers: HashMap<PeerId, (Option<SiteName>, u32)>,
    pending_listen: HashMap<ListenerId, Reply<Multiaddr>>,
    pending_dial: HashMap<ConnectionId, Reply<PeerId>>,
    pending_start_providing: HashMap<kad::QueryId, Reply<()>>,
    pending_get_providers: HashMap<kad::QueryId, Reply<HashSet<PeerId>>>,
    pending_chunks: HashMap<OutboundRequestId, Reply<ChunkResponse>>,
    pending_have: HashMap<OutboundRequestId, Reply<HaveResponse>>,
    pending_meta: HashMap<OutboundRequestId, Reply<MetaResponse>>,
    pending_status: HashMap<OutboundRequestId, Reply<StatusAck>>,
    dropped_events: u64,
}

impl EventLoop {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetworkEvent>,
        max_pending: usize,
    ) -> Self {
        EventLoop {
            swarm,
            commands,
            events,
            max_pending,
            peers: HashMap::new(),
            pending_listen: HashMap::new(),
            pending_dial: HashMap::new(),
            pending_start_providing: HashMap::new(),
            pending_get_providers: HashMap::new(),
            pending_chunks: HashMap::new(),
            pending_have: HashMap::new(),
            pending_meta: HashMap::new(),
            pending_status: HashMap::new(),
            dropped_events: 0,
        }
    }

    /// Runs until every [`super::NetworkClient`] has been dropped.
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => return,
                },
            }
        }
    }

    fn pending_count(&self) -> usize {
        self.pending_listen.len()
            + self.pending_dial.len()
            + self.pending_start_providing.len()
            + self.pending_get_providers.len()
            + self.pending_chunks.len()
            + self.pending_have.len()
            + self.pending_meta.len()
            + self.pending_status.len()
    }

    /// Hands an event to the application without waiting (see the module's invariant).
    /// Returns the event if the channel is full or closed.
    fn emit(&mut self, event: NetworkEvent) -> Option<NetworkEvent> {
        match self.events.try_send(event) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.dropped_events += 1;
                warn!(dropped_events = self.dropped_events, "application is not keeping up; network event dropped");
                Some(event)
            }
            // The application stopped listening; it may still be using the client.
            Err(mpsc::error::TrySendError::Closed(event)) => Some(event),
        }
    }

    fn handle_command(&mut self, command: Command) {
        // Commands that wait on the network take a pending slot; refuse new ones when full
        // so a stuck peer or DHT cannot grow our maps without bound.
        let needs_slot = matches!(
            command,
            Command::Listen { .. }
                | Command::Dial { .. }
                | Command::StartProviding { .. }
                | Command::GetProviders { .. }
                | Command::RequestChunks { .. }
                | Command::RequestHave { .. }
                | Command::RequestMeta { .. }
                | Command::SendStatus { .. }
        );
        if needs_slot && self.pending_count() >= self.max_pending {
            refuse(command, NetworkError::TooManyPending);
            return;
        }
        match command {
            Command::Listen { addr, reply } => match self.swarm.listen_on(addr) {
                Ok(listener_id) => {
                    self.pending_listen.insert(listener_id, reply);
                }
                Err(TransportError::MultiaddrNotSupported(addr)) => {
                    let error = io::Error::new(io::ErrorKind::Unsupported, format!("cannot listen on {addr}"));
                    let _ = reply.send(Err(NetworkError::Listen(error)));
                }
                Err(TransportError::Other(error)) => {
                    let _ = reply.send(Err(NetworkError::Listen(error)));
                }
            },
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { addr, reply } => {
                let opts = DialOpts::from(addr);
                let connection_id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dial.insert(connection_id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetworkError::Dial(e)));
                    }
                }
            }
            Command::StartProviding { release, reply } => {
                match self.swarm.behaviour_mut().kademlia.start_providing(release_key(&release)) {
                    Ok(query_id) => {
                        self.pending_start_providing.insert(query_id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetworkError::Provide(e.to_string())));
                    }
                }
            }
            Command::GetProviders { release, reply } => {
                let query_id = self.swarm.behaviour_mut().kademlia.get_providers(release_key(&release));
                self.pending_get_providers.insert(query_id, reply);
            }
            Command::Publish { bytes, reply } => {
                let topic = gossipsub::IdentTopic::new(RELEASES_TOPIC);
                let result = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes);
                let _ = reply.send(result.map(|_| ()).map_err(NetworkError::Publish));
            }
            Command::RequestChunks { peer, request, reply } => {
                let request_id = self.swarm.behaviour_mut().chunks.send_request(&peer, request);
                self.pending_chunks.insert(request_id, reply);
            }
            Command::RequestHave { peer, request, reply } => {
                let request_id = self.swarm.behaviour_mut().have.send_request(&peer, request);
                self.pending_have.insert(request_id, reply);
            }
            Command::RespondChunks { reply_to, response, reply } => {
                let result = self.swarm.behaviour_mut().chunks.send_response(reply_to.0, response);
                let _ = reply.send(result.map_err(|_| NetworkError::ResponseNotSent));
            }
            Command::RespondHave { reply_to, response, reply } => {
                let result = self.swarm.behaviour_mut().have.send_response(reply_to.0, response);
                let _ = reply.send(result.map_err(|_| NetworkError::ResponseNotSent));
            }
            Command::RequestMeta { peer, request, reply } => {
                let request_id = self.swarm.behaviour_mut().meta.send_request(&peer, request);
                self.pending_meta.insert(request_id, reply);
            }
            Command::RespondMeta { reply_to, response, reply } => {
                let result = self.swarm.behaviour_mut().meta.send_response(reply_to.0, response);
                let _ = reply.send(result.map_err(|_| NetworkError::ResponseNotSent));
            }
            Command::SendStatus { peer, request, reply } => {
                let request_id = self.swarm.behaviour_mut().status.send_request(&peer, request);
                self.pending_status.insert(request_id, reply);
            }
            Command::RespondStatus { reply_to, response, reply } => {
                let result = self.swarm.behaviour_mut().status.send_response(reply_to.0, response);
                let _ = reply.send(result.map_err(|_| NetworkError::ResponseNotSent));
            }
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::ConnectedPeers { reply } => {
                let peers = self
                    .peers
                    .iter()
                    .map(|(peer, (site, _))| ConnectedPeer { peer: *peer, site: site.clone() })
                    .collect();
                let _ = reply.send(peers);
            }
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => self.handle_identify(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kademlia(event)) => self.handle_kademlia(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => self.handle_gossipsub(event),
            SwarmEvent::Behaviour(BehaviourEvent::Chunks(event)) => self.handle_chunks(event),
            SwarmEvent::Behaviour(BehaviourEvent::Have(event)) => self.handle_have(event),
            SwarmEvent::Behaviour(BehaviourEvent::Meta(event)) => self.handle_meta(event),
            SwarmEvent::Behaviour(BehaviourEvent::Status(event)) => self.handle_status(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => self.handle_mdns(event),
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, .. } => {
                self.peers.entry(peer_id).or_insert((None, 0)).1 += 1;
                if let Some(reply) = self.pending_dial.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, error, .. } => {
                if let Some(reply) = self.pending_dial.remove(&connection_id) {
                    let _ = reply.send(Err(NetworkError::Dial(error)));
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                if num_established == 0 {
                    self.peers.remove(&peer_id);
                    let _ = self.emit(NetworkEvent::PeerDisconnected { peer: peer_id });
                } else if let Some(entry) = self.peers.get_mut(&peer_id) {
                    entry.1 = num_established;
                }
            }
            SwarmEvent::NewListenAddr { listener_id, address } => {
                debug!(%address, "listening");
                if let Some(reply) = self.pending_listen.remove(&listener_id) {
                    let _ = reply.send(Ok(address));
                }
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                if let Some(reply) = self.pending_listen.remove(&listener_id) {
                    let error = reason.err().unwrap_or_else(|| io::Error::other("listener closed"));
                    let _ = reply.send(Err(NetworkError::Listen(error)));
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(reply) = self.pending_listen.remove(&listener_id) {
                    let _ = reply.send(Err(NetworkError::Listen(error)));
                }
            }
            other => debug!(event = ?other, "swarm event"),
        }
    }

    fn handle_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else {
            return;
        };
        let origin_site = SiteName::from_origin_agent_version(&info.agent_version);
        let origin = origin_site.is_some();
        let site = SiteName::from_agent_version(&info.agent_version).or(origin_site);
        if let Some(entry) = self.peers.get_mut(&peer_id) {
            entry.0 = site.clone();
        }
        // Peer routing: a peer that speaks our DHT is added with the addresses it listens on.
        if info.protocols.contains(&KAD_PROTOCOL) {
            for addr in info.listen_addrs.iter().take(MAX_IDENTIFY_ADDRS) {
                self.swarm.behaviour_mut().kademlia.add_address(&peer_id, addr.clone());
            }
        }
        let mut addrs = info.listen_addrs;
        addrs.truncate(MAX_IDENTIFY_ADDRS);
        let _ = self.emit(NetworkEvent::PeerIdentified { peer: peer_id, site, origin, addrs });
    }

    fn handle_kademlia(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed { id, result, step, .. } = event else {
            return;
        };
        match result {
            kad::QueryResult::StartProviding(result) => {
                if let Some(reply) = self.pending_start_providing.remove(&id) {
                    let _ = reply.send(result.map(|_| ()).map_err(|e| NetworkError::Provide(e.to_string())));
                }
            }
            kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) => {
                if providers.is_empty() {
                    return;
                }
                if let Some(reply) = self.pending_get_providers.remove(&id) {
                    let _ = reply.send(Ok(providers));
                    // We answer with the first providers found; walking the rest of the
                    // DHT would only delay other queries.
                    if let Some(mut query) = self.swarm.behaviour_mut().kademlia.query_mut(&id) {
                        query.finish();
                    }
                }
            }
            // Finished without (further) providers, or failed (timeout): whatever was not
            // answered yet gets the empty set.
            kad::QueryResult::GetProviders(result) if step.last || result.is_err() => {
                if let Some(reply) = self.pending_get_providers.remove(&id) {
                    let _ = reply.send(Ok(HashSet::new()));
                }
            }
            _ => {}
        }
    }

    fn handle_gossipsub(&mut self, event: gossipsub::Event) {
        let releases = gossipsub::IdentTopic::new(RELEASES_TOPIC).hash();
        match event {
            gossipsub::Event::Message { message, .. } if message.topic == releases => {
                let _ = self.emit(NetworkEvent::Announcement { source: message.source, bytes: message.data });
            }
            gossipsub::Event::Subscribed { peer_id, topic } if topic == releases => {
                let _ = self.emit(NetworkEvent::AnnouncementSubscriber { peer: peer_id });
            }
            _ => {}
        }
    }

    fn handle_chunks(&mut self, event: request_response::Event<super::ChunkRequest, ChunkResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let busy: Vec<_> = request
                        .chunks
                        .iter()
                        .map(|r| super::ChunkItem { id: r.id, result: ChunkResult::Busy })
                        .collect();
                    let event =
                        NetworkEvent::Inbound(InboundRequest::Chunks { peer, request, reply: ChunkReply(channel) });
                    // The application is behind: say Busy at once rather than letting the
                    // requester wait for its timeout.
                    if let Some(NetworkEvent::Inbound(InboundRequest::Chunks { reply, .. })) = self.emit(event) {
                        let busy = ChunkResponse { items: busy };
                        let _ = self.swarm.behaviour_mut().chunks.send_response(reply.0, busy);
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.pending_chunks.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some(reply) = self.pending_chunks.remove(&request_id) {
                    let _ = reply.send(Err(NetworkError::Request(error)));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound chunk request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn handle_have(&mut self, event: request_response::Event<super::HaveRequest, HaveResponse>) {
        // If the application is behind, the dropped handle fails the request fast.
        let inbound = settle("have", event, &mut self.pending_have, |peer, request, channel| InboundRequest::Have {
            peer,
            request,
            reply: HaveReply(channel),
        });
        if let Some(inbound) = inbound {
            let _ = self.emit(NetworkEvent::Inbound(inbound));
        }
    }

    fn handle_meta(&mut self, event: request_response::Event<MetaRequest, MetaResponse>) {
        let inbound = settle("meta", event, &mut self.pending_meta, |peer, request, channel| InboundRequest::Meta {
            peer,
            request,
            reply: MetaReply(channel),
        });
        if let Some(inbound) = inbound {
            let _ = self.emit(NetworkEvent::Inbound(inbound));
        }
    }

    fn handle_status(&mut self, event: request_response::Event<StatusBatch, StatusAck>) {
        // A dropped handle fails the request fast; the sender keeps its reports for later.
        let inbound = settle("status", event, &mut self.pending_status, |peer, request, channel| {
            InboundRequest::Status { peer, request, reply: StatusReply(channel) }
        });
        if let Some(inbound) = inbound {
            let _ = self.emit(NetworkEvent::Inbound(inbound));
        }
    }

    fn handle_mdns(&mut self, event: libp2p::mdns::Event) {
        let libp2p::mdns::Event::Discovered(found) = event else {
            return;
        };
        for (peer, addr) in found {
            if self.peers.contains_key(&peer) || peer == *self.swarm.local_peer_id() {
                continue;
            }
            self.swarm.behaviour_mut().kademlia.add_address(&peer, addr.clone());
            let opts = DialOpts::peer_id(peer).addresses(vec![addr]).build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%peer, %e, "dialing mDNS peer failed");
            }
        }
    }
}

/// Answers a command that was not executed.
fn refuse(command: Command, error: NetworkError) {
    match command {
        Command::Dial { reply, .. } => drop(reply.send(Err(error))),
        Command::StartProviding { reply, .. } => drop(reply.send(Err(error))),
        Command::GetProviders { reply, .. } => drop(reply.send(Err(error))),
        Command::RequestChunks { reply, .. } => drop(reply.send(Err(error))),
        Command::RequestHave { reply, .. } => drop(reply.send(Err(error))),
        Command::RequestMeta { reply, .. } => drop(reply.send(Err(error))),
        Command::SendStatus { reply, .. } => drop(reply.send(Err(error))),
        Command::Listen { reply, .. } => drop(reply.send(Err(error))),
        Command::Publish { reply, .. } => drop(reply.send(Err(error))),
        Command::RespondChunks { reply, .. }
        | Command::RespondHave { reply, .. }
        | Command::RespondMeta { reply, .. }
        | Command::RespondStatus { reply, .. } => drop(reply.send(Err(error))),
        Command::ListenAddrs { .. } | Command::ConnectedPeers { .. } | Command::Disconnect { .. } => {}
    }
}

/// The common part of a request-response event for a protocol whose inbound requests go to
/// the application as they are: an answer or a failure settles our pending request, an
/// inbound request becomes the [`InboundRequest`] `inbound` makes of it.
fn settle<Req, Resp>(
    what: &'static str,
    event: request_response::Event<Req, Resp>,
    pending: &mut HashMap<OutboundRequestId, Reply<Resp>>,
    inbound: impl FnOnce(libp2p::PeerId, Req, request_response::ResponseChannel<Resp>) -> InboundRequest,
) -> Option<InboundRequest> {
    match event {
        request_response::Event::Message { peer, message, .. } => match message {
            request_response::Message::Request { request, channel, .. } => {
                return Some(inbound(peer, request, channel))
            }
            request_response::Message::Response { request_id, response } => {
                if let Some(reply) = pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
        },
        request_response::Event::OutboundFailure { request_id, error, .. } => {
            if let Some(reply) = pending.remove(&request_id) {
                let _ = reply.send(Err(NetworkError::Request(error)));
            }
        }
        request_response::Event::InboundFailure { peer, error, .. } => {
            debug!(%peer, %error, "inbound {what} request failed");
        }
        request_response::Event::ResponseSent { .. } => {}
    }
    None
}
