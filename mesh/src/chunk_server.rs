//! Serving peers' chunk requests (`/otamesh/chunks/1`), for edge nodes and the origin alike:
//! bounded in how many run at once and sized before anything is read.
//!
//! Why: a peer's request names up to 256 ranges. Read naively, 256 copies of one 4 MiB chunk
//! (or `length = 0` ranges, which used to count as zero bytes) made the node read a gigabyte
//! per request, and requests were served with no concurrency bound. Now a request is sized
//! from file lengths first (duplicates collapse to one read, `length = 0` is the rest of the
//! stored chunk), both what it reads and what it sends are capped at
//! [`MAX_BATCH_BYTES`] (the rest answered `Busy`), and at most `mesh_max_concurrent_serves`
//! requests are read at once. Up to [`QUEUED_PER_SERVE`] times as many wait their turn (a
//! burst from a few peers is served, not refused); beyond that a request is answered
//! all-`Busy` at once, so the requester tries another source instead of waiting. Memory for
//! serving peers is thus at most about `mesh_max_concurrent_serves × 2 × 8 MiB` (reads plus
//! response) while reading, plus the waiting requests themselves (about 10 KiB each).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use protocol::ChunkId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use chunk_store::{ChunkStore, ReadError};

use crate::messages::MAX_BATCH_BYTES;
use crate::{ChunkItem, ChunkRequest, ChunkResponse, ChunkResult};

/// Default for `mesh_max_concurrent_serves`: two cores are saturated by far fewer readers.
pub const DEFAULT_MAX_CONCURRENT_SERVES: usize = 8;

/// Requests that may wait for a serving slot, per slot.
pub const QUEUED_PER_SERVE: usize = 4;

/// What serving one request produced: the response, the chunks served (for recency) and the
/// chunks found damaged (deleted and counted by the store; the cache must forget them).
pub struct Served {
    /// The answer for the peer.
    pub response: ChunkResponse,
    /// Chunks read and sent.
    pub served: Vec<ChunkId>,
    /// Chunks that failed verification on read.
    pub damaged: Vec<ChunkId>,
}

/// What serving counts; the edge node exports it, the origin keeps nothing.
pub trait ServeMetrics: Send + Sync + 'static {
    /// A range answered from the store with `bytes` bytes.
    fn hit(&self, bytes: u64);
    /// A range we could not answer (not stored).
    fn miss(&self);
    /// A request answered all-`Busy` because every slot and the queue were taken.
    fn busy(&self);
}

/// Counts nothing.
impl ServeMetrics for () {
    fn hit(&self, _: u64) {}
    fn miss(&self) {}
    fn busy(&self) {}
}

/// Serves peers' chunk requests from a store, at most `max_concurrent` at once.
#[derive(Clone)]
pub struct ChunkServer {
    store: ChunkStore,
    metrics: Arc<dyn ServeMetrics>,
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot now.
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
}

impl ChunkServer {
    /// A server over `store`; `max_concurrent` requests (at least 1) are read at once.
    pub fn new(store: ChunkStore, metrics: Arc<dyn ServeMetrics>, max_concurrent: usize) -> Self {
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        let slots = Arc::new(Semaphore::new(max_concurrent));
        let max_waiting = max_concurrent.saturating_mul(QUEUED_PER_SERVE);
        ChunkServer { store, metrics, slots, waiting: Arc::default(), max_waiting }
    }

    /// A serving slot, or `None` when `max_concurrent` requests are being served.
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// A serving slot: at once, or after waiting in a queue that is not full; `None` when
    /// the queue is full too.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        if let Some(slot) = self.try_slot() {
            return Some(slot);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let slot = self.slots.clone().acquire_owned().await.ok();
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        slot
    }

    /// Answers `request`: all `Busy` without reading anything if every slot is taken and the
    /// queue is full, otherwise sized, read (on a blocking thread) and built while a slot is
    /// held.
    pub async fn answer(&self, request: ChunkRequest) -> Served {
        let Some(slot) = self.slot().await else {
            self.metrics.busy();
            return Served { response: all_busy(&request), served: Vec::new(), damaged: Vec::new() };
        };
        let (store, metrics) = (self.store.clone(), self.metrics.clone());
        let busy = all_busy(&request);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            serve_chunks(&store, &*metrics, &request)
        })
        .await
        .unwrap_or(Served { response: busy, served: Vec::new(), damaged: Vec::new() })
    }
}

/// Every range answered `Busy`.
fn all_busy(request: &ChunkRequest) -> ChunkResponse {
    ChunkResponse { items: request.chunks.iter().map(|r| ChunkItem { id: r.id, result: ChunkResult::Busy }).collect() }
}

