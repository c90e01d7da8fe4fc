//! The mesh with real processes on 127.0.0.1: a seeder origin and edge nodes in sites.

mod support;

use std::path::Path;
use std::time::Duration;
use support::{eventually, random_bytes, store_is_intact, Edge, Origin};

const RELEASE_MIB: usize = 64;

fn write_image(dir: &Path, seed: u64) -> std::path::PathBuf {
    let path = dir.join(format!("image-{seed}.img"));
    std::fs::write(&path, random_bytes(RELEASE_MIB << 20, seed)).unwrap();
    path
}

/// Starts `per_site` nodes in each site: the first bootstraps to the origin, the rest also to
/// their site's first node (sites find each other by mDNS in production; tests run with it off).
fn start_sites(dir: &Path, origin: &Origin, sites: usize, per_site: usize) -> Vec<Edge> {
    let mut edges = Vec::new();
    for s in 0..sites {
        let first = edges.len();
        for m in 0..per_site {
            let name = format!("edge-s{s}-{m}");
            let mut boot = vec![origin.addr.as_str()];
            let mate;
            if m > 0 {
                mate = edges.get(first).map(|e: &Edge| e.p2p.clone()).unwrap();
                boot.push(mate.as_str());
            }
            edges.push(Edge::start(&name, &dir.join(&name), &format!("site-{s}"), &boot));
        }
    }
    // Everyone sees the origin and its site-mates before the release is published, so the
    // rendezvous split is what it will be for the whole transfer.
    for e in &edges {
        eventually(&format!("{} to see its peers", e.proc.name), Duration::from_secs(60), || {
            (e.peer_count() >= per_site).then_some(())
        });
    }
    edges
}

#[test]
fn six_edge_nodes_in_three_sites_prestage_a_release_crossing_each_backhaul_once() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(dir.path());
    let edges = start_sites(dir.path(), &origin, 3, 2);
    let stored = origin.publish(&write_image(dir.path(), 1), "1.0.0");

    for e in &edges {
        eventually(&format!("{} to pre-stage 1.0.0", e.proc.name), Duration::from_secs(240), || {
            e.has_release("1.0.0").then_some(())
        });
    }
    for site in 0..3 {
        let members: Vec<&Edge> = edges.iter().filter(|e| e.site == format!("site-{site}")).collect();
        let backhaul: u64 = members.iter().map(|e| e.backhaul_bytes()).sum();
        let amplification = backhaul as f64 / stored as f64;
        eprintln!("site-{site}: {backhaul} backhaul bytes for {stored} stored bytes = {amplification:.3}");
        assert!(amplification <= 1.02, "site-{site} pulled {amplification:.3}x the release over its backhaul");
    }
    // The sites traded what the origin handed out: about one copy left the origin, not three.
    let egress: u64 = edges.iter().map(Edge::origin_bytes).sum();
    let copies = egress as f64 / stored as f64;
    eprintln!("origin egress: {egress} bytes = {copies:.3} copies of the release for 3 sites");
    assert!(copies <= 1.3, "the origin sent {copies:.3} copies of the release to 3 sites");
    for e in &edges {
        let (chunks, bad) = store_is_intact(&e.data_dir);
        assert!(chunks > 0 && bad.is_empty(), "{}: {chunks} chunks, damaged {bad:?}", e.proc.name);
    }

    // A device fetches the release from its edge node, over QUIC and over framed TCP, and
    // rebuilds the exact image: TUF metadata, the manifest and every chunk verified.
    let image = std::fs::read(dir.path().join("image-1.img")).unwrap();
    let key = std::fs::read_to_string(origin.repo.join("keys/content.key")).unwrap();
    let key = protocol::codec::ContentKey(protocol::hex::decode_array(key.trim()).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (edge, quic) in [(&edges[0], true), (&edges[5], false)] {
        let rebuilt = runtime.block_on(device_fetch(edge, quic, &origin.repo, &key));
        assert!(rebuilt == image, "device over {} got a different image", if quic { "QUIC" } else { "TCP" });
    }

    // A standard TUF client uses an edge node as its mirror.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/ngclient_mirror.py");
    let out_file = dir.path().join("manifest.via-edge");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(format!("http://{}", edges[3].http))
        .arg(origin.repo.join("metadata/1.root.json"))
        .arg("releases/gw/1.0.0.manifest")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "python-tuf via the edge mirror: {}", String::from_utf8_lossy(&out.stderr));
    let via_edge = std::fs::read(&out_file).unwrap();
    let view = protocol::manifest::ManifestView::new_checked(&via_edge).unwrap();
    assert_eq!((view.name(), view.version()), ("gw", "1.0.0"));
}

