//! The edge nodes a device knows, ranked by what it measured.
//!
//! Ranking: an edge that misbehaved (bad chunk, metadata that failed verification) sits out
//! for a while; among the rest, measured throughput wins once known, round-trip time until
//! then. Nothing here is trusted: ranking only decides whom to ask first.
//!
//! The pool is the configured edges plus, with [`EdgePool::with_discovery`], those found on
//! the LAN (mDNS, `discovery.rs`), browsed for in the background by `connect_ranked` and
//! `any_reachable` at most every [`DISCOVERY_INTERVAL`] (waited for only when no known edge
//! answers, so configured edges cost no browse latency). Discovered edges only suggest where to ask: what they serve is
//! verified like anything else, and their number is bounded ([`MAX_DISCOVERED`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use edge_client::DeviceClient;
use futures::future::BoxFuture;

use crate::config::EdgeAddr;
pub use crate::discovery::MAX_DISCOVERED;

/// Finds edge nodes beyond the configured ones: mDNS in the agent, a stub in tests.
pub type Discover = Box<dyn FnMut() -> BoxFuture<'static, Vec<EdgeAddr>> + Send>;

/// Discovery runs at most this often (the agent asks the pool for edges many times a check).
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(60);

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

/// The configured (and discovered) edges and their measurements.
#[derive(Debug)]
pub struct EdgePool {
    addrs: Vec<EdgeAddr>,
    discovery: Option<Discovery>,
    stats: HashMap<EdgeAddr, EdgeStats>,
    request_timeout: Duration,
}

