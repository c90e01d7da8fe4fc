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
//! every one opened with the configured connect and request timeouts, so one request is
//! always in flight while the other's bytes are being written); a worker whose edge sends a
//! chunk that fails verification is stopped and the edge penalized, and its batch goes to
//! the others; an edge that stops (lies, lacks chunks) makes room for the next one that
//! answered the probe.
//!
//! Hedging: once nothing is left to hand out, a batch outstanding much longer than the
//! others (`policy::hedge_after`: 4 × the slowest completed batch, at most half the request
//! timeout) is also asked of an idle connection to another edge. The first verified answer
//! wins — both write the same verified bytes, so a late duplicate changes nothing — and the
//! round ends as soon as every chunk arrived, cancelling what is still out; the slow edge is
//! demoted (sits out a while), not treated as a liar. So a trickling edge costs about half a
//! timeout, not a whole round.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use edge_client::{ClientError, DeviceClient, Timeouts};
use protocol::codec::ContentKey;
use protocol::manifest::{ChunkEntry, ManifestView};
use protocol::wire::{device::ChunkStatus, ChunkRange};
use protocol::ChunkId;
use tokio::sync::mpsc;

use crate::config::EdgeAddr;
use crate::edges::{Connected, EdgePool};
use crate::policy;
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
    let release = protocol::ReleaseId::of_manifest(&job.manifest);
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
    let mut remaining = queue.len();
    let mut delivered: HashSet<ChunkId> = HashSet::new();
    let mut unsynced: Vec<u32> = Vec::new();
    let mut unsynced_bytes = 0u64;
    let mut last_error = String::from("no edge node reachable");
    // Reconnect rounds: edges that failed transiently get another chance, penalized ones not.
    for _round in 0..3 {
        let mut spares: VecDeque<Connected> = pool.connect_ranked().await.into();
        if spares.is_empty() {
            continue;
        }
        let timeouts = pool.timeouts();
        let mut workers: Vec<Worker> = Vec::new();
        let mut idle: Vec<usize> = Vec::new();
        while live_edges(&workers) < job.parallel_edges {
            let Some(edge) = spares.pop_front() else { break };
            idle.extend(add_edge(&mut workers, edge, timeouts, &slot, &key).await);
        }
        // Best edge's connections first.
        idle.reverse();
        let (results_tx, mut results) = mpsc::channel::<(usize, Outcome)>(64);
        let mut in_flight: HashMap<usize, InFlight> = HashMap::new();
        let mut slowest_batch: Option<Duration> = None;
        let mut busy_rounds = 0u32;
        let mut last_delivery = Instant::now();
        loop {
            while !queue.is_empty() {
                let Some(w) = idle.pop() else { break };
                let Some(jobs) = workers[w].jobs.clone() else { continue };
                let batch = take_batch(&mut queue, &delivered);
                if batch.is_empty() {
                    idle.push(w);
                    break;
                }
                let copy = batch.clone();
                if let Err(mpsc::error::SendError((batch, _))) = jobs.send((batch, results_tx.clone())).await {
                    queue.extend(batch);
                    workers[w].jobs = None;
                    continue;
                }
                in_flight.insert(w, InFlight { batch: copy, sent: Instant::now(), hedged: false, copy: false });
            }
            if remaining == 0 || in_flight.is_empty() {
                break;
            }
            // Nothing left to hand out: a batch outstanding much longer than the others is
            // asked of another edge too, first verified answer wins (`policy::hedge_after`).
            let hedge = if queue.is_empty() {
                next_hedge(&in_flight, &workers, &idle, policy::hedge_after(timeouts.request, slowest_batch))
            } else {
                None
            };
            let received = match hedge {
                Some((at, _, _)) => tokio::select! {
                    received = results.recv() => Some(received),
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => None,
                },
                None => Some(results.recv().await),
            };
            let Some(received) = received else {
                let Some((_, slow, to)) = hedge else { continue };
                let Some(flight) = in_flight.get_mut(&slow) else { continue };
                flight.hedged = true;
                let batch: Vec<Wanted> =
                    flight.batch.iter().filter(|w| !delivered.contains(&w.entry.id)).cloned().collect();
                let waited = flight.sent.elapsed();
                idle.retain(|&i| i != to);
                let Some(jobs) = workers[to].jobs.clone().filter(|_| !batch.is_empty()) else {
                    idle.push(to);
                    continue;
                };
                tracing::info!(slow = %workers[slow].addr, to = %workers[to].addr, chunks = batch.len(),
                    waited_ms = waited.as_millis() as u64, "batch outstanding much longer than the others; hedging it");
                let copy = batch.clone();
                if jobs.send((batch, results_tx.clone())).await.is_err() {
                    workers[to].jobs = None;
                    continue;
                }
                in_flight.insert(to, InFlight { batch: copy, sent: Instant::now(), hedged: true, copy: true });
                continue;
            };
            let Some((w, outcome)) = received else { break };
            in_flight.remove(&w);
            let addr = workers[w].addr;
            match outcome {
                Outcome::Done { written, bytes, took, again, missing } => {
                    let stalled = written.is_empty() && !again.is_empty();
                    if !written.is_empty() {
                        last_delivery = Instant::now();
                        slowest_batch = Some(slowest_batch.map_or(took, |s| s.max(took)));
                    }
                    deliver(&written, &entries, &mut delivered, &mut remaining);
                    pool.record_batch(addr, bytes, took);
                    counts.bytes_fetched += bytes;
                    unsynced_bytes += bytes;
                    unsynced.extend(written);
                    requeue(&mut queue, again, &delivered, &in_flight);
                    if missing > 0 {
                        // An edge node that is fetching a chunk says busy; "not found" means
                        // this one will not have it (a stale mirror, or one withholding), and
                        // asking it again would loop forever: stop using it this round.
                        pool.demote(addr, "lacks chunks");
                        last_error = format!("edge node {addr} does not have {missing} chunks");
                        tracing::info!(edge = %addr, missing, "edge node lacks chunks; fetching them elsewhere");
                        stop_edge(&mut workers, addr);
                    } else if stalled && last_delivery.elapsed() > STALL_LIMIT {
                        pool.record_failure(addr);
                        last_error = format!("edge node {addr} answered busy for {} s", STALL_LIMIT.as_secs());
                        tracing::warn!(edge = %addr, "edge node delivers nothing; giving up on it for now");
                        stop_edge(&mut workers, addr);
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
                    deliver(&written, &entries, &mut delivered, &mut remaining);
                    unsynced.extend(written);
                    requeue(&mut queue, again, &delivered, &in_flight);
                    stop_edge(&mut workers, addr);
                }
                Outcome::Failed { why, again } => {
                    pool.record_failure(addr);
                    last_error = format!("edge node {addr}: {why}");
                    requeue(&mut queue, again, &delivered, &in_flight);
                    workers[w].jobs = None;
                }
                Outcome::Storage(why) => return Err(DownloadError::Storage(anyhow!(why))),
            }
            // An edge that stopped makes room for the next one that answered the probe.
            while live_edges(&workers) < job.parallel_edges {
                let Some(edge) = spares.pop_front() else { break };
                idle.extend(add_edge(&mut workers, edge, timeouts, &slot, &key).await);
            }
            if unsynced_bytes >= SYNC_EVERY_BYTES {
                commit_progress(&slot, &mut progress, &unsynced, &job.progress, &mut counts)
                    .map_err(DownloadError::Storage)?;
                unsynced.clear();
                unsynced_bytes = 0;
                on_progress(counts).map_err(DownloadError::Storage)?;
            }
        }
        // Batches still out when everything arrived were fetched elsewhere: their edge was
        // much slower than the others. Dropping the workers cancels their requests.
        let slow: HashSet<EdgeAddr> =
            in_flight.iter().filter(|(_, f)| !f.copy).map(|(w, _)| workers[*w].addr).collect();
        for addr in slow {
            pool.demote(addr, "much slower than the others; its batch was fetched elsewhere");
        }
        drop(workers);
        commit_progress(&slot, &mut progress, &unsynced, &job.progress, &mut counts).map_err(DownloadError::Storage)?;
        unsynced.clear();
        unsynced_bytes = 0;
        on_progress(counts).map_err(DownloadError::Storage)?;
        if remaining == 0 && counts.chunks_done == counts.chunk_count {
            return Ok(counts);
        }
    }
    Err(DownloadError::Network(format!(
        "{} of {} chunks still missing; last problem: {last_error}",
        counts.chunk_count - counts.chunks_done,
        counts.chunk_count
    )))
}

