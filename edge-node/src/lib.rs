//! otamesh edge node: the daemon on factory gateways that caches release chunks near
//! devices. This library holds its parts so integration tests can drive them directly;
//! `main.rs` is the daemon.
//!
//! - [`network`]: the libp2p mesh (QUIC, TCP, identify, Kademlia, gossipsub, chunk and
//!   Have request-response). Its event loop never awaits the application.
//! - [`store`]: chunk bodies on disk, written crash-safely, verified before they are trusted.
//! - [`reverify`]: background re-verification of the store at a bounded byte rate.
//! - [`index`]: the store's inventory and LRU recency in sled, so restarts keep eviction order.
//! - [`metrics`]: counters for `/metrics` and `edge-node status`.
//! - [`cli`]: one `error:` line and exit code 1 for every command-line failure.
#![deny(missing_docs)]

pub mod daemon;
pub mod device;
pub mod http;
pub mod index;
pub mod metrics;
pub mod network;
pub mod origin;
pub mod repo_files;
pub mod reverify;
pub mod store;
