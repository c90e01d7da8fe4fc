//! The edge nodes a device knows, ranked by what it measured.
//!
//! Ranking: an edge that misbehaved (bad chunk, metadata that failed verification) sits out
//! for a while; among the rest, measured throughput wins once known, round-trip time until
//! then. Nothing here is trusted: ranking only decides whom to ask first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use edge_node::device::client::DeviceClient;

use crate::config::EdgeAddr;

/// How long a misbehaving edge is left out.
const PENALTY: Duration = Duration::from_secs(600);
/// How long connecting plus one small request may take when probing an edge.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the device measured of one edge.
#[derive(Debug, Clone, Default)]
pub struct EdgeStats {
    /// Last probe round trip.
    pub rtt: Option<Duration>,
    /// Smoothed throughput of chunk batches, bytes per second.
    pub throughput: Option<f64>,
    /// Until when the edge is left out.
    pub penalized_until: Option<Instant>,
    /// Consecutive failures (connects, timeouts).
    pub failures: u32,
    /// Stored bytes this device fetched from it.
    pub bytes: u64,
}

impl EdgeStats {
    /// An unreachable edge sits out 5 s, doubling per consecutive failure up to 5 min, so a
    /// dead or trickling edge does not cost every later step a full probe timeout.
    fn back_off(&mut self) {
        self.failures += 1;
        let secs = 5u64.saturating_mul(1 << self.failures.saturating_sub(1).min(6)).min(300);
        self.penalized_until = Some(Instant::now() + Duration::from_secs(secs));
    }
}

/// The configured edges and their measurements.
#[derive(Debug)]
pub struct EdgePool {
    addrs: Vec<EdgeAddr>,
    stats: HashMap<EdgeAddr, EdgeStats>,
    request_timeout: Duration,
}

/// A connected edge.
pub struct Connected {
    /// Its address.
    pub addr: EdgeAddr,
    /// The connection.
    pub client: DeviceClient,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected").field("addr", &self.addr).finish()
    }
}

impl EdgePool {
    /// A pool over `addrs`; `request_timeout` bounds every request.
    pub fn new(addrs: Vec<EdgeAddr>, request_timeout: Duration) -> EdgePool {
        EdgePool { addrs, stats: HashMap::new(), request_timeout }
    }

    /// Measurements, for status.
    pub fn stats(&self) -> impl Iterator<Item = (&EdgeAddr, &EdgeStats)> {
        self.stats.iter()
    }

    /// Connects to every edge not penalized, probes each with one small request, and returns
    /// those that answered, best first.
    pub async fn connect_ranked(&mut self) -> Vec<Connected> {
        self.connect(false).await
    }

    /// Whether any configured edge answers, penalized or not (the trial's reachability check
    /// asks about the network, not about any edge's honesty).
    pub async fn any_reachable(&mut self) -> bool {
        !self.connect(true).await.is_empty()
    }

    async fn connect(&mut self, include_penalized: bool) -> Vec<Connected> {
        let now = Instant::now();
        let candidates: Vec<EdgeAddr> = self
            .addrs
            .iter()
            .copied()
            .filter(|a| include_penalized || self.stats.get(a).and_then(|s| s.penalized_until).is_none_or(|t| t <= now))
            .collect();
        let probes = candidates.into_iter().map(|addr| async move {
            let started = Instant::now();
            let result = tokio::time::timeout(PROBE_TIMEOUT, async {
                let mut client = match addr {
                    EdgeAddr::Quic(a) => DeviceClient::connect_quic(a).await?,
                    EdgeAddr::Tcp(a) => DeviceClient::connect_tcp(a).await?,
                };
                client.get_metadata("timestamp.json").await?;
                Ok::<_, edge_node::device::client::ClientError>(client)
            })
            .await;
            (addr, started.elapsed(), result)
        });
        let mut connected = Vec::new();
        for (addr, rtt, result) in futures::future::join_all(probes).await {
            let stats = self.stats.entry(addr).or_default();
            match result {
                Ok(Ok(mut client)) => {
                    client.set_request_timeout(self.request_timeout);
                    stats.rtt = Some(rtt);
                    stats.failures = 0;
                    connected.push(Connected { addr, client });
                }
                Ok(Err(e)) => {
                    tracing::info!(edge = %addr, %e, "edge node unreachable");
                    stats.back_off();
                }
                Err(_) => {
                    tracing::info!(edge = %addr, "edge node did not answer in time");
                    stats.back_off();
                }
            }
        }
        connected.sort_by(|a, b| self.score(&b.addr).total_cmp(&self.score(&a.addr)));
        connected
    }

    /// Higher is better: throughput when measured, else the inverse round trip.
    fn score(&self, addr: &EdgeAddr) -> f64 {
        let Some(stats) = self.stats.get(addr) else { return 0.0 };
        match (stats.throughput, stats.rtt) {
            (Some(t), _) => 1e12 + t,
            (None, Some(rtt)) => 1.0 / rtt.as_secs_f64().max(1e-6),
            (None, None) => 0.0,
        }
    }

    /// Leaves `addr` out for a while: it served something that failed verification.
    pub fn penalize(&mut self, addr: EdgeAddr, why: &str) {
        tracing::warn!(edge = %addr, why, "edge node penalized");
        self.stats.entry(addr).or_default().penalized_until = Some(Instant::now() + PENALTY);
    }

    /// Records a chunk batch of `bytes` that took `took`.
    pub fn record_batch(&mut self, addr: EdgeAddr, bytes: u64, took: Duration) {
        let stats = self.stats.entry(addr).or_default();
        stats.bytes += bytes;
        let rate = bytes as f64 / took.as_secs_f64().max(1e-6);
        stats.throughput = Some(match stats.throughput {
            Some(old) => 0.7 * old + 0.3 * rate,
            None => rate,
        });
    }

    /// Records a failed request.
    pub fn record_failure(&mut self, addr: EdgeAddr) {
        self.stats.entry(addr).or_default().failures += 1;
    }
}
