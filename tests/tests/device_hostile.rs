//! Issue 4: a malicious edge node — corrupted chunks, stale metadata, an older release,
//! withheld chunks, endless data. Issue 9: edges that trickle or never answer, and fast stale
//! edges crowding out a slower honest one. With only the hostile edge configured the device installs
//! nothing and says why; with the hostile edge listed first and an honest one after it, the
//! device rejects the hostile one, switches to the honest one and commits the new release.
//!
//! The honest side is real processes (a seeder origin and an edge node); the hostile edges
//! run in this process ([`support::hostile`]): edge-node's own device service over a backend
//! that lies, or raw TCP that never stops sending.
//!
//! Releases are chunked `fixed:4K`, and v2 rewrites 3 MiB of a 4 MiB v1: the device must
//! fetch 768 chunks, six batches of 128, more than one edge's requests in flight, so the
//! first dispatch of a download hands batches to both edges whichever edge the device ranks
//! first — a hostile edge that passes metadata checks is really asked for chunks, not by luck
//! of timing.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::device::{copy_tree, Device};
use support::hostile::{Endless, HostileEdge, Hostiles, Lie, Shape};
use support::{eventually, random_bytes, Edge, Origin};

const CHECK_TIMEOUT: Duration = Duration::from_secs(90);
const V1_BYTES: usize = 4 << 20;
const V2_CHANGED_BYTES: usize = 3 << 20;
// More batches than one edge takes at the first dispatch (see the module doc).
const _: () = assert!(
    V2_CHANGED_BYTES / 4096 / protocol::device::fetch::BATCH_CHUNKS > protocol::device::fetch::STREAMS_PER_EDGE
);

/// Origin, one honest edge node holding v1 and v2, a device template committed on v1, and a
/// copy of the repository as it was right after v1 was published (before v2).
struct Scene {
    root: PathBuf,
    origin: Origin,
    honest: Edge,
    stale_repo: PathBuf,
    template: Device,
    v1: Vec<u8>,
    v2: Vec<u8>,
    v1_manifest: Vec<u8>,
    hostiles: Hostiles,
    _dir: tempfile::TempDir,
}

fn publish(origin: &Origin, image: &Path, version: &str) {
    origin.publish_with(image, version, &["--chunking", "fixed:4K"]);
}

fn wait_for_release(edge: &Edge, version: &str) {
    eventually(&format!("{} to hold {version}", edge.proc.name), Duration::from_secs(120), || {
        edge.has_release(version).then_some(())
    });
}

/// The consistent-snapshot file of `releases/gw/VERSION.manifest` in `repo`.
fn manifest_file(repo: &Path, version: &str) -> Vec<u8> {
    let suffix = format!(".{version}.manifest");
    let dir = repo.join("targets/releases/gw");
    let path = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_str().is_some_and(|s| s.ends_with(&suffix)))
        .unwrap_or_else(|| panic!("no {suffix} in {}", dir.display()));
    std::fs::read(path).unwrap()
}

impl Scene {
    fn new() -> Scene {
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let origin = Origin::start(&root);
        let honest = Edge::start("honest-edge", &root.join("edge"), "site-a", &[origin.addr.as_str()]);
        let v1 = random_bytes(V1_BYTES, 41);
        let mut v2 = v1.clone();
        v2[..V2_CHANGED_BYTES].copy_from_slice(&random_bytes(V2_CHANGED_BYTES, 42));
        let (p1, p2) = (root.join("v1.img"), root.join("v2.img"));
        std::fs::write(&p1, &v1).unwrap();
        std::fs::write(&p2, &v2).unwrap();

        publish(&origin, &p1, "1.0.0");
        // The stale mirror: validly signed metadata, targets and chunks as of v1.
        let stale_repo = root.join("stale-repo");
        for part in ["metadata", "targets", "chunks"] {
            copy_tree(&origin.repo.join(part), &stale_repo.join(part));
        }
        let v1_manifest = manifest_file(&origin.repo, "1.0.0");
        wait_for_release(&honest, "1.0.0");

        let template = Device::new(&root.join("template"), &origin.repo, &[quic(&honest)], None);
        let run = template.check(CHECK_TIMEOUT);
        assert!(run.success, "v1 install failed:\n{}", run.output);
        assert_eq!(template.status()["version"].as_str(), Some("1.0.0"));
        assert_eq!(template.bootenv(), ("b".to_string(), None));

        publish(&origin, &p2, "2.0.0");
        wait_for_release(&honest, "2.0.0");
        eprintln!("scene ready in {:?}", started.elapsed());
        Scene { root, origin, honest, stale_repo, template, v1, v2, v1_manifest, hostiles: Hostiles::new(), _dir: dir }
    }

