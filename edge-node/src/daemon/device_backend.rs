//! The daemon's side of the device service: TUF files from the mirror, chunks from the
//! verified store, misses turned into on-demand fetches, status reports checked (signature,
//! replay, per-address rate and device quota: [`protocol::status::ReportGate`]), stored
//! durably in the report queue for the origin before the device hears `Ok`, and counted by
//! the site's rollout guards. Chunks devices read recently are answered from memory
//! ([`HotChunks`]) without a hop to the blocking pool.

use protocol::rollout::RolloutReport;
use protocol::status::{ReportError, ReportGate, ReportLimits};
use protocol::wire::device::{EdgeHoldAnswer, ErrorCode};
use protocol::ChunkId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;

use super::hot_chunks::HotChunks;
use super::report_queue::{AppendError, ReportLog};
use super::rollout_guards::RolloutGuards;
use super::Internal;
use crate::device::{ChunkLookup, ChunkSize, DeviceBackend};
use crate::metrics::Metrics;
use chunk_store::{ChunkStore, ReadError};

/// Shared between the main loop (which fills `targets`) and the device service.
pub struct Backend {
    pub(super) mirror: PathBuf,
    pub(super) store: ChunkStore,
    /// TUF target path → repository file name (consistent-snapshot, hash-prefixed).
    pub(super) targets: RwLock<HashMap<String, (String, u64)>>,
    pub(super) internal: mpsc::Sender<Internal>,
    /// Accepted device status reports (the newest per device) and the admission state.
    pub(super) reports: Mutex<ReportGate<IpAddr>>,
    /// The site's rollout guards (holds answered to devices).
    pub(super) rollouts: Mutex<RolloutGuards>,
    /// Admitted reports awaiting the origin (store and forward).
    report_log: Arc<ReportLog>,
    /// Epoch of the gate's clock.
    started: std::time::Instant,
    metrics: Arc<Metrics>,
    /// Chunks devices read recently.
    hot: HotChunks,
}

impl Backend {
    pub(super) fn new(
        mirror: PathBuf,
        store: ChunkStore,
        internal: mpsc::Sender<Internal>,
        report_limits: ReportLimits,
        report_log: Arc<ReportLog>,
        metrics: Arc<Metrics>,
        hot_cache_bytes: usize,
    ) -> Arc<Self> {
        Arc::new(Backend {
            mirror,
            store,
            targets: RwLock::new(HashMap::new()),
            internal,
            reports: Mutex::new(ReportGate::new(report_limits)),
            rollouts: Mutex::new(RolloutGuards::default()),
            report_log,
            started: std::time::Instant::now(),
            metrics,
            hot: HotChunks::new(hot_cache_bytes),
        })
    }

    /// Serves `target_path` to devices from the mirror file `(name, length)` from now on.
    pub(super) fn publish_target(&self, target_path: String, mirror_file: (String, u64)) {
        if let Ok(mut targets) = self.targets.write() {
            targets.insert(target_path, mirror_file);
        }
    }

    /// Mirror file names of every target served.
    pub(super) fn known_target_files(&self) -> std::collections::HashSet<String> {
        self.targets.read().map(|t| t.values().map(|(file, _)| file.clone()).collect()).unwrap_or_default()
    }

    /// Devices whose newest report is kept.
    pub(super) fn reporting_devices(&self) -> usize {
        self.reports.lock().map_or(0, |g| g.device_count())
    }
}

impl DeviceBackend for Backend {
    async fn metadata_len(&self, name: &str) -> Option<u64> {
        let path = chunk_store::repo_files::resolve(&self.mirror, &format!("metadata/{name}"))?;
        tokio::task::spawn_blocking(move || std::fs::metadata(path).ok().map(|m| m.len())).await.ok().flatten()
    }

    async fn metadata(&self, name: &str, max_len: u64) -> Option<Vec<u8>> {
        let (mirror, name) = (self.mirror.clone(), format!("metadata/{name}"));
        tokio::task::spawn_blocking(move || chunk_store::repo_files::read(&mirror, &name, max_len)).await.ok().flatten()
    }

