//! otamesh device agents. For now: a TUF client over HTTP that drives `protocol::tuf`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod tuf_http;
