//! The edge nodes a device knows: the IO around `protocol::device::EdgeRecord`, which holds
//! what the device measured of each and decides ranking and penalties (a liar sits out
//! 10 min; a slow, unreachable or lacking edge a short, growing while) on the time this
//! driver passes in. Nothing here is trusted: ranking only decides whom to ask first.
//!
//! Every connection to an edge is opened by [`connect`], with the configured connect and
//! request timeouts, so no path (probe, second connection, status report) falls back to a
//! transport's minutes-long defaults.
//!
//! The pool is the configured edges plus, with [`EdgePool::with_discovery`], those found on
//! the LAN (mDNS, `discovery.rs`), browsed for in the background by `connect_ranked` and
//! `any_reachable` at most every [`DISCOVERY_INTERVAL`] (waited for only when no known edge
//! answers, so configured edges cost no browse latency). Discovered edges only suggest where to ask: what they serve is
//! verified like anything else, and their number is bounded ([`MAX_DISCOVERED`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use protocol::device::EdgeRecord;

use edge_client::{ClientError, DeviceClient, Timeouts};
use futures::future::BoxFuture;
use futures::StreamExt;

use crate::config::EdgeAddr;
pub use crate::discovery::MAX_DISCOVERED;

/// Finds edge nodes beyond the configured ones: mDNS in the agent, a stub in tests.
pub type Discover = Box<dyn FnMut() -> BoxFuture<'static, Vec<EdgeAddr>> + Send>;

/// Discovery runs at most this often (the agent asks the pool for edges many times a check).
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(60);

/// At most this long for the probe's one small request (the connect has its own timeout):
/// an edge slower than this at answering for a timestamp is not worth ranking this round.
const PROBE_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection to `addr` with `timeouts`: the one way this agent connects to an edge.
pub async fn connect(addr: EdgeAddr, timeouts: Timeouts) -> Result<DeviceClient, ClientError> {
    match addr {
        EdgeAddr::Quic(a) => DeviceClient::connect_quic_with(a, timeouts).await,
        EdgeAddr::Tcp(a) => DeviceClient::connect_tcp_with(a, timeouts).await,
    }
}

/// The configured (and discovered) edges and their measurements.
#[derive(Debug)]
pub struct EdgePool {
    addrs: Vec<EdgeAddr>,
    discovery: Option<Discovery>,
    stats: HashMap<EdgeAddr, EdgeRecord>,
    timeouts: Timeouts,
    /// The epoch of the `protocol::time::Instant`s the records hold.
    epoch: Instant,
    /// Sequence for [`EdgeRecord::metadata_used`].
    metadata_uses: u64,
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
    /// The timestamp version its probe answer claims (unverified: an ordering hint only);
    /// `None` if it has no timestamp or the one it sent does not parse.
    pub claimed_version: Option<u64>,
    /// Why the timestamp it sent does not parse (no correct repository serves that).
    pub timestamp_error: Option<String>,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected").field("addr", &self.addr).finish()
    }
}

impl EdgePool {
    /// A pool over `addrs`; `timeouts` bound every connect and request.
    pub fn new(addrs: Vec<EdgeAddr>, timeouts: Timeouts) -> EdgePool {
        EdgePool { addrs, discovery: None, stats: HashMap::new(), timeouts, epoch: Instant::now(), metadata_uses: 0 }
    }

    /// Now, as the time the records (and the fetch plan) are given.
    pub fn now(&self) -> protocol::time::Instant {
        protocol::time::Instant(self.epoch.elapsed().as_micros() as u64)
    }

