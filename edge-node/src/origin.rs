//! The origin: the seeder's repository joined to the mesh.
//!
//! It announces itself as the origin (identify), answers repository-file requests from
//! `metadata/` and `targets/`, answers chunk requests from the repository's chunk store
//! (each body re-verified on read), and publishes the signed `timestamp.json` on gossipsub
//! whenever it changes — which is what makes a `seeder release add` reach edge nodes at
//! once — and periodically for nodes that joined late.

use anyhow::{Context, Result};
use libp2p::Multiaddr;
use std::path::PathBuf;
use std::time::Duration;
use tracing::{debug, info};

use crate::metrics::Metrics;
use crate::network::{self, HaveResponse, MetaResponse, NetworkClient, NetworkConfig, NetworkEvent, SiteName};
use crate::store::ChunkStore;

/// Origin settings.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// The seeder repository.
    pub repo: PathBuf,
    /// libp2p listen multiaddrs.
    pub listen: Vec<String>,
    /// Peers to dial at start.
    pub bootstrap: Vec<String>,
    /// Node key file.
    pub key_path: PathBuf,
    /// mDNS discovery.
    pub mdns: bool,
    /// Re-announce the current timestamp this often even if unchanged.
    pub announce_every: Duration,
}

/// What a running origin exposes to its caller.
pub struct OriginHandle {
    /// Mesh client.
    pub client: NetworkClient,
    /// Bound listen addresses, with `/p2p/<peer id>` appended: what edge nodes bootstrap to.
    pub addrs: Vec<Multiaddr>,
}

/// Runs the origin until the process stops.
///
/// Start-up checks its inputs and binds its listen addresses before it writes anything: a
/// new node key is saved only once the origin is listening, so a failed start leaves no file.
pub async fn run(config: OriginConfig, on_ready: impl FnOnce(&OriginHandle)) -> Result<()> {
    let listen = config
        .listen
        .iter()
        .map(|addr| addr.parse::<Multiaddr>().with_context(|| format!("--listen `{addr}` is not a multiaddr")))
        .collect::<Result<Vec<_>>>()?;
    let existing_key = network::load_keypair(&config.key_path)
        .with_context(|| format!("cannot load {}", config.key_path.display()))?;
    let new_key = existing_key.is_none();
    let keypair = existing_key.unwrap_or_else(libp2p::identity::Keypair::generate_ed25519);
    let mut net_config = NetworkConfig::new(SiteName::new("origin").map_err(|e| anyhow::anyhow!("{e}"))?);
    net_config.origin = true;
    net_config.enable_mdns = config.mdns;
    let (client, mut events, event_loop) = network::new(keypair.clone(), net_config)?;
    tokio::spawn(event_loop.run());
    let mut addrs = Vec::new();
    for addr in listen {
        let bound = client.listen(addr.clone()).await.with_context(|| format!("cannot listen on {addr} (--listen)"))?;
        addrs.push(bound.with(libp2p::multiaddr::Protocol::P2p(client.local_peer_id())));
    }
    if new_key {
        network::save_keypair(&config.key_path, &keypair)
            .with_context(|| format!("cannot save the node key to {}", config.key_path.display()))?;
    }
    for addr in &config.bootstrap {
        if let Ok(addr) = addr.parse::<Multiaddr>() {
            let client = client.clone();
            tokio::spawn(async move { client.dial(addr).await });
        }
    }
    let store = ChunkStore::open_read_only(&config.repo);
    let metrics = std::sync::Arc::new(Metrics::default());
    let server = crate::daemon::chunk_server::ChunkServer::new(
        store.clone(),
        metrics.clone(),
        crate::daemon::chunk_server::DEFAULT_MAX_CONCURRENT_SERVES,
    );
    on_ready(&OriginHandle { client: client.clone(), addrs });

    let timestamp_path = config.repo.join("metadata/timestamp.json");
    let mut last_announced: Option<Vec<u8>> = None;
    let mut watch = tokio::time::interval(Duration::from_millis(500));
    let mut reannounce = tokio::time::interval(config.announce_every);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { anyhow::bail!("the network event loop stopped") };
                match event {
                    NetworkEvent::InboundMetaRequest { request, reply, .. } => {
                        let (repo, client) = (config.repo.clone(), client.clone());
                        tokio::spawn(async move {
                            let body = tokio::task::spawn_blocking(move || {
                                crate::repo_files::read(&repo, &request.name, network::messages::MAX_META_BYTES as u64)
                            })
                            .await
                            .ok()
                            .flatten();
                            let _ = client.respond_meta(reply, MetaResponse { body }).await;
                        });
                    }
                    NetworkEvent::InboundChunkRequest { request, reply, .. } => {
                        let (server, client) = (server.clone(), client.clone());
                        tokio::spawn(async move {
                            let started = std::time::Instant::now();
                            let response = server.answer(request).await.response;
                            let read_ms = started.elapsed().as_millis() as u64;
                            let _ = client.respond_chunks(reply, response).await;
                            debug!(read_ms, total_ms = started.elapsed().as_millis() as u64, "chunk request served");
                        });
                    }
                    NetworkEvent::InboundHaveRequest { request, reply, .. } => {
                        // Peers treat the origin as holding everything and do not ask; answer
                        // empty rather than leave the requester waiting.
                        let client = client.clone();
                        tokio::spawn(async move {
                            let _ = client.respond_have(reply, HaveResponse { release: request.release, bitfield: Vec::new() }).await;
                        });
                    }
                    NetworkEvent::AnnouncementSubscriber { .. } => {
                        if let Some(bytes) = last_announced.clone() {
                            let _ = client.publish_announcement(bytes).await;
                        }
                    }
                    NetworkEvent::PeerIdentified { peer, site, .. } => debug!(%peer, ?site, "peer identified"),
                    _ => {}
                }
            }
            _ = watch.tick() => {
                let current = std::fs::read(&timestamp_path).ok();
                if current.is_some() && current != last_announced {
                    info!("repository changed; announcing the new timestamp");
                    last_announced = current;
                    if let Some(bytes) = last_announced.clone() {
                        if let Err(e) = client.publish_announcement(bytes).await {
                            debug!(%e, "announcement not published (no subscribers yet?)");
                        }
                    }
                }
            }
            _ = reannounce.tick() => {
                if let Some(bytes) = last_announced.clone() {
                    let _ = client.publish_announcement(bytes).await;
                }
            }
        }
    }
}
