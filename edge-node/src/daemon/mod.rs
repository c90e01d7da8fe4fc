//! `edge-node run`: the thin driver around `protocol::edge::FetchScheduler`.
//!
//! One task owns the scheduler and selects between mesh events, results of the requests it
//! spawned, and the scheduler's own timer. After every input it drains the scheduler
//! (`poll_request`, `poll_event`) and turns decisions into IO: chunk and Have requests to
//! peers, writes and deletes in the store, disconnects of liars. Verification happens here,
//! before the scheduler hears of a chunk: bytes that do not hash to their id are reported
//! `Corrupt` and never reach the store.

pub mod chunk_server;
pub mod config;
mod device_backend;
pub mod meta_sources;
mod new_paths;
pub mod tuf_sync;

use anyhow::{Context, Result};
use bytes::Bytes;
use libp2p::{Multiaddr, PeerId};
use protocol::edge::{
    ChunkOutcome, ChunkSpec, EdgeEvent, FetchScheduler, NodeId, PeerRole, ReleaseSpec, Request, RequestId,
    SchedulerConfig, SiteId, SourceClass,
};
use protocol::manifest::{ChunkEntry, ManifestView};
use protocol::{ChunkId, ReleaseId};
use serde_json::json;
use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant as WallInstant;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::index::StoreIndex;
use crate::metrics::Metrics;
use crate::network::{
    self, ChunkItem, ChunkRange, ChunkRequest, ChunkResponse, ChunkResult, HaveResponse, MetaResponse, NetworkClient,
    NetworkConfig, NetworkEvent, SiteName,
};
use crate::store::ChunkStore;
use chunk_server::ChunkServer;
use config::EdgeConfig;
use meta_sources::{MetaSources, PeerInfo, SourceOutcomes};
use tuf_sync::TufDirs;

/// What the status endpoint shows; refreshed by the main loop.
pub type StatusHandle = Arc<Mutex<serde_json::Value>>;

/// A release this node knows, with the manifest entries needed to verify its chunks.
struct KnownRelease {
    target_path: String,
    name: String,
    version: String,
    hw_class: String,
    entries: Vec<ChunkEntry>,
}

/// Verified chunk bytes waiting to be written, beyond which new chunk requests wait: bounds
/// the memory held when the disk is slower than the mesh.
const MAX_UNWRITTEN_BYTES: usize = 256 << 20;
/// Most bytes one store write (one `syncfs`) takes; more waits for the next group.
const MAX_WRITE_GROUP_BYTES: usize = 64 << 20;
/// Groups written at once: while one waits for its `syncfs`, the next writes its files.
const WRITE_GROUPS_IN_FLIGHT: usize = 3;

/// Memory budget held by received chunks until they are written (or dropped).
type Budget = Arc<OwnedSemaphorePermit>;

/// One verified chunk for the writer.
struct WriteJob {
    id: ChunkId,
    bytes: Bytes,
    _budget: Budget,
}

/// Results of work the main loop spawned.
enum Internal {
    Chunks {
        id: RequestId,
        outcomes: Vec<(u32, ChunkOutcome)>,
        verified: Vec<(ChunkId, Bytes)>,
        budget: Budget,
    },
    ChunksFailed {
        id: RequestId,
    },
    Have {
        peer: NodeId,
        release: ReleaseId,
        bits: Option<Vec<u8>>,
    },
    Refreshed(RefreshOutcome),
    StoreFailed(Vec<ChunkId>),
    /// Chunks durably written.
    Written(Vec<ChunkId>),
    Served(Vec<ChunkId>),
    /// A device asked for a chunk we lack.
    Demand(ChunkId),
    /// Time to retry a failed repository refresh.
    RefreshDue,
}

/// What a finished refresh reports to the main loop.
struct RefreshOutcome {
    /// New releases, or why the refresh failed.
    result: Result<Vec<tuf_sync::FoundRelease>>,
    /// How each peer asked answered.
    sources: SourceOutcomes,
    /// The pinned root after the refresh (it may have rotated) and the trusted timestamp
    /// version, for checking announcements.
    root: Option<Vec<u8>>,
    timestamp_version: u64,
}

/// Maps a libp2p peer to the protocol's node id.
pub fn node_id(peer: &PeerId) -> NodeId {
    NodeId::from_identity(&peer.to_bytes())
}

/// The running node's handles, for tests and the ops server.
pub struct Running {
    /// Mesh client.
    pub client: NetworkClient,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Status snapshot.
    pub status: StatusHandle,
}

