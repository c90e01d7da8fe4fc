//! Filling the inactive slot: chunks the active slot already holds are copied, the rest are
//! fetched in parallel from the best edge nodes, verified against their ids, decrypted,
//! decompressed and written at their offsets.
//!
//! Reuse: chunk ids are content addresses of deterministic sealing, so a chunk of the new
//! manifest whose id appears in the installed release's manifest has the same plaintext at
//! that manifest's offset in the active slot. The copy is not re-verified chunk by chunk;
//! the whole-image hash before the switch covers it, and after a failed image check the
//! engine restarts the download with reuse turned off.
//!
//! Parallelism: one coordinator hands batches to workers (two connections per edge node,
//! so one request is always in flight while the other's bytes are being written); a worker
//! whose edge sends a chunk that fails verification is stopped and the edge penalized, and
//! its batch goes to the others.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use edge_client::{ClientError, DeviceClient};
use protocol::codec::ContentKey;
use protocol::device_wire::{ChunkRange, ChunkStatus};
use protocol::manifest::{ChunkEntry, ManifestView};
use protocol::ChunkId;
use tokio::sync::mpsc;

use crate::config::EdgeAddr;
use crate::edges::EdgePool;
use crate::slot::{Progress, SlotFile};

/// Most stored bytes asked for in one request (the wire limit is 8 MiB).
const BATCH_BYTES: u64 = 4 << 20;
/// Most chunks in one request.
const BATCH_CHUNKS: usize = 128;
/// Written bytes between syncs of the slot and saves of the progress file.
const SYNC_EVERY_BYTES: u64 = 32 << 20;
/// Connections per edge node.
const STREAMS_PER_EDGE: usize = 2;
/// How long an edge may answer "busy" for everything before this round gives up on it: an
/// honest edge that is fetching delivers something well within this, a withholding one never.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Everything one download needs.
#[derive(Debug)]
pub struct DownloadJob {
    /// The target's manifest bytes (verified through TUF).
    pub manifest: Vec<u8>,
    /// The fleet content key, for encrypted releases.
    pub key: Option<ContentKey>,
    /// The inactive slot.
    pub slot: PathBuf,
    /// The active slot and its release's manifest, for reuse; `None` turns reuse off.
    pub reuse_from: Option<(PathBuf, Vec<u8>)>,
    /// Where chunk progress lives.
    pub progress: PathBuf,
    /// Fetched and reused byte counts carried over from before a restart.
    pub carried: (u64, u64),
    /// Most edge nodes at once.
    pub parallel_edges: usize,
}

/// Progress as the engine and the progress bar see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Chunks durable in the slot.
    pub chunks_done: u32,
    /// Of `chunk_count`.
    pub chunk_count: u32,
    /// Stored bytes fetched from edge nodes.
    pub bytes_fetched: u64,
    /// Plaintext bytes copied from the active slot.
    pub bytes_reused: u64,
}

/// Why a download stopped.
#[derive(Debug)]
pub enum DownloadError {
    /// No edge node could (or would honestly) serve the remaining chunks.
    Network(String),
    /// The slot or the progress file could not be written.
    Storage(anyhow::Error),
}

impl std::fmt::Display for DownloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownloadError::Network(why) => write!(f, "{why}"),
            DownloadError::Storage(e) => write!(f, "storage: {e:#}"),
        }
    }
}

/// A unique chunk still wanted, and every (manifest index, image offset) that holds it.
#[derive(Debug, Clone)]
struct Wanted {
    entry: ChunkEntry,
    targets: Vec<(u32, u64)>,
}

/// What a worker reports for one batch.
enum Outcome {
    /// Chunks written (not yet synced), stored bytes moved, chunks to ask for again, and how
    /// many of those the edge said it does not have.
    Done { written: Vec<u32>, bytes: u64, took: Duration, again: Vec<Wanted>, missing: usize },
    /// The edge sent bytes that failed verification, or garbage; stop using it. Chunks of
    /// the batch that did verify were written.
    Bad { why: String, again: Vec<Wanted>, written: Vec<u32> },
    /// The request failed (timeout, connection); stop using this connection.
    Failed { why: String, again: Vec<Wanted> },
    /// Writing the slot failed: nothing else will go better.
    Storage(String),
}

