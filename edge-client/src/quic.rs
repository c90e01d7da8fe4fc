//! The QUIC transport, client side: quinn, ALPN [`crate::ALPN`], one request per
//! bidirectional stream (a frame each way), so a slow chunk batch never blocks a metadata
//! poll on the same connection.

use std::net::SocketAddr;
use std::sync::Arc;

use protocol::wire::device::{frame_body_len, limits, FRAME_HEADER_BYTES};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Endpoint, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::{ClientError, SERVER_NAME};

/// UDP buffers requested for the client socket: a device busy verifying a batch for a
/// moment must not drop datagrams that congestion control would read as loss. The kernel
/// caps it at `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;

/// The largest QUIC datagram (UDP payload) on the device path: the edge node's MTU discovery
/// probes up to it, and a device's endpoint says it takes that much.
///
/// Above quinn's 1,452 (one Ethernet frame) because both ends encrypt and packetize every
/// datagram in user space: where the path carries larger ones (loopback, a LAN with jumbo
/// frames), fewer datagrams cost less per byte. One device over loopback went from 0.70x to
/// 0.90x of curl from nginx over HTTPS (medians of three `scripts/bench-agent` runs). On a 1,500-byte path the larger probes are lost
/// (a few, again every ten minutes) and discovery settles at that path's limit; quinn
/// documents any upper bound as safe.
///
/// Not larger, for two reasons:
/// - quinn sizes an endpoint's receive buffers from it (64 coalesced datagrams in each of
///   32 slots): about 13 MB of address space at 6,500, 33 MB at 16,000, touched only by
///   large coalesced receives. The benchmark process holding 1,000 device endpoints peaked
///   at 12-15 GB with 16,000. Over loopback, 8,952 and 16,000 measured no faster.
/// - quinn sends up to ten datagrams in one GSO send, which may carry at most 65,507 bytes:
///   ten of 6,550 at most. A larger batch fails with `EMSGSIZE`, which quinn-udp drops
///   silently (it expects that only of probes); the losses trip black-hole detection, and
///   the connection then runs at 1,200 bytes. 8,952 in batches of ten measured slower
///   than 1,452 for that reason.
pub const QUIC_MAX_DATAGRAM_BYTES: u16 = 6_500;

/// The crypto provider, chosen explicitly (ring): a binary that also links aws-lc-rs (the
/// edge node, through libp2p) would otherwise leave rustls unable to pick one.
///
/// AES-128-GCM is preferred over ring's default AES-256-GCM: both ends of a bulk transfer
/// encrypt or decrypt every byte, AES-128 does 10 rounds per block instead of 14, and what
/// the session protects — chunks a device verifies against signed ids, ciphertext under the
/// content key — gains nothing from the longer key. Peers that offer only the others still
/// get them.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let preferred = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    provider.cipher_suites.sort_by_key(|suite| suite.suite() != preferred.suite());
    Arc::new(provider)
}

/// A UDP socket bound to `bind` with enlarged receive and send buffers, as QUIC bulk
/// transfer wants (see `SOCKET_BUFFER_BYTES`).
pub fn bulk_udp_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind(bind)?;
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: setsockopt reads a c_int from a live local; the socket is open. A failure
        // only leaves the kernel's default buffers.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                &SOCKET_BUFFER_BYTES as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok(socket)
}

/// Accepts any server certificate; still checks the handshake signature so the TLS session
/// is well-formed. See the module doc for why that is enough.
#[derive(Debug)]
struct AnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A device's QUIC endpoint for talking to an edge node at `addr`: an unbound UDP socket of
/// `addr`'s family with bulk buffers, and the device transport (TLS 1.3, ALPN [`crate::ALPN`],
/// any server certificate, windows that hold a whole batch). Public so benchmarks measure the
/// transport exactly as devices configure it.
pub fn device_endpoint(addr: SocketAddr) -> Result<Endpoint, ClientError> {
    let provider = crypto_provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Connect(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![crate::ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Connect(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    // A window that holds a whole 8 MiB batch lets one stream run at link speed on a LAN.
    transport.stream_receive_window(VarInt::from_u32(limits::MAX_RESPONSE_BYTES as u32 + 4096));
    transport.receive_window(VarInt::from_u32(4 * (limits::MAX_RESPONSE_BYTES as u32 + 4096)));
    // The device's own MTU discovery stays at quinn's default: it sends requests and
    // acknowledgements, which are small, and the edge node advertises quinn's 1,472 anyway.
    // (Probing from here as well, with the edge node's endpoint also taking 6,500, left the
    // node seeing each finished agent's connections close late in the benchmark, long
    // enough to fill its per-address connection limit.)
    client.transport_config(Arc::new(transport));
    let runtime = quinn::default_runtime().ok_or_else(|| ClientError::Connect("no async runtime".into()))?;
    let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config.max_udp_payload_size(QUIC_MAX_DATAGRAM_BYTES).map_err(|e| ClientError::Connect(e.to_string()))?;
    let mut endpoint = Endpoint::new(endpoint_config, None, bulk_udp_socket(bind)?, runtime)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Client side: an endpoint and a connection to `addr`.
pub(crate) async fn connect(addr: SocketAddr) -> Result<(Endpoint, quinn::Connection), ClientError> {
    let endpoint = device_endpoint(addr)?;
    let connecting = endpoint.connect(addr, SERVER_NAME).map_err(|e| ClientError::Connect(e.to_string()))?;
    let connection = connecting.await.map_err(|e| ClientError::Connect(e.to_string()))?;
    Ok((endpoint, connection))
}

/// Client side: one request on a new stream, one response body back.
pub(crate) async fn round_trip(connection: &quinn::Connection, frame: &[u8]) -> Result<Vec<u8>, ClientError> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| ClientError::Io(e.into()))?;
    send.write_all(frame).await.map_err(|e| ClientError::Io(e.into()))?;
    let _ = send.finish();
    let mut header = [0u8; FRAME_HEADER_BYTES];
    recv.read_exact(&mut header).await.map_err(read_error)?;
    let len = frame_body_len(header, limits::MAX_RESPONSE_BYTES).map_err(ClientError::Malformed)?;
    // Copied once, from quinn's received pieces.
    let mut body = crate::client::body_buffer(len)?;
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(piece)) => body.extend_from_slice(&piece.bytes),
            Ok(None) => return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Err(e) => return Err(ClientError::Io(e.into())),
        }
    }
    Ok(body)
}

fn read_error(error: quinn::ReadExactError) -> ClientError {
    match error {
        quinn::ReadExactError::FinishedEarly(_) => ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()),
        quinn::ReadExactError::ReadError(e) => ClientError::Io(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };

    /// AES-128-GCM first, and the other TLS 1.3 suites still offered behind it.
    #[test]
    fn the_provider_prefers_aes_128_gcm_and_keeps_the_other_suites() {
        let suites: Vec<_> = super::crypto_provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites.first(), Some(&TLS13_AES_128_GCM_SHA256.suite()));
        for other in [TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256] {
            assert!(suites.contains(&other.suite()), "{:?} dropped", other.suite());
        }
    }
}
