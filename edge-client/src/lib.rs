//! The device side of an otamesh edge node's device service: what a Linux gateway's agent,
//! tests and benchmarks use to ask an edge node for TUF metadata, manifests and chunk
//! batches, over QUIC (ALPN [`ALPN`]) or framed TCP. The messages are
//! [`protocol::wire::device`]; the edge node's server side lives in `edge-node`.
//!
//! Its own crate so the device agent links quinn, rustls and tokio but not the edge node's
//! libp2p, sled and HTTP stacks.
//!
//! Trust: none is placed in this layer. Devices verify TUF metadata from their pinned root
//! and every chunk against its id, so the QUIC certificate is self-signed on the edge node
//! and accepted here unchecked (the handshake signature is still checked): QUIC gives
//! confidentiality of what a device asks for, congestion and flow control, not
//! authenticity.

mod client;
pub mod mdns;
mod quic;
mod tcp;

pub use client::{ChunkBatch, ClientError, DeviceClient, StoredAt, Timeouts};
pub use quic::{bulk_udp_socket, crypto_provider, device_endpoint, QUIC_MAX_DATAGRAM_BYTES};

/// The QUIC application protocol name of the device service, version 1.
pub const ALPN: &[u8] = b"otamesh-device/1";

/// The server name devices put in the TLS handshake. Not checked (see the crate doc).
pub const SERVER_NAME: &str = "otamesh-edge";
