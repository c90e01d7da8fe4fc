//! The node's status document ([`EdgeStatus`], the one typed shape `/status`, `edge-node
//! status` and the demo share), rebuilt by the main loop on its status tick and whenever a
//! release becomes durably complete.

use protocol::edge::status::{
    BytesIn, EdgeStatus, PeerStatus, ReleaseStatus, ReportsStatus, RequestCounts, StoreStatus, TrustStatus,
};
use protocol::edge::SourceClass;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use super::Daemon;

/// The newest status document, shared with the operations server.
pub type StatusHandle = Arc<Mutex<EdgeStatus>>;

impl Daemon {
    /// The status document for the daemon's state now.
    fn status(&self) -> EdgeStatus {
        let peers = self
            .sites
            .iter()
            .map(|(peer, (site, claims))| PeerStatus {
                peer: peer.to_string(),
                site: site.clone(),
                origin: self.meta_sources.acts_as_origin(peer, *claims),
                claims_origin: *claims,
            })
            .collect();
        let releases = self
            .releases
            .iter()
            .map(|(id, r)| ReleaseStatus {
                name: r.name.clone(),
                version: r.version.clone(),
                hw_class: r.hw_class.clone(),
                target: r.target_path.clone(),
                chunks: r.entries.len() as u64,
                have: self.scheduler.have(id).map(|b| b.count()).unwrap_or(0) as u64,
                complete: self.durably_complete(id, r),
            })
            .collect();
        let stats = self.scheduler.stats();
        let cache = self.scheduler.cache();
        EdgeStatus {
            node_id: self.client.local_peer_id().to_string(),
            site: self.config.site.clone(),
            peers,
            releases,
            store: StoreStatus {
                chunks: cache.len() as u64,
                bytes: cache.used_bytes(),
                capacity_bytes: cache.capacity_bytes(),
            },
            bytes_in: BytesIn {
                site: stats.bytes_in[SourceClass::Site as usize],
                wan: stats.bytes_in[SourceClass::Wan as usize],
                origin: stats.bytes_in[SourceClass::Origin as usize],
            },
            corrupt_chunks: stats.corrupt_chunks,
            requests: RequestCounts {
                sent: stats.requests_sent,
                failed: stats.failed_requests,
                tail_duplicates: stats.tail_duplicates,
            },
            unwritten_chunks: self.unwritten.len() as u64,
            trust: TrustStatus {
                timestamp_version: self.trusted_timestamp_version,
                metadata_rejected: self.metrics.metadata_rejected.load(Relaxed),
                announcements_rejected: self.metrics.announcements_rejected.load(Relaxed),
                status_reports_rejected: self.metrics.status_reports_rejected.load(Relaxed),
                reporting_devices: self.device.reporting_devices() as u64,
            },
            rollouts: self.device.rollouts.lock().map(|g| g.status()).unwrap_or_default(),
            reports: ReportsStatus {
                queued: self.metrics.status_reports_queued.load(Relaxed),
                forwarded: self.metrics.status_reports_forwarded.load(Relaxed),
                dropped: self.metrics.status_reports_dropped.load(Relaxed),
            },
        }
    }

    /// Publishes the status document and the `releases_complete` gauge.
    pub(super) fn update_status(&mut self) {
        let status = self.status();
        let complete = self.releases.ids().filter(|id| self.scheduler.is_complete(id)).count() as u64;
        self.metrics.releases_complete.store(complete, Relaxed);
        if let Ok(mut slot) = self.status.lock() {
            *slot = status;
        }
    }
}