    async fn target_len(&self, path: &str) -> Option<u64> {
        if let Some(file) = content_named_file(&self.mirror, path) {
            // A version by its content name: any the mirror still holds (it wrote only
            // verified files under these names), so a device whose metadata is a moment
            // older or newer than this edge's gets the bytes its metadata names.
            return tokio::task::spawn_blocking(move || std::fs::metadata(file).ok().map(|m| m.len()))
                .await
                .ok()
                .flatten();
        }
        // The length the signed targets metadata gives, which the mirror's file has.
        self.targets.read().ok()?.get(path).map(|(_, length)| *length)
    }

    async fn target(&self, path: &str, max_len: u64) -> Option<Vec<u8>> {
        let (file, length) = match content_named_file(&self.mirror, path) {
            Some(_) => (format!("targets/{path}"), max_len),
            None => self.targets.read().ok()?.get(path).cloned()?,
        };
        let mirror = self.mirror.clone();
        tokio::task::spawn_blocking(move || chunk_store::repo_files::read(&mirror, &file, length.min(max_len)))
            .await
            .ok()
            .flatten()
    }

    async fn chunk(&self, id: ChunkId) -> ChunkLookup {
        let max = u64::from(protocol::manifest::limits::MAX_STORED_CHUNK_BYTES);
        self.chunks(vec![(id, max)]).await.pop().unwrap_or(ChunkLookup::Busy)
    }

    async fn chunk_lens(&self, ids: Vec<ChunkId>) -> Vec<ChunkSize> {
        let max = u64::from(protocol::manifest::limits::MAX_STORED_CHUNK_BYTES);
        // Hot chunks are sized from memory; only the others cost a blocking hop.
        let mut sizes: Vec<Option<ChunkSize>> =
            ids.iter().map(|id| self.hot.len_of(id).map(|len| ChunkSize::Stored(len.min(max + 1)))).collect();
        let cold: Vec<(usize, ChunkId)> =
            ids.iter().enumerate().filter(|(i, _)| sizes[*i].is_none()).map(|(i, id)| (i, *id)).collect();
        if cold.is_empty() {
            return sizes.into_iter().map(|s| s.unwrap_or(ChunkSize::Busy)).collect();
        }
        let store = self.store.clone();
        let sized = tokio::task::spawn_blocking(move || {
            cold.into_iter().map(|(i, id)| (i, id, store.len(&id))).collect::<Vec<_>>()
        })
        .await;
        let Ok(sized) = sized else { return vec![ChunkSize::Busy; ids.len()] };
        let mut missing = None;
        for (i, id, len) in sized {
            sizes[i] = Some(match len {
                // A file longer than any chunk is damaged: the read that finds it deletes it.
                Some(len) => ChunkSize::Stored(len.min(max + 1)),
                None => {
                    missing.get_or_insert(id);
                    ChunkSize::Busy
                }
            });
        }
        if let Some(id) = missing {
            // A device wants a chunk we do not hold: fetch its release now (one demand names
            // the release). The device is told to ask again rather than to look elsewhere.
            let _ = self.internal.try_send(Internal::Demand(id));
        }
        sizes.into_iter().map(|s| s.unwrap_or(ChunkSize::Busy)).collect()
    }

