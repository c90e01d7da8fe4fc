//! Untrusted device-service frames, both directions: what any LAN client sends an edge node
//! (requests) and what any edge node sends a device (responses). Parsing never panics, stays
//! within the frame limits, and is the inverse of encoding: a body that parses re-encodes to
//! exactly itself (one encoding per message), so nothing a peer sends can mean two things.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::wire::device::{limits, split_frame, RequestView, ResponseView, FRAME_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&direction, body)) = data.split_first() else { return };
    if direction & 1 == 0 {
        if let Ok(request) = RequestView::parse(body) {
            let len = request.body_len().expect("a parsed request has a length");
            assert_eq!(len, body.len());
            let mut out = vec![0u8; FRAME_HEADER_BYTES + len];
            assert_eq!(request.emit(&mut out), Ok(FRAME_HEADER_BYTES + len));
            assert_eq!(&out[FRAME_HEADER_BYTES..], body, "re-encoding changed the request");
            assert_eq!(out[..FRAME_HEADER_BYTES], (len as u32).to_le_bytes());
        }
        let _ = split_frame(body, limits::MAX_REQUEST_BYTES);
    } else {
        if let Ok(response) = ResponseView::parse(body) {
            let len = response.body_len().expect("a parsed response has a length");
            assert_eq!(len, body.len());
            let mut out = vec![0u8; FRAME_HEADER_BYTES + len];
            assert_eq!(response.emit(&mut out), Ok(FRAME_HEADER_BYTES + len));
            assert_eq!(&out[FRAME_HEADER_BYTES..], body, "re-encoding changed the response");
            assert_eq!(out[..FRAME_HEADER_BYTES], (len as u32).to_le_bytes());
            if let protocol::wire::device::Response::Chunks { items } = response {
                assert!(items.iter().count() <= limits::MAX_RANGES);
            }
        }
        let _ = split_frame(body, limits::MAX_RESPONSE_BYTES);
    }
});
