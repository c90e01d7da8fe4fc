//! Hostile peers on the mesh, against real edge-node and seeder processes on 127.0.0.1: a peer
//! that identifies as the origin and serves a repository of its own (signed by keys the fleet
//! never trusted), a forged timestamp with a huge version, and gossip announcements of it.
//!
//! The impostor runs in this process on edge-node's own network layer. Its peer id is chosen
//! to sort below the real origin's, so a node that ordered sources by what peers claim and by
//! peer id would ask it first.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, random_bytes, seeder, stored_chunks, Edge, Origin};

/// A timestamp nobody signed, with the highest version there is.
const FORGED_TIMESTAMP: &str = r#"{"signatures":[],"signed":{"_type":"timestamp","expires":"2099-01-01T00:00:00Z","meta":{"snapshot.json":{"version":1}},"spec_version":"1.0.31","version":18446744073709551615}}"#;

/// A peer claiming to be the origin.
struct Impostor {
    peer: String,
    addr: String,
    /// Repository files it served.
    meta_served: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl Impostor {
    /// Starts it, answering every repository file request from `repo` (its own repository: a
    /// valid root and metadata under keys of its own; see [`impostor_file`]) except
    /// `timestamp.json`, which is [`FORGED_TIMESTAMP`]. Its peer id
    /// sorts below `below`; it dials `dial` and, if `gossip`, announces the forged timestamp to
    /// every subscriber.
    fn start(repo: &Path, below: &str, dial: &[String], gossip: bool) -> Impostor {
        use mesh::{
            ChunkItem, ChunkResponse, ChunkResult, HaveResponse, InboundRequest, MetaResponse, NetworkConfig,
            NetworkEvent, SiteName,
        };
        let below: libp2p::PeerId = below.parse().expect("peer id");
        let keypair = loop {
            let k = libp2p::identity::Keypair::generate_ed25519();
            if k.public().to_peer_id() < below {
                break k;
            }
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let meta_served = Arc::new(AtomicU64::new(0));
        let (repo, dial, served) = (repo.to_path_buf(), dial.to_vec(), meta_served.clone());
        runtime.spawn(async move {
            let mut config = NetworkConfig::new(SiteName::new("origin").unwrap());
            config.origin = true;
            config.enable_mdns = false;
            let (client, mut events, event_loop) = mesh::new(keypair, config).unwrap();
            tokio::spawn(event_loop.run());
            let addr = client.listen("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()).await.unwrap();
            for a in dial {
                let _ = client.dial(a.parse().unwrap()).await;
            }
            let _ = tx.send((client.local_peer_id().to_string(), addr.to_string()));
            while let Some(event) = events.recv().await {
                let client = client.clone();
                match event {
                    NetworkEvent::Inbound(InboundRequest::Meta { request, reply, .. }) => {
                        served.fetch_add(1, Relaxed);
                        let body = if request.name == "metadata/timestamp.json" {
                            Some(FORGED_TIMESTAMP.as_bytes().to_vec())
                        } else {
                            impostor_file(&repo, &request.name)
                        };
                        tokio::spawn(async move { client.respond_meta(reply, MetaResponse { body }).await });
                    }
                    NetworkEvent::Inbound(InboundRequest::Chunks { request, reply, .. }) => {
                        let items = request
                            .chunks
                            .iter()
                            .map(|r| ChunkItem { id: r.id, result: ChunkResult::NotFound })
                            .collect();
                        tokio::spawn(async move { client.respond_chunks(reply, ChunkResponse { items }).await });
                    }
                    NetworkEvent::Inbound(InboundRequest::Have { request, reply, .. }) => {
                        let response = HaveResponse { release: request.release, bitfield: Vec::new() };
                        tokio::spawn(async move { client.respond_have(reply, response).await });
                    }
                    NetworkEvent::AnnouncementSubscriber { .. } if gossip => {
                        tokio::spawn(async move {
                            // The subscription may reach the gossip mesh a moment later.
                            for _ in 0..50 {
                                if client.publish_announcement(FORGED_TIMESTAMP.as_bytes().to_vec()).await.is_ok() {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        });
                    }
                    _ => {}
                }
            }
        });
        let (peer, addr) = rx.recv_timeout(Duration::from_secs(30)).expect("impostor started");
        let addr = format!("{addr}/p2p/{peer}");
        Impostor { peer, addr, meta_served, _runtime: runtime }
    }
}

/// The impostor's answer to any repository file: the file of its own repository with the
/// same role (whatever version was asked for), so it always has a body to offer first.
fn impostor_file(repo: &Path, name: &str) -> Option<Vec<u8>> {
    let file = name.rsplit('/').next()?;
    if name.starts_with("targets/") {
        return Some(b"not the manifest you are looking for".to_vec());
    }
    let role = file.split('.').rev().nth(1)?;
    std::fs::read(repo.join(format!("metadata/1.{role}.json"))).ok()
}

/// A repository of the impostor's own: `seeder init` with fresh keys.
fn impostor_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("impostor-repo");
    seeder(&["init", "--repo", repo.to_str().unwrap()]);
    repo
}

fn write_image(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join(format!("image-{seed}.img"));
    std::fs::write(&path, random_bytes(2 << 20, seed)).unwrap();
    path
}

fn trust(edge: &Edge, key: &str) -> u64 {
    edge.status().and_then(|s| s["trust"][key].as_u64()).unwrap_or(0)
}

fn root_of(repo: &Path) -> String {
    repo.join("metadata/1.root.json").to_str().unwrap().to_string()
}

/// Periodic refreshes are an hour apart in these tests: what arrives, arrives by the
/// announcement push or the failure retries.
const NO_POLLING: [&str; 2] = ["--refresh-secs", "3600"];

#[test]
fn an_origin_impostor_found_on_the_mesh_stops_neither_refresh_nor_push_updates() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(dir.path());
    let root = root_of(&origin.repo);
    let mut extra = vec!["--trusted-root", root.as_str()];
    extra.extend(NO_POLLING);
    let edge = Edge::start_with("edge", &dir.path().join("edge"), "plant-a", &[origin.addr.as_str()], &extra);
    // The impostor finds the edge node on its own (as through the DHT) and claims to be the
    // origin; it gossips a forged timestamp with the highest version there is.
    let impostor = Impostor::start(
        &impostor_repo(dir.path()),
        test_procs::peer_id(&origin.addr),
        std::slice::from_ref(&edge.p2p),
        true,
    );
    eventually("the edge node to see the impostor", Duration::from_secs(30), || {
        edge.status()?["peers"].as_array()?.iter().any(|p| p["peer"] == impostor.peer.as_str()).then_some(())
    });
    for (version, seed) in [("1.0.0", 1), ("2.0.0", 2)] {
        origin.publish(&write_image(dir.path(), seed), version);
        let published = std::time::Instant::now();
        eventually(&format!("{version} to arrive by push despite the impostor"), Duration::from_secs(60), || {
            edge.has_release(version).then_some(())
        });
        eprintln!("{version} complete on the edge node {:?} after publishing, impostor present", published.elapsed());
    }
    assert!(trust(&edge, "announcements_rejected") > 0, "the forged announcement never reached the edge node");
    let peers = edge.status().unwrap()["peers"].clone();
    let entry = peers.as_array().unwrap().iter().find(|p| p["peer"] == impostor.peer.as_str()).unwrap();
    assert_eq!(entry["claims_origin"], true);
    assert_eq!(entry["origin"], false, "a claim alone made the impostor the origin: {entry}");
}

#[test]
fn forged_metadata_from_the_first_source_falls_back_to_the_next_and_penalizes_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(dir.path());
    let root = root_of(&origin.repo);
    let mut extra = vec!["--trusted-root", root.as_str()];
    extra.extend(NO_POLLING);
    let mate = Edge::start_with("mate", &dir.path().join("mate"), "plant-a", &[origin.addr.as_str()], &extra);
    // A configured origin that turned hostile: a bootstrap peer identifying as the origin, so
    // it is asked first. It does not gossip: a forged announcement would get it skipped before
    // it is ever asked.
    let impostor = Impostor::start(&impostor_repo(dir.path()), test_procs::peer_id(&origin.addr), &[], false);
    let edge = Edge::start_with(
        "edge",
        &dir.path().join("edge"),
        "plant-a",
        &[impostor.addr.as_str(), mate.p2p.as_str()],
        &extra,
    );
    origin.publish(&write_image(dir.path(), 3), "1.0.0");
    eventually("the site-mate to have 1.0.0", Duration::from_secs(60), || mate.has_release("1.0.0").then_some(()));
    eventually("1.0.0 to arrive through the honest site-mate", Duration::from_secs(90), || {
        edge.has_release("1.0.0").then_some(())
    });
    assert!(
        impostor.meta_served.load(Relaxed) > 0,
        "the impostor was never asked: the test proves nothing\n{}",
        edge.proc.output()
    );
    assert!(trust(&edge, "metadata_rejected") > 0, "forged metadata was not counted");
    assert!(edge.proc.output().contains("failed verification; asking another"));
    // Penalized: the next refreshes do not ask it for metadata again.
    let asked = impostor.meta_served.load(Relaxed);
    origin.publish(&write_image(dir.path(), 4), "2.0.0");
    eventually("2.0.0 to arrive", Duration::from_secs(90), || edge.has_release("2.0.0").then_some(()));
    assert_eq!(impostor.meta_served.load(Relaxed), asked, "the liar was asked again within its penalty");
}

#[test]
fn an_edge_node_without_a_trusted_root_never_pins_an_impostors_root() {
    let dir = tempfile::tempdir().unwrap();
    // The origin's identity is known (it is the edge node's bootstrap peer) but the origin is
    // not reachable yet: the impostor is the first peer claiming to be the origin that the
    // edge node meets.
    let first = Origin::start(dir.path());
    let (repo, origin_addr) = (first.repo.clone(), first.addr.clone());
    drop(first);
    let edge = Edge::start_with("edge", &dir.path().join("edge"), "plant-a", &[origin_addr.as_str()], &NO_POLLING);
    let impostor = Impostor::start(
        &impostor_repo(dir.path()),
        test_procs::peer_id(&origin_addr),
        std::slice::from_ref(&edge.p2p),
        true,
    );
    eventually("the edge node to see the impostor", Duration::from_secs(30), || {
        edge.status()?["peers"].as_array()?.iter().any(|p| p["peer"] == impostor.peer.as_str()).then_some(())
    });
    // Now the real origin comes up (same key) and dials the edge node.
    let origin = Origin::serve(&repo, &["--bootstrap", edge.p2p.as_str()]);
    origin.publish(&write_image(dir.path(), 5), "1.0.0");
    eventually("1.0.0 to arrive under the real root", Duration::from_secs(90), || {
        edge.has_release("1.0.0").then_some(())
    });
    let pinned = std::fs::read(dir.path().join("edge/tuf/root.json")).unwrap();
    let real = std::fs::read(repo.join("metadata/1.root.json")).unwrap();
    assert!(pinned == real, "the edge node pinned a root that is not the origin's");
}

/// A mesh peer of site `site` connected to `addr`: its client and the peer id it dialed.
async fn mesh_peer(site: &str, addr: &str) -> (mesh::NetworkClient, libp2p::PeerId) {
    let mut config = mesh::NetworkConfig::new(mesh::SiteName::new(site).unwrap());
    config.enable_mdns = false;
    let (client, mut events, event_loop) = mesh::new(libp2p::identity::Keypair::generate_ed25519(), config).unwrap();
    tokio::spawn(event_loop.run());
    // Nothing here answers the origin's own requests; the events are drained so none waits.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let peer = client.dial(addr.parse().unwrap()).await.expect("dial the origin");
    (client, peer)
}

/// Any peer can name chunk ids the origin does not hold. They must take no place in its
/// handout table: tracked, enough of them fill it (past its bound the origin serves every
/// chunk to everyone, one copy per site), and the origin would answer `Busy` ("held, not
/// now") for chunks it does not have. Two peers of different sites ask for the same chunks
/// in turn, within one handout window: a chunk of the release goes to the first and the
/// second hears `Busy`; a made-up id is `NotFound` for both; and the table (the origin's
/// `/metrics`) holds the one real chunk.
#[test]
fn made_up_chunk_ids_take_no_place_in_the_origins_handout_table() {
    use mesh::{ChunkRange, ChunkRequest, ChunkResult};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("api-tokens");
    std::fs::write(&tokens, "read metrics-reader-0123456789abcdef0123456789\n").unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A window far longer than the test, so the second peer always asks within the first's.
    let serve_flags = ["--handout-window-secs", "3600", "--http-listen", "127.0.0.1:0", "--api-tokens"];
    let mut flags = serve_flags.to_vec();
    flags.push(tokens.to_str().unwrap());
    let origin = Origin::serve(&Origin::init(dir.path()), &flags);
    let http: std::net::SocketAddr = origin
        .proc
        .wait_line("the API address", Duration::from_secs(30), |line| {
            serde_json::from_str::<serde_json::Value>(line).ok()?["http"].as_str()?.parse().ok()
        })
        .unwrap();
    origin.publish(&write_image(dir.path(), 9), "1.0.0");
    let real = *stored_chunks(&origin.repo).first().expect("a chunk file in the repository");
    let made_up: Vec<protocol::ChunkId> = (0u8..8).map(|i| protocol::ChunkId([i ^ 0x5a; 32])).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (first, second) = runtime.block_on(async {
        let (a, origin_peer) = mesh_peer("plant-a", &origin.addr).await;
        let (b, _) = mesh_peer("plant-b", &origin.addr).await;
        let chunks: Vec<ChunkRange> = made_up.iter().chain([&real]).map(|id| ChunkRange::whole(*id)).collect();
        let request = ChunkRequest { release: protocol::ReleaseId([7; 32]), chunks };
        let ask = Duration::from_secs(30);
        let first = tokio::time::timeout(ask, a.request_chunks(origin_peer, request.clone())).await;
        let second = tokio::time::timeout(ask, b.request_chunks(origin_peer, request)).await;
        (first.expect("first answer in time").unwrap(), second.expect("second answer in time").unwrap())
    });
    let result_of = |items: &[mesh::ChunkItem], id: &protocol::ChunkId| {
        items.iter().find(|item| item.id == *id).map(|item| item.result.clone()).expect("an answer per chunk")
    };
    assert!(matches!(result_of(&first.items, &real), ChunkResult::Ok(_)), "the first peer is handed the chunk");
    assert_eq!(result_of(&second.items, &real), ChunkResult::Busy, "the second waits for the first");
    for id in &made_up {
        assert_eq!(result_of(&first.items, id), ChunkResult::NotFound);
        assert_eq!(result_of(&second.items, id), ChunkResult::NotFound, "a made-up id was handed out");
    }
    let metrics = String::from_utf8(test_procs::http_get(http, "/metrics").expect("the origin's metrics")).unwrap();
    let tracked = metrics.lines().find_map(|line| line.strip_prefix("otamesh_seeder_origin_handouts_tracked "));
    assert_eq!(tracked, Some("1"), "the handout table holds the release's chunk and nothing else");
}
