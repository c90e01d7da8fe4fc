//! `edge-node run`: the thin driver around `protocol::edge::FetchScheduler`.
//!
//! One task owns the scheduler and selects between mesh events, results of the requests it
//! spawned, and the scheduler's own timer. After every input it drains the scheduler
//! (`poll_request`, `poll_event`) and turns decisions into IO: chunk and Have requests to
//! peers, writes and deletes in the store, disconnects of liars. Verification happens here,
//! before the scheduler hears of a chunk: bytes that do not hash to their id are reported
//! `Corrupt` and never reach the store.
//!
//! This module is the wiring (start-up order, the main loop, the scheduler's inputs and
//! outputs); each other job has its own module:
//! - `fetch.rs`: chunk requests to peers and verification of their answers;
//! - `writer.rs`: the group-commit store writer;
//! - `serve.rs`: what peers are answered (the node's `mesh::Responder`);
//! - `releases.rs`: the registry of known releases and their manifest entries;
//! - `refresh.rs`: repository refreshes, root pinning, gossip announcements;
//! - `status.rs`: the typed status document (`protocol::edge::status::EdgeStatus`);
//! - `tuf_sync.rs`, `meta_sources.rs`: TUF over the mesh and whom to ask;
//! - `device_backend.rs`: the daemon's side of the device service;
//! - `report_queue.rs`, `forwarder.rs`: device status reports kept on disk until the origin
//!   acknowledges them, and the task that sends them there;
//! - `config.rs`, `new_paths.rs`: settings, and cleaning up after a failed start.

pub mod config;
mod device_backend;
mod fetch;
mod forwarder;
mod hot_chunks;
pub mod meta_sources;
mod new_paths;
mod refresh;
mod releases;
pub mod report_queue;
mod rollout_guards;
mod serve;
mod status;
pub mod tuf_sync;
mod writer;

pub use status::StatusHandle;

use anyhow::{Context, Result};
use bytes::Bytes;
use libp2p::{Multiaddr, PeerId};
use protocol::edge::status::EdgeStatus;
use protocol::edge::{
    ChunkOutcome, EdgeEvent, FetchScheduler, NodeId, PeerRole, Request, RequestId, SchedulerConfig, SiteId,
};
use protocol::tuf::rollouts_role;
use protocol::{ChunkId, ReleaseId};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant as WallInstant;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{info, warn};