/// Fills the slot. `on_progress` runs after each durable step (slot synced, progress saved).
pub async fn download(
    job: DownloadJob,
    pool: &mut EdgePool,
    mut on_progress: impl FnMut(Counts) -> Result<()>,
) -> Result<Counts, DownloadError> {
    let view = ManifestView::new_checked(&job.manifest).map_err(|e| DownloadError::Storage(anyhow!("{e}")))?;
    let release = *blake3::hash(&job.manifest).as_bytes();
    let entries: Vec<ChunkEntry> = view.chunks().collect();
    let mut progress = Progress::load_or_new(&job.progress, release, view.chunk_count());
    let slot = Arc::new(SlotFile::open_for_write(&job.slot, view.image_len()).map_err(DownloadError::Storage)?);
    let mut counts = Counts {
        chunks_done: progress.count(),
        chunk_count: view.chunk_count(),
        bytes_fetched: job.carried.0,
        bytes_reused: job.carried.1,
    };

    if let Some((active, old_manifest)) = &job.reuse_from {
        reuse(&entries, &mut progress, &slot, active, old_manifest, &mut counts).map_err(DownloadError::Storage)?;
        commit_progress(&slot, &mut progress, &[], &job.progress, &mut counts).map_err(DownloadError::Storage)?;
        on_progress(counts).map_err(DownloadError::Storage)?;
    }

    let mut by_id: HashMap<ChunkId, Wanted> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        if !progress.is_done(index as u32) {
            by_id
                .entry(entry.id)
                .or_insert_with(|| Wanted { entry: *entry, targets: Vec::new() })
                .targets
                .push((index as u32, entry.offset));
        }
    }
    if by_id.is_empty() {
        return Ok(counts);
    }
    let mut queue: VecDeque<Wanted> = entries.iter().filter_map(|e| by_id.remove(&e.id)).collect();

    let key = job.key.map(Arc::new);
    let mut unsynced: Vec<u32> = Vec::new();
    let mut unsynced_bytes = 0u64;
    let mut last_error = String::from("no edge node reachable");
    // Reconnect rounds: edges that failed transiently get another chance, penalized ones not.
    for _round in 0..3 {
        let connected = pool.connect_ranked().await;
        if connected.is_empty() {
            continue;
        }
        let mut workers: Vec<Worker> = Vec::new();
        for edge in connected.into_iter().take(job.parallel_edges) {
            let addr = edge.addr;
            workers.push(spawn_worker(workers.len(), addr, edge.client, slot.clone(), key.clone()));
            for _ in 1..STREAMS_PER_EDGE {
                let extra = match addr {
                    EdgeAddr::Quic(a) => DeviceClient::connect_quic(a).await,
                    EdgeAddr::Tcp(a) => DeviceClient::connect_tcp(a).await,
                };
                if let Ok(client) = extra {
                    workers.push(spawn_worker(workers.len(), addr, client, slot.clone(), key.clone()));
                }
            }
        }
        let (results_tx, mut results) = mpsc::channel::<(usize, Outcome)>(workers.len().max(1));
        let mut idle: Vec<usize> = (0..workers.len()).rev().collect();
        let mut in_flight = 0usize;
        let mut busy_rounds = 0u32;
        let mut last_delivery = Instant::now();
        loop {
            while !queue.is_empty() {
                let Some(w) = idle.pop() else { break };
                let Some(jobs) = workers[w].jobs.clone() else { continue };
                let batch = take_batch(&mut queue);
                if let Err(mpsc::error::SendError((batch, _))) = jobs.send((batch, results_tx.clone())).await {
                    queue.extend(batch);
                    workers[w].jobs = None;
                    continue;
                }
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            let Some((w, outcome)) = results.recv().await else { break };
            in_flight -= 1;
            let addr = workers[w].addr;
            match outcome {
                Outcome::Done { written, bytes, took, again, missing } => {
                    let stalled = written.is_empty() && !again.is_empty();
                    if !written.is_empty() {
                        last_delivery = Instant::now();
                    }
                    pool.record_batch(addr, bytes, took);
                    counts.bytes_fetched += bytes;
                    unsynced_bytes += bytes;
                    unsynced.extend(written);
                    queue.extend(again);
                    if missing > 0 {
                        // An edge node that is fetching a chunk says busy; "not found" means
                        // this one will not have it (a stale mirror, or one withholding), and
                        // asking it again would loop forever: stop using it this round.
                        pool.record_failure(addr);
                        last_error = format!("edge node {addr} does not have {missing} chunks");
                        tracing::info!(edge = %addr, missing, "edge node lacks chunks; fetching them elsewhere");
                        for worker in workers.iter_mut().filter(|worker| worker.addr == addr) {
                            worker.jobs = None;
                        }
                    } else if stalled && last_delivery.elapsed() > STALL_LIMIT {
                        pool.record_failure(addr);
                        last_error = format!("edge node {addr} answered busy for {} s", STALL_LIMIT.as_secs());
                        tracing::warn!(edge = %addr, "edge node delivers nothing; giving up on it for now");
                        for worker in workers.iter_mut().filter(|worker| worker.addr == addr) {
                            worker.jobs = None;
                        }
                    } else if stalled {
                        // Everything was busy (the edge is still fetching): back off a little,
                        // and let any other idle connection take the batch first — otherwise
                        // this one, last to go idle, would get the same batch back at once.
                        busy_rounds += 1;
                        tokio::time::sleep(Duration::from_millis((20 * busy_rounds as u64).min(500))).await;
                        idle.insert(0, w);
                    } else {
                        busy_rounds = 0;
                        idle.push(w);
                    }
                }
                Outcome::Bad { why, again, written } => {
                    pool.penalize(addr, &why);
                    last_error = format!("edge node {addr} {why}");
                    unsynced.extend(written);
                    queue.extend(again);
                    // Stop every connection to this edge.
                    for worker in workers.iter_mut().filter(|worker| worker.addr == addr) {
                        worker.jobs = None;
                    }
                }
                Outcome::Failed { why, again } => {
                    pool.record_failure(addr);
                    last_error = format!("edge node {addr}: {why}");
                    queue.extend(again);
                    workers[w].jobs = None;
                }
                Outcome::Storage(why) => return Err(DownloadError::Storage(anyhow!(why))),
            }
            if unsynced_bytes >= SYNC_EVERY_BYTES {
                commit_progress(&slot, &mut progress, &unsynced, &job.progress, &mut counts)
                    .map_err(DownloadError::Storage)?;
                unsynced.clear();
                unsynced_bytes = 0;
                on_progress(counts).map_err(DownloadError::Storage)?;
            }
        }
        commit_progress(&slot, &mut progress, &unsynced, &job.progress, &mut counts).map_err(DownloadError::Storage)?;
        unsynced.clear();
        unsynced_bytes = 0;
        on_progress(counts).map_err(DownloadError::Storage)?;
        if queue.is_empty() && counts.chunks_done == counts.chunk_count {
            return Ok(counts);
        }
    }
    Err(DownloadError::Network(format!(
        "{} of {} chunks still missing; last problem: {last_error}",
        counts.chunk_count - counts.chunks_done,
        counts.chunk_count
    )))
}