    /// A fresh copy of the v1 device, talking to `edges` in this order.
    fn device(&self, name: &str, edges: &[String]) -> Device {
        let device = self.template.copy_to(&self.root.join(name));
        device.set_edges(edges);
        device
    }

    fn honest(&self) -> String {
        quic(&self.honest)
    }

    /// Nothing was installed: v1 is still what boots, nothing is pending, the old slot is
    /// intact, and the agent never got as far as activating a slot or rebooting.
    fn assert_still_on_v1(&self, device: &Device, output: &str, states: &[&str]) {
        let status = device.status();
        assert_eq!(status["version"].as_str(), Some("1.0.0"), "{output}");
        let state = status["state"].as_str().unwrap_or("?");
        assert!(states.contains(&state), "state {state}, expected one of {states:?}:\n{output}");
        assert_eq!(device.bootenv(), ("b".to_string(), None), "{output}");
        assert!(device.slot("b") == self.v1, "the v1 slot changed");
        assert!(!output.contains("restarting the agent"), "the agent rebooted:\n{output}");
    }

    /// The device committed v2 into slot a, byte for byte, and kept v1 in slot b.
    fn assert_committed_v2(&self, device: &Device, output: &str) {
        let status = device.status();
        assert_eq!(
            (status["state"].as_str(), status["version"].as_str()),
            (Some("committed"), Some("2.0.0")),
            "{output}"
        );
        assert_eq!(status["error"], serde_json::Value::Null, "{output}");
        assert_eq!(device.bootenv(), ("a".to_string(), None), "{output}");
        assert!(device.slot("a") == self.v2, "slot a is not v2");
        assert!(device.slot("b") == self.v1, "slot b is not v1 any more");
    }
}

fn quic(edge: &Edge) -> String {
    format!("quic://{}", edge.device_quic)
}

/// Runs a check that must fail, quickly and without hanging.
fn check_fails(device: &Device, what: &str) -> String {
    let run = device.check(CHECK_TIMEOUT);
    assert!(!run.success, "{what}: check succeeded:\n{}", run.output);
    run.output
}

fn check_succeeds(device: &Device, what: &str) -> String {
    let run = device.check(CHECK_TIMEOUT);
    assert!(run.success, "{what}: check failed:\n{}", run.output);
    run.output
}

fn consulted(edge: &HostileEdge, what: &str) {
    assert!(edge.counters.total() > 0, "{what}: the device never asked the hostile edge anything");
}

/// Corrupted chunks: honest metadata and manifests, every chunk body with a byte flipped.
#[test]
fn an_edge_serving_corrupt_chunks_is_penalized_and_the_download_finishes_elsewhere() {
    let scene = Scene::new();
    let corrupt = scene.hostiles.repo_edge(&scene.origin.repo, Lie::CorruptChunks);
    let device = scene.device("dev-corrupt", &[corrupt.quic_url()]);
    let output = check_fails(&device, "corrupt edge alone");
    scene.assert_still_on_v1(&device, &output, &["downloading"]);
    assert_eq!(device.status()["error"].as_str(), Some("network"), "{output}");
    assert!(corrupt.counters.chunks() > 0, "the corrupt edge was never asked for chunks:\n{output}");
    assert!(output.contains("failed verification") && output.contains("penalized"), "{output}");
    let served = corrupt.counters.chunks();
    // The same device resumes its download with the honest edge listed second.
    device.set_edges(&[corrupt.quic_url(), scene.honest()]);
    let output = check_succeeds(&device, "corrupt edge first, then honest");
    scene.assert_committed_v2(&device, &output);
    assert!(corrupt.counters.chunks() > served, "the corrupt edge was not asked for chunks again:\n{output}");
    assert!(output.contains("failed verification") && output.contains("penalized"), "{output}");
}

