//! otamesh edge node: the daemon on factory gateways that caches release chunks near
//! devices. This library holds its parts so integration tests can drive them directly;
//! `main.rs` is the daemon.
//!
//! The mesh itself (libp2p, the event loop, serving chunk batches) is the `mesh` crate and
//! the chunk store (pack files) is the `chunk-store` crate, both shared with the seeder's origin; the
//! daemon answers peers through its `mesh::Responder` (`daemon/serve.rs`).
//!
//! - [`daemon`]: `edge-node run`, the driver around `protocol::edge::FetchScheduler`.
//! - [`device`]: the device service (QUIC and framed TCP, mDNS advertisement).
//! - [`http`]: the operations server (TUF mirror, `/metrics`, `/status`) and its client.
//! - [`reverify`]: background re-verification of the store at a bounded byte rate.
//! - [`index`]: the store's inventory and LRU recency in sled, so restarts keep eviction order.
//! - [`metrics`]: counters for `/metrics` and `edge-node status`.
#![deny(missing_docs)]

pub mod daemon;
pub mod device;
pub mod http;
pub mod index;
pub mod metrics;
pub mod reverify;
