//! Counters the daemon updates and the ops endpoints read: Prometheus `/metrics`, `/status`
//! and `edge-node status`. Plain atomics: updated on hot paths, read rarely.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Where bytes came from or went to. `site` is the LAN, `wan` another site's edge node,
/// `origin` the seeder; `device` is a device on our LAN.
pub const SOURCE_CLASSES: [&str; 3] = ["site", "wan", "origin"];

/// Every counter the edge node exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Verified chunk bytes received, by source class (site, wan, origin).
    pub bytes_in: [AtomicU64; 3],
    /// Chunk bytes sent to other edge nodes.
    pub bytes_out_peers: AtomicU64,
    /// Chunk bytes sent to devices.
    pub bytes_out_devices: AtomicU64,
    /// Chunk reads answered from the store.
    pub cache_hits: AtomicU64,
    /// Chunk reads we could not answer.
    pub cache_misses: AtomicU64,
    /// Chunks that failed verification: from peers, or damaged on disk (found by a read for
    /// a peer or a device, by `put_batch`, or by background re-verification).
    pub corrupt_chunks: AtomicU64,
    /// Stored bytes hashed again by background re-verification.
    pub reverified_bytes: AtomicU64,
    /// Completed re-verification passes over the whole store.
    pub reverify_passes: AtomicU64,
    /// Device connections refused: over `max_connections`, or over
    /// `max_connections_per_client` for the client's address.
    pub device_connections_refused: AtomicU64,
    /// Peers' chunk requests answered Busy because `mesh_max_concurrent_serves` were running.
    pub mesh_serves_busy: AtomicU64,
    /// Chunks in the store.
    pub chunks_stored: AtomicU64,
    /// Bytes in the store.
    pub bytes_stored: AtomicU64,
    /// Connected mesh peers.
    pub peers: AtomicU64,
    /// Connected devices.
    pub devices: AtomicU64,
    /// Device chunk requests waiting for response memory (see `DeviceServiceConfig::busy_wait`).
    pub device_requests_waiting: AtomicU64,
    /// Releases completely cached.
    pub releases_complete: AtomicU64,
    /// Device status reports accepted (signature verified, not a replay, within allowance).
    pub status_reports_accepted: AtomicU64,
    /// Device status reports refused: forged, replayed, malformed, or over an address's
    /// rate or device quota.
    pub status_reports_rejected: AtomicU64,
    /// Repository metadata from a peer that failed verification (forged or broken); the peer
    /// is not asked for metadata again for a while.
    pub metadata_rejected: AtomicU64,
    /// Gossip announcements dropped because their timestamp did not verify.
    pub announcements_rejected: AtomicU64,
    /// Admitted device status reports refused because the on-disk report queue was full
    /// (`report_queue_bytes`); the device was answered Busy.
    pub status_reports_dropped: AtomicU64,
    /// Device status reports the origin acknowledged (and the queue forgot).
    pub status_reports_forwarded: AtomicU64,
    /// Device status reports on disk awaiting the origin's acknowledgement.
    pub status_reports_queued: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP otamesh_edge_{name} {help}\n# TYPE otamesh_edge_{name} {kind}");
        };
        family("bytes_in_total", "counter", "Verified chunk bytes received, by source class.");
        let mut lines = String::new();
        for (class, counter) in SOURCE_CLASSES.iter().zip(&self.bytes_in) {
            let _ = writeln!(lines, "otamesh_edge_bytes_in_total{{source=\"{class}\"}} {}", counter.load(Relaxed));
        }
        out.push_str(&lines);
        let simple: [(&str, &str, &str, &AtomicU64); 15] = [
            ("bytes_out_peers_total", "counter", "Chunk bytes sent to other edge nodes.", &self.bytes_out_peers),
            ("bytes_out_devices_total", "counter", "Chunk bytes sent to devices.", &self.bytes_out_devices),
            ("cache_hits_total", "counter", "Chunk reads answered from the store.", &self.cache_hits),
            ("cache_misses_total", "counter", "Chunk reads that could not be answered.", &self.cache_misses),
            ("corrupt_chunks_total", "counter", "Chunks that failed verification.", &self.corrupt_chunks),
            (
                "reverified_bytes_total",
                "counter",
                "Stored bytes hashed again by background re-verification.",
                &self.reverified_bytes,
            ),
            ("reverify_passes_total", "counter", "Completed re-verification passes.", &self.reverify_passes),
            (
                "device_connections_refused_total",
                "counter",
                "Device connections refused by the connection limits.",
                &self.device_connections_refused,
            ),
            (
                "mesh_serves_busy_total",
                "counter",
                "Peer chunk requests answered Busy at the concurrent-serve limit.",
                &self.mesh_serves_busy,
            ),
            ("chunks", "gauge", "Chunks in the store.", &self.chunks_stored),
            ("stored_bytes", "gauge", "Bytes in the store.", &self.bytes_stored),
            ("peers", "gauge", "Connected mesh peers.", &self.peers),
            ("devices", "gauge", "Connected devices.", &self.devices),
            (
                "device_requests_waiting",
                "gauge",
                "Device chunk requests waiting for response memory.",
                &self.device_requests_waiting,
            ),
            ("releases_complete", "gauge", "Releases completely cached.", &self.releases_complete),
        ];
        let trust: [(&str, &str, &str, &AtomicU64); 4] = [
            (
                "status_reports_accepted_total",
                "counter",
                "Device status reports accepted.",
                &self.status_reports_accepted,
            ),
            (
                "status_reports_rejected_total",
                "counter",
                "Device status reports refused (forged, replayed, over rate or device quota).",
                &self.status_reports_rejected,
            ),
            (
                "metadata_rejected_total",
                "counter",
                "Repository metadata from peers that failed verification.",
                &self.metadata_rejected,
            ),
            (
                "announcements_rejected_total",
                "counter",
                "Gossip announcements whose timestamp did not verify.",
                &self.announcements_rejected,
            ),
        ];
        let reports: [(&str, &str, &str, &AtomicU64); 3] = [
            (
                "status_reports_dropped_total",
                "counter",
                "Device status reports refused because the report queue was full.",
                &self.status_reports_dropped,
            ),
            (
                "status_reports_forwarded_total",
                "counter",
                "Device status reports the origin acknowledged.",
                &self.status_reports_forwarded,
            ),
            (
                "status_reports_queued",
                "gauge",
                "Device status reports on disk awaiting the origin.",
                &self.status_reports_queued,
            ),
        ];
        for (name, kind, help, counter) in simple.into_iter().chain(trust).chain(reports) {
            let _ = writeln!(
                out,
                "# HELP otamesh_edge_{name} {help}\n# TYPE otamesh_edge_{name} {kind}\notamesh_edge_{name} {}",
                counter.load(Relaxed)
            );
        }
        out
    }
}

