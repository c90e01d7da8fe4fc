//! Connections per client address: one LAN host must not take the site's device slots.
//!
//! Why per address: `max_connections` (512) is sized for a site's devices, and a single host
//! that opens 512 connections (and never sends a request, or never reads its answers) would
//! otherwise lock every device out until the idle timeout. A device agent uses one
//! QUIC connection (or two TCP connections) per edge node, so a small cap (default 8) leaves
//! room for restarts while a hostile host gets at most its share. The map holds an entry only while that address has a
//! connection, so it is bounded by `max_connections`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Who may open a connection: both limits, checked together by both transports.
pub(crate) struct Admission {
    /// `max_connections`, shared by QUIC and TCP.
    connections: Arc<Semaphore>,
    /// `max_connections_per_client`.
    clients: Arc<ClientSlots>,
    metrics: Arc<Metrics>,
}

/// What an admitted connection holds until it ends.
pub(crate) struct Admitted {
    _connection: OwnedSemaphorePermit,
    _client: ClientSlot,
}

impl Admission {
    pub(crate) fn new(max_connections: usize, per_client: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        let connections = Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)));
        Arc::new(Admission { connections, clients: ClientSlots::new(per_client), metrics })
    }

    /// Both slots for a connection from `peer`, or `None` (counted) if either limit is
    /// reached. The per-address slot is taken first, so a refused host never holds a
    /// global slot even for a moment.
    pub(crate) fn admit(&self, peer: SocketAddr) -> Option<Admitted> {
        let admitted = self.clients.try_acquire(peer.ip()).and_then(|client| {
            let connection = self.connections.clone().try_acquire_owned().ok()?;
            Some(Admitted { _connection: connection, _client: client })
        });
        if admitted.is_none() {
            Metrics::add(&self.metrics.device_connections_refused, 1);
            tracing::debug!(%peer, "device connection refused: max_connections or max_connections_per_client reached");
        }
        admitted
    }
}

/// Open connections by client address, capped at `per_client` each.
#[derive(Debug)]
pub(crate) struct ClientSlots {
    per_client: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`ClientSlots`]; released on drop.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    slots: Arc<ClientSlots>,
    addr: IpAddr,
}

impl ClientSlots {
    pub(crate) fn new(per_client: usize) -> Arc<Self> {
        Arc::new(ClientSlots { per_client: per_client.max(1), open: Mutex::new(HashMap::new()) })
    }

    /// A slot for one more connection from `addr`, or `None` if it already has `per_client`.
    pub(crate) fn try_acquire(self: &Arc<Self>, addr: IpAddr) -> Option<ClientSlot> {
        let addr = canonical(addr);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(addr).or_insert(0);
        if *count >= self.per_client {
            return None;
        }
        *count += 1;
        Some(ClientSlot { slots: self.clone(), addr })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.addr) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) counts as its IPv4 address.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_address_and_released_on_drop() {
        let slots = ClientSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.try_acquire(a).unwrap();
        let _second = slots.try_acquire(mapped).unwrap();
        assert!(slots.try_acquire(a).is_none());
        let _other = slots.try_acquire(b).unwrap();
        drop(first);
        assert!(slots.try_acquire(a).is_some());
        drop(_other);
        assert!(!slots.open.lock().unwrap().contains_key(&b));
    }
}
