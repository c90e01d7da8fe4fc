//! The origin: the seeder's repository joined to the mesh (what `seeder serve` runs).
//!
//! It announces itself as the origin (identify), answers peers through its
//! [`RepoResponder`] (repository files and chunks straight from the repository), and
//! publishes the signed `timestamp.json` on gossipsub whenever it changes — which is what
//! makes a `seeder release add` reach edge nodes at once — and periodically for nodes that
//! joined late. The mesh itself is the `mesh` crate the edge nodes run too; this module is
//! only the origin's role in it, and needs none of the edge daemon.

mod responder;

use anyhow::{Context, Result};
use libp2p::Multiaddr;
use mesh::{NetworkClient, NetworkConfig, NetworkEvent, SiteName};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info};

pub use responder::{handout_figures, shared_handout, RepoResponder, SharedHandout};

/// Origin settings.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// The seeder repository.
    pub repo: PathBuf,
    /// libp2p listen multiaddrs.
    pub listen: Vec<String>,
    /// Peers to dial at start.
    pub bootstrap: Vec<String>,
    /// Node key file (the mesh identity only; it signs nothing a device trusts).
    pub key_path: PathBuf,
    /// mDNS discovery.
    pub mdns: bool,
    /// Re-announce the current timestamp this often even if unchanged.
    pub announce_every: Duration,
    /// How chunks are rationed over sites (see [`responder::shared_handout`]).
    pub handout: SharedHandout,
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
pub async fn run(
    config: OriginConfig,
    fleet: std::sync::Arc<crate::fleet::ingest::Ingestor>,
    on_ready: impl FnOnce(&OriginHandle),
) -> Result<()> {
    let listen = config
        .listen
        .iter()
        .map(|addr| addr.parse::<Multiaddr>().with_context(|| format!("--listen `{addr}` is not a multiaddr")))
        .collect::<Result<Vec<_>>>()?;
    let existing_key =
        mesh::load_keypair(&config.key_path).with_context(|| format!("cannot load {}", config.key_path.display()))?;
    let new_key = existing_key.is_none();
    let keypair = existing_key.unwrap_or_else(libp2p::identity::Keypair::generate_ed25519);
    let mut net_config = NetworkConfig::new(SiteName::new("origin").map_err(|e| anyhow::anyhow!("{e}"))?);
    net_config.origin = true;
    net_config.enable_mdns = config.mdns;
    let (client, mut events, event_loop) = mesh::new(keypair.clone(), net_config)?;
    tokio::spawn(event_loop.run());
    let mut addrs = Vec::new();
    for addr in listen {
        let bound = client.listen(addr.clone()).await.with_context(|| format!("cannot listen on {addr} (--listen)"))?;
        addrs.push(bound.with(libp2p::multiaddr::Protocol::P2p(client.local_peer_id())));
    }
    if new_key {
        mesh::save_keypair(&config.key_path, &keypair)
            .with_context(|| format!("cannot save the node key to {}", config.key_path.display()))?;
    }
    for addr in &config.bootstrap {
        if let Ok(addr) = addr.parse::<Multiaddr>() {
            let client = client.clone();
            tokio::spawn(async move { client.dial(addr).await });
        }
    }
    let sites = responder::PeerSites::default();
    let responder = RepoResponder::new(&config.repo, fleet, Arc::clone(&sites), Arc::clone(&config.handout));
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
                    NetworkEvent::Inbound(inbound) => client.answer(&responder, inbound),
                    NetworkEvent::AnnouncementSubscriber { .. } => {
                        if let Some(bytes) = last_announced.clone() {
                            let _ = client.publish_announcement(bytes).await;
                        }
                    }
                    NetworkEvent::PeerIdentified { peer, site, .. } => {
                        debug!(%peer, ?site, "peer identified");
                        if let Some(site) = site {
                            let mut sites = sites.lock().unwrap_or_else(|p| p.into_inner());
                            if sites.len() < responder::MAX_PEER_SITES || sites.contains_key(&peer) {
                                sites.insert(peer, site.as_str().to_string());
                            }
                        }
                    }
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
