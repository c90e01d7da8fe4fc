//! Both wire formats under random input: no bytes make a parser panic, whatever parses
//! re-encodes to exactly itself, and every message an honest node builds decodes back to
//! itself (encode → decode is the identity). The fuzz targets `device_wire` and `mesh_wire`
//! search the same properties far deeper; these run on every `cargo test`.

use proptest::prelude::*;
use protocol::wire::device::{self, ChunkItem, ChunkItems, ChunkRanges, ChunkStatus, RequestView, ResponseView};
use protocol::wire::mesh::{self, WireMessage};
use protocol::wire::{ChunkRange, RANGE_BYTES};
use protocol::{ChunkId, ReleaseId};

const HEADER: usize = device::FRAME_HEADER_BYTES;

fn chunk_id() -> impl Strategy<Value = ChunkId> {
    any::<[u8; 32]>().prop_map(ChunkId)
}

fn range() -> impl Strategy<Value = ChunkRange> {
    (chunk_id(), any::<u32>(), any::<u32>()).prop_map(|(id, offset, length)| ChunkRange { id, offset, length })
}

/// Mesh chunk requests within the limits: lengths small enough that any 256 of them fit
/// the batch budget.
fn mesh_request() -> impl Strategy<Value = mesh::ChunkRequest> {
    let small_range =
        (chunk_id(), any::<u32>(), 0u32..=32 * 1024).prop_map(|(id, offset, length)| ChunkRange { id, offset, length });
    (any::<[u8; 32]>(), proptest::collection::vec(small_range, 0..=mesh::MAX_RANGES_PER_REQUEST))
        .prop_map(|(release, chunks)| mesh::ChunkRequest { release: ReleaseId(release), chunks })
}

fn mesh_result() -> impl Strategy<Value = mesh::ChunkResult> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(mesh::ChunkResult::Ok),
        Just(mesh::ChunkResult::NotFound),
        Just(mesh::ChunkResult::Busy),
    ]
}

fn mesh_response() -> impl Strategy<Value = mesh::ChunkResponse> {
    proptest::collection::vec((chunk_id(), mesh_result()), 0..64).prop_map(|items| mesh::ChunkResponse {
        items: items.into_iter().map(|(id, result)| mesh::ChunkItem { id, result }).collect(),
    })
}

fn identity<M: WireMessage + PartialEq + std::fmt::Debug>(message: &M) -> Result<(), TestCaseError> {
    let bytes = message.encode().expect("a message within the limits encodes");
    prop_assert!(bytes.len() <= M::MAX_ENCODED_BYTES);
    prop_assert_eq!(&M::decode(&bytes).expect("its own encoding decodes"), message);
    Ok(())
}

fn reencodes<M: WireMessage>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(message) = M::decode(bytes) {
        prop_assert_eq!(message.encode().expect("a decoded message encodes"), bytes);
    }
    Ok(())
}

proptest! {
    #[test]
    fn mesh_messages_decode_to_what_was_encoded(
        request in mesh_request(),
        response in mesh_response(),
        release in any::<[u8; 32]>(),
        bitfield in proptest::collection::vec(any::<u8>(), 0..512),
        name in "[a-z0-9./]{0,64}",
        body in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
        reports in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..20),
        stored in any::<u32>(),
    ) {
        identity(&request)?;
        identity(&response)?;
        identity(&mesh::HaveRequest { release: ReleaseId(release) })?;
        identity(&mesh::HaveResponse { release: ReleaseId(release), bitfield })?;
        identity(&mesh::MetaRequest { name })?;
        identity(&mesh::MetaResponse { body })?;
        identity(&mesh::StatusBatch { reports })?;
        identity(&mesh::StatusAck { stored })?;
    }

    #[test]
    fn random_bytes_never_panic_a_mesh_decoder_and_what_decodes_reencodes_exactly(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        reencodes::<mesh::ChunkRequest>(&bytes)?;
        reencodes::<mesh::ChunkResponse>(&bytes)?;
        reencodes::<mesh::HaveRequest>(&bytes)?;
        reencodes::<mesh::HaveResponse>(&bytes)?;
        reencodes::<mesh::MetaRequest>(&bytes)?;
        reencodes::<mesh::MetaResponse>(&bytes)?;
        reencodes::<mesh::StatusBatch>(&bytes)?;
        reencodes::<mesh::StatusAck>(&bytes)?;
    }

    /// The same with the right kind byte in front, so the fields behind it get exercised.
    #[test]
    fn random_mesh_bodies_behind_a_valid_kind_never_panic(
        kind in 1u8..=8, bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let body: Vec<u8> = std::iter::once(kind).chain(bytes).collect();
        reencodes::<mesh::ChunkRequest>(&body)?;
        reencodes::<mesh::ChunkResponse>(&body)?;
        reencodes::<mesh::HaveRequest>(&body)?;
        reencodes::<mesh::HaveResponse>(&body)?;
        reencodes::<mesh::MetaRequest>(&body)?;
        reencodes::<mesh::MetaResponse>(&body)?;
        reencodes::<mesh::StatusBatch>(&body)?;
        reencodes::<mesh::StatusAck>(&body)?;
    }

    #[test]
    fn device_requests_decode_to_what_was_encoded(
        ranges in proptest::collection::vec(range(), 0..=device::limits::MAX_RANGES),
        status in proptest::collection::vec(any::<u8>(), 0..1024),
        device_key in any::<[u8; 32]>(),
    ) {
        for request in [
            device::Request::AskHold { rollout: "gw-2.0.0", device: device_key },
            device::Request::GetChunks { ranges: ChunkRanges::from_slice(&ranges) },
            device::Request::ReportStatus { body: &status },
            device::Request::GetMetadata { name: "3.snapshot.json" },
            device::Request::GetTarget { path: "releases/gw/1.0.0.manifest" },
        ] {
            let frame = request.to_frame().expect("a request within the limits encodes");
            prop_assert_eq!(RequestView::parse(&frame[HEADER..]).expect("its own encoding parses"), request);
        }
        prop_assert_eq!(RANGE_BYTES, 40);
    }

    #[test]
    fn device_responses_decode_to_what_was_encoded(
        items in proptest::collection::vec((chunk_id(), 0u8..3, proptest::collection::vec(any::<u8>(), 0..64)), 0..64),
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        code in any::<u16>(),
        retry_at in any::<i64>(),
    ) {
        let items: Vec<ChunkItem<'_>> = items
            .iter()
            .map(|(id, status, body)| ChunkItem {
                id: *id,
                status: match status {
                    0 => ChunkStatus::Ok(body),
                    1 => ChunkStatus::NotFound,
                    _ => ChunkStatus::Busy,
                },
            })
            .collect();
        for response in [
            device::Response::Chunks { items: ChunkItems::from_slice(&items) },
            device::Response::Bytes(&bytes),
            device::Response::NotFound,
            device::Response::Ack,
            device::Response::Error { code: device::ErrorCode(code) },
            device::Response::Hold(device::EdgeHoldAnswer::None),
            device::Response::Hold(device::EdgeHoldAnswer::SiteHalted),
            device::Response::Hold(device::EdgeHoldAnswer::ConcurrencyFull { retry_at }),
        ] {
            let frame = response.to_frame().expect("a response within the limits encodes");
            prop_assert_eq!(ResponseView::parse(&frame[HEADER..]).expect("its own encoding parses"), response);
        }
    }
}
