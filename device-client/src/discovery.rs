//! Finding edge nodes on the LAN by mDNS (DNS-SD): edge nodes advertise their device service
//! as `_otamesh-dev._udp.local.` (see `edge_node::device::mdns`), the SRV port being the QUIC
//! port, with TXT `v=1`, `site=…`, `quic=…`, `tcp=…`.
//!
//! Trust: none. mDNS answers come from anyone on the LAN, so they only *suggest* where to
//! ask: everything fetched from a discovered edge is verified exactly like from a configured
//! one (TUF metadata from the pinned root, every chunk against its signed id), and an edge
//! that serves bad bytes is penalized by `EdgePool`. What an answer can cost is bounded here:
//! a browse lasts at most its timeout, yields at most [`MAX_DISCOVERED`] addresses (at most
//! [`MAX_ADDRS_PER_INSTANCE`] per instance), and instances with a missing or malformed TXT
//! record, another version, a port mismatch or unusable addresses are ignored.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use edge_client::mdns::{SERVICE_TYPE, TXT_VERSION};
use mdns_sd::{ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent};

use crate::config::EdgeAddr;

/// How long the agent browses at most (it returns sooner once an edge node answered).
pub const BROWSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most edge addresses one browse returns.
pub const MAX_DISCOVERED: usize = 32;
/// Most addresses taken from one advertised instance.
pub const MAX_ADDRS_PER_INSTANCE: usize = 4;
/// How long a browse waits for more instances after the first one resolved.
const SETTLE: Duration = Duration::from_millis(300);
/// Most mDNS events looked at in one browse (a flood of answers ends the browse early).
const MAX_EVENTS: usize = 1024;

/// Browses for edge nodes for at most `timeout` on a blocking thread, returning shortly
/// after the first one resolves. Errors (no multicast, no interfaces) give an empty list.
pub async fn browse(timeout: Duration) -> Vec<EdgeAddr> {
    tokio::task::spawn_blocking(move || browse_blocking(timeout)).await.unwrap_or_else(|e| {
        tracing::warn!(%e, "mDNS browse failed");
        Vec::new()
    })
}

/// [`browse`] on the calling thread.
pub fn browse_blocking(timeout: Duration) -> Vec<EdgeAddr> {
    let started = Instant::now();
    let daemon = match ServiceDaemon::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%e, "cannot start mDNS");
            return Vec::new();
        }
    };
    let found = match daemon.browse(SERVICE_TYPE) {
        Ok(events) => collect(started + timeout, MAX_EVENTS, |until| events.recv_deadline(until).ok()),
        Err(e) => {
            tracing::warn!(%e, "cannot browse by mDNS");
            Vec::new()
        }
    };
    if let Ok(done) = daemon.shutdown() {
        let _ = done.recv_timeout(Duration::from_millis(500));
    }
    tracing::info!(found = found.len(), took_ms = started.elapsed().as_millis() as u64, "mDNS browse for edge nodes");
    found
}

/// Reads events from `next` (which waits for one until the instant it is given) until
/// `deadline`, [`SETTLE`] after the first usable instance, or after `max_events` events;
/// returns the usable addresses, deduplicated, in arrival order.
fn collect(
    deadline: Instant,
    max_events: usize,
    mut next: impl FnMut(Instant) -> Option<ServiceEvent>,
) -> Vec<EdgeAddr> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut settle_at: Option<Instant> = None;
    for _ in 0..max_events {
        let until = settle_at.map_or(deadline, |t| t.min(deadline));
        if Instant::now() >= until || out.len() >= MAX_DISCOVERED {
            break;
        }
        let Some(event) = next(until) else { break };
        let ServiceEvent::ServiceResolved(service) = event else { continue };
        let addrs = usable_addrs(&service);
        if addrs.is_empty() {
            tracing::debug!(name = %service.fullname, "mDNS answer ignored");
            continue;
        }
        let site = service.get_property_val_str("site").unwrap_or("");
        for addr in addrs {
            if out.len() < MAX_DISCOVERED && seen.insert(addr) {
                tracing::info!(edge = %addr, site, "edge node found by mDNS");
                out.push(addr);
            }
        }
        settle_at.get_or_insert_with(|| Instant::now() + SETTLE);
    }
    out
}

/// The QUIC addresses of a resolved instance, or none if its record is not a version-1
/// device service advertisement.
pub fn usable_addrs(service: &ResolvedService) -> Vec<EdgeAddr> {
    if service.ty_domain != SERVICE_TYPE || service.get_property_val_str("v") != Some(TXT_VERSION) {
        return Vec::new();
    }
    let port = service.port;
    if port == 0 {
        return Vec::new();
    }
    // The TXT `quic` port, if given, must agree with the SRV port.
    match service.get_property_val_str("quic").map(str::parse::<u16>) {
        None => {}
        Some(Ok(p)) if p == port => {}
        Some(_) => return Vec::new(),
    }
    let mut ips: Vec<&ScopedIp> = service.addresses.iter().collect();
    // Deterministic order (a HashSet's is not): IPv4 first, then by address.
    ips.sort_by_key(|ip| (ip.is_ipv6(), ip.to_ip_addr()));
    ips.into_iter().filter_map(|ip| socket_addr(ip, port)).take(MAX_ADDRS_PER_INSTANCE).map(EdgeAddr::Quic).collect()
}

