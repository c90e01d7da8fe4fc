//! The device service's UDP socket as quinn sees it: quinn's own, with shorter send batches
//! (GSO) once many devices are connected and datagrams are large.
//!
//! quinn keeps a transmit buffer per connection, for the connection's life, sized for one
//! batch of up to ten datagrams (and grown by doubling, so up to about twice that). At the
//! device path's 6,500-byte datagrams ([`edge_client::QUIC_MAX_DATAGRAM_BYTES`]) that is
//! 65-100 KB a device: with ten-datagram batches the node peaked at 277 MiB in
//! `scripts/bench-device`'s 1,000-device case, and with two at 239-251 MiB, against a
//! 256 MiB goal for a 128 MiB response budget.
//!
//! Short batches cost sends, though, and save nothing where datagrams stay small: on a
//! 1,500-byte LAN ten datagrams are only 14.5 KB. So batches stay full while at most
//! [`FULL_BATCHES_UP_TO`] devices are connected, and beyond that they shrink to about
//! [`BATCH_BYTES`] of the largest datagrams sent in a batch so far (MTU probes go out alone
//! and do not count): two at 6,500 bytes, ten at 1,452. Buffers keep their size, so the
//! worst case is `FULL_BATCHES_UP_TO` connections at up to about 100 KB (13 MB) plus about
//! 15-20 KB for each of the rest. The device count includes TCP devices, which only makes
//! batches short sooner.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::metrics::Metrics;

/// Connected devices up to which quinn's batches stay as long as the socket allows.
pub(crate) const FULL_BATCHES_UP_TO: u64 = 128;

/// The bytes a short batch aims at: ten datagrams of 1,452, quinn's default.
pub(crate) const BATCH_BYTES: usize = 14_520;

/// quinn's own largest batch.
const QUINN_BATCH_DATAGRAMS: usize = 10;

/// A socket that passes everything through and reports fewer datagrams per send, which is
/// what quinn sizes its batches (and their buffers) by, while many devices are connected.
/// Every method of quinn's `AsyncUdpSocket` is forwarded; one added to the trait later with
/// a default body would not be, so check this list when quinn is upgraded.
#[derive(Debug)]
pub(crate) struct ShortBatches {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Its `devices` gauge counts connected devices (both transports).
    metrics: Arc<Metrics>,
    /// The largest datagram sent in a batch so far (bytes).
    largest_batched: AtomicUsize,
}

impl ShortBatches {
    pub(crate) fn wrap(inner: Arc<dyn AsyncUdpSocket>, metrics: Arc<Metrics>) -> Arc<dyn AsyncUdpSocket> {
        Arc::new(ShortBatches { inner, metrics, largest_batched: AtomicUsize::new(0) })
    }

    /// Datagrams per batch once many devices are connected.
    fn short_batch(&self) -> usize {
        // Nothing batched yet (0): quinn's own batch.
        let largest = self.largest_batched.load(Relaxed);
        BATCH_BYTES.checked_div(largest).map_or(QUINN_BATCH_DATAGRAMS, |n| n.clamp(1, QUINN_BATCH_DATAGRAMS))
    }
}

impl AsyncUdpSocket for ShortBatches {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if let Some(size) = transmit.segment_size.filter(|size| *size < transmit.contents.len()) {
            // Read first: the maximum settles early, and a store on every send would bounce
            // the line between the threads that send.
            if size > self.largest_batched.load(Relaxed) {
                self.largest_batched.fetch_max(size, Relaxed);
            }
        }
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
            most.min(self.short_batch())
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

    fn batch(segment_size: usize, datagrams: usize) -> Vec<u8> {
        vec![0; segment_size * datagrams]
    }

    #[tokio::test]
    async fn batches_shorten_above_the_device_count_by_the_largest_batched_datagram() {
        let runtime = quinn::default_runtime().expect("tokio runtime");
        let inner = runtime.wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let metrics = Arc::new(Metrics::default());
        let socket = ShortBatches::wrap(inner.clone(), metrics.clone());
        let full = inner.max_transmit_segments().min(QUINN_BATCH_DATAGRAMS);
        assert_eq!(socket.max_transmit_segments(), inner.max_transmit_segments());
        assert_eq!(socket.max_receive_segments(), inner.max_receive_segments());
        assert_eq!(socket.may_fragment(), inner.may_fragment());
        assert_eq!(socket.local_addr().unwrap(), inner.local_addr().unwrap());
        metrics.devices.store(FULL_BATCHES_UP_TO + 1, Relaxed);
        // Nothing batched yet: quinn's own batch.
        assert_eq!(socket.max_transmit_segments(), full);
        let send = |contents: &[u8], segment_size: Option<usize>| {
            let transmit =
                Transmit { destination: sink.local_addr().unwrap(), ecn: None, contents, segment_size, src_ip: None };
            // The send itself may fail where GSO is missing; what was batched is recorded.
            let _ = socket.try_send(&transmit);
        };
        send(&batch(1_452, 4), Some(1_452));
        assert_eq!(socket.max_transmit_segments(), full, "1,452-byte datagrams keep full batches");
        // A lone large datagram (an MTU probe) does not count.
        send(&batch(6_500, 1), Some(6_500));
        send(&batch(6_500, 1), None);
        assert_eq!(socket.max_transmit_segments(), full);
        send(&batch(6_500, 2), Some(6_500));
        assert_eq!(socket.max_transmit_segments(), inner.max_transmit_segments().min(2));
        metrics.devices.store(FULL_BATCHES_UP_TO, Relaxed);
        assert_eq!(socket.max_transmit_segments(), inner.max_transmit_segments());
    }
}