/// Puts `again` back in the queue, except chunks delivered meanwhile or still asked of
/// another edge (a hedge).
fn requeue(
    queue: &mut VecDeque<Wanted>,
    again: Vec<Wanted>,
    delivered: &HashSet<ChunkId>,
    in_flight: &HashMap<usize, InFlight>,
) {
    let elsewhere: HashSet<ChunkId> = in_flight.values().flat_map(|f| f.batch.iter().map(|w| w.entry.id)).collect();
    queue.extend(again.into_iter().filter(|w| !delivered.contains(&w.entry.id) && !elsewhere.contains(&w.entry.id)));
}

/// Counts the chunks behind the manifest indices `written` as delivered, once each.
fn deliver(written: &[u32], entries: &[ChunkEntry], delivered: &mut HashSet<ChunkId>, remaining: &mut usize) {
    for index in written {
        if let Some(entry) = entries.get(*index as usize) {
            if delivered.insert(entry.id) {
                *remaining = remaining.saturating_sub(1);
            }
        }
    }
}

/// A batch handed to a worker and not answered yet.
struct InFlight {
    batch: Vec<Wanted>,
    sent: Instant,
    /// Its chunks were also asked of another edge.
    hedged: bool,
    /// It is itself such a second request.
    copy: bool,
}

