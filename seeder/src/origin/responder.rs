//! What the origin answers its peers, straight from the repository: files of `metadata/` and
//! `targets/` by the names peers ask for, chunks from `chunks/` through the one chunk store
//! (each body hashed against its name before this process first serves it). Have requests
//! are answered empty: peers treat the origin as holding everything and do not ask.
//!
//! It reads the repository and never writes it, and it holds no keys: `keys/` cannot be
//! named by a peer ([`chunk_store::repo_files`] admits only `metadata/` and `targets/`).

use libp2p::PeerId;
use mesh::chunk_server::{ChunkServer, DEFAULT_MAX_CONCURRENT_SERVES};
use mesh::{
    ChunkRequest, ChunkResponse, HaveRequest, HaveResponse, MetaRequest, MetaResponse, Responder, StatusAck,
    StatusBatch,
};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fleet::ingest::{Ingestor, Outcome};
use chunk_store::ChunkStore;

/// The origin's answers to peers.
pub struct RepoResponder {
    repo: PathBuf,
    chunks: ChunkServer,
    /// Where forwarded device status reports are verified again and stored.
    fleet: Arc<Ingestor>,
    /// The site each peer claimed in identify, for the fleet database's edge nodes.
    sites: PeerSites,
}

/// The sites peers claim in identify (unverified), filled by the origin's event loop.
/// Bounded by [`MAX_PEER_SITES`]: past it, new peers are recorded without a site.
pub type PeerSites = Arc<Mutex<HashMap<PeerId, String>>>;

/// Most peers whose claimed site is remembered.
pub const MAX_PEER_SITES: usize = 10_000;

impl RepoResponder {
    /// Answers from the repository at `repo`. Its chunk tree is opened read-only: a
    /// concurrent `seeder release add` may have files staged there.
    pub fn new(repo: &Path, fleet: Arc<Ingestor>, sites: PeerSites) -> Self {
        let store = ChunkStore::open_read_only(repo);
        RepoResponder {
            repo: repo.to_owned(),
            chunks: ChunkServer::new(store, Arc::new(()), DEFAULT_MAX_CONCURRENT_SERVES),
            fleet,
            sites,
        }
    }

    /// Stores a batch of forwarded reports: each verified again (edge nodes are untrusted)
    /// and kept only from enrolled devices. Returns how many, from the batch's start, the
    /// edge may forget: every report up to the first the database could not store (refused
    /// ones count — sending them again changes nothing).
    pub async fn store_reports(fleet: Arc<Ingestor>, reports: Vec<Vec<u8>>) -> u32 {
        let mut outcomes = Vec::with_capacity(reports.len());
        for signed in reports {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let fleet = Arc::clone(&fleet);
            // `submit` blocks while the ingest queue is full.
            let submitted = tokio::task::spawn_blocking(move || {
                fleet.submit(signed, move |outcome| {
                    let _ = tx.send(outcome);
                })
            })
            .await;
            if !matches!(submitted, Ok(Ok(()))) {
                break;
            }
            outcomes.push(rx);
        }
        let mut stored = 0u32;
        for rx in outcomes {
            match rx.await {
                Ok(Outcome::NotStored) | Err(_) => break,
                Ok(outcome) => {
                    if outcome != Outcome::Accepted {
                        tracing::debug!(?outcome, "forwarded status report refused");
                    }
                    stored += 1;
                }
            }
        }
        stored
    }
}

impl Responder for RepoResponder {
    fn meta(&self, _peer: PeerId, request: MetaRequest) -> impl Future<Output = MetaResponse> + Send + 'static {
        let repo = self.repo.clone();
        async move {
            let body = tokio::task::spawn_blocking(move || {
                chunk_store::repo_files::read(&repo, &request.name, mesh::messages::MAX_META_BYTES as u64)
            })
            .await
            .ok()
            .flatten();
            MetaResponse { body }
        }
    }

    fn chunks(&self, _peer: PeerId, request: ChunkRequest) -> impl Future<Output = ChunkResponse> + Send + 'static {
        let server = self.chunks.clone();
        async move {
            let started = std::time::Instant::now();
            let response = server.answer(request).await.response;
            tracing::debug!(read_ms = started.elapsed().as_millis() as u64, "chunk request served");
            response
        }
    }

    fn have(&self, _peer: PeerId, request: HaveRequest) -> impl Future<Output = HaveResponse> + Send + 'static {
        // Answered rather than dropped, so a peer that asks is not left waiting.
        std::future::ready(HaveResponse { release: request.release, bitfield: Vec::new() })
    }

    fn status(&self, peer: PeerId, request: StatusBatch) -> impl Future<Output = StatusAck> + Send + 'static {
        let fleet = Arc::clone(&self.fleet);
        let site = self.sites.lock().unwrap_or_else(|p| p.into_inner()).get(&peer).cloned().unwrap_or_default();
        async move {
            let count = request.reports.len();
            let stored = RepoResponder::store_reports(Arc::clone(&fleet), request.reports).await;
            tracing::debug!(%peer, count, stored, "status reports from an edge node");
            // The edge node's last batch, for the dashboard; a failure here loses no report.
            let peer = peer.to_string();
            let recorded = tokio::task::spawn_blocking(move || {
                fleet.write(move |conn| {
                    crate::fleet::edges::record_batch(
                        conn,
                        &peer,
                        &site,
                        count as u64,
                        stored as u64,
                        crate::time::now_unix(),
                    )
                })
            })
            .await;
            if !matches!(recorded, Ok(Ok(()))) {
                tracing::debug!("the edge node's batch was not recorded");
            }
            StatusAck { stored }
        }
    }
}