    /// The connect and request timeouts of every connection.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
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
        let now = self.now();
        self.stats.retain(|a, s| known.contains(a) || !s.available(now));
        true
    }

    /// Measurements, for status.
    pub fn stats(&self) -> impl Iterator<Item = (&EdgeAddr, &EdgeRecord)> {
        self.stats.iter()
    }

    /// Connects to every edge not penalized, probes each with one small request, and returns
    /// those that answered, best first.
    pub async fn connect_ranked(&mut self) -> Vec<Connected> {
        self.connect(false, false).await
    }

    /// The first edge not penalized to answer its probe (for one small request, such as a
    /// status report): one dead edge does not cost a timeout when another answers.
    pub async fn connect_first(&mut self) -> Option<Connected> {
        self.connect(false, true).await.into_iter().next()
    }

    /// Whether any configured edge answers, penalized or not (the trial's reachability check
    /// asks about the network, not about any edge's honesty). Ends at the first answer.
    pub async fn any_reachable(&mut self) -> bool {
        !self.connect(true, true).await.is_empty()
    }

    /// Probes the edges worth asking, best first (only the first to answer if `first_only`).
    /// Discovery runs beside the probes: its finds join at a later call, except when no edge
    /// is known yet or none of the known ones answered, then it is waited for (at most its
    /// browse timeout) and its finds probed.
    async fn connect(&mut self, include_penalized: bool, first_only: bool) -> Vec<Connected> {
        self.start_discovery();
        let nothing_known = self.addrs().next().is_none();
        self.take_discovery(nothing_known).await;
        if self.addrs().next().is_none() {
            let why = if self.discovery.is_some() { "none configured, none found by mDNS" } else { "none configured" };
            tracing::warn!("no edge node known: {why}");
            return Vec::new();
        }
        let candidates = self.candidates(include_penalized, &HashSet::new());
        let mut connected = self.probe(candidates.clone(), first_only).await;
        if connected.is_empty() && self.take_discovery(true).await {
            let tried: HashSet<EdgeAddr> = candidates.into_iter().collect();
            let more = self.candidates(include_penalized, &tried);
            connected = self.probe(more, first_only).await;
        }
        connected.sort_by(|a, b| EdgeRecord::rank(self.stats.get(&a.addr), self.stats.get(&b.addr)));
        connected
    }

    /// Known edges not in `tried`, without those sitting out unless `include_penalized`.
    fn candidates(&self, include_penalized: bool, tried: &HashSet<EdgeAddr>) -> Vec<EdgeAddr> {
        let now = self.now();
        self.addrs()
            .filter(|a| !tried.contains(a))
            .filter(|a| include_penalized || self.stats.get(a).is_none_or(|s| s.available(now)))
            .collect()
    }

    /// Connects to each of `candidates` and asks for its timestamp (kept as its claimed
    /// version); returns those that answered, unsorted — only the first if `first_only`.
    async fn probe(&mut self, candidates: Vec<EdgeAddr>, first_only: bool) -> Vec<Connected> {
        let timeouts = self.timeouts;
        let probe_request = timeouts.request.min(PROBE_REQUEST_TIMEOUT);
        let mut probes: futures::stream::FuturesUnordered<_> = candidates
            .into_iter()
            .map(|addr| async move {
                let started = Instant::now();
                let result = async {
                    let mut client = connect(addr, Timeouts { request: probe_request, ..timeouts }).await?;
                    let timestamp = client.get_metadata("timestamp.json").await?;
                    client.set_request_timeout(timeouts.request);
                    Ok::<_, ClientError>((client, timestamp))
                }
                .await;
                (addr, started.elapsed(), result)
            })
            .collect();
        let mut connected = Vec::new();
        while let Some((addr, rtt, result)) = probes.next().await {
            let now = self.now();
            let stats = self.stats.entry(addr).or_default();
            match result {
                Ok((client, timestamp)) => {
                    stats.probe_answered(protocol::time::Duration(rtt.as_micros() as u64));
                    let claim = timestamp.as_deref().map(claimed_timestamp_version).transpose();
                    let (claimed_version, timestamp_error) = match claim {
                        Ok(version) => (version, None),
                        Err(why) => (None, Some(why)),
                    };
                    connected.push(Connected { addr, client, claimed_version, timestamp_error });
                    if first_only {
                        break;
                    }
                }
                Err(e) => {
                    let what = match e {
                        ClientError::Timeout => format!("request timed out after {} ms", probe_request.as_millis()),
                        e => e.to_string(),
                    };
                    tracing::info!("edge node {addr} unreachable: {what}");
                    stats.back_off(now);
                }
            }
        }
        connected
    }

    /// Leaves `addr` out for a short, growing while (5 s, doubling per consecutive time, at
    /// most 5 min) and forgets its measured throughput: it was much slower than the others,
    /// or lacks what was asked. Not a liar: see [`EdgePool::penalize`] for those.
    pub fn demote(&mut self, addr: EdgeAddr, why: &str) {
        tracing::info!(edge = %addr, why, "edge node demoted");
        let now = self.now();
        self.stats.entry(addr).or_default().demote(now);
    }

    /// Records that metadata was refreshed through `addr` now.
    pub fn record_metadata_use(&mut self, addr: EdgeAddr) {
        self.metadata_uses += 1;
        self.stats.entry(addr).or_default().metadata_used = Some(self.metadata_uses);
    }

    /// When metadata was last refreshed through `addr` (see [`EdgeRecord::metadata_used`]).
    pub fn metadata_used(&self, addr: &EdgeAddr) -> Option<u64> {
        self.stats.get(addr).and_then(|s| s.metadata_used)
    }

    /// Leaves `addr` out for a while: it served something that failed verification.
    pub fn penalize(&mut self, addr: EdgeAddr, why: &str) {
        tracing::warn!(edge = %addr, why, "edge node penalized");
        let now = self.now();
        self.stats.entry(addr).or_default().penalize(now);
    }

    /// Records a chunk batch of `bytes` that took `took`.
    pub fn record_batch(&mut self, addr: EdgeAddr, bytes: u64, took: Duration) {
        self.stats.entry(addr).or_default().record_batch(bytes, protocol::time::Duration(took.as_micros() as u64));
    }

    /// Records a failed request.
    pub fn record_failure(&mut self, addr: EdgeAddr) {
        self.stats.entry(addr).or_default().record_failure();
    }
}

