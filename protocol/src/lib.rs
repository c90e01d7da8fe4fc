//! otamesh's sans-IO core.
//!
//! Everything a device, an edge node, the seeder and simnet must agree on lives here:
//! the content formats (chunk ids, chunkers, the release manifest, the chunk codec),
//! signature verification, and the TUF client workflow. Nothing in this crate touches a
//! socket, a file, the clock, a thread or a random source: time and bytes are inputs.
//!
//! Features:
//! - none: what an MCU needs — manifest views, fixed chunking, chunk verification and
//!   decryption, ed25519 strict verification, the rollout policy view and gate. No heap.
//! - `alloc`: owned manifests, canonical JSON, the TUF client, signed device status reports,
//!   the rollout controller and site guard.
//! - `std` (default): FastCDC, zstd, ECDSA P-256.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod chunk_id;
pub mod chunker;
pub mod codec;
pub mod device;
pub mod hex;
mod id_order;
pub mod install;
pub mod manifest;
pub mod reassemble;
pub mod release_id;
pub mod rollout;
pub mod seal;
pub mod sig;
pub mod status_writer;
pub mod time;
pub mod wire;
#[cfg(feature = "ring-aead")]
mod xchacha_ring;

#[cfg(feature = "alloc")]
pub mod edge;
#[cfg(feature = "alloc")]
pub mod status;
#[cfg(feature = "alloc")]
pub mod tuf;

pub use chunk_id::ChunkId;
pub use release_id::ReleaseId;
