//! Filling the inactive slot: chunks the active slot already holds are copied, the rest are
//! fetched in parallel from the best edge nodes, verified against their ids, decrypted,
//! decompressed and written at their offsets.
//!
//! Reuse: chunk ids are content addresses of deterministic sealing, so a chunk of the new
//! manifest whose id appears in the installed release's manifest has the same plaintext at
//! that manifest's offset in the active slot. The copy is not re-verified chunk by chunk;
//! the whole-image hash before the switch covers it, and after a failed image check the
//! engine restarts the download with reuse turned off. That hash reads the slot back; it
//! advances over the durable prefix as chunks are committed, and the last commit carries it
//! to the end ([`Downloaded::image_hasher`]), so the check itself reads nothing more. A
//! download that stops early drops it: the next attempt hashes its durable prefix again.
//!
//! Every decision about what to ask whom — batches, rounds, busy backoff, stall limit,
//! hedging a slow batch to another edge, what a short, bad or failed answer means for the
//! edge — is `protocol::device::FetchPlan`'s, the same code simnet's devices run. This file
//! is its driver: one coordinator feeds the plan each worker's outcome and the time, sends
//! what `poll_transmit` asks to the workers (four requests in flight per edge node: streams of
//! one QUIC connection, or two TCP connections; every connection opened with the configured
//! connect and request timeouts), applies `poll_event` to the edge pool,
//! and sleeps until an answer or `poll_timeout`. Both copies of a hedged batch write the
//! same verified bytes, so a late duplicate changes nothing; dropping the workers at the end
//! of a round cancels what is still out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use edge_client::{ClientError, DeviceClient, StoredAt, Timeouts};
use protocol::codec::ContentKey;
use protocol::device::fetch::{FetchConfig, FetchEvent, FetchPlan, STALL_LIMIT, TCP_CONNECTIONS_PER_EDGE};
use protocol::manifest::{ChunkEntry, ManifestView};
use protocol::wire::ChunkRange;
use protocol::ChunkId;
use tokio::sync::mpsc;

use crate::config::EdgeAddr;
use crate::edges::{Connected, EdgePool};
use crate::slot::{ImageHasher, Progress, SlotFile};

/// Written bytes between syncs of the slot and saves of the progress file.
const SYNC_EVERY_BYTES: u64 = 32 << 20;

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

