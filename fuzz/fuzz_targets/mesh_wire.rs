//! Untrusted mesh messages (what any peer on the internet can send an edge node or the
//! origin): every decoder never panics, refuses anything over its limits, and is the inverse
//! of its encoder — a body that decodes re-encodes to exactly itself, so a message has one
//! meaning and an honest node never emits what a peer would refuse. A chunk response decoded
//! a piece at a time (as the codec streams it) gives exactly what the whole-body decoder gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::wire::chunk_pieces::decode_in_pieces;
use protocol::wire::mesh::{
    ChunkRequest, ChunkResponse, HaveRequest, HaveResponse, MetaRequest, MetaResponse, StatusAck, StatusBatch,
    WireMessage,
};

fn round_trip<M: WireMessage>(body: &[u8]) {
    assert!(body.len() <= M::MAX_ENCODED_BYTES || M::decode(body).is_err());
    if let Ok(message) = M::decode(body) {
        let encoded = message.encode().expect("a decoded message encodes");
        assert_eq!(encoded, body, "re-encoding changed the message");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 8 {
        0 => round_trip::<ChunkRequest>(body),
        1 => {
            round_trip::<ChunkResponse>(body);
            assert_eq!(decode_in_pieces(body).ok(), ChunkResponse::decode(body).ok(), "piecewise decoding disagrees");
        }
        2 => round_trip::<HaveRequest>(body),
        3 => round_trip::<HaveResponse>(body),
        4 => round_trip::<MetaRequest>(body),
        5 => round_trip::<MetaResponse>(body),
        6 => round_trip::<StatusBatch>(body),
        _ => round_trip::<StatusAck>(body),
    }
});
