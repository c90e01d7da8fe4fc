//! Devices find edge nodes by mDNS: an origin and an edge node (device service on 0.0.0.0,
//! mDNS on) in one network namespace, a device with no configured edge in another, the two
//! joined by a veth pair — multicast does not work on plain loopback. Needs root (network
//! namespaces); elsewhere the test prints why and passes without running.

mod support;

use std::time::{Duration, Instant};

use support::device::Device;
use support::netns::{NetPair, EDGE_IP};
use support::random_bytes;

const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_device_without_configured_edges_finds_one_by_mdns_and_installs() {
    discovered_install("0.0.0.0:0", true);
}

/// A device service bound to one address is advertised with that address.
#[test]
fn an_edge_bound_to_one_address_is_found_at_it() {
    discovered_install(&format!("{EDGE_IP}:0"), false);
}

/// Origin and edge (device service on `device_listen`, mDNS on) in one namespace, v1
/// published; a device with `edges = []` in the other namespace must find the edge and
/// commit v1. With `negative`, a second device with `--no-mdns` must fail clearly.
fn discovered_install(device_listen: &str, negative: bool) {
    let started = Instant::now();
    let net = match NetPair::create("disc") {
        Ok(net) => net,
        Err(why) => {
            eprintln!("SKIPPED: network namespaces are unavailable here ({why}); run as root");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let origin = net.origin(root);
    let edge = net.edge("edge", &root.join("edge"), "site-a", device_listen, &origin.addr);
    let advertised = edge
        .proc
        .wait_line("mDNS advertisement", Duration::from_secs(10), |l| {
            l.contains("device service advertised by mDNS").then(|| l.to_string())
        })
        .unwrap();
    assert!(advertised.contains("_otamesh-dev._udp.local."), "{advertised}");

    let v1 = random_bytes(1 << 20, 7);
    let image = root.join("v1.img");
    std::fs::write(&image, &v1).unwrap();
    origin.publish(&image, "1.0.0");
    edge.proc
        .wait_line("v1 staged", Duration::from_secs(30), |l| {
            (l.contains("release complete") && l.contains("1.0.0")).then_some(())
        })
        .unwrap();

    // No configured edge, mDNS on (the default): the agent must find the edge on the veth.
    let device = Device::new(&root.join("dev"), &origin.repo, &[], None);
    let check_started = Instant::now();
    let run = net.check(&device, &[], CHECK_TIMEOUT);
    assert!(run.success, "install through a discovered edge failed:\n{}", run.output);
    let expected = format!("edge=quic://{EDGE_IP}:{}", edge.device_quic.port());
    assert!(run.output.contains("edge node found by mDNS") && run.output.contains(&expected), "{}", run.output);
    let status = device.status();
    assert_eq!((status["state"].as_str(), status["version"].as_str()), (Some("committed"), Some("1.0.0")));
    assert!(device.slot("b") == v1, "slot b is not v1");
    eprintln!("discovered and installed in {:?}", check_started.elapsed());

    if !negative {
        return;
    }
    // mDNS off and no edges: refused at once with a clear error, though an edge is advertised.
    let blind = Device::new(&root.join("blind"), &origin.repo, &[], None);
    let run = net.check(&blind, &["--no-mdns"], CHECK_TIMEOUT);
    assert!(!run.success, "a device with no edge and no mDNS must fail:\n{}", run.output);
    assert!(run.output.contains("no edge node"), "unclear error:\n{}", run.output);
    assert!(!run.output.contains("found by mDNS"), "browsed with --no-mdns:\n{}", run.output);
    eprintln!("whole test in {:?}", started.elapsed());
}
