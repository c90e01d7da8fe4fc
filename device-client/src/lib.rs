//! otamesh device agents. For now: a TUF client over HTTP that drives `protocol::tuf`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod rsa_pss;
pub mod tuf_http;

/// The TUF limits and verifiers device-side clients use: the protocol defaults plus RSA-PSS,
/// so third-party repositories signed with RSA keys can be read.
pub fn tuf_config() -> protocol::tuf::Config {
    protocol::tuf::Config { verify_hook: Some(rsa_pss::verify_hook), ..protocol::tuf::Config::default() }
}