/// What a device agent does against one edge node: TUF refresh of the timestamp and root,
/// the manifest target, then every chunk in batches, each verified and decrypted, and the
/// whole image checked against the manifest's hashes.
async fn device_fetch(edge: &Edge, quic: bool, repo: &Path, key: &protocol::codec::ContentKey) -> Vec<u8> {
    use edge_node::device::DeviceClient;
    use protocol::tuf::TrustedMetadataSet;
    use protocol::wire::{device::ChunkStatus, ChunkRange};
    let mut client = if quic {
        DeviceClient::connect_quic(edge.device_quic).await.unwrap()
    } else {
        DeviceClient::connect_tcp(edge.device_tcp).await.unwrap()
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let root = std::fs::read(repo.join("metadata/1.root.json")).unwrap();
    let mut trusted = TrustedMetadataSet::new(&root, now, None).unwrap();
    let timestamp = client.get_metadata("timestamp.json").await.unwrap().expect("edge serves timestamp.json");
    trusted.update_timestamp(&timestamp).unwrap();
    let snapshot_version = trusted.timestamp().unwrap().snapshot_meta.version;
    let snapshot = client.get_metadata(&format!("{snapshot_version}.snapshot.json")).await.unwrap().unwrap();
    trusted.update_snapshot(&snapshot, false).unwrap();
    let targets_version = trusted.snapshot().unwrap().meta["targets.json"].version;
    let targets = client.get_metadata(&format!("{targets_version}.targets.json")).await.unwrap().unwrap();
    trusted.update_delegated_targets(&targets, "targets", "root").unwrap();
    let target = trusted.targets("targets").unwrap().targets["releases/gw/1.0.0.manifest"].clone();
    let manifest = client.get_target(&target.path).await.unwrap().expect("edge serves the manifest");
    target.verify(&manifest).unwrap();
    let view = protocol::manifest::ManifestView::new_checked(&manifest).unwrap();
    let entries: Vec<_> = view.chunks().collect();
    let mut image = Vec::with_capacity(view.image_len() as usize);
    let mut verifier = protocol::reassemble::ImageVerifier::new();
    for batch in entries.chunks(48) {
        let ranges: Vec<ChunkRange> = batch.iter().map(|e| ChunkRange { id: e.id, offset: 0, length: 0 }).collect();
        let response = client.get_chunks(&ranges).await.unwrap();
        let items: Vec<_> = response.items().iter().collect();
        assert_eq!(items.len(), batch.len());
        for (entry, item) in batch.iter().zip(items) {
            let ChunkStatus::Ok(bytes) = item.status else {
                panic!("chunk {} not served: {:?}", entry.id, item.status)
            };
            let plain = protocol::codec::open(entry, Some(key), bytes.to_vec()).unwrap();
            verifier.update(entry, &plain).unwrap();
            image.extend_from_slice(&plain);
        }
    }
    verifier.finish(&view).unwrap();
    image
}

#[test]
fn a_node_killed_mid_transfer_does_not_stop_its_site_and_restarts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(dir.path());
    let mut edges = start_sites(dir.path(), &origin, 1, 2);
    origin.publish(&write_image(dir.path(), 2), "1.0.0");

    // Kill the second node once it holds part of the release (its share is half the chunks).
    let victim_have = |e: &Edge| -> u64 { e.status().and_then(|s| s["releases"][0]["have"].as_u64()).unwrap_or(0) };
    eventually("the victim to start receiving", Duration::from_secs(120), || {
        (victim_have(&edges[1]) >= 20).then_some(())
    });
    edges[1].proc.kill();

    // The survivor takes over the dead node's share and completes.
    eventually("the survivor to complete", Duration::from_secs(240), || edges[0].has_release("1.0.0").then_some(()));

    // The killed node restarts on the same data dir, completes, and holds only intact chunks.
    let (dir1, site1) = (edges[1].data_dir.clone(), edges[1].site.clone());
    let boot = [origin.addr.clone(), edges[0].p2p.clone()];
    let restarted = Edge::start("edge-restarted", &dir1, &site1, &[boot[0].as_str(), boot[1].as_str()]);
    eventually("the restarted node to complete", Duration::from_secs(240), || {
        restarted.has_release("1.0.0").then_some(())
    });
    let (chunks, bad) = store_is_intact(&dir1);
    assert!(chunks > 0 && bad.is_empty(), "restarted store: {chunks} chunks, damaged {bad:?}");
    edges.push(restarted);
}