/// Copies every not-yet-done chunk the active slot already holds.
fn reuse(
    entries: &[ChunkEntry],
    progress: &mut Progress,
    slot: &SlotFile,
    active: &std::path::Path,
    old_manifest: &[u8],
    counts: &mut Counts,
) -> Result<()> {
    let old = ManifestView::new_checked(old_manifest).map_err(|e| anyhow!("installed manifest: {e}"))?;
    let mut old_by_id: HashMap<ChunkId, ChunkEntry> = HashMap::new();
    for entry in old.chunks() {
        old_by_id.entry(entry.id).or_insert(entry);
    }
    let source = SlotFile::open_read(active)?;
    let mut copied = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let index = index as u32;
        if progress.is_done(index) {
            continue;
        }
        let Some(old_entry) = old_by_id.get(&entry.id).filter(|o| o.length == entry.length) else { continue };
        let bytes = source.read_at(old_entry.offset, old_entry.length as usize).context("reading the active slot")?;
        slot.write_at(entry.offset, &bytes)?;
        counts.bytes_reused += entry.length as u64;
        copied.push(index);
    }
    slot.sync()?;
    for index in copied {
        progress.mark(index);
    }
    Ok(())
}

/// Makes written chunks durable, then records them.
fn commit_progress(
    slot: &SlotFile,
    progress: &mut Progress,
    written: &[u32],
    path: &std::path::Path,
    counts: &mut Counts,
) -> Result<()> {
    slot.sync()?;
    for index in written {
        progress.mark(*index);
    }
    progress.save(path)?;
    counts.chunks_done = progress.count();
    Ok(())
}