    async fn chunks(&self, sized: Vec<(ChunkId, u64)>) -> Vec<ChunkLookup> {
        // Hot chunks from memory (within the length they were sized at, as a read would be);
        // the others read from the store on the blocking pool, then kept hot.
        let mut lookups: Vec<Option<ChunkLookup>> = sized
            .iter()
            .map(|(id, len)| self.hot.get(id).filter(|b| b.len() as u64 <= *len).map(ChunkLookup::Found))
            .collect();
        let mut served: Vec<ChunkId> =
            sized.iter().zip(&lookups).filter(|(_, l)| l.is_some()).map(|((id, _), _)| *id).collect();
        let cold: Vec<(usize, ChunkId, u64)> = sized
            .iter()
            .enumerate()
            .filter(|(i, _)| lookups[*i].is_none())
            .map(|(i, (id, len))| (i, *id, *len))
            .collect();
        let mut damaged = Vec::new();
        if !cold.is_empty() {
            let store = self.store.clone();
            // Each read is bounded by the length it was sized at (see `DeviceBackend::chunks`).
            let read = tokio::task::spawn_blocking(move || {
                cold.into_iter().map(|(i, id, len)| (i, id, store.get(&id, len))).collect::<Vec<_>>()
            })
            .await;
            let Ok(read) = read else { return vec![ChunkLookup::Busy; sized.len()] };
            for (i, id, result) in read {
                lookups[i] = Some(match result {
                    Ok(bytes) => {
                        served.push(id);
                        self.hot.insert(id, bytes.clone());
                        ChunkLookup::Found(bytes)
                    }
                    // Deleted and counted in `corrupt_chunks` by the store.
                    Err(ReadError::Damaged) => {
                        damaged.push(id);
                        ChunkLookup::Busy
                    }
                    // Evicted since it was sized.
                    Err(ReadError::Missing) => ChunkLookup::Busy,
                });
            }
        }
        if !served.is_empty() {
            let _ = self.internal.try_send(Internal::Served(served));
        }
        if !damaged.is_empty() {
            let _ = self.internal.try_send(Internal::StoreFailed(damaged));
        }
        lookups.into_iter().map(|l| l.unwrap_or(ChunkLookup::Busy)).collect()
    }

    async fn report_status(&self, peer: SocketAddr, body: Vec<u8>) -> Result<(), ErrorCode> {
        let now = protocol::time::Instant(self.started.elapsed().as_micros() as u64);
        // A full queue refuses before admission: the gate would otherwise record the report
        // as seen and refuse the device's retry of it as a replay.
        if !self.report_log.has_room(body.len()) {
            Metrics::add(&self.metrics.status_reports_dropped, 1);
            tracing::debug!(%peer, "status report queue is full; report refused");
            return Err(ErrorCode::BUSY);
        }
        // Verify before taking the lock: a signature check is the expensive part.
        let mut rollout = None;
        let verdict = protocol::status::verify(&body).and_then(|report| {
            rollout = RolloutReport::from_status(&report.report);
            let mut gate = self.reports.lock().map_err(|_| ReportError::RateLimited)?;
            gate.admit(now, peer.ip(), report)
        });
        if let Err(e) = verdict {
            Metrics::add(&self.metrics.status_reports_rejected, 1);
            tracing::debug!(%peer, %e, "device status report refused");
            return Err(match e {
                ReportError::RateLimited | ReportError::TooManyDevices => ErrorCode::BUSY,
                _ => ErrorCode::BAD_REQUEST,
            });
        }
        // Durable before the device hears Ok: a node restarted mid-rollout loses no report
        // it acknowledged.
        match self.report_log.append(body).await {
            Ok(()) => {}
            Err(e) => {
                if matches!(e, AppendError::Full) {
                    Metrics::add(&self.metrics.status_reports_dropped, 1);
                }
                tracing::warn!(%peer, %e, "device status report not stored");
                return Err(ErrorCode::BUSY);
            }
        }
        Metrics::add(&self.metrics.status_reports_accepted, 1);
        // Admitted (signed, not a replay) and stored: the site's guard counts it.
        if let (Some(report), Ok(mut guards)) = (rollout, self.rollouts.lock()) {
            guards.handle_report(&report, super::unix_now());
        }
        Ok(())
    }

    async fn rollout_hold(&self, rollout: &str, device: [u8; 32]) -> EdgeHoldAnswer {
        match self.rollouts.lock() {
            Ok(mut guards) => guards.hold(rollout, &device, super::unix_now()),
            Err(_) => EdgeHoldAnswer::None,
        }
    }
}