/// Edges found beyond the configured ones, and when that last ran.
struct Discovery {
    discover: Discover,
    /// When the last browse started.
    last: Option<Instant>,
    /// The browse running in the background, if any.
    pending: Option<tokio::task::JoinHandle<Vec<EdgeAddr>>>,
    found: Vec<EdgeAddr>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").field("last", &self.last).field("found", &self.found).finish()
    }
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
        EdgePool { addrs, discovery: None, stats: HashMap::new(), request_timeout }
    }

    /// Adds the edges `discover` finds (deduplicated against the configured ones, at most
    /// [`MAX_DISCOVERED`]) to the pool, refreshed at most every [`DISCOVERY_INTERVAL`].
    pub fn with_discovery(mut self, discover: Discover) -> EdgePool {
        self.discovery = Some(Discovery { discover, last: None, pending: None, found: Vec::new() });
        self
    }

    /// The configured edges, then the discovered ones not configured.
    pub fn addrs(&self) -> impl Iterator<Item = EdgeAddr> + '_ {
        self.addrs.iter().chain(self.discovery.iter().flat_map(|d| d.found.iter())).copied()
    }

    /// Starts a browse in the background if discovery is on and none started within
    /// [`DISCOVERY_INTERVAL`].
    fn start_discovery(&mut self) {
        let Some(discovery) = &mut self.discovery else { return };
        if discovery.pending.is_some() || discovery.last.is_some_and(|t| t.elapsed() < DISCOVERY_INTERVAL) {
            return;
        }
        discovery.last = Some(Instant::now());
        discovery.pending = Some(tokio::spawn((discovery.discover)()));
    }

    /// Takes the running browse's finds: waits for them when `wait`, else only if it is done.
    /// Returns whether a browse ended here. A browse that finds nothing keeps the previous
    /// finds (an unreachable one backs off in probing).
    async fn take_discovery(&mut self, wait: bool) -> bool {
        let Some(discovery) = &mut self.discovery else { return false };
        let Some(pending) = discovery.pending.as_mut() else { return false };
        if !wait && !pending.is_finished() {
            return false;
        }
        let found = pending.await.unwrap_or_default();
        discovery.pending = None;
        let mut seen: HashSet<EdgeAddr> = self.addrs.iter().copied().collect();
        let fresh: Vec<EdgeAddr> = found.into_iter().filter(|a| seen.insert(*a)).take(MAX_DISCOVERED).collect();
        if fresh.is_empty() {
            return true;
        }
        discovery.found = fresh;
        // Forget measurements of edges no longer known, except running penalties (an edge
        // that served bad bytes must not shed its penalty by vanishing for one browse). Each
        // browse adds at most MAX_DISCOVERED entries, and penalties expire: the map stays bounded.
        let known: HashSet<EdgeAddr> = self.addrs().collect();
        let now = Instant::now();
        self.stats.retain(|a, s| known.contains(a) || s.penalized_until.is_some_and(|t| t > now));
        true
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

    /// Probes the edges worth asking, best first. Discovery runs beside the probes: its finds
    /// join at a later call, except when no edge is known yet or none of the known ones
    /// answered, then it is waited for (at most its browse timeout) and its finds probed.
    async fn connect(&mut self, include_penalized: bool) -> Vec<Connected> {
        self.start_discovery();
        let nothing_known = self.addrs().next().is_none();
        self.take_discovery(nothing_known).await;
        if self.addrs().next().is_none() {
            let why = if self.discovery.is_some() { "none configured, none found by mDNS" } else { "none configured" };
            tracing::warn!("no edge node known: {why}");
            return Vec::new();
        }
        let candidates = self.candidates(include_penalized, &HashSet::new());
        let mut connected = self.probe(candidates.clone()).await;
        if connected.is_empty() && self.take_discovery(true).await {
            let tried: HashSet<EdgeAddr> = candidates.into_iter().collect();
            let more = self.candidates(include_penalized, &tried);
            connected = self.probe(more).await;
        }
        connected.sort_by(|a, b| self.score(&b.addr).total_cmp(&self.score(&a.addr)));
        connected
    }

    /// Known edges not in `tried`, without those sitting out unless `include_penalized`.
    fn candidates(&self, include_penalized: bool, tried: &HashSet<EdgeAddr>) -> Vec<EdgeAddr> {
        let now = Instant::now();
        self.addrs()
            .filter(|a| !tried.contains(a))
            .filter(|a| include_penalized || self.stats.get(a).and_then(|s| s.penalized_until).is_none_or(|t| t <= now))
            .collect()
    }

    /// Connects to each of `candidates` and asks one small request; returns those that
    /// answered, unsorted.
    async fn probe(&mut self, candidates: Vec<EdgeAddr>) -> Vec<Connected> {
        let probes = candidates.into_iter().map(|addr| async move {
            let started = Instant::now();
            let result = tokio::time::timeout(PROBE_TIMEOUT, async {
                let mut client = match addr {
                    EdgeAddr::Quic(a) => DeviceClient::connect_quic(a).await?,
                    EdgeAddr::Tcp(a) => DeviceClient::connect_tcp(a).await?,
                };
                client.get_metadata("timestamp.json").await?;
                Ok::<_, edge_client::ClientError>(client)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn tcp(port: u16) -> EdgeAddr {
        EdgeAddr::Tcp(([127, 0, 0, 1], port).into())
    }

    #[tokio::test]
    async fn discovered_edges_join_the_configured_ones_deduplicated_and_discovery_is_rate_limited() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        // Nothing listens on these ports: probes fail at once (connection refused).
        let mut pool = EdgePool::new(vec![tcp(1)], Duration::from_secs(1)).with_discovery(Box::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            let mut found = vec![tcp(1), tcp(2), tcp(2)];
            found.extend((100..200).map(tcp));
            Box::pin(async move { found })
        }));
        assert_eq!(pool.addrs().collect::<Vec<_>>(), vec![tcp(1)]);
        assert!(pool.connect_ranked().await.is_empty());
        let addrs: Vec<EdgeAddr> = pool.addrs().collect();
        assert_eq!(&addrs[..3], &[tcp(1), tcp(2), tcp(100)]);
        assert_eq!(addrs.len(), 1 + MAX_DISCOVERED, "discovered edges are bounded");
        assert!(!pool.any_reachable().await);
        assert!(pool.connect_ranked().await.is_empty());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "discovery ran more than once within the interval");
    }

    #[tokio::test]
    async fn without_discovery_or_edges_nothing_is_probed() {
        let mut pool = EdgePool::new(Vec::new(), Duration::from_secs(1));
        assert!(pool.connect_ranked().await.is_empty());
        assert_eq!(pool.stats().count(), 0);
    }

    #[tokio::test]
    async fn with_no_configured_edge_the_first_browse_is_waited_for() {
        let mut pool = EdgePool::new(Vec::new(), Duration::from_secs(1)).with_discovery(Box::new(|| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                vec![tcp(5)]
            })
        }));
        assert!(pool.connect_ranked().await.is_empty());
        assert_eq!(pool.addrs().collect::<Vec<_>>(), vec![tcp(5)]);
        assert_eq!(pool.stats().next().map(|(a, s)| (*a, s.failures)), Some((tcp(5), 1)), "found edge was probed");
    }
}