/// The earliest moment a batch becomes due for hedging, the batch's worker and an idle
/// worker on another edge to ask: `None` if no batch can be hedged.
fn next_hedge(
    in_flight: &HashMap<usize, InFlight>,
    workers: &[Worker],
    idle: &[usize],
    hedge_after: Duration,
) -> Option<(Instant, usize, usize)> {
    in_flight
        .iter()
        .filter(|(_, f)| !f.hedged && !f.copy)
        .filter_map(|(&w, f)| {
            let slow = workers[w].addr;
            let to = idle.iter().rev().copied().find(|&i| workers[i].jobs.is_some() && workers[i].addr != slow)?;
            Some((f.sent + hedge_after, w, to))
        })
        .min_by_key(|(at, _, _)| *at)
}

/// Edges with at least one connection still in use this round.
fn live_edges(workers: &[Worker]) -> usize {
    workers.iter().filter(|w| w.jobs.is_some()).map(|w| w.addr).collect::<HashSet<_>>().len()
}

/// Stops every connection to `addr` for this round.
fn stop_edge(workers: &mut [Worker], addr: EdgeAddr) {
    for worker in workers.iter_mut().filter(|worker| worker.addr == addr) {
        worker.jobs = None;
    }
}

/// Starts workers on `edge`: its probed connection plus [`STREAMS_PER_EDGE`]` - 1` more,
/// opened with the pool's timeouts like every other. Returns their indices.
async fn add_edge(
    workers: &mut Vec<Worker>,
    edge: Connected,
    timeouts: Timeouts,
    slot: &Arc<SlotFile>,
    key: &Option<Arc<ContentKey>>,
) -> Vec<usize> {
    let addr = edge.addr;
    let mut added = vec![workers.len()];
    workers.push(spawn_worker(workers.len(), addr, edge.client, slot.clone(), key.clone()));
    for _ in 1..STREAMS_PER_EDGE {
        match crate::edges::connect(addr, timeouts).await {
            Ok(client) => {
                added.push(workers.len());
                workers.push(spawn_worker(workers.len(), addr, client, slot.clone(), key.clone()));
            }
            Err(e) => tracing::info!(edge = %addr, "extra connection failed: {e}"),
        }
    }
    added
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

/// The next batch from the queue, skipping chunks already delivered (by a hedge).
fn take_batch(queue: &mut VecDeque<Wanted>, delivered: &HashSet<ChunkId>) -> Vec<Wanted> {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    while let Some(next) = queue.front() {
        if delivered.contains(&next.entry.id) {
            queue.pop_front();
            continue;
        }
        if !batch.is_empty() && (batch.len() >= BATCH_CHUNKS || bytes + next.entry.stored_length as u64 > BATCH_BYTES) {
            break;
        }
        bytes += next.entry.stored_length as u64;
        batch.extend(queue.pop_front());
    }
    batch
}

type Job = (Vec<Wanted>, mpsc::Sender<(usize, Outcome)>);

/// The coordinator's handle on one connection's task; dropping it cancels the task (and
/// its request, if one is out).
struct Worker {
    addr: EdgeAddr,
    jobs: Option<mpsc::Sender<Job>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn spawn_worker(
    index: usize,
    addr: EdgeAddr,
    mut client: DeviceClient,
    slot: Arc<SlotFile>,
    key: Option<Arc<ContentKey>>,
) -> Worker {
    let (jobs, mut rx) = mpsc::channel::<Job>(1);
    let task = tokio::spawn(async move {
        while let Some((batch, results)) = rx.recv().await {
            let outcome = fetch_batch(&mut client, batch, slot.clone(), key.clone()).await;
            let stop = !matches!(outcome, Outcome::Done { .. });
            if results.send((index, outcome)).await.is_err() || stop {
                break;
            }
        }
    });
    Worker { addr, jobs: Some(jobs), task }
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
