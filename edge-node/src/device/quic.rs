//! QUIC for Linux devices: quinn, ALPN [`super::ALPN`], one request per bidirectional stream
//! (a frame each way, then the stream is finished), so a slow chunk batch never blocks a
//! metadata poll on the same connection.
//!
//! The certificate is self-signed and devices accept any certificate: every byte they
//! receive is verified against TUF metadata (from their pinned root) and chunk ids, so the
//! certificate would add nothing but a key to manage and rotate on every edge node. QUIC
//! here provides confidentiality of what a device fetches, flow control and congestion
//! control — not trust.
//!
//! A request that does not parse gets an `Error` response on its stream; the connection and
//! its other streams are unaffected. A stream whose request is not complete within
//! `request_timeout` is reset.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use protocol::wire::device::{frame_body_len, limits, ErrorCode, FRAME_HEADER_BYTES};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

use edge_client::SERVER_NAME;

use super::clients::{Admission, Admitted};
use super::quic_socket::ShortBatches;
use super::{Answer, DeviceBackend, DeviceGauge, DeviceServiceConfig, Shared};
use crate::metrics::Metrics;

const CERT_FILE: &str = "device-quic-cert.der";
const KEY_FILE: &str = "device-quic-key.der";

/// Application error code when the server closes or resets on its own initiative.
const CODE_STALLED: u32 = 1;

/// Send window per connection (see `bind_server`).
const SEND_WINDOW_BYTES: u64 = 8 << 20;

/// Larger UDP buffers than the kernel default, so a receiver busy for a moment does not
/// drop datagrams that congestion control then reads as loss (see `network::sockets`).
fn enlarge_socket_buffers(endpoint: &Endpoint) {
    if let Ok(addr) = endpoint.local_addr() {
        mesh::sockets::enlarge_udp_buffers(addr.port(), mesh::sockets::QUIC_SOCKET_BUFFER_BYTES);
    }
}

/// Loads the certificate from `dir` if both files exist, else generates one (and saves it
/// to `dir` if given). Blocking file IO: runs once at start.
fn certificate(dir: Option<&Path>) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    if let Some(dir) = dir {
        let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert.exists() && key.exists() {
            let cert = CertificateDer::from(std::fs::read(cert)?);
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(std::fs::read(key)?));
            return Ok((cert, key));
        }
    }
    let generated = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
    let cert = generated.cert.der().clone();
    let key_der = generated.key_pair.serialize_der();
    if let Some(dir) = dir {
        host::fs::write_atomic(&dir.join(KEY_FILE), &key_der, host::fs::PRIVATE)?;
        host::fs::write_atomic(&dir.join(CERT_FILE), &cert, host::fs::PUBLIC)?;
    }
    Ok((cert, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der))))
}

/// The device service's QUIC endpoint on `addr`, configured from `config`: public so
/// benchmarks can measure the transport as the service runs it (`examples/quic_ceiling.rs`).
pub fn bind_server(config: &DeviceServiceConfig, addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<Endpoint> {
    let (cert, key) = certificate(config.cert_dir.as_deref())?;
    let mut tls = rustls::ServerConfig::builder_with_provider(edge_client::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![super::ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(config.max_streams_per_connection))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(IdleTimeout::try_from(config.idle_timeout)?))
        // Unacknowledged bytes per connection. Larger windows (32 MiB) measured no faster
        // for one device and, with 200 devices, several times the peak RSS.
        .send_window(SEND_WINDOW_BYTES);
    // Devices advertise QUIC_MAX_DATAGRAM_BYTES; larger datagrams cut the per-byte cost of
    // encrypting and packetizing here (see that constant for why not larger still). quinn
    // also clamps the search to what the device advertised: older agents say 1,472.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(config.quic_max_datagram_bytes.clamp(1200, edge_client::QUIC_MAX_DATAGRAM_BYTES));
    transport.mtu_discovery_config(Some(mtu));
    server.transport_config(Arc::new(transport));
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime for the QUIC endpoint"))?;
    let socket = ShortBatches::wrap(runtime.wrap_udp_socket(std::net::UdpSocket::bind(addr)?)?, metrics);
    let endpoint = Endpoint::new_with_abstract_socket(quinn::EndpointConfig::default(), Some(server), socket, runtime)?;
    enlarge_socket_buffers(&endpoint);
    Ok(endpoint)
}

/// Accepts QUIC devices until the task is aborted.
pub(crate) async fn serve<B: DeviceBackend>(endpoint: Endpoint, shared: Arc<Shared<B>>, admission: Arc<Admission>) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                match admission.admit(incoming.remote_address()) {
                    Some(admitted) => {
                        tasks.spawn(connection(incoming, shared.clone(), admitted));
                    }
                    // Refused before the handshake: costs one packet, no crypto, no state.
                    None => incoming.refuse(),
                }
            }
            Some(_) = tasks.join_next() => {}
        }
    }
}

async fn connection<B: DeviceBackend>(incoming: quinn::Incoming, shared: Arc<Shared<B>>, _admitted: Admitted) {
    let peer = incoming.remote_address();
    let connection = match timeout(shared.config.request_timeout, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => return tracing::debug!(%peer, %error, "device quic handshake failed"),
        Err(_) => return tracing::debug!(%peer, "device quic handshake timed out"),
    };
    let _gauge = DeviceGauge::new(shared.metrics.clone());
    // Stream tasks live here so they end with the connection; quinn's stream limit bounds
    // how many exist at once.
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(stream(send, recv, peer, shared.clone()));
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "device quic connection ended");
                    break;
                }
            },
            Some(_) = streams.join_next() => {}
        }
    }
}

async fn stream<B: DeviceBackend>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: SocketAddr,
    shared: Arc<Shared<B>>,
) {
    let deadline = Instant::now() + shared.config.request_timeout;
    let request = async {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        recv.read_exact(&mut header).await.map_err(|_| None)?;
        let len = frame_body_len(header, limits::MAX_REQUEST_BYTES).map_err(Some)?;
        // `len` is at most MAX_REQUEST_BYTES: checked before this allocation.
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await.map_err(|_| None)?;
        Ok(body)
    };
    let answer = match timeout_at(deadline, request).await {
        Ok(Ok(body)) => shared.answer(peer, &body).await,
        Ok(Err(Some(error))) => Answer::error(ErrorCode::for_request_error(error)),
        Ok(Err(None)) => return, // the peer reset or closed; nothing to answer
        Err(_) => {
            let _ = recv.stop(VarInt::from_u32(CODE_STALLED));
            let _ = send.reset(VarInt::from_u32(CODE_STALLED));
            return tracing::debug!(%peer, "device quic request stalled; stream reset");
        }
    };
    // Written and acknowledged within the response timeout; the answer (and the memory
    // budget it holds) lives until the device has acknowledged every byte, because until
    // then quinn keeps a copy in its send buffer.
    let mut answer = answer;
    let deliver = async {
        // Handed to quinn without a copy: the frame's buffers (for a chunk batch, the chunks'
        // stored bytes themselves) are the send buffer.
        let len = answer.len() as u64;
        let mut frame = std::mem::take(&mut answer.frame);
        send.write_all_chunks(&mut frame).await?;
        Metrics::add(&shared.metrics.bytes_out_devices, len);
        let _ = send.finish();
        let _ = send.stopped().await;
        Ok::<(), quinn::WriteError>(())
    };
    match timeout(shared.config.response_timeout, deliver).await {
        Ok(Ok(())) => drop(answer),
        Ok(Err(error)) => tracing::debug!(%peer, %error, "device quic write failed"),
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(CODE_STALLED));
        }
    }
}