/// The version a timestamp file claims, read with `protocol`'s bounded parser and not
/// verified: it only orders which edges a refresh asks first.
fn claimed_timestamp_version(bytes: &[u8]) -> Result<u64, String> {
    let max_length = crate::tuf_config().timestamp_max_length;
    if bytes.len() as u64 > max_length {
        return Err(format!("timestamp.json is larger than {max_length} bytes"));
    }
    let envelope = protocol::tuf::metadata::Envelope::parse("timestamp", bytes).map_err(|e| e.to_string())?;
    Ok(protocol::tuf::metadata::Timestamp::parse(&envelope).map_err(|e| e.to_string())?.common.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn timeouts() -> Timeouts {
        Timeouts { connect: Duration::from_secs(1), request: Duration::from_secs(1) }
    }

    fn tcp(port: u16) -> EdgeAddr {
        EdgeAddr::Tcp(([127, 0, 0, 1], port).into())
    }

    #[tokio::test]
    async fn discovered_edges_join_the_configured_ones_deduplicated_and_discovery_is_rate_limited() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        // Nothing listens on these ports: probes fail at once (connection refused).
        let mut pool = EdgePool::new(vec![tcp(1)], timeouts()).with_discovery(Box::new(move || {
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

    #[test]
    fn a_slow_or_behind_edge_is_demoted_briefly_and_only_a_liar_sits_out_ten_minutes() {
        let mut pool = EdgePool::new(vec![tcp(1), tcp(2)], timeouts());
        pool.record_batch(tcp(1), 1 << 20, Duration::from_millis(10));
        pool.demote(tcp(1), "much slower than the others");
        pool.penalize(tcp(2), "metadata failed verification");
        let now = pool.now();
        let left = |a: EdgeAddr| pool.stats[&a].sits_out_for(now).map(|d| Duration::from_micros(d.as_micros()));
        assert!(left(tcp(1)).is_some_and(|d| d <= Duration::from_secs(5)), "{:?}", left(tcp(1)));
        assert_eq!(pool.stats[&tcp(1)].throughput, None, "a demoted edge keeps no throughput lead");
        assert!(left(tcp(2)).is_some_and(|d| d > Duration::from_secs(590)), "{:?}", left(tcp(2)));
        assert!(pool.candidates(false, &HashSet::new()).is_empty());
        assert_eq!(pool.candidates(true, &HashSet::new()).len(), 2);
    }

    #[tokio::test]
    async fn without_discovery_or_edges_nothing_is_probed() {
        let mut pool = EdgePool::new(Vec::new(), timeouts());
        assert!(pool.connect_ranked().await.is_empty());
        assert_eq!(pool.stats().count(), 0);
    }

    #[tokio::test]
    async fn with_no_configured_edge_the_first_browse_is_waited_for() {
        let mut pool = EdgePool::new(Vec::new(), timeouts()).with_discovery(Box::new(|| {
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