/// Stale metadata: a mirror frozen right after v1 was published — validly signed, but old.
#[test]
fn a_stale_mirror_freezes_nothing_and_is_refused_as_a_rollback_once_the_device_knows_better() {
    let scene = Scene::new();
    let stale = scene.hostiles.repo_edge(&scene.stale_repo, Lie::Nothing);
    let device = scene.device("dev-stale", &[stale.quic_url()]);
    // A device that trusts no more than the mirror shows cannot tell a freeze from a quiet
    // repository (until the timestamp expires): it sees nothing new and stays on v1.
    let output = check_succeeds(&device, "stale edge alone, device on v1-era metadata");
    scene.assert_still_on_v1(&device, &output, &["committed"]);
    assert!(!output.contains("2.0.0"), "the stale edge showed 2.0.0?\n{output}");
    consulted(&stale, "stale edge alone");
    device.set_edges(&[stale.quic_url(), scene.honest()]);
    let output = check_succeeds(&device, "stale edge first, then honest");
    scene.assert_committed_v2(&device, &output);
    // Now the device trusts v2-era metadata: the stale mirror is a rollback attack, and TUF
    // refuses its older timestamp.
    let before = stale.counters.total();
    device.set_edges(&[stale.quic_url()]);
    let output = check_fails(&device, "stale edge alone, device on v2-era metadata");
    assert!(stale.counters.total() > before, "the stale edge was not consulted:\n{output}");
    let status = device.status();
    assert_eq!(status["error"].as_str(), Some("verification"), "{output}");
    assert_eq!((status["state"].as_str(), status["version"].as_str()), (Some("committed"), Some("2.0.0")));
    // Validly signed but older is "behind", not a lie (issue 9): not used, not penalized.
    assert!(output.contains("behind") && !output.contains("penalized"), "{output}");
    assert_eq!(device.bootenv(), ("a".to_string(), None));
    assert!(device.slot("a") == scene.v2, "the v2 slot changed");
}

/// An older release: current metadata, but every manifest asked for is v1's.
#[test]
fn an_edge_answering_with_an_older_release_manifest_is_refused() {
    let scene = Scene::new();
    let downgrade = scene.hostiles.repo_edge(&scene.origin.repo, Lie::EveryTarget(scene.v1_manifest.clone()));
    let device = scene.device("dev-downgrade", &[downgrade.tcp_url()]);
    let output = check_fails(&device, "downgrading edge alone");
    scene.assert_still_on_v1(&device, &output, &["committed"]);
    assert_eq!(device.status()["error"].as_str(), Some("verification"), "{output}");
    assert!(downgrade.counters.targets() > 0, "the downgrading edge was never asked for a manifest");
    assert!(output.contains("manifest from edge node rejected") && output.contains("did not verify"), "{output}");
    device.set_edges(&[downgrade.tcp_url(), scene.honest()]);
    let output = check_succeeds(&device, "downgrading edge first, then honest");
    scene.assert_committed_v2(&device, &output);
}