fn take_batch(queue: &mut VecDeque<Wanted>) -> Vec<Wanted> {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    while let Some(next) = queue.front() {
        if !batch.is_empty() && (batch.len() >= BATCH_CHUNKS || bytes + next.entry.stored_length as u64 > BATCH_BYTES) {
            break;
        }
        bytes += next.entry.stored_length as u64;
        batch.extend(queue.pop_front());
    }
    batch
}

type Job = (Vec<Wanted>, mpsc::Sender<(usize, Outcome)>);

/// The coordinator's handle on one connection's task.
struct Worker {
    addr: EdgeAddr,
    jobs: Option<mpsc::Sender<Job>>,
}

fn spawn_worker(
    index: usize,
    addr: EdgeAddr,
    mut client: DeviceClient,
    slot: Arc<SlotFile>,
    key: Option<Arc<ContentKey>>,
) -> Worker {
    let (jobs, mut rx) = mpsc::channel::<Job>(1);
    tokio::spawn(async move {
        while let Some((batch, results)) = rx.recv().await {
            let outcome = fetch_batch(&mut client, batch, slot.clone(), key.clone()).await;
            let stop = !matches!(outcome, Outcome::Done { .. });
            if results.send((index, outcome)).await.is_err() || stop {
                break;
            }
        }
    });
    Worker { addr, jobs: Some(jobs) }
}

/// One request, then verification, decryption, decompression and writes off the async
/// threads.
async fn fetch_batch(
    client: &mut DeviceClient,
    batch: Vec<Wanted>,
    slot: Arc<SlotFile>,
    key: Option<Arc<ContentKey>>,
) -> Outcome {
    let ranges: Vec<ChunkRange> = batch.iter().map(|w| ChunkRange::whole(w.entry.id)).collect();
    let started = Instant::now();
    let response = match client.get_chunks(&ranges).await {
        Ok(r) => r,
        Err(e @ (ClientError::Malformed(_) | ClientError::Unexpected(_))) => {
            return Outcome::Bad { why: e.to_string(), again: batch, written: Vec::new() };
        }
        Err(e) => return Outcome::Failed { why: e.to_string(), again: batch },
    };
    let took = started.elapsed();
    let decoded = tokio::task::spawn_blocking(move || {
        let mut written = Vec::new();
        let mut again = Vec::new();
        let mut bytes = 0u64;
        let mut bad = None;
        let mut missing = 0;
        for (item, wanted) in response.items().iter().zip(batch) {
            let ChunkStatus::Ok(stored) = item.status else {
                missing += usize::from(item.status == ChunkStatus::NotFound);
                again.push(wanted);
                continue;
            };
            if bad.is_some() {
                again.push(wanted);
                continue;
            }
            bytes += stored.len() as u64;
            match protocol::codec::open(&wanted.entry, key.as_deref(), stored.to_vec()) {
                Ok(plain) => {
                    for (index, offset) in &wanted.targets {
                        slot.write_at(*offset, &plain)?;
                        written.push(*index);
                    }
                }
                Err(e) => {
                    bad = Some(format!("served chunk {} that failed verification: {e}", wanted.entry.id));
                    again.push(wanted);
                }
            }
        }
        Ok::<_, anyhow::Error>((written, bytes, again, missing, bad))
    })
    .await;
    match decoded {
        Ok(Ok((written, bytes, again, missing, None))) => Outcome::Done { written, bytes, took, again, missing },
        Ok(Ok((written, _, again, _, Some(why)))) => Outcome::Bad { why, again, written },
        Ok(Err(e)) => Outcome::Storage(format!("{e:#}")),
        Err(e) => Outcome::Storage(format!("chunk decoder stopped: {e}")),
    }
}