/// A download that filled the slot.
#[derive(Debug)]
pub struct Downloaded {
    /// Its progress at the end.
    pub counts: Counts,
    /// The whole-image hash carried over the slot's durable prefix as it was committed (see
    /// [`ImageHasher`]); the check before the switch finishes it. `None` when nothing was
    /// fetched in this run, or when reading the slot back failed (the check then reads it all
    /// and reports why).
    pub image_hasher: Option<ImageHasher>,
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

/// A unique chunk still wanted (the plan's unit `unit`), and every (manifest index, image
/// offset) that holds it.
#[derive(Debug, Clone)]
struct Wanted {
    unit: u32,
    entry: ChunkEntry,
    targets: Vec<(u32, u64)>,
}

/// What a worker reports for one batch.
enum Outcome {
    /// Manifest indices written (not yet synced), the plan's units they fill, stored bytes
    /// moved, and how many chunks the edge said it does not have.
    Done { written: Vec<u32>, units: Vec<u32>, bytes: u64, took: Duration, missing: usize },
    /// The edge sent bytes that failed verification, or garbage. Chunks of the batch that
    /// did verify were written.
    Bad { why: String, written: Vec<u32>, units: Vec<u32> },
    /// The request failed (timeout, connection).
    Failed { why: String },
    /// Writing the slot failed: nothing else will go better.
    Storage(String),
}

/// Fills the slot. `on_progress` runs after each durable step (slot synced, progress saved).
pub async fn download(
    job: DownloadJob,
    pool: &mut EdgePool,
    mut on_progress: impl FnMut(Counts) -> Result<()>,
) -> Result<Downloaded, DownloadError> {
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
                .or_insert_with(|| Wanted { unit: 0, entry: *entry, targets: Vec::new() })
                .targets
                .push((index as u32, entry.offset));
        }
    }
    if by_id.is_empty() {
        return Ok(Downloaded { counts, image_hasher: None });
    }
    // The plan's units: unique chunks still wanted, in manifest order.
    let mut wanted: Vec<Wanted> = entries.iter().filter_map(|e| by_id.remove(&e.id)).collect();
    for (unit, w) in wanted.iter_mut().enumerate() {
        w.unit = unit as u32;
    }
    let config = FetchConfig::new(job.parallel_edges, to_protocol(pool.timeouts().request));
    let mut plan: FetchPlan<EdgeAddr> = FetchPlan::new(config, wanted.iter().map(|w| w.entry.stored_length).collect());

    let key = job.key.map(Arc::new);
    let image_hasher = ImageHasher::open(&job.slot, view.image_len())
        .map_err(|e| tracing::warn!("the image hash waits for the download's end: {e:#}"))
        .ok();
    let mut committer = Committer {
        slot: slot.clone(),
        path: job.progress.clone(),
        offsets: Arc::new(entries.iter().map(|e| e.offset).collect()),
        state: Some(Durable { progress, image_hasher }),
        running: None,
    };
    // Chunks reused or left from an earlier run: once a round has edges, a first commit hashes
    // the durable prefix they form while the first batches are out.
    let mut prefix_to_hash = counts.chunks_done > 0;
    let mut unsynced: Vec<u32> = Vec::new();
    let mut unsynced_bytes = 0u64;
    let mut last_error = String::from("no edge node reachable");
    // Reconnect rounds: edges that failed transiently get another chance, penalized ones not.
    while plan.start_round(pool.now()) {
        let mut spares: VecDeque<Connected> = pool.connect_ranked().await.into();
        if spares.is_empty() {
            continue;
        }
        let timeouts = pool.timeouts();
        let mut workers: Vec<Worker> = Vec::new();
        add_spares(&mut plan, &mut spares, &mut workers, timeouts, &slot, &key).await;
        if std::mem::take(&mut prefix_to_hash) && !committer.is_running() {
            committer.start(Vec::new());
        }
        let (results_tx, mut results) = mpsc::channel::<(usize, Outcome)>(64);
        let mut lie = String::new();
        // Edges with a failed request this round: one dead connection fails every request
        // it carried (up to four streams), and that is one failure of the edge, not four.
        let mut failed: HashSet<EdgeAddr> = HashSet::new();
        loop {
            let now = pool.now();
            while let Some(transmit) = plan.poll_transmit(now) {
                let conn = transmit.conn;
                let batch: Vec<Wanted> = transmit.units.iter().map(|u| wanted[u as usize].clone()).collect();
                let Some(jobs) = workers[conn].jobs.clone() else {
                    plan.handle_closed(conn);
                    continue;
                };
                if jobs.send((batch, results_tx.clone())).await.is_err() {
                    workers[conn].jobs = None;
                    plan.handle_closed(conn);
                }
            }
            apply_events(&mut plan, pool, &mut workers, &mut last_error, &lie, &mut failed);
            if plan.round_over() {
                break;
            }
            let deadline = plan.poll_timeout(pool.now());
            let wait = deadline.map(|at| Duration::from_micros(at.0.saturating_sub(pool.now().0)));
            let received = tokio::select! {
                received = results.recv() => received,
                _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {
                    // A deadline passed (a hedge, a rested connection): poll the plan again.
                    continue;
                }
                durable = committer.finished(), if committer.is_running() => {
                    counts.chunks_done = durable.map_err(DownloadError::Storage)?;
                    on_progress(counts).map_err(DownloadError::Storage)?;
                    continue;
                }
            };
            let Some((w, outcome)) = received else { break };
            let addr = workers[w].addr;
            let now = pool.now();
            match outcome {
                Outcome::Done { written, units, bytes, took, missing } => {
                    plan.handle_done(now, w, &units, missing, bytes, to_protocol(took));
                    counts.bytes_fetched += bytes;
                    unsynced_bytes += bytes;
                    unsynced.extend(written);
                }
                Outcome::Bad { why, written, units } => {
                    last_error = format!("edge node {addr} {why}");
                    lie = why;
                    plan.handle_lied(w, &units);
                    unsynced.extend(written);
                }
                Outcome::Failed { why } => {
                    last_error = format!("edge node {addr}: {why}");
                    plan.handle_failed(w);
                }
                Outcome::Storage(why) => {
                    // No commit outlives the download (a late progress save would undo a reset).
                    let _ = committer.finished().await;
                    return Err(DownloadError::Storage(anyhow!(why)));
                }
            }
            apply_events(&mut plan, pool, &mut workers, &mut last_error, &lie, &mut failed);
            // An edge that stopped makes room for the next one that answered the probe.
            add_spares(&mut plan, &mut spares, &mut workers, timeouts, &slot, &key).await;
            if unsynced_bytes >= SYNC_EVERY_BYTES && !committer.is_running() {
                committer.start(std::mem::take(&mut unsynced));
                unsynced_bytes = 0;
            }
        }
        // Batches still out when everything arrived were fetched elsewhere: their edge was
        // much slower than the others. Dropping the workers cancels their requests.
        plan.end_round();
        apply_events(&mut plan, pool, &mut workers, &mut last_error, &lie, &mut failed);
        drop(workers);
        committer.finished().await.map_err(DownloadError::Storage)?;
        committer.start(std::mem::take(&mut unsynced));
        counts.chunks_done = committer.finished().await.map_err(DownloadError::Storage)?;
        unsynced_bytes = 0;
        on_progress(counts).map_err(DownloadError::Storage)?;
        if plan.is_complete() && counts.chunks_done == counts.chunk_count {
            return Ok(Downloaded { counts, image_hasher: committer.take_image_hasher() });
        }
    }
    let _ = committer.finished().await;
    Err(DownloadError::Network(format!(
        "{} of {} chunks still missing; last problem: {last_error}",
        counts.chunk_count - counts.chunks_done,
        counts.chunk_count
    )))
}