/// A hostile site-mate: claims every chunk of every release and answers with garbage.
async fn run_liar(bootstrap: Vec<String>, ready: std::sync::mpsc::Sender<String>) {
    use mesh::{
        ChunkItem, ChunkResponse, ChunkResult, HaveResponse, InboundRequest, MetaResponse, NetworkConfig, NetworkEvent,
        SiteName,
    };
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let mut config = NetworkConfig::new(SiteName::new("site-0").unwrap());
    config.enable_mdns = false;
    let (client, mut events, event_loop) = mesh::new(keypair, config).unwrap();
    tokio::spawn(event_loop.run());
    client.listen("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()).await.unwrap();
    for addr in bootstrap {
        let _ = client.dial(addr.parse().unwrap()).await;
    }
    let _ = ready.send(client.local_peer_id().to_string());
    while let Some(event) = events.recv().await {
        let client = client.clone();
        match event {
            NetworkEvent::Inbound(InboundRequest::Have { request, reply, .. }) => {
                let response = HaveResponse { release: request.release, bitfield: vec![0xff; 4096] };
                tokio::spawn(async move { client.respond_have(reply, response).await });
            }
            NetworkEvent::Inbound(InboundRequest::Chunks { request, reply, .. }) => {
                let items = request
                    .chunks
                    .iter()
                    .map(|r| ChunkItem {
                        id: r.id,
                        result: ChunkResult::Ok(random_bytes(r.length as usize, r.offset as u64 + 7)),
                    })
                    .collect();
                tokio::spawn(async move { client.respond_chunks(reply, ChunkResponse { items }).await });
            }
            NetworkEvent::Inbound(InboundRequest::Meta { reply, .. }) => {
                tokio::spawn(async move { client.respond_meta(reply, MetaResponse { body: None }).await });
            }
            _ => {}
        }
    }
}

#[test]
fn a_peer_serving_corrupt_chunks_is_caught_and_the_release_still_arrives_whole() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(dir.path());
    let edges = start_sites(dir.path(), &origin, 1, 2);
    let (tx, rx) = std::sync::mpsc::channel();
    let bootstrap = edges.iter().map(|e| e.p2p.clone()).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.spawn(run_liar(bootstrap, tx));
    let liar = rx.recv_timeout(Duration::from_secs(30)).expect("liar started");
    for e in &edges {
        eventually(&format!("{} to see the liar", e.proc.name), Duration::from_secs(60), || {
            e.status()?["peers"].as_array()?.iter().any(|p| p["peer"] == liar.as_str()).then_some(())
        });
    }
    origin.publish(&write_image(dir.path(), 3), "1.0.0");
    for e in &edges {
        eventually(&format!("{} to complete despite the liar", e.proc.name), Duration::from_secs(240), || {
            e.has_release("1.0.0").then_some(())
        });
        let (chunks, bad) = store_is_intact(&e.data_dir);
        assert!(chunks > 0 && bad.is_empty(), "{}: stored a corrupt chunk: {bad:?}", e.proc.name);
    }
    let caught: u64 = edges.iter().map(|e| e.status().unwrap()["corrupt_chunks"].as_u64().unwrap_or(0)).sum();
    assert!(caught > 0, "nobody asked the liar for anything; the test proves nothing");
    assert!(edges.iter().any(|e| e.proc.output().contains("failed verification; disconnecting")));
}

/// The timestamp version an edge node's TUF mirror serves.
fn mirrored_timestamp_version(edge: &Edge) -> Option<u64> {
    let body = support::http_get(edge.http, "/metadata/timestamp.json")?;
    let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
    value["signed"]["version"].as_u64()
}

#[test]
fn a_quiet_origin_renews_its_timestamp_and_edge_nodes_hear_of_it() {
    // No release is published: only `seeder serve`'s renewal loop changes the repository.
    // A 12 s timestamp renewed when 6 s are left: a new version every ~6 s, each still valid
    // for 6 s when the edge node fetches it. Edge nodes poll every 60 s (the first poll at
    // start), so two newer versions within 40 s came by announcement.
    let dir = tempfile::tempdir().unwrap();
    let repo = Origin::init(dir.path());
    support::seeder(&["timestamp", "refresh", "--repo", repo.to_str().unwrap(), "--expires", "12s"]);
    let origin = Origin::serve(&repo, &["--timestamp-expires", "12s", "--timestamp-renew-before", "6s"]);
    let edge = Edge::start("edge-a", &dir.path().join("edge-a"), "site-a", &[&origin.addr]);
    let first = eventually("the edge node to mirror a timestamp", Duration::from_secs(60), || {
        mirrored_timestamp_version(&edge)
    });
    let renewed = eventually("two renewals to reach the edge node", Duration::from_secs(40), || {
        mirrored_timestamp_version(&edge).filter(|v| *v >= first + 2)
    });
    // What the edge node mirrors is what the origin signed.
    let origin_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(origin.repo.join("metadata/timestamp.json")).unwrap()).unwrap();
    assert!(origin_file["signed"]["version"].as_u64().unwrap() >= renewed);
}
