//! The device service's UDP socket as quinn sees it: quinn's own, with shorter send batches
//! (GSO) once many devices are connected.
//!
//! quinn keeps a transmit buffer per connection, for the connection's life, sized for one
//! batch of up to ten datagrams. At the device path's 6,500-byte datagrams
//! ([`edge_client::QUIC_MAX_DATAGRAM_BYTES`]) that is 65 KB a device: with ten-datagram
//! batches the node peaked at 277 MiB in `scripts/bench-device`'s 1,000-device case, and
//! with two at 239-251 MiB, against a 256 MiB goal for a 128 MiB response budget.
//!
//! Short batches cost sends, though, where datagrams stay small: on a 1,500-byte LAN two
//! datagrams are 2.9 KB a send instead of 14.5 KB. So batches stay full while few devices
//! are connected, and above [`FULL_BATCHES_UP_TO`] devices they shrink to what keeps a
//! batch near [`BATCH_BYTES`] at the configured datagram bound. Buffers keep their size, so
//! the worst case is `FULL_BATCHES_UP_TO` connections with full buffers (8.3 MB at 6,500
//! bytes) plus short ones for the rest.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::metrics::Metrics;

/// Connected devices up to which quinn's batches stay as long as the socket allows.
pub(crate) const FULL_BATCHES_UP_TO: u64 = 128;

/// The bytes a short batch aims at: ten datagrams of 1,452, quinn's default.
pub(crate) const BATCH_BYTES: usize = 14_520;

/// A socket that passes everything through and reports fewer datagrams per send, which is
/// what quinn sizes its batches (and their buffers) by, while many devices are connected.
/// Every method of quinn's `AsyncUdpSocket` is forwarded; one added to the trait later with
/// a default body would not be, so check this list when quinn is upgraded.
#[derive(Debug)]
pub(crate) struct ShortBatches {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Its `devices` gauge counts connected devices (both transports).
    metrics: Arc<Metrics>,
    /// Datagrams per batch above `FULL_BATCHES_UP_TO` devices.
    short: usize,
}

impl ShortBatches {
    /// Wraps `inner` for a service whose datagrams are at most `max_datagram_bytes`.
    pub(crate) fn wrap(
        inner: Arc<dyn AsyncUdpSocket>,
        metrics: Arc<Metrics>,
        max_datagram_bytes: u16,
    ) -> Arc<dyn AsyncUdpSocket> {
        let short = (BATCH_BYTES / usize::from(max_datagram_bytes).max(1)).max(1);
        Arc::new(ShortBatches { inner, metrics, short })
    }
}

impl AsyncUdpSocket for ShortBatches {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        let most = self.inner.max_transmit_segments();
        if self.metrics.devices.load(Relaxed) > FULL_BATCHES_UP_TO {
            most.min(self.short)
        } else {
            most
        }
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_shorten_above_the_device_count_and_the_rest_passes_through() {
        let runtime = quinn::default_runtime().expect("tokio runtime");
        let inner = runtime.wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let metrics = Arc::new(Metrics::default());
        let socket = ShortBatches::wrap(inner.clone(), metrics.clone(), 6_500);
        assert_eq!(socket.max_transmit_segments(), inner.max_transmit_segments());
        assert_eq!(socket.max_receive_segments(), inner.max_receive_segments());
        assert_eq!(socket.may_fragment(), inner.may_fragment());
        assert_eq!(socket.local_addr().unwrap(), inner.local_addr().unwrap());
        metrics.devices.store(FULL_BATCHES_UP_TO + 1, Relaxed);
        assert_eq!(socket.max_transmit_segments(), inner.max_transmit_segments().min(2));
        // At quinn's default datagram size the short batch is quinn's whole batch.
        let default_size = ShortBatches::wrap(inner.clone(), metrics, 1_452);
        assert_eq!(default_size.max_transmit_segments(), inner.max_transmit_segments().min(10));
    }
}