fn to_protocol(d: Duration) -> protocol::time::Duration {
    protocol::time::Duration(d.as_micros() as u64)
}

/// Carries out what the plan decided about edges and connections: the pool records
/// measurements, demotions and penalties; a stopped connection's worker gets no more jobs.
/// `lie` is why the last lying edge was caught, for the penalty's log line; `failed` holds
/// the edges whose failure this round is already recorded.
fn apply_events(
    plan: &mut FetchPlan<EdgeAddr>,
    pool: &mut EdgePool,
    workers: &mut [Worker],
    last_error: &mut String,
    lie: &str,
    failed: &mut HashSet<EdgeAddr>,
) {
    while let Some(event) = plan.poll_event() {
        match event {
            FetchEvent::Batch { edge, bytes, took } => {
                // The edge's requests in flight share its link, so one request sees about
                // that share of it: scaled by their number (its workers still open), an edge
                // carried over four QUIC streams and one over two TCP connections rank by what
                // each delivers.
                let sharing = workers.iter().filter(|w| w.addr == edge && w.jobs.is_some()).count().max(1) as u64;
                pool.record_batch(edge, bytes.saturating_mul(sharing), Duration::from_micros(took.as_micros()))
            }
            FetchEvent::Hedged { slow, to, chunks, waited } => {
                tracing::info!(slow = %slow, to = %to, chunks, waited_ms = waited.as_micros() / 1000,
                    "batch outstanding much longer than the others; hedging it");
            }
            FetchEvent::Close { conn } => {
                if let Some(worker) = workers.get_mut(conn) {
                    worker.jobs = None;
                }
            }
            FetchEvent::LacksChunks { edge, missing } => {
                // An edge node that is fetching a chunk says busy; "not found" means this one
                // will not have it (a stale mirror, or one withholding).
                pool.demote(edge, "lacks chunks");
                *last_error = format!("edge node {edge} does not have {missing} chunks");
                tracing::info!(edge = %edge, missing, "edge node lacks chunks; fetching them elsewhere");
            }
            FetchEvent::Stalled { edge } => {
                pool.record_failure(edge);
                *last_error = format!("edge node {edge} answered busy for {} s", STALL_LIMIT.as_micros() / 1_000_000);
                tracing::warn!(edge = %edge, "edge node delivers nothing; giving up on it for now");
            }
            FetchEvent::Lied { edge } => pool.penalize(edge, lie),
            FetchEvent::Failed { edge } => {
                if failed.insert(edge) {
                    pool.record_failure(edge);
                }
            }
            FetchEvent::TooSlow { edge } => {
                pool.demote(edge, "much slower than the others; its batch was fetched elsewhere")
            }
        }
    }
}

