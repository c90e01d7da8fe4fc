//! What the edge node answers its peers ([`mesh::Responder`]): repository files from its
//! verified mirror, chunk batches from its store (bounded by [`ChunkServer`]), and Have
//! bitfields from the scheduler, which only the main loop may read, so a Have request is
//! asked of the main loop and answered from its reply.

use libp2p::PeerId;
use mesh::chunk_server::{ChunkServer, Served};
use mesh::{ChunkRequest, ChunkResponse, HaveRequest, HaveResponse, MetaRequest, MetaResponse, Responder};
use std::future::Future;
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};

use super::Internal;

/// The edge node's answers to peers; cheap to share, each answer runs on its own task.
pub(super) struct EdgeResponder {
    /// The verified TUF mirror.
    pub(super) mirror: PathBuf,
    /// Serves chunk batches, `mesh_max_concurrent_serves` at once.
    pub(super) chunks: ChunkServer,
    /// The main loop: served and damaged chunks, Have questions.
    pub(super) internal: mpsc::Sender<Internal>,
}

impl Responder for EdgeResponder {
    fn meta(&self, _peer: PeerId, request: MetaRequest) -> impl Future<Output = MetaResponse> + Send + 'static {
        let mirror = self.mirror.clone();
        async move {
            let body = tokio::task::spawn_blocking(move || {
                chunk_store::repo_files::read(&mirror, &request.name, mesh::messages::MAX_META_BYTES as u64)
            })
            .await
            .ok()
            .flatten();
            MetaResponse { body }
        }
    }

    fn chunks(&self, _peer: PeerId, request: ChunkRequest) -> impl Future<Output = ChunkResponse> + Send + 'static {
        let (server, tx) = (self.chunks.clone(), self.internal.clone());
        async move {
            let Served { response, served, damaged } = server.answer(request).await;
            // Recency for the index; damaged files are deleted and the cache must forget them.
            let _ = tx.send(Internal::Served(served)).await;
            if !damaged.is_empty() {
                let _ = tx.send(Internal::StoreFailed(damaged)).await;
            }
            response
        }
    }

    fn have(&self, _peer: PeerId, request: HaveRequest) -> impl Future<Output = HaveResponse> + Send + 'static {
        let tx = self.internal.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            let release = request.release;
            let asked = tx.send(Internal::HaveQuery { release, reply }).await.is_ok();
            // A main loop that stopped holds nothing to offer.
            let bitfield = if asked { answer.await.unwrap_or_default() } else { Vec::new() };
            HaveResponse { release, bitfield }
        }
    }
}