/// Answers a peer's chunk request from the store, sized before reading (see the module doc).
/// Bodies are verified by the store on their first read; damaged ones are deleted, counted
/// and returned so the cache forgets them.
pub fn serve_chunks(store: &ChunkStore, metrics: &dyn ServeMetrics, request: &ChunkRequest) -> Served {
    let max_len = u64::from(protocol::manifest::limits::MAX_STORED_CHUNK_BYTES);
    let budget = MAX_BATCH_BYTES as usize;
    // Sizes of distinct chunks, from file lengths: nothing is read yet.
    let mut sizes: HashMap<ChunkId, Option<u64>> = HashMap::with_capacity(request.chunks.len());
    for range in &request.chunks {
        sizes.entry(range.id).or_insert_with(|| store.len(&range.id).map(|len| len.min(max_len + 1)));
    }
    // Plan: which ranges are served, and which distinct chunks are read for them.
    let (mut sent, mut read) = (0usize, 0usize);
    let mut to_read: HashMap<ChunkId, u64> = HashMap::new();
    let plans: Vec<Option<(usize, usize)>> = request
        .chunks
        .iter()
        .map(|range| {
            let len = sizes.get(&range.id).copied().flatten()?;
            let stored = usize::try_from(len).ok()?;
            // Outside the stored chunk: no honest peer asks that; answered NotFound.
            let std::ops::Range { start, end } = range.bounds(stored)?;
            let extra_read = if to_read.contains_key(&range.id) { 0 } else { stored };
            if sent + (end - start) > budget || read + extra_read > budget {
                return Some((usize::MAX, 0)); // Busy: over this request's budget
            }
            sent += end - start;
            read += extra_read;
            to_read.insert(range.id, len);
            Some((start, end))
        })
        .collect();
    // Read each distinct chunk once, no more than its sized length.
    let mut bodies: HashMap<ChunkId, Result<bytes::Bytes, ReadError>> = HashMap::with_capacity(to_read.len());
    let (mut served, mut damaged) = (Vec::new(), Vec::new());
    for (id, len) in &to_read {
        let result = store.get(id, *len);
        match &result {
            Ok(_) => served.push(*id),
            // Deleted and counted in `corrupt_chunks` by the store.
            Err(ReadError::Damaged) => damaged.push(*id),
            Err(ReadError::Missing) => {}
        }
        bodies.insert(*id, result);
    }
    // How many served ranges still need each body: the last one takes it, so a whole-chunk
    // range (nearly every range) hands over the buffer read from disk instead of copying it.
    let mut uses: HashMap<ChunkId, usize> = HashMap::with_capacity(to_read.len());
    for (range, plan) in request.chunks.iter().zip(&plans) {
        if matches!(plan, Some((start, _)) if *start != usize::MAX) {
            *uses.entry(range.id).or_default() += 1;
        }
    }
    let items = request
        .chunks
        .iter()
        .zip(plans)
        .map(|(range, plan)| {
            let result = match plan {
                None => {
                    metrics.miss();
                    ChunkResult::NotFound
                }
                Some((usize::MAX, _)) => ChunkResult::Busy,
                Some((start, end)) => match bodies.get(&range.id) {
                    Some(Ok(bytes)) if end <= bytes.len() => {
                        metrics.hit((end - start) as u64);
                        ChunkResult::Ok(take_or_copy(&mut bodies, &mut uses, range.id, start..end))
                    }
                    Some(Err(ReadError::Missing)) => {
                        metrics.miss();
                        ChunkResult::NotFound
                    }
                    _ => ChunkResult::NotFound,
                },
            };
            ChunkItem { id: range.id, result }
        })
        .collect();
    Served { response: ChunkResponse { items }, served, damaged }
}

