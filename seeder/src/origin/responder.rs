//! What the origin answers its peers, straight from the repository: files of `metadata/` and
//! `targets/` by the names peers ask for, chunks from `chunks/` through the one chunk store
//! (each body hashed against its name before this process first serves it). Have requests
//! are answered empty: peers treat the origin as holding everything and do not ask.
//!
//! Chunks are rationed over sites ([`protocol::edge::origin_handout`]): each is handed to one
//! requester at a time and the others are answered `Busy`, so they take it from each other
//! and about one copy of a release leaves the origin instead of one per site. Only chunks the
//! repository holds are rationed: any peer can name made-up ids, which would otherwise fill
//! the handout table (past its bound the origin serves everything unrationed) and be
//! answered `Busy`, "held, not now", for chunks the origin does not have. (The chunk server
//! still answers `Busy` to everything while all its serve slots are taken.)
//!
//! It reads the repository and never writes it, and it holds no keys: `keys/` cannot be
//! named by a peer ([`chunk_store::repo_files`] admits only `metadata/` and `targets/`).

use libp2p::PeerId;
use mesh::chunk_server::{ChunkServer, DEFAULT_MAX_CONCURRENT_SERVES};
use mesh::{
    ChunkItem, ChunkRequest, ChunkResponse, ChunkResult, HaveRequest, HaveResponse, MetaRequest, MetaResponse,
    Responder, StatusAck, StatusBatch,
};
use protocol::edge::origin_handout::{HandoutConfig, HandoutStats, OriginHandout};
use protocol::edge::NodeId;
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
    /// The chunk tree `chunks` serves from, asked which requested chunks exist.
    store: ChunkStore,
    /// Where forwarded device status reports are verified again and stored.
    fleet: Arc<Ingestor>,
    /// The site each peer claimed in identify, for the fleet database's edge nodes.
    sites: PeerSites,
    /// Which chunks go to whom now (see the module doc).
    handout: SharedHandout,
    /// The handout's clock starts here.
    started: std::time::Instant,
}

/// The sites peers claim in identify (unverified), filled by the origin's event loop.
/// Bounded by [`MAX_PEER_SITES`]: past it, new peers are recorded without a site.
pub type PeerSites = Arc<Mutex<HashMap<PeerId, String>>>;

/// The origin's handout table, shared with `/metrics`.
pub type SharedHandout = Arc<Mutex<OriginHandout>>;

/// A handout table for `config`.
pub fn shared_handout(config: HandoutConfig) -> SharedHandout {
    Arc::new(Mutex::new(OriginHandout::new(config)))
}

/// The handout's counters and how many chunks it tracks now.
pub fn handout_figures(handout: &SharedHandout) -> (HandoutStats, usize) {
    let table = handout.lock().unwrap_or_else(|p| p.into_inner());
    (table.stats(), table.tracked())
}

/// Most peers whose claimed site is remembered.
pub const MAX_PEER_SITES: usize = 10_000;

impl RepoResponder {
    /// Answers from the repository at `repo`. Its chunk tree is opened read-only: a
    /// concurrent `seeder release add` may have files staged there.
    pub fn new(repo: &Path, fleet: Arc<Ingestor>, sites: PeerSites, handout: SharedHandout) -> Self {
        let store = ChunkStore::open_read_only(repo);
        RepoResponder {
            repo: repo.to_owned(),
            chunks: ChunkServer::new(store.clone(), Arc::new(()), DEFAULT_MAX_CONCURRENT_SERVES),
            store,
            fleet,
            sites,
            handout,
            started: std::time::Instant::now(),
        }
    }

    /// Splits `request` into the ranges handed to `requester` now (by the handout's clock,
    /// started at `clock`) and the chunk ids it is told `Busy` for. `held[i]` says whether the
    /// repository holds the `i`th range's chunk: one it does not hold stays in the request
    /// (the server answers `NotFound`) and takes no place in the table.
    fn ration(
        handout: &SharedHandout,
        clock: std::time::Instant,
        requester: &NodeId,
        mut request: ChunkRequest,
        held: &[bool],
    ) -> (ChunkRequest, Vec<protocol::ChunkId>) {
        let mut table = handout.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock: the table sees its clock move forward only.
        let now = protocol::time::Instant(clock.elapsed().as_micros() as u64);
        let mut busy = Vec::new();
        let mut held = held.iter();
        request.chunks.retain(|range| {
            // (Missing answers, e.g. after a failed lookup, ration as held: the safe side.)
            if !held.next().copied().unwrap_or(true) || table.admit(now, requester, &range.id) {
                return true;
            }
            busy.push(range.id);
            false
        });
        (request, busy)
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

    fn chunks(&self, peer: PeerId, request: ChunkRequest) -> impl Future<Output = ChunkResponse> + Send + 'static {
        let server = self.chunks.clone();
        let (store, handout, clock) = (self.store.clone(), Arc::clone(&self.handout), self.started);
        let requester = NodeId::from_identity(&peer.to_bytes());
        async move {
            let started = std::time::Instant::now();
            // Which chunks exist, when rationing is on: a stat each, off the async threads.
            let rationing = handout.lock().unwrap_or_else(|p| p.into_inner()).config().copies > 0;
            let held: Vec<bool> = if rationing {
                let ids: Vec<protocol::ChunkId> = request.chunks.iter().map(|range| range.id).collect();
                tokio::task::spawn_blocking(move || ids.iter().map(|id| store.len(id).is_some()).collect())
                    .await
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let (handed, busy) = RepoResponder::ration(&handout, clock, &requester, request, &held);
            let mut response = if handed.chunks.is_empty() {
                ChunkResponse { items: Vec::new() }
            } else {
                server.answer(handed).await.response
            };
            tracing::debug!(
                %peer,
                served = response.items.len(),
                busy = busy.len(),
                read_ms = started.elapsed().as_millis() as u64,
                "chunk request answered"
            );
            response.items.extend(busy.into_iter().map(|id| ChunkItem { id, result: ChunkResult::Busy }));
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
