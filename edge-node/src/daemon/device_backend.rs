//! The daemon's side of the device service: TUF files from the mirror, chunks from the
//! verified store, misses turned into on-demand fetches, status reports checked (signature,
//! replay, per-address rate and device quota: [`protocol::status::ReportGate`]) and the newest
//! per device kept for upstream.

use protocol::device_wire::ErrorCode;
use protocol::status::{ReportError, ReportGate, ReportLimits};
use protocol::ChunkId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;

use super::Internal;
use crate::device::{ChunkLookup, DeviceBackend};
use crate::metrics::Metrics;
use crate::store::{ChunkStore, ReadError};

/// Shared between the main loop (which fills `targets`) and the device service.
pub struct Backend {
    pub(super) mirror: PathBuf,
    pub(super) store: ChunkStore,
    /// TUF target path → repository file name (consistent-snapshot, hash-prefixed).
    pub(super) targets: RwLock<HashMap<String, (String, u64)>>,
    pub(super) internal: mpsc::Sender<Internal>,
    /// Accepted device status reports (the newest per device) and the admission state.
    pub(super) reports: Mutex<ReportGate<IpAddr>>,
    /// Epoch of the gate's clock.
    started: std::time::Instant,
    metrics: Arc<Metrics>,
}

impl Backend {
    pub(super) fn new(
        mirror: PathBuf,
        store: ChunkStore,
        internal: mpsc::Sender<Internal>,
        report_limits: ReportLimits,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Backend {
            mirror,
            store,
            targets: RwLock::new(HashMap::new()),
            internal,
            reports: Mutex::new(ReportGate::new(report_limits)),
            started: std::time::Instant::now(),
            metrics,
        })
    }

    /// Devices whose newest report is kept.
    pub(super) fn reporting_devices(&self) -> usize {
        self.reports.lock().map_or(0, |g| g.device_count())
    }
}

impl DeviceBackend for Backend {
    async fn metadata(&self, name: &str) -> Option<Vec<u8>> {
        let (mirror, name) = (self.mirror.clone(), format!("metadata/{name}"));
        tokio::task::spawn_blocking(move || crate::repo_files::read(&mirror, &name, 64 << 20)).await.ok().flatten()
    }

    async fn target(&self, path: &str) -> Option<Vec<u8>> {
        let (file, length) = self.targets.read().ok()?.get(path).cloned()?;
        let mirror = self.mirror.clone();
        tokio::task::spawn_blocking(move || crate::repo_files::read(&mirror, &file, length)).await.ok().flatten()
    }

    async fn chunk(&self, id: ChunkId) -> ChunkLookup {
        let store = self.store.clone();
        let max = protocol::manifest::limits::MAX_STORED_CHUNK_BYTES as u64;
        let read = tokio::task::spawn_blocking(move || store.get(&id, max)).await;
        match read {
            Ok(Ok(bytes)) => {
                let _ = self.internal.try_send(Internal::Served(vec![id]));
                ChunkLookup::Found(bytes.to_vec())
            }
            Ok(Err(ReadError::Damaged)) => {
                let _ = self.internal.try_send(Internal::StoreFailed(vec![id]));
                ChunkLookup::Busy
            }
            Ok(Err(ReadError::Missing)) => {
                // A device wants a chunk we do not hold: fetch its release now. The device is
                // told to ask again rather than to look elsewhere.
                let _ = self.internal.try_send(Internal::Demand(id));
                ChunkLookup::Busy
            }
            Err(_) => ChunkLookup::Busy,
        }
    }

    async fn chunks(&self, ids: Vec<ChunkId>) -> Vec<ChunkLookup> {
        let store = self.store.clone();
        let max = protocol::manifest::limits::MAX_STORED_CHUNK_BYTES as u64;
        let n = ids.len();
        let read = tokio::task::spawn_blocking(move || {
            ids.into_iter().map(|id| (id, store.get(&id, max))).collect::<Vec<_>>()
        })
        .await;
        let Ok(read) = read else { return vec![ChunkLookup::Busy; n] };
        let (mut served, mut damaged, mut missing) = (Vec::new(), Vec::new(), None);
        let lookups = read
            .into_iter()
            .map(|(id, result)| match result {
                Ok(bytes) => {
                    served.push(id);
                    ChunkLookup::Found(bytes.to_vec())
                }
                Err(ReadError::Damaged) => {
                    damaged.push(id);
                    ChunkLookup::Busy
                }
                Err(ReadError::Missing) => {
                    missing.get_or_insert(id);
                    ChunkLookup::Busy
                }
            })
            .collect();
        if !served.is_empty() {
            let _ = self.internal.try_send(Internal::Served(served));
        }
        if !damaged.is_empty() {
            let _ = self.internal.try_send(Internal::StoreFailed(damaged));
        }
        if let Some(id) = missing {
            // One demand names the release; the device is told to ask again.
            let _ = self.internal.try_send(Internal::Demand(id));
        }
        lookups
    }

    async fn report_status(&self, peer: SocketAddr, body: Vec<u8>) -> Result<(), ErrorCode> {
        let now = protocol::time::Instant(self.started.elapsed().as_micros() as u64);
        // Verify before taking the lock: a signature check is the expensive part.
        let verdict = protocol::status::verify(&body).and_then(|report| {
            let mut gate = self.reports.lock().map_err(|_| ReportError::RateLimited)?;
            gate.admit(now, peer.ip(), report)
        });
        match verdict {
            Ok(()) => {
                Metrics::add(&self.metrics.status_reports_accepted, 1);
                Ok(())
            }
            Err(e) => {
                Metrics::add(&self.metrics.status_reports_rejected, 1);
                tracing::debug!(%peer, %e, "device status report refused");
                Err(match e {
                    ReportError::RateLimited | ReportError::TooManyDevices => ErrorCode::BUSY,
                    _ => ErrorCode::BAD_REQUEST,
                })
            }
        }
    }
}
