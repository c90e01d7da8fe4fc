//! The board's buffer sizes, shared by the app and the QEMU stack measurement
//! (`firmware/qemu` includes this file) so that both run the agent with the same buffers.
//!
//! Each is the bound of what it holds on this board, not a guess: ACTIVE is 256 KiB, so a
//! release the board can take has at most [`MAX_CHUNKS`] chunks of 4 KiB, and its manifest
//! is at most [`MANIFEST_BYTES`]. A release chunked finer is refused by
//! `protocol::device::sealed::check_manifest` (`TooBig`), or, when its manifest alone is
//! larger than the buffer, by the link (`TooLarge`) — both say "not for this device" rather
//! than overrunning anything.

use otamesh_mcu::layout::NUCLEO_F767ZI;
use protocol::manifest::limits as manifest;
use protocol::wire::device::{chunk_item_bytes, CHUNKS_HEADER_BYTES};

/// The chunk size releases for this board are cut in (`seeder release add --chunking fixed:4K`).
pub const CHUNK_PLAIN_BYTES: usize = 4096;
/// Most chunks of a release: ACTIVE in [`CHUNK_PLAIN_BYTES`] chunks (64).
pub const MAX_CHUNKS: u32 = NUCLEO_F767ZI.active.size_bytes / CHUNK_PLAIN_BYTES as u32;
/// A stored chunk: the plaintext plus the AEAD's 24-byte nonce and 16-byte tag.
pub const CHUNK_BYTES: usize = CHUNK_PLAIN_BYTES + 40;
/// A manifest's fixed part at its field limits (see `protocol::manifest`'s layout): magic,
/// format, flags; name, version, hw class with their length bytes; counter, image length,
/// blake3, sha256; content key id; chunking; chunk count.
const MANIFEST_HEADER_BYTES: usize = 4
    + 2
    + 2
    + (1 + manifest::MAX_NAME_BYTES)
    + (1 + manifest::MAX_VERSION_BYTES)
    + (1 + manifest::MAX_HW_CLASS_BYTES)
    + 8
    + 8
    + 32
    + 32
    + 16
    + (1 + 12)
    + 4;
/// The largest manifest of a release this board can hold (3388 bytes).
pub const MANIFEST_BYTES: usize = MANIFEST_HEADER_BYTES + MAX_CHUNKS as usize * manifest::ENTRY_BYTES;
/// Any seal (`protocol::seal::MAX_SEAL_BYTES`: four rotation statements of full key sets).
/// Seals are opened in the link buffer, which must hold one; there is no seal buffer.
pub const SEAL_BYTES: usize = protocol::seal::MAX_SEAL_BYTES;
/// Any rollout policy.
pub const POLICY_BYTES: usize = protocol::rollout::policy::limits::MAX_POLICY_BYTES;
/// A `Bytes` answer's body: kind byte and length before the file.
const BYTES_ANSWER_OVERHEAD: usize = 1 + 4;
/// The link's frame buffer: the largest answer this board asks for — a seal, a policy, a
/// manifest (as `Bytes`) or one chunk (as a one-item `Chunks` answer).
pub const LINK_BYTES: usize = max(
    max(BYTES_ANSWER_OVERHEAD + SEAL_BYTES, BYTES_ANSWER_OVERHEAD + POLICY_BYTES),
    max(BYTES_ANSWER_OVERHEAD + MANIFEST_BYTES, CHUNKS_HEADER_BYTES + chunk_item_bytes(CHUNK_BYTES)),
);
/// TCP receive window: 1 KiB, a quarter of a chunk answer in flight per round trip. Larger
/// is faster on a long path and costs RAM the budget (48 KiB) does not have; on the LAN an
/// MCU sits on, round trips are short. The agent reads each answer whole into the link
/// buffer, so the window bounds speed, not what can be received.
pub const TCP_RX_BYTES: usize = 1024;
/// TCP send buffer: requests are a path or one chunk range (under 300 bytes).
pub const TCP_TX_BYTES: usize = 512;

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}
