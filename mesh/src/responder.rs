//! How a role answers peers: the edge node from its cache and mirror, the origin straight
//! from the seeder's repository. The mesh owns the wire and the event loop; what is served
//! is the role's, behind this trait.

use std::future::Future;

use libp2p::PeerId;

use crate::{
    ChunkRequest, ChunkResponse, HaveRequest, HaveResponse, InboundRequest, MetaRequest, MetaResponse, NetworkClient,
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
        }
    }
}
