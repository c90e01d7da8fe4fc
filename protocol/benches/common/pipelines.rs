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

/// Blake3 over as many slices as there are cores, one thread each: the same work as
/// [`raw_blake3`] spread like the parallel pipeline below, for comparing like with like.
pub fn raw_blake3_all_cores(image: &[u8]) -> u64 {
    let per_thread = image.len().div_ceil(threads()).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = image
            .chunks(per_thread)
            .map(|slice| scope.spawn(move || ChunkId(*blake3::hash(slice).as_bytes())))
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("hash thread")).fold(0, |acc, id| fold(acc, &id))
    })
}

/// Chunk boundaries only (`spans`), shared by the chunk-and-hash pipelines.
fn spans(image: &[u8], chunking: Chunking) -> Vec<ChunkSpan> {
    chunker::spans(image, chunking).expect("valid chunking")
}

/// The cores this machine offers.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs scan pieces on threads, as `seeder release add` does.
fn scan_on_threads(pieces: Vec<chunker::ScanPiece<'_>>) -> Vec<chunker::CutCandidates> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = pieces.into_iter().map(|piece| scope.spawn(move || piece.scan())).collect();
        handles.into_iter().map(|handle| handle.join().expect("scan thread")).collect()
    })
}

/// FastCDC cut points alone, from the `fastcdc` crate: what chunking cost before.
pub fn cut_points_crate(image: &[u8]) -> u64 {
    let Chunking::FastCdc { min_bytes, avg_bytes, max_bytes } = Chunking::DEFAULT_CDC else { unreachable!() };
    fastcdc::v2020::FastCDC::new(image, min_bytes, avg_bytes, max_bytes)
        .fold(0, |acc, c| acc.rotate_left(5) ^ c.offset as u64)
}

/// The `fastcdc` crate's cut points, then `ChunkId` per chunk: the pipeline before the
/// chunker found its own cut points.
pub fn chunk_and_hash_crate(image: &[u8]) -> u64 {
    let Chunking::FastCdc { min_bytes, avg_bytes, max_bytes } = Chunking::DEFAULT_CDC else { unreachable!() };
    fastcdc::v2020::FastCDC::new(image, min_bytes, avg_bytes, max_bytes)
        .fold(0, |acc, c| fold(acc, &ChunkId::of(&image[c.offset..][..c.length])))
}

/// FastCDC cut points alone, from the chunker on this thread.
pub fn cut_points(image: &[u8]) -> u64 {
    spans(image, Chunking::DEFAULT_CDC).iter().fold(0, |acc, s| acc.rotate_left(5) ^ s.offset)
}

/// Chunk with the scan on every core, then hash the chunks on every core, as `seeder release
/// add` chunks and hands chunks to its sealing workers. Like those workers, which take the
/// next chunk from a channel, each thread takes the next group of spans when it is done
/// with one: with halves fixed in advance, a core the host took away for a moment held the
/// other one idle at the end (the ratio swung from 0.77 to 0.87 between invocations).
pub fn chunk_and_hash_all_cores(image: &[u8], chunking: Chunking) -> u64 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// Spans per grab: a few MiB of work, so the shared counter is touched rarely.
    const GROUP: usize = 32;
    let spans = chunker::spans_with(image, chunking, threads(), scan_on_threads).expect("valid chunking");
    let groups: Vec<&[ChunkSpan]> = spans.chunks(GROUP).collect();
    let next = AtomicUsize::new(0);
    let mut hashed: Vec<(usize, Vec<ChunkId>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads())
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let g = next.fetch_add(1, Ordering::Relaxed);
                        let Some(group) = groups.get(g) else { return done };
                        done.push((g, group.iter().map(|s| ChunkId::of(piece(image, s))).collect()));
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|handle| handle.join().expect("hash thread")).collect()
    });
    // The checksum folds the ids in image order, whichever thread hashed them.
    hashed.sort_unstable_by_key(|(g, _)| *g);
    hashed.iter().flat_map(|(_, ids)| ids).fold(0, fold)
}

fn piece<'a>(image: &'a [u8], span: &ChunkSpan) -> &'a [u8] {
    &image[span.offset as usize..][..span.length as usize]
}

/// S-box CDC cut points alone, on this thread.
pub fn sbox_cut_points(image: &[u8]) -> u64 {
    spans(image, Chunking::DEFAULT_SBOX_CDC).iter().fold(0, |acc, s| acc.rotate_left(5) ^ s.offset)
}

/// Chunk as `seeder release add` reads a file: 8 MiB blocks copied into the chunker's buffer,
/// each scanned while it is still in cache, then `ChunkId` per chunk as it is cut.
pub fn stream_and_hash(image: &[u8], chunking: Chunking) -> u64 {
    let mut acc = 0;
    chunker::stream_chunks::<_, std::io::Error>(image, chunking, |chunk| {
        acc = fold(acc, &ChunkId::of(&chunk.data));
        Ok(())
    })
    .expect("in-memory reads do not fail");
    acc
}

/// `ChunkId` per span, the cut points already known.
pub fn hash_spans(image: &[u8], spans: &[ChunkSpan]) -> u64 {
    spans.iter().fold(0, |acc, s| fold(acc, &ChunkId::of(piece(image, s))))
}

/// Chunk, then `ChunkId` per chunk: the cost of content addressing alone.
pub fn chunk_and_hash(image: &[u8], chunking: Chunking) -> u64 {
    hash_spans(image, &spans(image, chunking))
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
        ("raw blake3 (all cores, slices)", raw_blake3_all_cores),
        ("FastCDC cut points, fastcdc crate", cut_points_crate),
        ("FastCDC cut points (1 core)", cut_points),
        ("fastcdc crate + ChunkId (1 core)", chunk_and_hash_crate),
        ("FastCDC 16/64/256K + ChunkId (1 core)", |d| chunk_and_hash(d, Chunking::DEFAULT_CDC)),
        ("FastCDC + ChunkId (all cores)", |d| chunk_and_hash_all_cores(d, Chunking::DEFAULT_CDC)),
        ("S-box CDC cut points (1 core)", sbox_cut_points),
        ("S-box CDC 16/64/256K + ChunkId (1 core)", |d| chunk_and_hash(d, Chunking::DEFAULT_SBOX_CDC)),
        ("S-box CDC streamed + ChunkId (1 core)", |d| stream_and_hash(d, Chunking::DEFAULT_SBOX_CDC)),
        ("FastCDC streamed + ChunkId (1 core)", |d| stream_and_hash(d, Chunking::DEFAULT_CDC)),
        ("S-box CDC + ChunkId (all cores)", |d| chunk_and_hash_all_cores(d, Chunking::DEFAULT_SBOX_CDC)),
        ("Fixed 64K + ChunkId", |d| chunk_and_hash(d, FIXED_64K)),
        ("FastCDC + zstd 3 + ChunkId", |d| chunk_and_seal(d, Chunking::DEFAULT_CDC, Some(3), None)),
        ("FastCDC + encrypt + ChunkId", |d| chunk_and_seal(d, Chunking::DEFAULT_CDC, None, Some(&BENCH_KEY))),
        ("FastCDC + zstd 3 + encrypt + ChunkId", |d| {
            chunk_and_seal(d, Chunking::DEFAULT_CDC, Some(3), Some(&BENCH_KEY))
        }),
    ]
}