/// The mirror file of `path` if it is a consistent-snapshot content name
/// (`dir/<sha256 hex>.name`) that resolves inside the mirror's targets directory.
fn content_named_file(mirror: &std::path::Path, path: &str) -> Option<PathBuf> {
    let file_name = path.rsplit('/').next()?;
    let (hash, _) = protocol::tuf::naming::split_hashed_file_name(file_name)?;
    let is_sha256_hex = hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_sha256_hex {
        return None;
    }
    chunk_store::repo_files::resolve(mirror, &format!("targets/{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceClient, DeviceService, DeviceServiceConfig};
    use crate::metrics::Metrics;
    use bytes::Bytes;
    use protocol::wire::{device::ChunkStatus, ChunkRange};
    use std::sync::atomic::Ordering::Relaxed;

    /// A chunk damaged on disk (found when a device asks for it, on its first read by this
    /// process) is deleted, counted in `corrupt_chunks`, reported so the cache forgets it, and
    /// answered Busy — never sent. Before, the device path deleted it without counting it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_chunk_a_device_asked_for_is_deleted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let body = vec![5u8; 10_000];
        let id = ChunkId::of(&body);
        let writer = ChunkStore::open(dir.path()).unwrap();
        writer.put_batch(&[(id, &body)]).unwrap();
        chunk_store::testing::flip_stored_byte(&writer, &id, 4321);
        drop(writer);

        // A new process: nothing verified yet.
        let metrics = Arc::new(Metrics::default());
        let store = ChunkStore::open(dir.path()).unwrap().with_on_damage(metrics.clone());
        let (tx, mut rx) = mpsc::channel(8);
        let queue =
            super::super::report_queue::ReportQueue::open(&dir.path().join("reports"), 1 << 20, |_| {}).unwrap();
        let log = ReportLog::start(queue, metrics.clone()).unwrap();
        let backend =
            Backend::new(dir.path().join("repo"), store.clone(), tx, Default::default(), log, metrics.clone(), 1 << 20);
        let any = "127.0.0.1:0".parse().unwrap();
        let config = DeviceServiceConfig { tcp_addr: Some(any), ..DeviceServiceConfig::default() };
        let (addrs, task) = DeviceService::bind(config, backend, metrics.clone()).await.unwrap();
        let mut client = DeviceClient::connect_tcp(addrs.tcp.unwrap()).await.unwrap();
        let batch = client.get_chunks(&[ChunkRange::whole(id)]).await.unwrap();
        assert_eq!(batch.items().iter().map(|i| i.status).collect::<Vec<_>>(), vec![ChunkStatus::Busy]);
        assert_eq!(metrics.corrupt_chunks.load(Relaxed), 1);
        assert_eq!(store.body_on_disk(&id), None);
        drop(store);
        assert!(ChunkStore::open(dir.path()).unwrap().scan().is_empty(), "deleted on disk, not only forgotten");
        assert!(matches!(rx.try_recv(), Ok(Internal::StoreFailed(ids)) if ids == vec![id]));
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_a_device_read_is_answered_from_memory_next_time() {
        let dir = tempfile::tempdir().unwrap();
        let body = vec![9u8; 4096];
        let id = ChunkId::of(&body);
        let store = ChunkStore::open(dir.path()).unwrap();
        store.put_batch(&[(id, &body)]).unwrap();
        let metrics = Arc::new(Metrics::default());
        let (tx, _rx) = mpsc::channel(8);
        let queue =
            super::super::report_queue::ReportQueue::open(&dir.path().join("reports"), 1 << 20, |_| {}).unwrap();
        let log = ReportLog::start(queue, metrics.clone()).unwrap();
        let backend =
            Backend::new(dir.path().join("repo"), store.clone(), tx, Default::default(), log, metrics, 1 << 20);

        assert_eq!(backend.chunk_lens(vec![id]).await, vec![ChunkSize::Stored(4096)]);
        assert_eq!(backend.chunks(vec![(id, 4096)]).await, vec![ChunkLookup::Found(Bytes::from(body.clone()))]);
        // The stored body goes (evicted, say): the hot copy still answers, sized and read.
        store.remove(&id).unwrap();
        assert_eq!(store.len(&id), None);
        assert_eq!(backend.chunk_lens(vec![id]).await, vec![ChunkSize::Stored(4096)]);
        assert_eq!(backend.chunks(vec![(id, 4096)]).await, vec![ChunkLookup::Found(Bytes::from(body))]);
        // Never more than the length it was sized at.
        assert_eq!(backend.chunks(vec![(id, 100)]).await, vec![ChunkLookup::Busy]);
    }
}
