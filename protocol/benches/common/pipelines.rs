//! The publishing pipelines the benchmarks time, shared by `benches/pipeline.rs` (criterion)
//! and `examples/pipeline_ratio.rs` (one-shot ratios), so both measure the same code.
//!
//! Each pipeline returns a checksum over what it produced (chunk ids, stored lengths), which
//! the callers pass through `black_box`: the work cannot be optimized away, and a pipeline
//! that silently stopped hashing would change the checksum.

use protocol::chunker::{self, ChunkSpan, Chunking};
use protocol::codec::{self, ContentKey};
use protocol::manifest::{ChunkEntry, ReleaseManifest};
use protocol::ChunkId;

/// Fixed chunks of 64 KiB: the MCU-style chunking at the CDC average, for comparison.
pub const FIXED_64K: Chunking = Chunking::Fixed { size_bytes: 64 * 1024 };
/// The bench-only content key; its value does not matter, only that encryption runs.
pub const BENCH_KEY: ContentKey = ContentKey([0x42; 32]);

/// An image of `len` bytes from a xorshift64 generator: fast to make (a random-number crate
/// would dominate setup), deterministic, and mixed like a real filesystem image. Every other
/// 4 KiB block keeps only the low 4 bits of each byte, so zstd has something to compress
/// (about half of the image), while the rest is incompressible like already-compressed files.
pub fn image(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for (block_index, block) in out.chunks_mut(4096).enumerate() {
        let mask = if block_index % 2 == 0 { u64::MAX } else { 0x0F0F_0F0F_0F0F_0F0F };
        for word in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = (x & mask).to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
    out
}

/// Folds an id into a running checksum.
fn fold(acc: u64, id: &ChunkId) -> u64 {
    acc.rotate_left(5) ^ u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"))
}

/// The baseline: one `blake3::hash` over the whole image on one thread, what a plain
/// "hash the file" integrity check costs.
pub fn raw_blake3(image: &[u8]) -> u64 {
    fold(0, &ChunkId(*blake3::hash(image).as_bytes()))
}

/// Chunk boundaries only (`spans`), shared by the chunk-and-hash pipelines.
fn spans(image: &[u8], chunking: Chunking) -> Vec<ChunkSpan> {
    chunker::spans(image, chunking).expect("valid chunking")
}

fn piece<'a>(image: &'a [u8], span: &ChunkSpan) -> &'a [u8] {
    &image[span.offset as usize..][..span.length as usize]
}

/// Chunk, then `ChunkId` per chunk: the cost of content addressing alone.
pub fn chunk_and_hash(image: &[u8], chunking: Chunking) -> u64 {
    spans(image, chunking).iter().fold(0, |acc, s| fold(acc, &ChunkId::of(piece(image, s))))
}

/// Chunk, then seal each chunk (optional zstd, optional encryption) and hash the stored bytes:
/// what `seeder release add` does per chunk.
pub fn chunk_and_seal(image: &[u8], chunking: Chunking, zstd_level: Option<i32>, key: Option<&ContentKey>) -> u64 {
    spans(image, chunking).iter().fold(0, |acc, s| {
        let sealed = codec::seal(piece(image, s), zstd_level, key).expect("seal");
        fold(acc, &sealed.id) ^ sealed.stored.len() as u64
    })
}

/// Encoded manifest bytes per GiB of image for `chunking` (plaintext ids, no codec): the
/// metadata a device downloads before any chunk.
pub fn manifest_bytes_per_gib(image: &[u8], chunking: Chunking) -> f64 {
    let chunks: Vec<ChunkEntry> = spans(image, chunking)
        .iter()
        .map(|s| ChunkEntry {
            offset: s.offset,
            length: s.length,
            codec: codec::Codec::default(),
            stored_length: s.length,
            id: ChunkId::of(piece(image, s)),
        })
        .collect();
    let manifest = ReleaseManifest {
        name: "bench-image".into(),
        version: "1.0.0".into(),
        hw_class: "bench".into(),
        security_counter: 1,
        image_len: image.len() as u64,
        image_blake3: [0; 32],
        image_sha256: [0; 32],
        content_key_id: None,
        chunking,
        chunks,
    };
    let bytes = manifest.encode().expect("valid manifest").len();
    bytes as f64 * (1u64 << 30) as f64 / image.len() as f64
}

/// A named pipeline over an image, returning its checksum.
pub type Pipeline = (&'static str, fn(&[u8]) -> u64);

/// Every pipeline, baseline first.
pub fn all() -> Vec<Pipeline> {
    vec![
        ("raw blake3 (1 core)", raw_blake3),
        ("FastCDC 16/64/256K + ChunkId", |d| chunk_and_hash(d, Chunking::DEFAULT_CDC)),
        ("Fixed 64K + ChunkId", |d| chunk_and_hash(d, FIXED_64K)),
        ("FastCDC + zstd 3 + ChunkId", |d| chunk_and_seal(d, Chunking::DEFAULT_CDC, Some(3), None)),
        ("FastCDC + encrypt + ChunkId", |d| chunk_and_seal(d, Chunking::DEFAULT_CDC, None, Some(&BENCH_KEY))),
        ("FastCDC + zstd 3 + encrypt + ChunkId", |d| {
            chunk_and_seal(d, Chunking::DEFAULT_CDC, Some(3), Some(&BENCH_KEY))
        }),
    ]
}
