//! Fetching chunks from peers: the scheduler's chunk requests sent, memory for the answer
//! reserved first (so a slow disk slows the mesh instead of filling memory), and every
//! returned chunk checked against its manifest entry before the scheduler hears of it.

use bytes::Bytes;
use protocol::edge::{ChunkOutcome, NodeId, RequestId, SourceClass};
use protocol::manifest::ChunkEntry;
use protocol::{ChunkId, ReleaseId};
use std::collections::HashMap;
use std::sync::Arc;
use tracing::debug;

use super::writer::MAX_UNWRITTEN_BYTES;
use super::{Daemon, Internal};
use crate::metrics::Metrics;
use mesh::{ChunkItem, ChunkRange, ChunkRequest, ChunkResponse, ChunkResult};

/// Per-index outcomes of a chunk response, and the bytes of the chunks that verified.
pub(super) type CheckedResponse = (Vec<(u32, ChunkOutcome)>, Vec<(ChunkId, Bytes)>);

impl Daemon {
    pub(super) fn send_chunks(
        &mut self,
        id: RequestId,
        peer: NodeId,
        release: ReleaseId,
        indices: Vec<u32>,
        class: SourceClass,
    ) {
        let (Some(pid), Some(info)) = (self.peers.get(&peer).copied(), self.releases.get(&release)) else {
            let now = self.now();
            self.scheduler.handle_request_failed(now, id);
            return;
        };
        let entries: Vec<(u32, ChunkEntry)> =
            indices.iter().filter_map(|i| info.entries.get(*i as usize).map(|e| (*i, *e))).collect();
        let request = ChunkRequest {
            release,
            chunks: entries.iter().map(|(_, e)| ChunkRange { id: e.id, offset: 0, length: e.stored_length }).collect(),
        };
        let (client, tx, metrics) = (self.client.clone(), self.internal_tx.clone(), self.metrics.clone());
        let wanted: u64 = entries.iter().map(|(_, e)| u64::from(e.stored_length)).sum();
        let budget = self.unwritten_budget.clone();
        tokio::spawn(async move {
            // Received bytes wait in memory for the writer; when it is behind, ask for no more.
            let permits = u32::try_from(wanted).unwrap_or(u32::MAX).min(MAX_UNWRITTEN_BYTES as u32);
            let Ok(budget) = budget.acquire_many_owned(permits).await else { return };
            let budget = Arc::new(budget);
            let sent = std::time::Instant::now();
            let response = match client.request_chunks(pid, request).await {
                Ok(response) => response,
                Err(e) => {
                    debug!(%pid, %e, "chunk request failed");
                    let _ = tx.send(Internal::ChunksFailed { id }).await;
                    return;
                }
            };
            // Hashing up to 8 MiB is CPU work: keep it off the async workers.
            let checked = tokio::task::spawn_blocking(move || verify_response(&entries, response)).await;
            let Ok((outcomes, verified)) = checked else {
                let _ = tx.send(Internal::ChunksFailed { id }).await;
                return;
            };
            let bytes: u64 = verified.iter().map(|(_, b)| b.len() as u64).sum();
            debug!(%pid, requested = wanted, bytes, elapsed_ms = sent.elapsed().as_millis() as u64, "chunk batch received and verified");
            Metrics::add(&metrics.bytes_in[class as usize], bytes);
            let _ = tx.send(Internal::Chunks { id, outcomes, verified, budget }).await;
        });
    }
}

/// Checks each returned chunk against its manifest entry (length, then blake3).
fn verify_response(entries: &[(u32, ChunkEntry)], response: ChunkResponse) -> CheckedResponse {
    let mut items: HashMap<ChunkId, ChunkItem> = response.items.into_iter().map(|item| (item.id, item)).collect();
    let mut outcomes = Vec::with_capacity(entries.len());
    let mut verified = Vec::new();
    for (index, entry) in entries {
        let outcome = match items.remove(&entry.id).map(|item| item.result) {
            Some(ChunkResult::Ok(bytes)) => match protocol::codec::verify_stored(entry, &bytes) {
                Ok(()) => {
                    verified.push((entry.id, Bytes::from(bytes)));
                    ChunkOutcome::Verified
                }
                Err(_) => ChunkOutcome::Corrupt,
            },
            _ => ChunkOutcome::Missing,
        };
        outcomes.push((*index, outcome));
    }
    (outcomes, verified)
}
