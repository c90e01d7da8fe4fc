//! Connections per client address: one LAN host must not take the site's device slots.
//!
//! Why per address: `max_connections` (512) is sized for a site's devices, and a single host
//! that opens 512 connections (and never sends a request, or never reads its answers) would
//! otherwise lock every device out until the idle timeout. A device agent uses two
//! connections per edge node, so a small cap (default 8) leaves room for restarts while a
//! hostile host gets at most its share. The map holds an entry only while that address has a
//! connection, so it is bounded by `max_connections`.
//!
//! A device that resets (an MCU's power cycle, a killed agent) cannot close its connections;
//! the edge sees them only as idle until the idle timeout, and a few resets would fill the
//! address's share and lock the device out for minutes. So when an address is at its cap, a
//! new connection from it takes the place of its oldest connection that is idle — waiting
//! for a request, none in progress — which is told to close. Only connections that mark
//! themselves idle (framed TCP, between requests) can be replaced; a host can only ever
//! replace its own.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

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
    /// Its place in its address's share, through which it can be replaced while idle.
    pub(crate) client: ClientSlot,
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
            Some(Admitted { _connection: connection, client })
        });
        if admitted.is_none() {
            Metrics::add(&self.metrics.device_connections_refused, 1);
            tracing::debug!(%peer, "device connection refused: max_connections or max_connections_per_client reached");
        }
        admitted
    }
}

/// Open connections by client address, capped at `per_client` each, oldest first.
#[derive(Debug)]
pub(crate) struct ClientSlots {
    per_client: usize,
    open: Mutex<HashMap<IpAddr, Vec<Arc<SlotState>>>>,
    next_id: AtomicU64,
}

/// One connection's state, shared between its slot and the address's list.
#[derive(Debug)]
struct SlotState {
    id: u64,
    /// Waiting for a request: may be replaced by a newer connection from the same address.
    idle: AtomicBool,
    /// Set (and notified) when a newer connection took this one's place.
    replaced: AtomicBool,
    wake: Notify,
}

/// One connection's place in [`ClientSlots`]; released on drop.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    slots: Arc<ClientSlots>,
    addr: IpAddr,
    state: Arc<SlotState>,
}

impl ClientSlots {
    pub(crate) fn new(per_client: usize) -> Arc<Self> {
        Arc::new(ClientSlots {
            per_client: per_client.max(1),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// A slot for one more connection from `addr`. At the address's cap, its oldest idle
    /// connection is told to close and gives up its place; `None` if none is idle.
    pub(crate) fn try_acquire(self: &Arc<Self>, addr: IpAddr) -> Option<ClientSlot> {
        let addr = canonical(addr);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let list = open.entry(addr).or_default();
        if list.len() >= self.per_client {
            let oldest_idle = list.iter().position(|s| s.idle.load(Ordering::Acquire))?;
            let replaced = list.remove(oldest_idle);
            replaced.replaced.store(true, Ordering::Release);
            replaced.wake.notify_one();
            tracing::debug!(%addr, "device connection replaced by a newer one from the same address");
        }
        let state = Arc::new(SlotState {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            idle: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
            wake: Notify::new(),
        });
        list.push(state.clone());
        Some(ClientSlot { slots: self.clone(), addr, state })
    }
}

impl ClientSlot {
    /// Marks the connection as waiting for a request (replaceable) or busy with one.
    pub(crate) fn set_idle(&self, idle: bool) {
        self.state.idle.store(idle, Ordering::Release);
    }

    /// Completes once a newer connection from the same address has taken this one's place.
    pub(crate) async fn replaced(&self) {
        while !self.state.replaced.load(Ordering::Acquire) {
            self.state.wake.notified().await;
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = open.get_mut(&self.addr) {
            list.retain(|s| s.id != self.state.id);
            if list.is_empty() {
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

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_gives_its_place_to_a_new_one() {
        let slots = ClientSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let oldest = slots.try_acquire(a).unwrap();
        let busy = slots.try_acquire(a).unwrap();
        // Neither waits for a request: no place to take.
        assert!(slots.try_acquire(a).is_none());
        busy.set_idle(true);
        oldest.set_idle(true);
        let newest = slots.try_acquire(a).expect("the oldest idle connection gives way");
        tokio::time::timeout(std::time::Duration::from_secs(1), oldest.replaced()).await.expect("told to close");
        // The replaced slot no longer counts, and dropping it frees nothing twice.
        drop(oldest);
        assert_eq!(slots.open.lock().unwrap()[&a].len(), 2);
        busy.set_idle(false);
        newest.set_idle(false);
        assert!(slots.try_acquire(a).is_none(), "a busy connection was replaced");
        // Another address is untouched by all of this.
        assert!(slots.try_acquire("10.0.0.2".parse().unwrap()).is_some());
    }
}