/// Withheld chunks: current metadata and manifests, "not found" (or "busy") for every chunk.
/// Before the fix in device-client's fetch.rs, either hung the download forever: the edge
/// that bounced a batch was the last connection to go idle, so it got the batch right back.
#[test]
fn an_edge_withholding_chunks_neither_hangs_the_device_nor_stops_it_using_another() {
    let scene = Scene::new();
    let withholding = scene.hostiles.repo_edge(&scene.origin.repo, Lie::WithholdChunks);
    let device = scene.device("dev-withholding", &[withholding.quic_url()]);
    let output = check_fails(&device, "withholding edge alone");
    scene.assert_still_on_v1(&device, &output, &["downloading"]);
    assert!(withholding.counters.chunks() > 0, "the withholding edge was never asked for chunks");
    assert_eq!(device.status()["error"].as_str(), Some("network"), "{output}");
    assert!(output.contains("lacks chunks"), "{output}");
    let asked = withholding.counters.chunks();
    device.set_edges(&[withholding.quic_url(), scene.honest()]);
    let output = check_succeeds(&device, "withholding edge first, then honest");
    scene.assert_committed_v2(&device, &output);
    assert!(withholding.counters.chunks() > asked, "the withholding edge was not asked again:\n{output}");

    // An edge that answers "busy" to every chunk forever. Alone it keeps a device waiting, as
    // an honest edge node still fetching the release would; next to an honest edge it must
    // not keep the batches it bounces to itself.
    let busy = scene.hostiles.repo_edge(&scene.origin.repo, Lie::BusyChunks);
    let device = scene.device("dev-busy", &[busy.quic_url(), scene.honest()]);
    let output = check_succeeds(&device, "always-busy edge first, then honest");
    scene.assert_committed_v2(&device, &output);
    assert!(busy.counters.chunks() > 0, "the always-busy edge was never asked for chunks:\n{output}");
}

/// Endless data: a length prefix far above the limit, and a response exactly at the limit
/// followed by bytes that never stop.
#[test]
fn endless_responses_are_cut_at_the_wire_limit_and_the_device_moves_on() {
    let scene = Scene::new();
    let oversized = scene.hostiles.endless_edge(Endless::OversizedLength);
    let largest = scene.hostiles.endless_edge(Endless::LargestThenMore);
    let cases = [
        ("oversized", &oversized, "network", "above the limit"),
        ("largest", &largest, "verification", "metadata from edge node rejected"),
    ];
    for (name, edge, error, why) in cases {
        let device = scene.device(&format!("dev-endless-{name}"), &[edge.tcp_url()]);
        // Requests may take a minute: a check that ends sooner was cut by the wire limit,
        // not by a timeout.
        device.set("request_timeout_secs", "60");
        let started = Instant::now();
        let output = check_fails(&device, &format!("endless edge ({name}) alone"));
        let took = started.elapsed();
        eprintln!("endless edge ({name}) alone: check ended after {took:?}");
        assert!(took < Duration::from_secs(30), "endless edge ({name}): check took {took:?}:\n{output}");
        scene.assert_still_on_v1(&device, &output, &["committed"]);
        assert_eq!(device.status()["error"].as_str(), Some(error), "{output}");
        assert!(output.contains(why), "endless edge ({name}):\n{output}");
        consulted(edge, name);
    }
    let before = (oversized.counters.total(), largest.counters.total());
    let device = scene.device("dev-endless", &[oversized.tcp_url(), largest.tcp_url(), scene.honest()]);
    device.set("request_timeout_secs", "60");
    let output = check_succeeds(&device, "endless edges first, then honest");
    scene.assert_committed_v2(&device, &output);
    assert!(output.contains("above the limit") && output.contains("metadata from edge node rejected"), "{output}");
    assert!(oversized.counters.total() > before.0 && largest.counters.total() > before.1, "{output}");
}

/// Issue 9: the request timeout applied to the first connection to each edge only, and
/// connecting had no timeout at all, so one slow batch held a whole download round. A
/// trickling edge (chunk batches at 64 bytes/s, everything else at once), a black hole (QUIC
/// to a UDP socket that never answers) and an honest edge 100 ms farther away than the
/// trickling one (so the trickling edge ranks first and is handed a batch on each of its two
/// connections), 5 s timeouts: the slow batches are hedged to the honest edge, and nothing
/// waits on the black hole more than once.
#[test]
fn a_trickling_edge_and_a_black_hole_cost_about_one_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let scene = Scene::new();
    let trickle = scene.hostiles.proxy(scene.honest.device_tcp, Shape::TrickleChunks { bytes_per_second: 64 });
    let hole = scene.hostiles.black_hole();
    let honest = scene.hostiles.proxy(scene.honest.device_tcp, Shape::Delay(Duration::from_millis(100)));
    let device = scene.device("dev-trickle", &[trickle.tcp_url(), hole.quic_url(), honest.tcp_url()]);
    device.set("request_timeout_secs", &TIMEOUT.as_secs().to_string());
    device.set("connect_timeout_secs", &TIMEOUT.as_secs().to_string());
    let started = Instant::now();
    let output = check_succeeds(&device, "trickling edge, black hole, honest edge");
    let took = started.elapsed();
    eprintln!("trickling edge + black hole + honest edge: install took {took:?}");
    scene.assert_committed_v2(&device, &output);
    assert!(trickle.counters.chunks() >= 256, "the trickling edge was not handed two batches:\n{output}");
    assert!(hole.counters.total() > 0, "the device never tried the black hole:\n{output}");
    assert!(took < 3 * TIMEOUT, "install took {took:?} with {TIMEOUT:?} timeouts:\n{output}");
    assert!(!output.contains("penalized"), "a slow edge is demoted, not treated as a liar:\n{output}");
}

