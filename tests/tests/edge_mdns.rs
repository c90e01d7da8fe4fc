//! Edge nodes of one site find each other by libp2p mDNS (issue 3, "Sites: nodes of one site
//! find each other (mDNS or config)"). Multicast does not work on plain loopback, so the nodes
//! run in two network namespaces joined by a veth pair ([`NetPair`]) and listen on its
//! addresses; site-mates sit on opposite sides, so their mDNS traffic crosses the link. Needs
//! root; without network namespaces the tests fail saying so.
//!
//! Each node's ops HTTP is bound to its namespace's loopback and read with [`in_netns`]. The
//! nodes log libp2p-mdns' `discovered peer on address` (raised to info for `libp2p_mdns`
//! only): the evidence that a mate was found by mDNS and not through the DHT.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::netns::{in_netns, NetPair, DEVICE_IP, EDGE_IP};
use support::{eventually, field, random_bytes, status, Proc};

const RELEASE_MIB: usize = 16;
const START: Duration = Duration::from_secs(30);
const FIND: Duration = Duration::from_secs(20);
const TRANSFER: Duration = Duration::from_secs(60);

/// Which end of the veth pair a node runs at.
#[derive(Clone, Copy)]
enum Side {
    Edge,
    Device,
}

/// An edge node in one of the namespaces, listening on that side's veth address.
struct Node {
    proc: Proc,
    ns: String,
    site: String,
    /// libp2p peer id.
    id: String,
    /// Ops HTTP, on the namespace's loopback.
    http: SocketAddr,
}

impl Node {
    /// `edge-node run` at `side`, with that side's veth address as its p2p and device
    /// address, mDNS on unless `mdns` is false, dialing only `bootstrap`.
    fn start(net: &NetPair, side: Side, name: &str, dir: &Path, site: &str, mdns: bool, bootstrap: &[&str]) -> Node {
        let (ns, ip) = match side {
            Side::Edge => (&net.edge, EDGE_IP),
            Side::Device => (&net.device, DEVICE_IP),
        };
        let mut args: Vec<String> = vec![
            // libp2p=warn as usual, except mDNS discoveries.
            "RUST_LOG=info,libp2p=warn,libp2p_mdns=info".into(),
            support::bin("edge-node").to_str().unwrap().into(),
            "run".into(),
            "--data-dir".into(),
            dir.join(name).to_str().unwrap().into(),
            "--site".into(),
            site.into(),
            "--listen".into(),
            format!("/ip4/{ip}/udp/0/quic-v1"),
            "--http-listen".into(),
            "127.0.0.1:0".into(),
            "--device-quic-listen".into(),
            format!("{ip}:0"),
            "--device-tcp-listen".into(),
            format!("{ip}:0"),
        ];
        if !mdns {
            args.push("--no-mdns".into());
        }
        for b in bootstrap {
            args.extend(["--bootstrap".into(), b.to_string()]);
        }
        // `ip netns exec` and `env` both exec, so the process killed on drop is the node.
        let proc = net.spawn(ns, name, Path::new("env"), &args);
        let addrs = test_procs::edge_addrs(&proc, START).unwrap();
        let (id, http) = (addrs.peer_id().to_string(), addrs.http);
        Node { proc, ns: ns.into(), site: site.into(), id, http }
    }

    fn status(&self) -> Option<Value> {
        let http = self.http;
        in_netns(&self.ns, move || status(http))
    }

    /// Connected, identified peers: (peer id, site, origin).
    fn peers(&self) -> Vec<(String, String, bool)> {
        let Some(s) = self.status() else { return Vec::new() };
        let Some(peers) = s["peers"].as_array() else { return Vec::new() };
        peers
            .iter()
            .map(|p| {
                let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                (text("peer"), text("site"), p["origin"] == true)
            })
            .collect()
    }

