//! DNS-SD advertisement of the device service, so devices on the LAN find edge nodes
//! without a configured list (`device-client`'s `discovery.rs` browses for it).
//!
//! One service instance per node, of type [`SERVICE_TYPE`] (`_otamesh-dev._udp.local.`): its
//! SRV port is the QUIC port of the device service (ALPN [`super::ALPN`]), its TXT record
//! carries `v=1` ([`TXT_VERSION`]), `site=<site>`, `quic=<port>` and, when the framed TCP
//! service listens on the same address, `tcp=<port>`. The instance name is the node's peer id.
//!
//! Addresses: only what the device service actually bound. A wildcard bind (`0.0.0.0` or
//! `[::]`) advertises the addresses of every non-loopback interface (IPv4 only for
//! `0.0.0.0`), kept up to date as interfaces change; a specific address is advertised as
//! itself, on the interface whose subnet holds it; a loopback bind is not advertised at all
//! (no other host could reach it).
//!
//! Trust: none. An advertisement only suggests where to ask; devices verify TUF metadata from
//! their pinned root and every chunk against its signed id, whoever answered.

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};

use super::DeviceAddrs;

pub use edge_client::mdns::{SERVICE_TYPE, TXT_VERSION};

/// A running advertisement: the mDNS responder thread and the registered instance. Dropping
/// it sends goodbye packets and stops the responder.
pub struct Advertisement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Advertisement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertisement").field("fullname", &self.fullname).finish()
    }
}

impl Advertisement {
    /// The advertised instance's full DNS-SD name.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }
}

impl Drop for Advertisement {
    fn drop(&mut self) {
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

/// What would be advertised for `addrs`: `None` when QUIC is off or bound to loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The SRV port (QUIC).
    pub port: u16,
    /// A specific address to advertise; `None` for a wildcard bind (interface addresses).
    pub addr: Option<IpAddr>,
    /// Wildcard bind on `0.0.0.0`: advertise IPv4 interface addresses only.
    pub ipv4_only: bool,
    /// TXT `tcp=` port, when the TCP service is reachable at the same addresses.
    pub tcp_port: Option<u16>,
}

impl Plan {
    /// Decides from the addresses the device service bound.
    pub fn for_addrs(addrs: &DeviceAddrs) -> Option<Plan> {
        let quic = addrs.quic?;
        let ip = quic.ip();
        if ip.is_loopback() {
            return None;
        }
        let tcp_port = addrs.tcp.filter(|tcp| same_reach(quic, *tcp)).map(|tcp| tcp.port());
        Some(Plan {
            port: quic.port(),
            addr: (!ip.is_unspecified()).then_some(ip),
            ipv4_only: ip == IpAddr::from([0, 0, 0, 0]),
            tcp_port,
        })
    }
}

/// Whether a device reaching QUIC at `quic`'s advertised addresses reaches TCP there too.
fn same_reach(quic: SocketAddr, tcp: SocketAddr) -> bool {
    let (q, t) = (quic.ip(), tcp.ip());
    q == t || (t.is_unspecified() && (q.is_ipv4() == t.is_ipv4() || t.is_ipv6()))
}

/// Starts advertising the device service bound at `addrs` for a node of `site`, named
/// `instance` (the peer id). `Ok(None)`: nothing reachable from the LAN to advertise.
pub fn advertise(site: &str, instance: &str, addrs: &DeviceAddrs) -> Result<Option<Advertisement>, mdns_sd::Error> {
    let Some(plan) = Plan::for_addrs(addrs) else { return Ok(None) };
    let daemon = ServiceDaemon::new()?;
    // Devices live on the LAN; loopback answers would only point a device at itself.
    let mut off = vec![IfKind::LoopbackV4, IfKind::LoopbackV6];
    if plan.ipv4_only {
        off.push(IfKind::IPv6);
    }
    daemon.disable_interface(off)?;
    let mut txt = vec![
        ("v".to_string(), TXT_VERSION.to_string()),
        ("site".to_string(), truncate(site, 200).to_string()),
        ("quic".to_string(), plan.port.to_string()),
    ];
    if let Some(tcp) = plan.tcp_port {
        txt.push(("tcp".to_string(), tcp.to_string()));
    }
    // A DNS label is at most 63 bytes; peer ids are 52 characters.
    let instance = truncate(instance, 63);
    let host = format!("otamesh-{}.local.", truncate(instance, 40).to_ascii_lowercase());
    let info = match plan.addr {
        Some(ip) => ServiceInfo::new(SERVICE_TYPE, instance, &host, ip, plan.port, txt.as_slice())?,
        None => ServiceInfo::new(SERVICE_TYPE, instance, &host, (), plan.port, txt.as_slice())?.enable_addr_auto(),
    };
    let fullname = info.get_fullname().to_string();
    if let Err(e) = daemon.register(info) {
        let _ = daemon.shutdown();
        return Err(e);
    }
    Ok(Some(Advertisement { daemon, fullname }))
}

/// What the daemon calls at start: advertises when `enabled` (the node's `mdns` setting),
/// logging the outcome; a failure to advertise is logged, never fatal. Keep the returned
/// value alive for as long as the device service runs.
pub fn start(enabled: bool, site: &str, instance: &str, addrs: &DeviceAddrs) -> Option<Advertisement> {
    if !enabled {
        return None;
    }
    match advertise(site, instance, addrs) {
        Ok(Some(ad)) => {
            tracing::info!(name = %ad.fullname(), "device service advertised by mDNS");
            Some(ad)
        }
        Ok(None) => {
            tracing::info!(quic = ?addrs.quic, "device service bound to loopback or QUIC off: not advertised by mDNS");
            None
        }
        Err(e) => {
            tracing::warn!(%e, "cannot advertise the device service by mDNS");
            None
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(quic: &str, tcp: &str) -> DeviceAddrs {
        DeviceAddrs { quic: Some(quic.parse().unwrap()), tcp: Some(tcp.parse().unwrap()) }
    }

    #[test]
    fn plans_follow_what_was_bound() {
        assert_eq!(Plan::for_addrs(&addrs("127.0.0.1:4433", "127.0.0.1:4434")), None);
        assert_eq!(Plan::for_addrs(&DeviceAddrs { quic: None, tcp: Some("0.0.0.0:1".parse().unwrap()) }), None);
        assert_eq!(
            Plan::for_addrs(&addrs("0.0.0.0:4433", "0.0.0.0:4434")),
            Some(Plan { port: 4433, addr: None, ipv4_only: true, tcp_port: Some(4434) })
        );
        assert_eq!(
            Plan::for_addrs(&addrs("10.0.0.5:4433", "127.0.0.1:4434")),
            Some(Plan { port: 4433, addr: Some("10.0.0.5".parse().unwrap()), ipv4_only: false, tcp_port: None })
        );
        assert_eq!(
            Plan::for_addrs(&addrs("[::]:4433", "[::]:9")),
            Some(Plan { port: 4433, addr: None, ipv4_only: false, tcp_port: Some(9) })
        );
        assert_eq!(Plan::for_addrs(&addrs("[::]:4433", "0.0.0.0:9")).unwrap().tcp_port, None);
        assert_eq!(Plan::for_addrs(&addrs("10.0.0.5:4433", "0.0.0.0:9")).unwrap().tcp_port, Some(9));
        assert_eq!(truncate("ééé", 3), "é");
    }
}