struct Daemon {
    config: EdgeConfig,
    started: WallInstant,
    client: NetworkClient,
    scheduler: FetchScheduler,
    store: ChunkStore,
    index: StoreIndex,
    metrics: Arc<Metrics>,
    status: StatusHandle,
    dirs: TufDirs,
    peers: HashMap<NodeId, PeerId>,
    /// Identified peers: site, and whether the peer claims to be the origin.
    sites: HashMap<PeerId, (String, bool)>,
    /// Who is asked for metadata, in which order; who lied.
    meta_sources: MetaSources,
    /// The pinned root, for checking announcements before they order anything.
    pinned_root: Option<Vec<u8>>,
    /// Version of the newest timestamp that verified.
    trusted_timestamp_version: u64,
    releases: BTreeMap<ReleaseId, KnownRelease>,
    pending: HashMap<ChunkId, (Bytes, Budget)>,
    /// Admitted to the cache, staged in the store, not yet durable; a release is reported
    /// complete only once none of its chunks is here.
    unwritten: HashSet<ChunkId>,
    writer: mpsc::UnboundedSender<WriteJob>,
    /// Memory for received, unwritten chunks ([`MAX_UNWRITTEN_BYTES`]).
    unwritten_budget: Arc<Semaphore>,
    /// Served chunks whose recency the index has not recorded yet (flushed on the status tick).
    served: Vec<ChunkId>,
    internal_tx: mpsc::Sender<Internal>,
    device: Arc<device_backend::Backend>,
    /// Serves peers' chunk requests, `mesh_max_concurrent_serves` at once.
    chunk_server: ChunkServer,
    refreshing: bool,
    /// A refresh was asked for (an announcement arrived) while one was running: run another
    /// as soon as it ends, or the announcement waits for the next periodic refresh.
    refresh_again: bool,
    /// Consecutive failed refreshes, for the retry backoff.
    refresh_failures: u32,
    /// The newest announced timestamp that verified and is newer than the trusted one, with
    /// its version: the next refresh's first candidate.
    announced: Option<(u64, Vec<u8>)>,
}