use crate::index::StoreIndex;
use crate::metrics::Metrics;
use chunk_store::ChunkStore;
use config::EdgeConfig;
use mesh::chunk_server::ChunkServer;
use mesh::{NetworkClient, NetworkConfig, NetworkEvent, SiteName};
use meta_sources::{MetaSources, PeerInfo};
use refresh::RefreshOutcome;
use releases::{KnownRelease, Releases};
use serve::EdgeResponder;
use tuf_sync::TufDirs;
use writer::{Budget, WriteJob, MAX_UNWRITTEN_BYTES};

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
    /// A peer asks which chunks of a release we hold.
    HaveQuery {
        release: ReleaseId,
        reply: oneshot::Sender<Vec<u8>>,
    },
    /// Time to retry a failed repository refresh.
    RefreshDue,
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
    releases: Releases,
    /// The current rollout policies, by target path: their mirror file (hash-prefixed, so a
    /// new version has a new name) and their bytes, verified against the rollouts role.
    policies: BTreeMap<String, (String, Vec<u8>)>,
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
    /// What peers are answered (files, chunks, Have bitfields).
    responder: EdgeResponder,
    refreshing: bool,
    /// A refresh was asked for (an announcement arrived) while one was running: run another
    /// as soon as it ends, or the announcement waits for the next periodic refresh.
    refresh_again: bool,
    /// Consecutive failed refreshes, for the retry backoff.
    refresh_failures: u32,
    /// The newest announced timestamp that verified and is newer than the trusted one, with
    /// its version: the next refresh's first candidate.
    announced: Option<(u64, Vec<u8>)>,
    /// Connected peers that act as the origin, configured ones first: where the forwarder
    /// sends status reports.
    origins: watch::Sender<Vec<PeerId>>,
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
        mesh::load_keypair(&key_path).with_context(|| format!("cannot load the node key {}", key_path.display()))?;
    let new_key = existing_key.is_none();
    let keypair = existing_key.unwrap_or_else(libp2p::identity::Keypair::generate_ed25519);

    let mut net_config = NetworkConfig::new(site);
    net_config.enable_mdns = config.mdns;
    let (client, mut events, event_loop) = mesh::new(keypair.clone(), net_config)?;
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
    let store = ChunkStore::open(&config.data_dir)?.with_on_damage(metrics.clone());
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
    let status: StatusHandle = Arc::new(Mutex::new(EdgeStatus::default()));
    let (internal_tx, mut internal_rx) = mpsc::channel(1024);
    // Reports not yet acknowledged by the origin: forwarded again, and counted again by the
    // rollout guards once their policies are loaded, so a restarted node remembers its site.
    let mut replay = Vec::new();
    let reports_dir = config.data_dir.join("reports");
    let report_queue = report_queue::ReportQueue::open(&reports_dir, config.report_queue_bytes()?, |body| {
        if let Some(report) =
            protocol::status::verify(body).ok().and_then(|r| protocol::rollout::RolloutReport::from_status(&r.report))
        {
            replay.push(report);
        }
    })
    .with_context(|| format!("cannot open the status report queue {}", reports_dir.display()))?;
    let report_log = report_queue::ReportLog::start(report_queue, metrics.clone())?;
    let (origins, origins_rx) = watch::channel(Vec::new());
    tokio::spawn(forwarder::run(report_log.clone(), client.clone(), origins_rx, metrics.clone()));
    let device = device_backend::Backend::new(
        dirs.mirror.clone(),
        store.clone(),
        internal_tx.clone(),
        config.report_limits(),
        report_log,
        metrics.clone(),
        usize::try_from(config.device_hot_cache_bytes()?).unwrap_or(usize::MAX),
    );
    let pinned_root = dirs.trusted.read_root(protocol::tuf::Config::default().root_max_length).ok();
    let trusted_timestamp_version = dirs.load_cached(unix_now()).and_then(|t| t.timestamp().map(|t| t.common.version));
    let device_config = crate::device::DeviceServiceConfig {
        quic_addr: Some(config.device_quic_listen),
        tcp_addr: Some(config.device_tcp_listen),
        cert_dir: Some(config.data_dir.clone()),
        max_connections: config.device_max_connections()?,
        max_connections_per_client: config.max_connections_per_client,
        max_buffered_bytes: usize::try_from(config.device_max_buffered_bytes()?).unwrap_or(usize::MAX),
        busy_wait: config.device_busy_wait()?,
        quic_max_datagram_bytes: config.device_quic_max_datagram()?,
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
        mesh::save_keypair(&key_path, &keypair)
            .with_context(|| format!("cannot save the node key to {}", key_path.display()))?;
    }
    let writer = writer::spawn(store.clone(), index.clone(), internal_tx.clone(), metrics.clone());
    let reverify_rate = config.reverify_bytes_per_sec()?;
    tokio::spawn(crate::reverify::run(store.clone(), reverify_rate, metrics.clone(), {
        let tx = internal_tx.clone();
        // Damaged bodies are already deleted; the cache must forget them so they are fetched again.
        move |id| drop(tx.try_send(Internal::StoreFailed(vec![id])))
    }));
    let responder = EdgeResponder {
        mirror: dirs.mirror.clone(),
        chunks: ChunkServer::new(store.clone(), metrics.clone(), config.mesh_max_concurrent_serves),
        internal: internal_tx.clone(),
    };
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
        releases: Releases::default(),
        policies: BTreeMap::new(),
        pending: HashMap::new(),
        unwritten: HashSet::new(),
        writer,
        unwritten_budget: Arc::new(Semaphore::new(MAX_UNWRITTEN_BYTES)),
        served: Vec::new(),
        internal_tx,
        device,
        responder,
        refreshing: false,
        refresh_again: false,
        refresh_failures: 0,
        announced: None,
        origins,
    };
    daemon.load_local_state()?;
    if let Ok(mut guards) = daemon.device.rollouts.lock() {
        for report in &replay {
            guards.handle_report(report, unix_now());
        }
    }
    if !replay.is_empty() {
        info!(reports = replay.len(), "unforwarded rollout reports replayed into the site's guards");
    }
    drop(replay);
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
                    if let Some(bytes) = chunk_store::repo_files::read(&self.dirs.mirror, &name, target.length) {
                        if target.verify(&bytes).is_ok() {
                            self.register_release(&target.path, &bytes);
                        }
                    }
                }
            }
            let roles = [trusted.targets("targets"), trusted.targets(rollouts_role::ROLE)];
            for target in roles.into_iter().flatten().flat_map(|role| role.targets.values()) {
                if protocol::seal::sealed_target_path(&target.path).is_none() {
                    continue;
                }
                let Some(name) = tuf_sync::target_file_name(target) else { continue };
                let held = chunk_store::repo_files::read(&self.dirs.mirror, &name, target.length);
                if held.is_some_and(|bytes| target.verify(&bytes).is_ok()) {
                    self.device.publish_target(target.path.clone(), (name, target.length));
                }
            }
            for target in trusted.targets(rollouts_role::ROLE).into_iter().flat_map(|role| role.targets.values()) {
                let Some(name) = tuf_sync::target_file_name(target) else { continue };
                if let Some(bytes) = chunk_store::repo_files::read(&self.dirs.mirror, &name, target.length) {
                    if target.verify(&bytes).is_ok() {
                        self.register_policy(tuf_sync::FoundPolicy {
                            target_path: target.path.clone(),
                            bytes,
                            mirror_file: (name, target.length),
                        });
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

    /// Registers the release of a verified manifest with the scheduler and the device
    /// service; a known or unparsable one is ignored.
    fn register_release(&mut self, target_path: &str, manifest: &[u8]) {
        let Some(releases::Registered { id, spec, mirror_file }) = self.releases.add(target_path, manifest) else {
            return;
        };
        self.device.publish_target(target_path.to_string(), mirror_file);
        let now = self.now();
        self.scheduler.handle_release(now, id, spec);
    }

    /// Makes a verified rollout policy the current one for its release: devices fetch it
    /// through the device service by its target path.
    fn register_policy(&mut self, policy: tuf_sync::FoundPolicy) {
        self.device.publish_target(policy.target_path.clone(), policy.mirror_file.clone());
        if let Ok(mut guards) = self.device.rollouts.lock() {
            guards.handle_policy(&policy.bytes);
        }
        self.policies.insert(policy.target_path, (policy.mirror_file.0, policy.bytes));
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
            NetworkEvent::Inbound(inbound) => self.client.answer(&self.responder, inbound),
        }
        self.publish_origins();
    }

    /// Tells the forwarder which connected peers act as the origin: configured origins
    /// first, then proven ones ([`MetaSources::acts_as_origin`]), each by peer id.
    fn publish_origins(&self) {
        let mut origins: Vec<(bool, PeerId)> = self
            .peer_infos()
            .filter(|p| self.meta_sources.acts_as_origin(&p.peer, p.claims_origin))
            .map(|p| (!self.meta_sources.is_configured_origin(&p.peer, p.claims_origin), p.peer))
            .collect();
        origins.sort();
        let origins: Vec<PeerId> = origins.into_iter().map(|(_, peer)| peer).collect();
        self.origins.send_if_modified(|current| {
            let changed = *current != origins;
            if changed {
                *current = origins;
            }
            changed
        });
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
            Internal::Refreshed(outcome) => {
                self.handle_refreshed(outcome);
                // A refresh may have proven an origin.
                self.publish_origins();
            }
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
                if let Some(release) = self.releases.containing(&chunk) {
                    self.scheduler.handle_demand(now, &release);
                }
            }
            Internal::HaveQuery { release, reply } => {
                let bitfield = self.scheduler.have(&release).map(|b| b.to_bytes()).unwrap_or_default();
                let _ = reply.send(bitfield);
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
                    let (Some(pid), true) = (self.peers.get(&peer).copied(), self.releases.contains(&release)) else {
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

    /// Every chunk of the release is in the cache and durably written.
    fn durably_complete(&self, id: &ReleaseId, release: &KnownRelease) -> bool {
        self.scheduler.is_complete(id)
            && (self.unwritten.is_empty() || !release.entries.iter().any(|e| self.unwritten.contains(&e.id)))
    }
}
