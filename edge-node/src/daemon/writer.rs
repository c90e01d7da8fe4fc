//! The store writer: takes verified chunks in arrival order and writes them in groups, one
//! pack append and `fdatasync` per group (group commit), so a fast mesh does not turn into one sync
//! per response. Reports each group `Written` (or `StoreFailed`) to the main loop, and
//! indexes chunks only once they are durable.

use bytes::Bytes;
use protocol::ChunkId;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::{unix_micros, Internal};
use crate::index::StoreIndex;
use crate::metrics::Metrics;
use chunk_store::ChunkStore;

/// Verified chunk bytes waiting to be written, beyond which new chunk requests wait: bounds
/// the memory held when the disk is slower than the mesh.
pub(super) const MAX_UNWRITTEN_BYTES: usize = 256 << 20;
/// Most bytes one store write (one `fdatasync`) takes; more waits for the next group.
const MAX_WRITE_GROUP_BYTES: usize = 64 << 20;
/// Groups written at once: while one waits for its `fdatasync`, the next is appended.
const WRITE_GROUPS_IN_FLIGHT: usize = 3;

/// Memory budget held by received chunks until they are written (or dropped).
pub(super) type Budget = Arc<OwnedSemaphorePermit>;

/// One verified chunk for the writer.
pub(super) struct WriteJob {
    pub(super) id: ChunkId,
    pub(super) bytes: Bytes,
    pub(super) _budget: Budget,
}

/// Starts the writer; chunks sent to the returned channel are written in groups.
pub(super) fn spawn(
    store: ChunkStore,
    index: StoreIndex,
    tx: mpsc::Sender<Internal>,
    metrics: Arc<Metrics>,
) -> mpsc::UnboundedSender<WriteJob> {
    let (jobs_tx, mut jobs) = mpsc::unbounded_channel::<WriteJob>();
    let in_flight = Arc::new(Semaphore::new(WRITE_GROUPS_IN_FLIGHT));
    tokio::spawn(async move {
        loop {
            // Wait for a group slot first, so jobs keep accumulating into a bigger group
            // while all slots are busy.
            let Ok(slot) = in_flight.clone().acquire_owned().await else { break };
            let Some(first) = jobs.recv().await else { break };
            let mut group = vec![first];
            let mut bytes = group[0].bytes.len();
            while bytes < MAX_WRITE_GROUP_BYTES {
                match jobs.try_recv() {
                    Ok(job) => {
                        bytes += job.bytes.len();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            let ids: Vec<ChunkId> = group.iter().map(|j| j.id).collect();
            let (store, index, tx, metrics) = (store.clone(), index.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let written = tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    let batch: Vec<(ChunkId, &[u8])> = group.iter().map(|j| (j.id, j.bytes.as_ref())).collect();
                    store.put_batch(&batch)?;
                    let put_ms = started.elapsed().as_millis() as u64;
                    // Indexed only once the chunks are durable.
                    let lens: Vec<(ChunkId, u64)> = batch.iter().map(|(id, b)| (*id, b.len() as u64)).collect();
                    index.stored(&lens, unix_micros())?;
                    debug!(
                        chunks = batch.len(),
                        put_ms,
                        total_ms = started.elapsed().as_millis() as u64,
                        "store group written"
                    );
                    anyhow::Ok(())
                    // `group` (and the memory budget its jobs hold) is dropped here.
                })
                .await;
                match written {
                    Ok(Ok(())) => {
                        Metrics::add(&metrics.chunks_stored, ids.len() as u64);
                        Metrics::add(&metrics.bytes_stored, bytes as u64);
                        let _ = tx.send(Internal::Written(ids)).await;
                    }
                    Ok(Err(e)) => {
                        warn!("writing chunks to the store failed: {e:#}");
                        let _ = tx.send(Internal::StoreFailed(ids)).await;
                    }
                    Err(_) => {
                        warn!("writing chunks to the store failed");
                        let _ = tx.send(Internal::StoreFailed(ids)).await;
                    }
                }
            });
        }
    });
    jobs_tx
}