/// Bytes `range` of a body read for this request: the body itself, without a copy, when
/// this is its last use and nothing else holds it; a copy otherwise.
fn take_or_copy(
    bodies: &mut HashMap<ChunkId, Result<bytes::Bytes, ReadError>>,
    uses: &mut HashMap<ChunkId, usize>,
    id: ChunkId,
    range: std::ops::Range<usize>,
) -> Vec<u8> {
    let left = uses.get_mut(&id).map(|n| {
        *n = n.saturating_sub(1);
        *n
    });
    if left == Some(0) {
        if let Some(Ok(body)) = bodies.remove(&id) {
            let whole = range.start == 0 && range.end == body.len();
            return Vec::from(if whole { body } else { body.slice(range) });
        }
    }
    match bodies.get(&id) {
        Some(Ok(body)) => body[range].to_vec(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChunkRange;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    /// The counters the edge node keeps for serving.
    #[derive(Default)]
    struct Counts {
        hits: AtomicU64,
        busy: AtomicU64,
    }

    impl ServeMetrics for Counts {
        fn hit(&self, _: u64) {
            self.hits.fetch_add(1, Relaxed);
        }
        fn miss(&self) {}
        fn busy(&self) {
            self.busy.fetch_add(1, Relaxed);
        }
    }

    fn store_with(dir: &std::path::Path, bodies: &[Vec<u8>]) -> (ChunkStore, Arc<Counts>, Vec<ChunkId>) {
        let metrics = Arc::new(Counts::default());
        let store = ChunkStore::open(dir).unwrap();
        let ids: Vec<ChunkId> = bodies.iter().map(|b| ChunkId::of(b)).collect();
        let batch: Vec<(ChunkId, &[u8])> = ids.iter().zip(bodies).map(|(id, b)| (*id, b.as_slice())).collect();
        store.put_batch(&batch).unwrap();
        (store, metrics, ids)
    }

    fn ok_bytes(response: &ChunkResponse) -> usize {
        response.items.iter().map(|i| if let ChunkResult::Ok(b) = &i.result { b.len() } else { 0 }).sum()
    }

    /// 256 `length = 0` ranges of one 1 MiB chunk: sized as 1 MiB each, so 8 are sent and
    /// the rest are Busy; the chunk is read once. The response fits the wire limit (before,
    /// `length = 0` counted as nothing and the response could not even be encoded).
    #[test]
    fn a_peer_naming_one_chunk_256_times_with_length_0_is_sized_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _metrics, ids) = store_with(dir.path(), &[vec![7u8; 1 << 20]]);
        let request = ChunkRequest {
            release: protocol::ReleaseId([7; 32]),
            chunks: vec![ChunkRange { id: ids[0], offset: 0, length: 0 }; 256],
        };
        let served = serve_chunks(&store, &(), &request);
        assert_eq!(served.served, vec![ids[0]]);
        assert_eq!(ok_bytes(&served.response), 8 << 20);
        let busy = served.response.items.iter().filter(|i| i.result == ChunkResult::Busy).count();
        assert_eq!(busy, 248);
        use crate::messages::WireMessage;
        assert!(served.response.encode().is_ok());
    }

    /// A chunk named by several ranges is read once; each range gets its own bytes, whether
    /// the last one takes the buffer read from disk or an earlier one copies from it.
    #[test]
    fn every_range_of_a_chunk_named_twice_gets_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (store, metrics, ids) = store_with(dir.path(), &[body.clone(), vec![5; 10]]);
        let request = ChunkRequest {
            release: protocol::ReleaseId([7; 32]),
            chunks: vec![
                ChunkRange::whole(ids[0]),
                ChunkRange { id: ids[0], offset: 10, length: 20 },
                ChunkRange::whole(ids[1]),
                ChunkRange { id: ids[0], offset: 99_990, length: 0 },
            ],
        };
        let served = serve_chunks(&store, &*metrics, &request);
        let results: Vec<_> = served.response.items.iter().map(|i| i.result.clone()).collect();
        assert_eq!(
            results,
            vec![
                ChunkResult::Ok(body.clone()),
                ChunkResult::Ok(body[10..30].to_vec()),
                ChunkResult::Ok(vec![5; 10]),
                ChunkResult::Ok(body[99_990..].to_vec()),
            ]
        );
        assert_eq!(metrics.hits.load(Relaxed), 4);
    }

    /// Concurrent requests beyond the bound wait in a bounded queue; beyond the queue they are
    /// answered all-Busy at once, nothing read. Once slots free, the queued ones are served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mesh_chunk_requests_beyond_the_concurrency_bound_are_answered_busy() {
        let dir = tempfile::tempdir().unwrap();
        let (store, metrics, ids) = store_with(dir.path(), &[vec![1u8; 4096], vec![2u8; 4096]]);
        let server = ChunkServer::new(store, metrics.clone(), 2);
        let request = ChunkRequest {
            release: protocol::ReleaseId([7; 32]),
            chunks: ids.iter().map(|id| ChunkRange::whole(*id)).collect(),
        };
        // Two serves in progress hold the two slots.
        let held = (server.try_slot().unwrap(), server.try_slot().unwrap());
        // 2 × QUEUED_PER_SERVE more requests queue up...
        let queued: Vec<_> = (0..2 * QUEUED_PER_SERVE)
            .map(|_| {
                let (server, request) = (server.clone(), request.clone());
                tokio::spawn(async move { server.answer(request).await })
            })
            .collect();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while server.waiting.load(Ordering::Acquire) < 2 * QUEUED_PER_SERVE {
            assert!(tokio::time::Instant::now() < deadline, "requests never queued");
            tokio::task::yield_now().await;
        }
        // ...and the next is refused at once.
        let refused = server.answer(request.clone()).await;
        assert!(refused.response.items.iter().all(|i| i.result == ChunkResult::Busy));
        assert!(refused.served.is_empty());
        assert_eq!(metrics.busy.load(Relaxed), 1);
        assert_eq!(metrics.hits.load(Relaxed), 0);
        // Slots free: every queued request is served.
        drop(held);
        for answer in queued {
            let answered = tokio::time::timeout(std::time::Duration::from_secs(10), answer).await.unwrap().unwrap();
            assert_eq!(ok_bytes(&answered.response), 8192);
        }
        assert_eq!(metrics.busy.load(Relaxed), 1);
    }
}