/// Starts the node and runs it until the process is stopped.
///
/// Start-up order keeps a failed start from leaving debris: first everything that needs no
/// disk write (settings, the trusted root, an existing node key), then the mesh ports, and
/// only then the data directory (store, index, pinned root, device certificate, node key);
/// if anything after that fails, [`new_paths::NewPaths`] removes what this start created.
pub async fn run(config: EdgeConfig, on_ready: impl FnOnce(&Running)) -> Result<()> {
    let site = SiteName::new(config.site.clone()).map_err(|e| anyhow::anyhow!("site `{}`: {e}", config.site))?;
    let capacity_bytes = config.capacity_bytes().context("capacity")?;
    let listen = config
        .listen
        .iter()
        .map(|addr| addr.parse::<Multiaddr>().with_context(|| format!("listen address `{addr}` is not a multiaddr")))
        .collect::<Result<Vec<_>>>()?;
    let dirs = TufDirs::new(&config.data_dir);
    let root_to_pin = match &config.trusted_root {
        Some(path) if !dirs.has_root() => Some(read_trusted_root(path)?),
        _ => None,
    };
    let meta_sources = MetaSources::new(config.origin_peer_ids()?, config.bootstrap_peer_ids());
    let key_path = config.data_dir.join("node.key");
    let existing_key =
        network::load_keypair(&key_path).with_context(|| format!("cannot load the node key {}", key_path.display()))?;
    let new_key = existing_key.is_none();
    let keypair = existing_key.unwrap_or_else(libp2p::identity::Keypair::generate_ed25519);

    let mut net_config = NetworkConfig::new(site);
    net_config.enable_mdns = config.mdns;
    let (client, mut events, event_loop) = network::new(keypair.clone(), net_config)?;
    tokio::spawn(event_loop.run());
    for addr in listen {
        let bound = client.listen(addr.clone()).await.with_context(|| format!("cannot listen on {addr}"))?;
        let dialable = bound.with(libp2p::multiaddr::Protocol::P2p(client.local_peer_id()));
        info!(addr = %dialable, "listening");
    }

    let new_paths = new_paths::NewPaths::before_creating(&config.data_dir);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let metrics = Arc::new(Metrics::default());
    let store = ChunkStore::open(&config.data_dir)?.with_metrics(metrics.clone());
    let index = StoreIndex::open(&config.data_dir)?;
    if let Some(root) = &root_to_pin {
        dirs.pin_root(root, unix_now())?;
    }
    let me = node_id(&client.local_peer_id());
    let scheduler_config = SchedulerConfig {
        served_hw_classes: config.serve_hw_classes.clone(),
        capacity_bytes,
        ..SchedulerConfig::default()
    };
    let scheduler = FetchScheduler::new(me, SiteId::from_name(&config.site), scheduler_config);
    let status: StatusHandle = Arc::new(Mutex::new(json!({})));
    let (internal_tx, mut internal_rx) = mpsc::channel(1024);
    let device = device_backend::Backend::new(
        dirs.mirror.clone(),
        store.clone(),
        internal_tx.clone(),
        config.report_limits(),
        metrics.clone(),
    );
    let pinned_root = std::fs::read(dirs.trusted.join("root.json")).ok();
    let trusted_timestamp_version = dirs.load_cached(unix_now()).and_then(|t| t.timestamp().map(|t| t.common.version));
    let device_config = crate::device::DeviceServiceConfig {
        quic_addr: Some(config.device_quic_listen),
        tcp_addr: Some(config.device_tcp_listen),
        cert_dir: Some(config.data_dir.clone()),
        max_connections_per_client: config.max_connections_per_client,
        max_buffered_bytes: usize::try_from(config.device_max_buffered_bytes()?).unwrap_or(usize::MAX),
        ..Default::default()
    };
    let (device_addrs, _device_task) =
        crate::device::DeviceService::bind(device_config, device.clone(), metrics.clone())
            .await
            .context("cannot start the device service (--device-quic-listen / --device-tcp-listen)")?;
    info!(quic = ?device_addrs.quic, tcp = ?device_addrs.tcp, "device service listening");
    let _device_mdns =
        crate::device::mdns::start(config.mdns, &config.site, &client.local_peer_id().to_string(), &device_addrs);
    if new_key {
        network::save_keypair(&key_path, &keypair)
            .with_context(|| format!("cannot save the node key to {}", key_path.display()))?;
    }
    let writer = spawn_writer(store.clone(), index.clone(), internal_tx.clone(), metrics.clone());
    let reverify_rate = config.reverify_bytes_per_sec()?;
    tokio::spawn(crate::reverify::run(store.clone(), reverify_rate, metrics.clone(), {
        let tx = internal_tx.clone();
        // Damaged files are already deleted; the cache must forget them so they are fetched again.
        move |id| drop(tx.try_send(Internal::StoreFailed(vec![id])))
    }));
    let chunk_server = ChunkServer::new(store.clone(), metrics.clone(), config.mesh_max_concurrent_serves);
    let mut daemon = Daemon {
        config,
        started: WallInstant::now(),
        client: client.clone(),
        scheduler,
        store,
        index,
        metrics: metrics.clone(),
        status: status.clone(),
        dirs,
        peers: HashMap::new(),
        sites: HashMap::new(),
        meta_sources,
        pinned_root,
        trusted_timestamp_version: trusted_timestamp_version.unwrap_or(0),
        releases: BTreeMap::new(),
        pending: HashMap::new(),
        unwritten: HashSet::new(),
        writer,
        unwritten_budget: Arc::new(Semaphore::new(MAX_UNWRITTEN_BYTES)),
        served: Vec::new(),
        internal_tx,
        device,
        chunk_server,
        refreshing: false,
        refresh_again: false,
        refresh_failures: 0,
        announced: None,
    };
    daemon.load_local_state()?;
    new_paths.keep();
    for addr in daemon.config.bootstrap.clone() {
        match addr.parse::<Multiaddr>() {
            Ok(addr) => {
                let client = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = client.dial(addr.clone()).await {
                        warn!(%addr, %e, "bootstrap dial failed");
                    }
                });
            }
            Err(e) => warn!(%addr, %e, "bootstrap address is not a multiaddr"),
        }
    }
    on_ready(&Running { client, metrics, status });
    daemon.update_status();

    let mut refresh_tick = tokio::time::interval(std::time::Duration::from_secs(daemon.config.refresh_secs.max(1)));
    let mut status_tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        daemon.pump();
        let deadline = daemon.scheduler.poll_timeout().map(|t| daemon.wall(t));
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => daemon.handle_network(event),
                None => anyhow::bail!("the network event loop stopped"),
            },
            Some(msg) = internal_rx.recv() => daemon.handle_internal(msg),
            _ = sleep => { let now = daemon.now(); daemon.scheduler.handle_timeout(now); }
            _ = refresh_tick.tick() => daemon.start_refresh(),
            _ = status_tick.tick() => {
                daemon.flush_served();
                daemon.update_status();
            }
        }
        // Take whatever else is ready before the next pump: the scheduler then plans once
        // for a burst of responses and Have answers instead of once per message.
        for _ in 0..256 {
            match internal_rx.try_recv() {
                Ok(msg) => daemon.handle_internal(msg),
                Err(_) => break,
            }
        }
        for _ in 0..256 {
            match events.try_recv() {
                Ok(event) => daemon.handle_network(event),
                Err(_) => break,
            }
        }
    }
}

