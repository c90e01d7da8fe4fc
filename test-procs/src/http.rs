//! The daemons' operations HTTP (`/status`, `/metrics`), read without an HTTP client crate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Most of a response read: a status document is a few KiB; more means something is wrong.
const RESPONSE_LIMIT_BYTES: u64 = 16 << 20;

/// GET `path` from an HTTP/1.1 server on `addr`; the body if it answered 200, `None` while
/// it does not answer (so it can drive [`crate::eventually`]).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.take(RESPONSE_LIMIT_BYTES).read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]);
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(response[split + 4..].to_vec())
}
