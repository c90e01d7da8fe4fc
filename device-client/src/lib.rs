//! otamesh device agents: the Linux agent (`device-client run|check|status`) that drives
//! `protocol::install::Engine`, plus a TUF client over HTTP and the tuf-conformance CLI.
//!
//! Module map: `agent` (the engine driver), `config`, `bootloader` (slot switching
//! backends), `edges` (edge ranking), `discovery` (edge nodes found by mDNS), `tuf_edge`
//! (TUF through an edge node), `fetch` (chunk reuse and parallel verified download), `slot`
//! (slot files and progress), `health` (trial checks), `status` (signed status reports), `rollout` (the
//! signed rollout policy's gate and the rollout fields of reports).
//! Every download decision (fetch plan, edge ranking and penalties, metadata sources,
//! release choice) is `protocol::device`'s; these modules are its IO drivers.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod agent;
pub mod bootloader;
pub mod config;
pub mod discovery;
pub mod edges;
pub mod fetch;
pub mod health;
pub mod rollout;
pub mod rsa_pss;
pub mod slot;
pub mod status;
pub mod tuf_edge;
pub mod tuf_http;

/// The TUF limits and verifiers device-side clients use: the protocol defaults plus RSA-PSS,
/// so third-party repositories signed with RSA keys can be read.
pub fn tuf_config() -> protocol::tuf::Config {
    protocol::tuf::Config { verify_hook: Some(rsa_pss::verify_hook), ..protocol::tuf::Config::default() }
}