/// Issue 9: a black hole alone ends a check within about the connect timeout (QUIC: the
/// handshake never completes) or the request timeout (TCP: it connects, then silence), with
/// an error that names the edge and the timeout, instead of a transport's own give-up.
#[test]
fn a_black_hole_edge_alone_fails_within_the_connect_timeout_with_a_clear_error() {
    let scene = Scene::new();
    let hole = scene.hostiles.black_hole();
    let cases = [
        ("quic", hole.quic_url(), Duration::from_secs(2), "connect timed out after 2000 ms"),
        ("tcp", hole.tcp_url(), Duration::from_secs(3), "request timed out"),
    ];
    for (name, url, limit, why) in cases {
        let device = scene.device(&format!("dev-black-hole-{name}"), std::slice::from_ref(&url));
        device.set("connect_timeout_secs", "2");
        device.set("request_timeout_secs", "3");
        let before = hole.counters.total();
        let started = Instant::now();
        let output = check_fails(&device, &format!("black hole ({name}) alone"));
        let took = started.elapsed();
        eprintln!("black hole ({name}) alone: check ended after {took:?}");
        assert!(hole.counters.total() > before, "black hole ({name}) was never tried:\n{output}");
        assert!(took < limit + Duration::from_secs(3), "black hole ({name}): check took {took:?}:\n{output}");
        scene.assert_still_on_v1(&device, &output, &["committed"]);
        assert_eq!(device.status()["error"].as_str(), Some("network"), "{output}");
        assert!(output.contains(&url) && output.contains(why), "black hole ({name}): no clear error:\n{output}");
    }
}

/// Issue 9: metadata came from the 3 fastest edges only, so three fast stale mirrors held a
/// device on the old release while a slower honest edge had the new one; and an edge merely
/// behind the device's metadata was penalized as a liar for 10 minutes.
#[test]
fn three_fast_stale_edges_do_not_keep_a_device_from_a_slower_honest_edge() {
    let scene = Scene::new();
    let stale: Vec<HostileEdge> = (0..3).map(|_| scene.hostiles.repo_edge(&scene.stale_repo, Lie::Nothing)).collect();
    let slow_honest = scene.hostiles.proxy(scene.honest.device_tcp, Shape::Delay(Duration::from_millis(300)));
    let mut edges: Vec<String> = stale.iter().map(HostileEdge::quic_url).collect();
    edges.push(slow_honest.tcp_url());
    let device = scene.device("dev-fast-stale", &edges);
    let output = check_succeeds(&device, "three fast stale edges, one slower honest edge");
    scene.assert_committed_v2(&device, &output);
    for edge in &stale {
        consulted(edge, "fast stale edge");
    }
    assert!(!output.contains("penalized"), "an edge that is behind is not a liar:\n{output}");
    // The device now trusts v2-era metadata, which the stale edges are behind: the next check
    // stays on v2, says so, and still treats none of them as a liar.
    let before: Vec<u64> = stale.iter().map(|e| e.counters.total()).collect();
    let output = check_succeeds(&device, "again, on v2-era metadata");
    let status = device.status();
    assert_eq!((status["state"].as_str(), status["version"].as_str()), (Some("committed"), Some("2.0.0")));
    assert!(stale.iter().zip(before).all(|(e, b)| e.counters.total() > b), "stale edges not consulted:\n{output}");
    assert!(output.contains("behind") && !output.contains("penalized"), "{output}");
}