/// `ip:port`, or `None` for addresses no edge node can be at (unspecified, multicast,
/// broadcast, loopback: an answer from the LAN pointing at this device itself).
fn socket_addr(ip: &ScopedIp, port: u16) -> Option<SocketAddr> {
    let addr = ip.to_ip_addr();
    let bad = addr.is_unspecified()
        || addr.is_multicast()
        || addr.is_loopback()
        || matches!(addr, IpAddr::V4(v4) if v4.is_broadcast());
    if bad {
        return None;
    }
    Some(match ip {
        ScopedIp::V6(v6) => {
            // Link-local IPv6 needs the interface it was seen on.
            let link_local = (v6.addr().segments()[0] & 0xffc0) == 0xfe80;
            let scope = if link_local { v6.scope_id().index } else { 0 };
            if link_local && scope == 0 {
                return None;
            }
            SocketAddr::V6(SocketAddrV6::new(*v6.addr(), port, 0, scope))
        }
        _ => SocketAddr::new(addr, port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdns_sd::ServiceInfo;

    /// A resolved instance as mdns-sd would hand it over (via `ServiceInfo`, the only public
    /// constructor path).
    fn resolved(ty: &str, port: u16, ips: &str, txt: &[(&str, &str)]) -> ResolvedService {
        let info = ServiceInfo::new(ty, "node", "node.local.", ips, port, txt).unwrap();
        info.as_resolved_service()
    }

    #[test]
    fn only_well_formed_version_1_answers_are_used() {
        let ok = [("v", "1"), ("site", "plant-7"), ("quic", "4433"), ("tcp", "4434")];
        let good = resolved(SERVICE_TYPE, 4433, "10.0.0.6,10.0.0.5", &ok);
        assert_eq!(
            usable_addrs(&good),
            vec![EdgeAddr::Quic("10.0.0.5:4433".parse().unwrap()), EdgeAddr::Quic("10.0.0.6:4433".parse().unwrap())]
        );
        // No version, another version, a port mismatch, a garbage port, another type.
        assert!(usable_addrs(&resolved(SERVICE_TYPE, 4433, "10.0.0.5", &[("quic", "4433")])).is_empty());
        assert!(usable_addrs(&resolved(SERVICE_TYPE, 4433, "10.0.0.5", &[("v", "2")])).is_empty());
        assert!(usable_addrs(&resolved(SERVICE_TYPE, 4433, "10.0.0.5", &[("v", "1"), ("quic", "9")])).is_empty());
        assert!(usable_addrs(&resolved(SERVICE_TYPE, 4433, "10.0.0.5", &[("v", "1"), ("quic", "x")])).is_empty());
        assert!(usable_addrs(&resolved("_other._udp.local.", 4433, "10.0.0.5", &[("v", "1")])).is_empty());
        assert!(usable_addrs(&resolved(SERVICE_TYPE, 0, "10.0.0.5", &[("v", "1")])).is_empty());
        // Addresses no edge can be at are dropped; at most MAX_ADDRS_PER_INSTANCE per instance.
        let odd = resolved(SERVICE_TYPE, 7, "127.0.0.1,0.0.0.0,224.0.0.251,255.255.255.255", &[("v", "1")]);
        assert!(usable_addrs(&odd).is_empty());
        let many = (1..=10).map(|i| format!("10.0.0.{i}")).collect::<Vec<_>>().join(",");
        assert_eq!(usable_addrs(&resolved(SERVICE_TYPE, 7, &many, &[("v", "1")])).len(), MAX_ADDRS_PER_INSTANCE);
    }

    #[test]
    fn collect_is_bounded_and_deduplicates() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut n = 0u32;
        // An endless stream of distinct instances stops at MAX_DISCOVERED addresses or SETTLE.
        let found = collect(deadline, 10_000, |_| {
            n += 1;
            let ip = format!("10.1.{}.{}", n / 250, n % 250 + 1);
            Some(ServiceEvent::ServiceResolved(Box::new(resolved(SERVICE_TYPE, 4433, &ip, &[("v", "1")]))))
        });
        assert!(!found.is_empty() && found.len() <= MAX_DISCOVERED);
        // The same instance repeated is returned once; junk events do not count as found.
        let mut events = vec![
            ServiceEvent::SearchStarted(SERVICE_TYPE.into()),
            ServiceEvent::ServiceResolved(Box::new(resolved(SERVICE_TYPE, 4433, "10.0.0.5", &[("v", "1")]))),
            ServiceEvent::ServiceResolved(Box::new(resolved(SERVICE_TYPE, 4433, "10.0.0.5", &[("v", "1")]))),
        ]
        .into_iter();
        assert_eq!(collect(deadline, 100, |_| events.next()), vec![EdgeAddr::Quic("10.0.0.5:4433".parse().unwrap())]);
        // max_events bounds the work even when nothing is usable.
        let mut count = 0;
        assert!(collect(deadline, 50, |_| {
            count += 1;
            Some(ServiceEvent::SearchStarted(String::new()))
        })
        .is_empty());
        assert_eq!(count, 50);
    }
}
