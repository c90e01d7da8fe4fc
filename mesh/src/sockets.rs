//! UDP socket buffers for the QUIC transport.
//!
//! libp2p-quic creates its UDP socket itself and leaves the kernel's default buffers
//! (`net.core.rmem_default`, ~208 KiB on Linux): a receiver that is busy for a millisecond
//! (hashing a batch, writing the store) overflows it, the kernel drops datagrams, and QUIC's
//! congestion control reads the drops as congestion and halves its window. Measured on
//! loopback: ~2% of datagrams dropped and 3–5× less throughput per connection. After a
//! listen address is bound we find that socket among our own descriptors (by type and
//! local port) and raise its buffers, as quinn recommends for bulk transfer. The kernel
//! caps the request at `net.core.rmem_max` / `wmem_max`; no privilege is needed.

/// Requested receive and send buffer per QUIC socket.
pub const QUIC_SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Raises SO_RCVBUF and SO_SNDBUF of this process's UDP sockets bound to local `port`;
/// returns how many sockets were changed. Linux only (reads `/proc/self/fd`); elsewhere
/// nothing happens.
pub fn enlarge_udp_buffers(port: u16, bytes: usize) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let mut changed = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<libc::c_int>().ok()) else { continue };
        if udp_port(fd) != Some(port) {
            continue;
        }
        let size = &bytes as *const libc::c_int as *const libc::c_void;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: setsockopt reads `len` bytes from `size`, a live c_int. On a descriptor
        // that is not (or no longer) a socket it fails with ENOTSOCK/EBADF, which we ignore.
        let ok = unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size, len) == 0
                && libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size, len) == 0
        };
        changed += usize::from(ok);
    }
    changed
}

/// The local port of `fd` if it is a UDP (datagram, inet) socket.
fn udp_port(fd: libc::c_int) -> Option<u16> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`, a live c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut kind as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 || kind != libc::SOCK_DGRAM {
        return None;
    }
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`, which is that large.
    let rc =
        unsafe { libc::getsockname(fd, &mut addr as *mut libc::sockaddr_storage as *mut libc::sockaddr, &mut len) };
    if rc != 0 {
        return None;
    }
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4 = unsafe { &*(&addr as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            Some(u16::from_be(v4.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6 = unsafe { &*(&addr as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
            Some(u16::from_be(v6.sin6_port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_enlarges_our_udp_socket() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        assert_eq!(enlarge_udp_buffers(port, 1 << 20), 1);
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(enlarge_udp_buffers(tcp.local_addr().unwrap().port(), 1 << 20), 0);
    }
}