/// Pins the root on first use, from configured origins only (see `meta_sources`), after
/// checking it is a self-consistent root.
async fn pin_first_root(client: &NetworkClient, root_sources: &[PeerId], dirs: &TufDirs) -> Result<()> {
    for peer in root_sources {
        let Ok(resp) = client.request_meta(*peer, "metadata/1.root.json").await else { continue };
        let Some(root) = resp.body else { continue };
        match dirs.pin_root(&root, unix_now()) {
            Ok(()) => {
                warn!(%peer, "no trusted_root configured: pinned the configured origin's 1.root.json on first use");
                return Ok(());
            }
            Err(e) => warn!(%peer, "configured origin served an unusable root: {e:#}"),
        }
    }
    anyhow::bail!(
        "no trusted root yet: no configured origin is connected to take one from \
         (set --trusted-root, or --bootstrap the origin's address or --origin-peer its peer id)"
    )
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Reads and checks the configured trusted root before anything is written: a root that is
/// missing, oversized or not a self-consistent TUF root fails the start.
fn read_trusted_root(path: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let limit = protocol::tuf::Config::default().root_max_length;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(limit + 1).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read trusted root {} (trusted_root / --trusted-root)", path.display()))?;
    if bytes.len() as u64 > limit {
        anyhow::bail!("trusted root {} is larger than {limit} bytes; pass the fleet's root.json", path.display());
    }
    protocol::tuf::TrustedMetadataSet::new(&bytes, unix_now(), None).map_err(|e| {
        anyhow::anyhow!("trusted root {} is not a valid TUF root ({e}); pass the fleet's root.json", path.display())
    })?;
    Ok(bytes)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Daemon {
    fn now(&self) -> protocol::time::Instant {
        protocol::time::Instant(self.started.elapsed().as_micros() as u64)
    }

    fn wall(&self, t: protocol::time::Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.started + std::time::Duration::from_micros(t.0))
    }

    /// Rebuilds what survives a restart: the chunk store into the cache, and the releases of
    /// the last verified metadata, so the node serves while its WAN is down.
    fn load_local_state(&mut self) -> Result<()> {
        // Files are the truth; the index orders them least-recently-used first, so the
        // cache evicts after a restart what it would have evicted before it.
        let ordered = self.index.reconcile(self.store.scan())?;
        for (id, len) in ordered {
            for victim in self.scheduler.handle_local_chunk(id, len) {
                let _ = self.store.remove(&victim);
                let _ = self.index.removed(&victim);
            }
        }
        if let Some(trusted) = self.dirs.load_cached(unix_now()) {
            if let Some(targets) = trusted.targets("targets") {
                for target in targets.targets.values() {
                    let Some(name) = tuf_sync::target_file_name(target) else { continue };
                    if let Some(bytes) = crate::repo_files::read(&self.dirs.mirror, &name, target.length) {
                        if target.verify(&bytes).is_ok() {
                            self.register_release(&target.path, &bytes);
                        }
                    }
                }
            }
        }
        info!(chunks = self.scheduler.cache().len(), releases = self.releases.len(), "local state loaded");
        Ok(())
    }

    fn peer_infos(&self) -> impl Iterator<Item = PeerInfo<'_>> {
        self.sites.iter().map(|(peer, (site, claims_origin))| PeerInfo {
            peer: *peer,
            site: site.as_str(),
            claims_origin: *claims_origin,
        })
    }

    fn start_refresh(&mut self) {
        if self.refreshing {
            self.refresh_again = true;
            return;
        }
        let now = WallInstant::now();
        let sources = self.meta_sources.order(self.peer_infos(), &self.config.site, now);
        if sources.is_empty() {
            return;
        }
        // Trust on first use only from configured origins (see `meta_sources`).
        let root_sources = self.meta_sources.root_sources(self.peer_infos(), now);
        self.refreshing = true;
        let (client, dirs, tx) = (self.client.clone(), self.dirs.clone(), self.internal_tx.clone());
        let announced = self.announced.take().map(|(_, bytes)| bytes);
        let known: std::collections::HashSet<String> = self.releases.values().map(|r| r.target_path.clone()).collect();
        tokio::spawn(async move {
            let mut outcomes = SourceOutcomes::default();
            let result = async {
                if !dirs.has_root() {
                    pin_first_root(&client, &root_sources, &dirs).await?;
                }
                let trusted = tuf_sync::refresh(&client, &sources, &dirs, unix_now(), announced, &mut outcomes).await?;
                let found = tuf_sync::new_releases(
                    &client,
                    &sources,
                    &dirs,
                    &trusted,
                    &|path| known.contains(path),
                    &mut outcomes,
                )
                .await;
                Ok((found, trusted.timestamp().map_or(0, |t| t.common.version)))
            }
            .await;
            let root = std::fs::read(dirs.trusted.join("root.json")).ok();
            let (result, timestamp_version) = match result {
                Ok((found, version)) => (Ok(found), version),
                Err(e) => (Err(e), 0),
            };
            let outcome = RefreshOutcome { result, sources: outcomes, root, timestamp_version };
            let _ = tx.send(Internal::Refreshed(outcome)).await;
        });
    }

    fn register_release(&mut self, target_path: &str, manifest: &[u8]) {
        let Ok(view) = ManifestView::new_checked(manifest) else { return };
        let id = ReleaseId::of_manifest(manifest);
        if self.releases.contains_key(&id) {
            return;
        }
        let entries: Vec<ChunkEntry> = view.chunks().collect();
        let spec = ReleaseSpec {
            hw_class: view.hw_class().into(),
            chunks: entries.iter().map(|e| ChunkSpec { id: e.id, stored_len: e.stored_length }).collect(),
        };
        if let Ok(mut targets) = self.device.targets.write() {
            let sha256 = protocol::hex::encode(&sha2_digest(manifest));
            let file = format!("targets/{}", protocol::tuf::hashed_target_path(target_path, &sha256));
            targets.insert(target_path.to_string(), (file, manifest.len() as u64));
        }
        self.releases.insert(
            id,
            KnownRelease {
                target_path: target_path.into(),
                name: view.name().into(),
                version: view.version().into(),
                hw_class: view.hw_class().into(),
                entries,
            },
        );
        let now = self.now();
        self.scheduler.handle_release(now, id, spec);
    }

    fn handle_network(&mut self, event: NetworkEvent) {
        let now = self.now();
        match event {
            NetworkEvent::PeerIdentified { peer, site, origin, .. } => {
                let Some(site) = site else { return };
                let first = !self.sites.contains_key(&peer);
                self.sites.insert(peer, (site.as_str().to_string(), origin));
                self.peers.insert(node_id(&peer), peer);
                // What a peer says of itself is a claim: only a configured or proven origin
                // is scheduled as one.
                let role =
                    if self.meta_sources.acts_as_origin(&peer, origin) { PeerRole::Origin } else { PeerRole::Edge };
                self.scheduler.handle_peer_up(now, node_id(&peer), SiteId::from_name(site.as_str()), role);
                Metrics::add(&self.metrics.peers, u64::from(first));
                if first {
                    self.start_refresh();
                }
            }
            NetworkEvent::PeerDisconnected { peer } => {
                if self.sites.remove(&peer).is_some() {
                    self.metrics.peers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.scheduler.handle_peer_down(now, node_id(&peer));
            }
            NetworkEvent::AnnouncementSubscriber { .. } => {}
            NetworkEvent::Announcement { source, bytes } => self.handle_announcement(source, bytes),
            NetworkEvent::InboundChunkRequest { peer: _, request, reply } => {
                let (server, client, tx) = (self.chunk_server.clone(), self.client.clone(), self.internal_tx.clone());
                tokio::spawn(async move {
                    let chunk_server::Served { response, served, damaged } = server.answer(request).await;
                    let _ = client.respond_chunks(reply, response).await;
                    let _ = tx.send(Internal::Served(served)).await;
                    if !damaged.is_empty() {
                        let _ = tx.send(Internal::StoreFailed(damaged)).await;
                    }
                });
            }
            NetworkEvent::InboundHaveRequest { request, reply, .. } => {
                let bitfield = self.scheduler.have(&request.release).map(|b| b.to_bytes()).unwrap_or_default();
                let client = self.client.clone();
                let response = HaveResponse { release: request.release, bitfield };
                tokio::spawn(async move {
                    let _ = client.respond_have(reply, response).await;
                });
            }
            NetworkEvent::InboundMetaRequest { request, reply, .. } => {
                let (mirror, client) = (self.dirs.mirror.clone(), self.client.clone());
                tokio::spawn(async move {
                    let body = tokio::task::spawn_blocking(move || {
                        crate::repo_files::read(&mirror, &request.name, network::messages::MAX_META_BYTES as u64)
                    })
                    .await
                    .ok()
                    .flatten();
                    let _ = client.respond_meta(reply, MetaResponse { body }).await;
                });
            }
        }
    }

    /// A timestamp pushed by gossip. It orders nothing until it verifies against the pinned
    /// root: a forged one is dropped and its author skipped for metadata for a while.
    fn handle_announcement(&mut self, source: Option<PeerId>, bytes: Vec<u8>) {
        let Some(root) = &self.pinned_root else {
            // Nothing to check it against yet: a refresh pins a root from a configured origin.
            self.start_refresh();
            return;
        };
        match tuf_sync::verify_announcement(root, &bytes, unix_now()) {
            Ok(version) => {
                let pending = self.announced.as_ref().map_or(0, |(v, _)| *v);
                debug!(version, trusted = self.trusted_timestamp_version, "release announcement");
                // Gossip may deliver an older timestamp after a newer one (re-announcements
                // travel different paths); refreshing with it would fail as a rollback.
                if version > self.trusted_timestamp_version && version > pending {
                    self.announced = Some((version, bytes));
                    self.start_refresh();
                }
            }
            Err(e) => {
                Metrics::add(&self.metrics.announcements_rejected, 1);
                warn!(?source, "announcement rejected: {e:#}");
                if let Some(peer) = source {
                    self.meta_sources.penalize(peer, WallInstant::now());
                }
            }
        }
    }

    fn handle_refreshed(&mut self, outcome: RefreshOutcome) {
        self.refreshing = false;
        let RefreshOutcome { result, sources, root, timestamp_version } = outcome;
        Metrics::add(&self.metrics.metadata_rejected, sources.lied.len() as u64);
        let now = WallInstant::now();
        self.meta_sources.record(&sources, now);
        for peer in &sources.lied {
            warn!(%peer, "peer served repository metadata that failed verification; not asking it for 10 min");
        }
        // A peer that claims to be the origin and proved it by serving metadata that verified
        // is scheduled as the origin from now on.
        let sched_now = self.now();
        for peer in &sources.verified {
            if let Some((site, true)) = self.sites.get(peer) {
                if self.meta_sources.acts_as_origin(peer, true) {
                    let site = SiteId::from_name(site);
                    self.scheduler.handle_peer_up(sched_now, node_id(peer), site, PeerRole::Origin);
                }
            }
        }
        if root.is_some() {
            self.pinned_root = root;
        }
        match result {
            Ok(found) => {
                self.refresh_failures = 0;
                self.trusted_timestamp_version = self.trusted_timestamp_version.max(timestamp_version);
                if self.announced.as_ref().is_some_and(|(v, _)| *v <= self.trusted_timestamp_version) {
                    self.announced = None;
                }
                for release in found {
                    self.register_release(&release.target_path, &release.manifest);
                }
                if std::mem::take(&mut self.refresh_again) {
                    self.start_refresh();
                }
            }
            Err(e) => {
                // E.g. a stale announcement (an older timestamp than we trust) or a
                // peer that has not caught up: try again soon from the peers rather
                // than wait for the periodic refresh, backing off while it fails.
                warn!("repository refresh failed: {e:#}");
                self.refresh_again = false;
                let delay_ms = (250u64 << self.refresh_failures.min(8)).min(self.config.refresh_secs * 1000);
                self.refresh_failures += 1;
                let tx = self.internal_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                    let _ = tx.send(Internal::RefreshDue).await;
                });
            }
        }
    }

    fn handle_internal(&mut self, msg: Internal) {
        let now = self.now();
        match msg {
            Internal::Chunks { id, outcomes, verified, budget } => {
                for (chunk, bytes) in verified {
                    self.pending.insert(chunk, (bytes, budget.clone()));
                }
                let corrupt = outcomes.iter().filter(|(_, o)| *o == ChunkOutcome::Corrupt).count() as u64;
                Metrics::add(&self.metrics.corrupt_chunks, corrupt);
                self.scheduler.handle_response(now, id, &outcomes);
            }
            Internal::ChunksFailed { id } => self.scheduler.handle_request_failed(now, id),
            Internal::Have { peer, release, bits } => match bits {
                Some(bits) => self.scheduler.handle_have(now, peer, release, &bits),
                None => self.scheduler.handle_have_failed(now, peer, release),
            },
            Internal::Refreshed(outcome) => self.handle_refreshed(outcome),
            Internal::RefreshDue => self.start_refresh(),
            Internal::StoreFailed(ids) => {
                self.store.unstage(&ids);
                for id in ids {
                    self.unwritten.remove(&id);
                    self.scheduler.handle_chunk_lost(id);
                    let _ = self.index.removed(&id);
                }
            }
            Internal::Written(ids) => {
                for id in &ids {
                    self.unwritten.remove(id);
                }
                if self.unwritten.is_empty() {
                    // Completion is visible as soon as it is durable, not at the next tick.
                    self.update_status();
                }
            }
            Internal::Served(ids) => {
                for id in &ids {
                    self.scheduler.handle_served(id);
                }
                if self.served.len() < 1 << 16 {
                    self.served.extend(ids);
                }
            }
            Internal::Demand(chunk) => {
                let wanted =
                    self.releases.iter().find(|(_, r)| r.entries.iter().any(|e| e.id == chunk)).map(|(id, _)| *id);
                if let Some(release) = wanted {
                    self.scheduler.handle_demand(now, &release);
                }
            }
        }
    }

    /// Drains the scheduler: sends its requests, applies its events.
    fn pump(&mut self) {
        while let Some(request) = self.scheduler.poll_request() {
            match request {
                Request::Chunks { id, peer, release, indices, class, .. } => {
                    self.send_chunks(id, peer, release, indices, class)
                }
                Request::Have { peer, release } => {
                    let (Some(pid), true) = (self.peers.get(&peer).copied(), self.releases.contains_key(&release))
                    else {
                        continue;
                    };
                    let (client, tx) = (self.client.clone(), self.internal_tx.clone());
                    tokio::spawn(async move {
                        let bits = client
                            .request_have(pid, release)
                            .await
                            .ok()
                            .filter(|r| r.release == release)
                            .map(|r| r.bitfield);
                        let _ = tx.send(Internal::Have { peer, release, bits }).await;
                    });
                }
            }
        }
        while let Some(event) = self.scheduler.poll_event() {
            match event {
                EdgeEvent::Store { chunk } => {
                    if let Some((bytes, budget)) = self.pending.remove(&chunk) {
                        // Readable (served to peers and devices) from now on; durable once
                        // the writer's group is synced.
                        self.store.stage(chunk, bytes.clone());
                        self.unwritten.insert(chunk);
                        if self.writer.send(WriteJob { id: chunk, bytes, _budget: budget }).is_err() {
                            self.store.unstage(&[chunk]);
                            self.unwritten.remove(&chunk);
                            self.scheduler.handle_chunk_lost(chunk);
                        }
                    }
                }
                EdgeEvent::Discard { chunk } => {
                    self.pending.remove(&chunk);
                    warn!(%chunk, "cache is full of pinned releases; raise `capacity`");
                }
                EdgeEvent::Evict { chunk } => {
                    self.unwritten.remove(&chunk);
                    let (store, index) = (self.store.clone(), self.index.clone());
                    tokio::task::spawn_blocking(move || {
                        let _ = index.removed(&chunk);
                        store.remove(&chunk)
                    });
                }
                EdgeEvent::ReleaseComplete { release } => {
                    if let Some(info) = self.releases.get(&release) {
                        info!(release = %info.target_path, "release complete");
                        let client = self.client.clone();
                        tokio::spawn(async move {
                            let _ = client.start_providing(release).await;
                        });
                    }
                }
                EdgeEvent::Disconnect { peer, until } => {
                    if let Some(pid) = self.peers.get(&peer).copied() {
                        warn!(%pid, ban_until_us = until.0, "peer sent a chunk that failed verification; disconnecting");
                        let client = self.client.clone();
                        tokio::spawn(async move { client.disconnect(pid).await });
                    }
                }
            }
        }
        // Verified chunks that were not admitted (or came twice) are dropped.
        self.pending.clear();
    }

    /// Records the recency of served chunks in the index, off the main loop.
    fn flush_served(&mut self) {
        if self.served.is_empty() {
            return;
        }
        let (index, ids) = (self.index.clone(), std::mem::take(&mut self.served));
        tokio::task::spawn_blocking(move || index.used(&ids, unix_micros()));
    }

    fn send_chunks(&mut self, id: RequestId, peer: NodeId, release: ReleaseId, indices: Vec<u32>, class: SourceClass) {
        let (Some(pid), Some(info)) = (self.peers.get(&peer).copied(), self.releases.get(&release)) else {
            let now = self.now();
            self.scheduler.handle_request_failed(now, id);
            return;
        };
        let entries: Vec<(u32, ChunkEntry)> =
            indices.iter().filter_map(|i| info.entries.get(*i as usize).map(|e| (*i, *e))).collect();
        let request = ChunkRequest {
            release,
            chunks: entries.iter().map(|(_, e)| ChunkRange { id: e.id, offset: 0, length: e.stored_length }).collect(),
        };
        let (client, tx, metrics) = (self.client.clone(), self.internal_tx.clone(), self.metrics.clone());
        let wanted: u64 = entries.iter().map(|(_, e)| u64::from(e.stored_length)).sum();
        let budget = self.unwritten_budget.clone();
        tokio::spawn(async move {
            // Received bytes wait in memory for the writer; when it is behind, ask for no more.
            let permits = u32::try_from(wanted).unwrap_or(u32::MAX).min(MAX_UNWRITTEN_BYTES as u32);
            let Ok(budget) = budget.acquire_many_owned(permits).await else { return };
            let budget = Arc::new(budget);
            let sent = std::time::Instant::now();
            let response = match client.request_chunks(pid, request).await {
                Ok(response) => response,
                Err(e) => {
                    debug!(%pid, %e, "chunk request failed");
                    let _ = tx.send(Internal::ChunksFailed { id }).await;
                    return;
                }
            };
            // Hashing up to 8 MiB is CPU work: keep it off the async workers.
            let checked = tokio::task::spawn_blocking(move || verify_response(&entries, response)).await;
            let Ok((outcomes, verified)) = checked else {
                let _ = tx.send(Internal::ChunksFailed { id }).await;
                return;
            };
            let bytes: u64 = verified.iter().map(|(_, b)| b.len() as u64).sum();
            debug!(%pid, requested = wanted, bytes, elapsed_ms = sent.elapsed().as_millis() as u64, "chunk batch received and verified");
            Metrics::add(&metrics.bytes_in[class as usize], bytes);
            let _ = tx.send(Internal::Chunks { id, outcomes, verified, budget }).await;
        });
    }

    /// Every chunk of the release is in the cache and durably written.
    fn durably_complete(&self, id: &ReleaseId, release: &KnownRelease) -> bool {
        self.scheduler.is_complete(id)
            && (self.unwritten.is_empty() || !release.entries.iter().any(|e| self.unwritten.contains(&e.id)))
    }

    fn update_status(&mut self) {
        let peers: Vec<_> = self
            .sites
            .iter()
            .map(|(peer, (site, claims))| {
                let origin = self.meta_sources.acts_as_origin(peer, *claims);
                json!({"peer": peer.to_string(), "site": site, "origin": origin, "claims_origin": claims})
            })
            .collect();
        let releases: Vec<_> = self
            .releases
            .iter()
            .map(|(id, r)| {
                let have = self.scheduler.have(id).map(|b| b.count()).unwrap_or(0);
                json!({
                    "name": r.name, "version": r.version, "hw_class": r.hw_class, "target": r.target_path,
                    "chunks": r.entries.len(), "have": have, "complete": self.durably_complete(id, r),
                })
            })
            .collect();
        let stats = self.scheduler.stats();
        let cache = self.scheduler.cache();
        let status = json!({
            "node_id": self.client.local_peer_id().to_string(),
            "site": self.config.site,
            "peers": peers,
            "releases": releases,
            "store": {"chunks": cache.len(), "bytes": cache.used_bytes(), "capacity_bytes": cache.capacity_bytes()},
            "bytes_in": {
                "site": stats.bytes_in[SourceClass::Site as usize],
                "wan": stats.bytes_in[SourceClass::Wan as usize],
                "origin": stats.bytes_in[SourceClass::Origin as usize],
            },
            "corrupt_chunks": stats.corrupt_chunks,
            "requests": {
                "sent": stats.requests_sent, "failed": stats.failed_requests, "tail_duplicates": stats.tail_duplicates,
            },
            "unwritten_chunks": self.unwritten.len(),
            "trust": {
                "timestamp_version": self.trusted_timestamp_version,
                "metadata_rejected": self.metrics.metadata_rejected.load(std::sync::atomic::Ordering::Relaxed),
                "announcements_rejected": self.metrics.announcements_rejected.load(std::sync::atomic::Ordering::Relaxed),
                "status_reports_rejected": self.metrics.status_reports_rejected.load(std::sync::atomic::Ordering::Relaxed),
                "reporting_devices": self.device.reporting_devices(),
            },
        });
        let complete = self.releases.keys().filter(|id| self.scheduler.is_complete(id)).count() as u64;
        self.metrics.releases_complete.store(complete, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut slot) = self.status.lock() {
            *slot = status;
        }
    }
}