/// Adds the next edges that answered the probe while the plan wants more.
async fn add_spares(
    plan: &mut FetchPlan<EdgeAddr>,
    spares: &mut VecDeque<Connected>,
    workers: &mut Vec<Worker>,
    timeouts: Timeouts,
    slot: &Arc<SlotFile>,
    key: &Option<Arc<ContentKey>>,
) {
    while plan.wants_edge() {
        let Some(edge) = spares.pop_front() else { break };
        let addr = edge.addr;
        let added = add_edge(workers, edge, plan.config().streams_per_edge, timeouts, slot, key).await;
        let conns = plan.add_edge(addr, added);
        debug_assert_eq!(conns.end, workers.len());
    }
}

/// Starts `streams` workers on `edge`, each with one request in flight. Over QUIC they share
/// the probed connection, a stream per request, so there is one handshake and one
/// congestion controller per edge; over TCP, which carries one exchange at a time, the probed
/// connection and up to [`TCP_CONNECTIONS_PER_EDGE`]` - 1` more, opened with the pool's
/// timeouts like every other. Returns how many; their indices follow the workers already
/// there, as the plan's connection ids do.
async fn add_edge(
    workers: &mut Vec<Worker>,
    edge: Connected,
    streams: usize,
    timeouts: Timeouts,
    slot: &Arc<SlotFile>,
    key: &Option<Arc<ContentKey>>,
) -> usize {
    let addr = edge.addr;
    let probed = edge.client;
    let mut extra: Vec<DeviceClient> = Vec::new();
    if probed.share().is_some() {
        extra.extend((1..streams).filter_map(|_| probed.share()));
    } else {
        for _ in 1..streams.min(TCP_CONNECTIONS_PER_EDGE) {
            match crate::edges::connect(addr, timeouts).await {
                Ok(client) => extra.push(client),
                Err(e) => tracing::info!(edge = %addr, "extra connection failed: {e}"),
            }
        }
    }
    let added = 1 + extra.len();
    for client in std::iter::once(probed).chain(extra) {
        workers.push(spawn_worker(workers.len(), addr, client, slot.clone(), key.clone()));
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

/// Makes written chunks durable and records them off the coordinator: the slot's fdatasync
/// and the progress file's save run on a blocking thread while the coordinator keeps every
/// connection asking. Done inline, a GiB's 26 commits stopped dispatch for 0.7 s of a 3.6 s
/// install. At most one commit runs; chunks written meanwhile wait for the next. Each commit
/// then carries the whole-image hash over the slot's new durable prefix: those bytes are
/// final (a late hedged copy rewrites the same verified bytes), and chunks just written are
/// still in the page cache. (A first commit with nothing written hashes the prefix reused or
/// resumed chunks form.)
struct Committer {
    slot: Arc<SlotFile>,
    path: PathBuf,
    /// Each manifest entry's image offset: where the durable prefix ends.
    offsets: Arc<Vec<u64>>,
    /// `None` while a commit runs (it holds them).
    state: Option<Durable>,
    running: Option<tokio::task::JoinHandle<Result<Durable>>>,
}

/// What the commits keep: which chunks are durable, and the whole-image hash over the
/// durable prefix (`None` once reading the slot back failed).
struct Durable {
    progress: Progress,
    image_hasher: Option<ImageHasher>,
}

impl Committer {
    fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Starts making `written` durable; only when no commit is running (the caller checks
    /// `is_running` or waits with `finished`).
    fn start(&mut self, written: Vec<u32>) {
        let Some(Durable { mut progress, image_hasher: mut hasher }) = self.state.take() else {
            debug_assert!(false, "a commit is already running");
            return;
        };
        let (slot, path, offsets) = (self.slot.clone(), self.path.clone(), self.offsets.clone());
        self.running = Some(tokio::task::spawn_blocking(move || {
            slot.sync()?;
            for index in written {
                progress.mark(index);
            }
            progress.save(&path)?;
            if let Some(h) = hasher.as_mut() {
                let prefix_end = match progress.first_missing() {
                    None => h.image_len(),
                    Some(index) => offsets.get(index as usize).copied().unwrap_or(0),
                };
                if let Err(e) = h.advance_to(prefix_end) {
                    tracing::warn!("the image hash waits for the download's end: {e:#}");
                    hasher = None;
                }
            }
            Ok(Durable { progress, image_hasher: hasher })
        }));
    }

    /// The whole-image hash as far as the last finished commit carried it.
    fn take_image_hasher(&mut self) -> Option<ImageHasher> {
        self.state.as_mut().and_then(|state| state.image_hasher.take())
    }

    /// Waits for the running commit, if any; returns how many chunks are durable. Safe to
    /// cancel: the commit keeps running and a later call picks it up.
    async fn finished(&mut self) -> Result<u32> {
        if let Some(running) = self.running.as_mut() {
            let done = running.await;
            self.running = None;
            self.state = Some(done.map_err(|e| anyhow!("progress writer stopped: {e}"))??);
        }
        Ok(self.state.as_ref().map_or(0, |state| state.progress.count()))
    }
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
            return Outcome::Bad { why: e.to_string(), written: Vec::new(), units: Vec::new() };
        }
        Err(e) => return Outcome::Failed { why: e.to_string() },
    };
    let took = started.elapsed();
    let decoded = tokio::task::spawn_blocking(move || {
        let mut written = Vec::new();
        let mut units = Vec::new();
        let mut bytes = 0u64;
        let mut bad = None;
        let mut missing = 0;
        // Each chunk is verified and decrypted where it lies in the response body.
        let (spans, mut body) = response.into_parts();
        for (span, wanted) in spans.into_iter().zip(batch) {
            let stored = match span {
                StoredAt::Body(range) => &mut body[range],
                StoredAt::NotFound => {
                    missing += 1;
                    continue;
                }
                StoredAt::Busy => continue,
            };
            if bad.is_some() {
                continue;
            }
            bytes += stored.len() as u64;
            match protocol::codec::open_in_buffer(&wanted.entry, key.as_deref(), stored) {
                Ok(plain) => {
                    for (index, offset) in &wanted.targets {
                        slot.write_at(*offset, &plain)?;
                        written.push(*index);
                    }
                    units.push(wanted.unit);
                }
                Err(e) => {
                    bad = Some(format!("served chunk {} that failed verification: {e}", wanted.entry.id));
                }
            }
        }
        Ok::<_, anyhow::Error>((written, units, bytes, missing, bad))
    })
    .await;
    match decoded {
        Ok(Ok((written, units, bytes, missing, None))) => Outcome::Done { written, units, bytes, took, missing },
        Ok(Ok((written, units, _, _, Some(why)))) => Outcome::Bad { why, written, units },
        Ok(Err(e)) => Outcome::Storage(format!("{e:#}")),
        Err(e) => Outcome::Storage(format!("chunk decoder stopped: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_client::Timeouts;
    use protocol::device::EdgeRecord;

    /// What the driver tells the edge pool. A dead QUIC connection fails the requests on all
    /// its streams: that is one failure of the edge for the round, not one per stream. A
    /// batch's rate is scaled by its edge's requests in flight, which share the link: 128 KB
    /// in 2 s records as 64 KB/s times four on the QUIC edge (four streams) and times two on
    /// the TCP edge (two connections), and times one once three of the four streams died.
    #[tokio::test]
    async fn a_dead_connection_is_one_failure_of_its_edge_and_batch_rates_count_its_requests() {
        let quic = EdgeAddr::parse("quic://127.0.0.1:1").unwrap();
        let tcp = EdgeAddr::parse("tcp://127.0.0.1:2").unwrap();
        let mut pool = EdgePool::new(vec![quic, tcp], Timeouts::default());
        // Enough 1,000-byte chunks for a full batch on every connection.
        let config = FetchConfig::new(2, to_protocol(Duration::from_secs(30)));
        let units = 8 * protocol::device::fetch::BATCH_CHUNKS;
        let mut plan: FetchPlan<EdgeAddr> = FetchPlan::new(config, vec![1000; units]);
        assert!(plan.start_round(pool.now()));
        let mut workers: Vec<Worker> = Vec::new();
        let mut inboxes = Vec::new();
        for (edge, requests) in [(quic, 4), (tcp, 2)] {
            assert_eq!(plan.add_edge(edge, requests), workers.len()..workers.len() + requests);
            for _ in 0..requests {
                let (jobs, inbox) = mpsc::channel::<Job>(1);
                inboxes.push(inbox);
                workers.push(Worker { addr: edge, jobs: Some(jobs), task: tokio::spawn(async {}) });
            }
        }
        let now = pool.now();
        let mut asked: HashMap<usize, Vec<u32>> = HashMap::new();
        while let Some(transmit) = plan.poll_transmit(now) {
            asked.insert(transmit.conn, transmit.units.to_vec());
        }
        assert_eq!(asked.len(), 6, "every connection has a batch out");

        let took = to_protocol(Duration::from_secs(2));
        plan.handle_done(now, 0, &asked[&0], 0, 128_000, took);
        plan.handle_done(now, 4, &asked[&4], 0, 128_000, took);
        for conn in 1..4 {
            plan.handle_failed(conn);
        }
        let (mut last_error, mut failed) = (String::new(), HashSet::new());
        apply_events(&mut plan, &mut pool, &mut workers, &mut last_error, "", &mut failed);

        let stats: HashMap<EdgeAddr, EdgeRecord> = pool.stats().map(|(a, r)| (*a, *r)).collect();
        assert_eq!(stats[&quic].failures, 1, "three streams of one dead connection");
        assert_eq!(stats[&tcp].failures, 0);
        let rate = |requests: u64| {
            let mut expected = EdgeRecord::default();
            expected.record_batch(128_000 * requests, took);
            expected.throughput
        };
        assert_eq!(stats[&quic].throughput, rate(4));
        assert_eq!(stats[&tcp].throughput, rate(2));
        // The dead streams no longer count as sharing: the QUIC edge's next batch is scaled by
        // its one open worker.
        while let Some(transmit) = plan.poll_transmit(now) {
            asked.insert(transmit.conn, transmit.units.to_vec());
        }
        plan.handle_done(now, 0, &asked[&0], 0, 128_000, took);
        apply_events(&mut plan, &mut pool, &mut workers, &mut last_error, "", &mut failed);
        let mut expected = EdgeRecord::default();
        expected.record_batch(128_000 * 4, took);
        expected.record_batch(128_000, took);
        assert_eq!(pool.stats().find(|(a, _)| **a == quic).map(|(_, r)| r.throughput), Some(expected.throughput));
        // A new round (a new set of edges already failed) counts the edge's failure again.
        while let Some(transmit) = plan.poll_transmit(now) {
            asked.insert(transmit.conn, transmit.units.to_vec());
        }
        plan.handle_failed(0);
        apply_events(&mut plan, &mut pool, &mut workers, &mut last_error, "", &mut HashSet::new());
        assert_eq!(pool.stats().find(|(a, _)| **a == quic).map(|(_, r)| r.failures), Some(2));
        drop(inboxes);
    }

    /// Chunks committed out of order: the hash stops at the first chunk not yet durable, then
    /// the commit that fills the gap carries it to the end, where it equals the image's blake3.
    #[tokio::test]
    async fn commits_carry_the_image_hash_to_the_first_gap_then_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let lengths = [3000usize, 70_000, 1, (1 << 20) + 5, 4096];
        let image: Vec<u8> = (0..lengths.iter().sum::<usize>()).map(|i| (i * 31 + i / 777) as u8).collect();
        let offsets: Vec<u64> =
            lengths.iter().scan(0u64, |at, len| Some(std::mem::replace(at, *at + *len as u64))).collect();
        let path = dir.path().join("slot");
        let slot = Arc::new(SlotFile::open_for_write(&path, image.len() as u64).unwrap());
        let write = |index: usize| {
            let at = offsets[index] as usize;
            slot.write_at(at as u64, &image[at..at + lengths[index]]).unwrap();
        };
        let mut committer = Committer {
            slot: slot.clone(),
            path: dir.path().join("progress"),
            offsets: Arc::new(offsets.clone()),
            state: Some(Durable {
                progress: Progress::new(protocol::ReleaseId([1; 32]), lengths.len() as u32),
                image_hasher: Some(ImageHasher::open(&path, image.len() as u64).unwrap()),
            }),
            running: None,
        };
        let hashed = |c: &Committer| c.state.as_ref().unwrap().image_hasher.as_ref().unwrap().hashed();

        for index in [0, 1, 3] {
            write(index);
        }
        committer.start(vec![3, 0, 1]);
        assert_eq!(committer.finished().await.unwrap(), 3);
        assert_eq!(hashed(&committer), offsets[2], "hashed past the first chunk not yet durable");

        write(4);
        committer.start(vec![4]);
        assert_eq!(committer.finished().await.unwrap(), 4);
        assert_eq!(hashed(&committer), offsets[2]);

        write(2);
        committer.start(vec![2]);
        assert_eq!(committer.finished().await.unwrap(), 5);
        assert_eq!(hashed(&committer), image.len() as u64);
        let hasher = committer.take_image_hasher().unwrap();
        assert_eq!(hasher.finish().unwrap(), *blake3::hash(&image).as_bytes());
    }
}