/// Damaged chunk files, whichever path found them, count as `corrupt_chunks`.
impl chunk_store::OnDamage for Metrics {
    fn damaged(&self, _: &protocol::ChunkId) {
        Metrics::add(&self.corrupt_chunks, 1);
    }
}

/// Serving peers' chunk requests counts hits, misses, bytes out and busy refusals.
impl mesh::chunk_server::ServeMetrics for Metrics {
    fn hit(&self, bytes: u64) {
        Metrics::add(&self.cache_hits, 1);
        Metrics::add(&self.bytes_out_peers, bytes);
    }
    fn miss(&self) {
        Metrics::add(&self.cache_misses, 1);
    }
    fn busy(&self) {
        Metrics::add(&self.mesh_serves_busy, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.bytes_in[2], 42);
        Metrics::add(&m.cache_hits, 3);
        let text = m.render();
        assert!(text.contains("otamesh_edge_bytes_in_total{source=\"origin\"} 42\n"));
        assert!(text.contains("# TYPE otamesh_edge_cache_hits_total counter\notamesh_edge_cache_hits_total 3\n"));
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 23);
    }

    /// Every metric name the committed Grafana dashboard's queries use, from their text.
    fn dashboard_metric_names() -> std::collections::BTreeSet<String> {
        fn walk(value: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    for (key, v) in map {
                        if let (true, Some(text)) =
                            (matches!(key.as_str(), "expr" | "query" | "definition"), v.as_str())
                        {
                            let mut rest = text;
                            while let Some(at) = rest.find("otamesh_") {
                                let name: String =
                                    rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                                rest = &rest[at + name.len()..];
                                out.insert(name);
                            }
                        }
                        walk(v, out);
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../ops/grafana/otamesh.json")).expect("the dashboard is JSON");
        let mut names = std::collections::BTreeSet::new();
        walk(&dashboard, &mut names);
        names
    }

    #[test]
    fn the_grafana_dashboard_uses_only_metrics_the_edge_node_exports() {
        let exported: std::collections::BTreeSet<String> = Metrics::default()
            .render()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        let used = dashboard_metric_names();
        let edge: Vec<&String> = used.iter().filter(|n| n.starts_with("otamesh_edge_")).collect();
        assert!(edge.len() >= 15, "the dashboard shows the edge nodes: {used:?}");
        for name in edge {
            assert!(
                exported.contains(name),
                "ops/grafana/otamesh.json queries {name}, which the edge node does not export"
            );
        }
        // The seeder's names are checked against its /metrics by seeder/tests/api.rs.
        for name in &used {
            assert!(
                name.starts_with("otamesh_edge_") || name.starts_with("otamesh_seeder_"),
                "ops/grafana/otamesh.json queries {name}, which no otamesh daemon exports"
            );
        }
    }
}