/// Per-index outcomes of a chunk response, and the bytes of the chunks that verified.
type CheckedResponse = (Vec<(u32, ChunkOutcome)>, Vec<(ChunkId, Bytes)>);

/// The store writer: takes verified chunks in arrival order and writes them in groups, one
/// `syncfs` per group (group commit), so a fast mesh does not turn into one filesystem sync
/// per response. Reports each group `Written` (or `StoreFailed`) to the main loop.
fn spawn_writer(
    store: ChunkStore,
    index: StoreIndex,
    tx: mpsc::Sender<Internal>,
    metrics: Arc<Metrics>,
) -> mpsc::UnboundedSender<WriteJob> {
    let (jobs_tx, mut jobs) = mpsc::unbounded_channel::<WriteJob>();
    let in_flight = Arc::new(Semaphore::new(WRITE_GROUPS_IN_FLIGHT));
    tokio::spawn(async move {
        loop {
            // Wait for a group slot first, so jobs keep accumulating into a bigger group
            // while all slots are busy.
            let Ok(slot) = in_flight.clone().acquire_owned().await else { break };
            let Some(first) = jobs.recv().await else { break };
            let mut group = vec![first];
            let mut bytes = group[0].bytes.len();
            while bytes < MAX_WRITE_GROUP_BYTES {
                match jobs.try_recv() {
                    Ok(job) => {
                        bytes += job.bytes.len();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            let ids: Vec<ChunkId> = group.iter().map(|j| j.id).collect();
            let (store, index, tx, metrics) = (store.clone(), index.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let written = tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    let batch: Vec<(ChunkId, &[u8])> = group.iter().map(|j| (j.id, j.bytes.as_ref())).collect();
                    store.put_batch(&batch)?;
                    let put_ms = started.elapsed().as_millis() as u64;
                    // Indexed only once the files are durable.
                    let lens: Vec<(ChunkId, u64)> = batch.iter().map(|(id, b)| (*id, b.len() as u64)).collect();
                    index.stored(&lens, unix_micros())?;
                    debug!(
                        chunks = batch.len(),
                        put_ms,
                        total_ms = started.elapsed().as_millis() as u64,
                        "store group written"
                    );
                    anyhow::Ok(())
                    // `group` (and the memory budget its jobs hold) is dropped here.
                })
                .await;
                match written {
                    Ok(Ok(())) => {
                        Metrics::add(&metrics.chunks_stored, ids.len() as u64);
                        Metrics::add(&metrics.bytes_stored, bytes as u64);
                        let _ = tx.send(Internal::Written(ids)).await;
                    }
                    Ok(Err(e)) => {
                        warn!("writing chunks to the store failed: {e:#}");
                        let _ = tx.send(Internal::StoreFailed(ids)).await;
                    }
                    Err(_) => {
                        warn!("writing chunks to the store failed");
                        let _ = tx.send(Internal::StoreFailed(ids)).await;
                    }
                }
            });
        }
    });
    jobs_tx
}

/// Checks each returned chunk against its manifest entry (length, then blake3).
fn verify_response(entries: &[(u32, ChunkEntry)], response: ChunkResponse) -> CheckedResponse {
    let mut items: HashMap<ChunkId, ChunkItem> = response.items.into_iter().map(|item| (item.id, item)).collect();
    let mut outcomes = Vec::with_capacity(entries.len());
    let mut verified = Vec::new();
    for (index, entry) in entries {
        let outcome = match items.remove(&entry.id).map(|item| item.result) {
            Some(ChunkResult::Ok(bytes)) => match protocol::codec::verify_stored(entry, &bytes) {
                Ok(()) => {
                    verified.push((entry.id, Bytes::from(bytes)));
                    ChunkOutcome::Verified
                }
                Err(_) => ChunkOutcome::Corrupt,
            },
            _ => ChunkOutcome::Missing,
        };
        outcomes.push((*index, outcome));
    }
    (outcomes, verified)
}