    /// The site `other` is listed with in this node's `/status`, once it is connected.
    fn site_of(&self, other: &Node) -> Option<String> {
        self.peers().into_iter().find(|(id, _, _)| *id == other.id).map(|(_, site, _)| site)
    }

    fn sees_origin(&self) -> bool {
        self.peers().iter().any(|(_, _, origin)| *origin)
    }

    /// Waits for libp2p-mdns to report `other`.
    fn wait_mdns_discovery(&self, other: &Node) {
        self.proc
            .wait_line(&format!("mDNS discovery of {}", other.proc.name), FIND, |l| {
                (l.contains("discovered peer on address") && field(l, "peer") == Some(other.id.as_str())).then_some(())
            })
            .unwrap();
    }

    fn mdns_discovered(&self, other: &Node) -> bool {
        self.proc
            .output()
            .lines()
            .any(|l| l.contains("discovered peer on address") && field(l, "peer") == Some(other.id.as_str()))
    }

    fn has_release(&self, version: &str) -> bool {
        self.status().is_some_and(|s| {
            s["releases"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| r["version"] == version && r["complete"] == true))
        })
    }

    fn bytes_in(&self, class: &str) -> u64 {
        self.status().and_then(|s| s["bytes_in"][class].as_u64()).unwrap_or(0)
    }
}

fn netns(tag: &str) -> NetPair {
    NetPair::create(tag)
        .unwrap_or_else(|why| panic!("these tests need network namespaces (run as root with iproute2): {why}"))
}

/// Waits until `node` lists `mate` as a peer of its own site.
fn wait_site_mates(node: &Node, mate: &Node) {
    let what = format!("{} to list {} as a site-mate", node.proc.name, mate.proc.name);
    eventually(&what, FIND, || (node.site_of(mate).as_deref() == Some(node.site.as_str())).then_some(()));
}

/// Origin on the edge side's veth address; `a1` (edge side) and `a2` (device side) in
/// `site-a`, `b` (edge side) in `site-b`; all with mDNS on and bootstrapped to the origin
/// alone. The site-a nodes find each other by mDNS across the link and list each other as
/// site-mates; `b` finds them too but keeps its own site. A 16 MiB release then reaches all
/// three, and site-a's backhaul carries it once: the rendezvous split works with mates found
/// by mDNS exactly as with configured ones.
///
/// Bootstrapping to the origin alone also lets Kademlia introduce the site-a nodes (the
/// automatic bootstrap's self-lookup at the origin returns the other node, and the query
/// dials it): with `--no-mdns` here they still became site-mates within seconds when tried.
/// So this setting cannot tell mDNS from the DHT by the peer lists; the `discovered peer`
/// lines do, and the test below isolates mDNS with no bootstrap at all.
#[test]
fn site_mates_bootstrapped_only_to_the_origin_find_each_other_by_mdns_and_share_the_backhaul() {
    let started = Instant::now();
    let net = netns("emdns");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let origin = net.origin_listening(root, &format!("/ip4/{EDGE_IP}/udp/0/quic-v1"));
    let boot = [origin.addr.as_str()];
    let a1 = Node::start(&net, Side::Edge, "a1", root, "site-a", true, &boot);
    let a2 = Node::start(&net, Side::Device, "a2", root, "site-a", true, &boot);
    let b = Node::start(&net, Side::Edge, "b", root, "site-b", true, &boot);

    a1.wait_mdns_discovery(&a2);
    a2.wait_mdns_discovery(&a1);
    wait_site_mates(&a1, &a2);
    wait_site_mates(&a2, &a1);
    // b is on the LAN with mDNS on: it may connect to site-a, but never as a site-mate.
    b.wait_mdns_discovery(&a1);
    for a in [&a1, &a2] {
        let what = format!("{} and b to list each other with their own sites", a.proc.name);
        eventually(&what, FIND, || {
            (a.site_of(&b).as_deref() == Some("site-b") && b.site_of(a).as_deref() == Some("site-a")).then_some(())
        });
    }
    for n in [&a1, &a2, &b] {
        eventually(&format!("{} to see the origin", n.proc.name), FIND, || n.sees_origin().then_some(()));
    }
    let found = started.elapsed();

    let image = root.join("release.img");
    std::fs::write(&image, random_bytes(RELEASE_MIB << 20, 11)).unwrap();
    let stored = origin.publish(&image, "1.0.0");
    let published = Instant::now();
    for n in [&a1, &a2, &b] {
        eventually(&format!("{} to complete 1.0.0", n.proc.name), TRANSFER, || n.has_release("1.0.0").then_some(()));
    }
    let transfer = published.elapsed();

    let backhaul: u64 = [&a1, &a2].iter().map(|n| n.bytes_in("wan") + n.bytes_in("origin")).sum();
    let amplification = backhaul as f64 / stored as f64;
    eprintln!("site-a: {backhaul} backhaul bytes for {stored} stored bytes = {amplification:.3}");
    assert!(amplification <= 1.02, "site-a pulled {amplification:.3}x the release over its backhaul");
    // Each site-a node got part of the release from its mDNS-found mate.
    for (n, mate) in [(&a1, &a2), (&a2, &a1)] {
        let site = n.bytes_in("site");
        assert!(site > 0, "{} took nothing from {}: the split did not happen", n.proc.name, mate.proc.name);
    }
    // b has no site-mate, whatever it is connected to: nothing of its came in as site traffic.
    assert_eq!(b.bytes_in("site"), 0, "b counted a site-a node as a site-mate");
    assert!(b.peers().iter().all(|(_, site, _)| *site != "site-b"), "{:?}", b.peers());
    eprintln!("found in {found:?}, transfer {transfer:?}, whole test {:?}", started.elapsed());
}

