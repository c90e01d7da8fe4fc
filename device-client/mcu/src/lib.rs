//! otamesh's MCU update agent.
//!
//! - [`agent`]: the install engine driven over all of the below, one boot at a time.
//! - [`edge_link`]: one framed connection to an edge node's device service over any
//!   `embedded-io-async` stream (embassy-net's `TcpSocket`), one buffer for both directions.
//! - [`find`]: the release a sealed rollout policy names for this device
//!   (`protocol::device::sealed`'s four checked requests).
//! - [`download`]: every chunk the progress record lacks, verified before it is written.
//! - [`layout`]: the flash map as checked data (bootloader state, active, DFU, agent).
//! - [`agent_store`]: the agent's record, trust anchor and chunk progress, power-cut safe.
//! - [`progress`]: the chunk bitmap's in-memory view.
//! - [`status_key`]: Ed25519 signing of status reports, small enough for the board.
//! - [`boot`]: embassy-boot partitions and the bootloader step over the layout.
//! - `file_flash` (feature `std`): a strict file-backed NOR flash with power-cut injection,
//!   for host tests and the `mcu-bootloader` binary.
//! - `host` (feature `host`): embassy-net on a TAP device with the MCU's buffer sizes, shared
//!   by the `mcu-agent` and `mcu-plain-download` binaries.
//!
//! The library is `no_std` and picks no embassy-time driver or tick rate: the final binary
//! (board firmware or host tool) does.

#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

pub mod agent;
pub mod agent_store;
pub mod boot;
pub mod download;
pub mod edge_link;
pub mod find;
pub mod layout;
pub mod progress;
pub mod status_key;

#[cfg(feature = "std")]
pub mod file_flash;

#[cfg(feature = "host")]
pub mod host;

/// The flash [`layout::HOST`] describes: 4-byte writes, 4 KiB sectors.
#[cfg(feature = "std")]
pub type HostFlash = file_flash::FileFlash<4, 4096>;
