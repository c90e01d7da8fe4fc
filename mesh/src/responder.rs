//! How a role answers peers: the edge node from its cache and mirror, the origin straight
//! from the seeder's repository. The mesh owns the wire and the event loop; what is served
//! is the role's, behind this trait.

use std::future::Future;

use libp2p::PeerId;

use crate::{
    ChunkRequest, ChunkResponse, HaveRequest, HaveResponse, InboundRequest, MetaRequest, MetaResponse, NetworkClient,
    StatusAck, StatusBatch,
};

/// What a role answers to each kind of peer request. Each method returns a future that owns
/// what it needs (it runs on its own task, never on the event loop), so a slow disk delays
/// only that answer.
pub trait Responder: Send + Sync + 'static {
    /// A repository file (`metadata/...`, `targets/...`); `body: None` when absent. The
    /// requester verifies what it gets.
    fn meta(&self, peer: PeerId, request: MetaRequest) -> impl Future<Output = MetaResponse> + Send + 'static;

    /// Chunk ranges: each answered `Ok`, `NotFound` or `Busy` (see [`crate::chunk_server`]).
    fn chunks(&self, peer: PeerId, request: ChunkRequest) -> impl Future<Output = ChunkResponse> + Send + 'static;

    /// Which chunks of a release we hold, as a bitfield in manifest order.
    fn have(&self, peer: PeerId, request: HaveRequest) -> impl Future<Output = HaveResponse> + Send + 'static;

    /// Device status reports an edge node forwards (store and forward toward the origin).
    /// Answer `StatusAck { stored: n }` once the first `n` reports of the batch are durable
    /// here (or were refused for good: forged, replayed, unenrolled); the sender drops
    /// exactly those `n` and sends the rest again later, so `n` must never count a report
    /// that is not yet on disk. The default stores nothing (`stored: 0`): only the origin
    /// accepts reports; an edge node does not take them from peers.
    fn status(&self, peer: PeerId, request: StatusBatch) -> impl Future<Output = StatusAck> + Send + 'static {
        let _ = (peer, request);
        std::future::ready(StatusAck { stored: 0 })
    }
}

impl NetworkClient {
    /// Answers `inbound` through `responder` on a task of its own, so the caller (a role's
    /// main loop) never waits for a disk read. A response the requester no longer waits for
    /// is dropped.
    pub fn answer(&self, responder: &impl Responder, inbound: InboundRequest) {
        let client = self.clone();
        match inbound {
            InboundRequest::Chunks { peer, request, reply } => {
                let response = responder.chunks(peer, request);
                tokio::spawn(async move {
                    let _ = client.respond_chunks(reply, response.await).await;
                });
            }
            InboundRequest::Have { peer, request, reply } => {
                let response = responder.have(peer, request);
                tokio::spawn(async move {
                    let _ = client.respond_have(reply, response.await).await;
                });
            }
            InboundRequest::Meta { peer, request, reply } => {
                let response = responder.meta(peer, request);
                tokio::spawn(async move {
                    let _ = client.respond_meta(reply, response.await).await;
                });
            }
            InboundRequest::Status { peer, request, reply } => {
                let response = responder.status(peer, request);
                tokio::spawn(async move {
                    let _ = client.respond_status(reply, response.await).await;
                });
            }
        }
    }
}