/// mDNS alone joins site-mates, and `--no-mdns` turns it off. No node has any bootstrap, so
/// nothing but mDNS can introduce them. `off1` (edge side) and `off2` (device side) run with
/// `--no-mdns` and start first; then `on1` and `on2`, same site, mDNS on. Once the mDNS pair
/// have found each other and list each other as site-mates, the `--no-mdns` pair, which had
/// at least as long, must still have no peers at all, and nobody must have discovered them.
///
/// (With a bootstrap to a common origin this control would prove nothing: the DHT introduces
/// the nodes anyway, see the test above.)
#[test]
fn with_no_bootstrap_mdns_alone_joins_site_mates_and_no_mdns_keeps_nodes_apart() {
    let started = Instant::now();
    let net = netns("emdns-neg");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let off1 = Node::start(&net, Side::Edge, "off1", root, "lan", false, &[]);
    let off2 = Node::start(&net, Side::Device, "off2", root, "lan", false, &[]);
    let on1 = Node::start(&net, Side::Edge, "on1", root, "lan", true, &[]);
    let on2 = Node::start(&net, Side::Device, "on2", root, "lan", true, &[]);

    on1.wait_mdns_discovery(&on2);
    on2.wait_mdns_discovery(&on1);
    wait_site_mates(&on1, &on2);
    wait_site_mates(&on2, &on1);
    let found = started.elapsed();

    for off in [&off1, &off2] {
        assert!(off.status().is_some(), "{} is not answering", off.proc.name);
        assert_eq!(off.peers(), Vec::new(), "{} with --no-mdns and no bootstrap found peers", off.proc.name);
        assert!(!off.proc.output().contains("discovered peer"), "{} browsed with --no-mdns", off.proc.name);
        for on in [&on1, &on2] {
            assert!(!on.mdns_discovered(off), "{} answered {}'s mDNS query", off.proc.name, on.proc.name);
            assert!(on.site_of(off).is_none(), "{} reached {}", on.proc.name, off.proc.name);
        }
    }
    eprintln!("mDNS pair joined in {found:?}, whole test {:?}", started.elapsed());
}
