//! Prints each publishing pipeline's throughput and its ratio to raw blake3, all measured in
//! this one process (best of 3), because on shared 2-core machines only same-run ratios
//! are comparable. Run through `scripts/bench-pipeline` (release build).
//!
//! `cargo run --release -p protocol --example pipeline_ratio [-- IMAGE_MIB [FILTER]]` (default
//! 256 MiB, every pipeline); FILTER keeps the pipelines whose names contain it, plus the
//! baseline, e.g. to profile one of them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use protocol::chunker::Chunking;

#[path = "../benches/common/pipelines.rs"]
mod pipelines;

const RUNS: usize = 3;

fn best_of(runs: usize, mut run: impl FnMut() -> u64) -> Duration {
    let mut checksum = None;
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            let sum = black_box(run());
            let elapsed = start.elapsed();
            // Deterministic pipelines must produce the same output every time.
            assert!(
                checksum.replace(sum).is_none_or(|previous| previous == sum),
                "pipeline output changed between runs"
            );
            elapsed
        })
        .min()
        .expect("at least one run")
}

fn main() {
    let mib: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().unwrap_or_else(|_| panic!("IMAGE_MIB must be a number, got {arg:?}")),
        None => 256,
    };
    let image = pipelines::image(mib << 20);
    let gib = image.len() as f64 / (1u64 << 30) as f64;
    println!("image: {mib} MiB (half incompressible, half low-entropy 4 KiB blocks), best of {RUNS}");
    println!("{:<40} {:>9} {:>12}", "pipeline", "GiB/s", "vs blake3");
    let mut baseline = None;
    let filter = std::env::args().nth(2).unwrap_or_default();
    for (index, (name, run)) in pipelines::all().into_iter().enumerate() {
        if index > 0 && !name.contains(filter.as_str()) {
            continue;
        }
        let rate = gib / best_of(RUNS, || run(black_box(&image))).as_secs_f64();
        let base = *baseline.get_or_insert(rate);
        println!("{name:<40} {rate:>9.3} {:>11.3}x", rate / base);
    }
    // What content addressing costs once the cut points are known: blake3 per chunk loses
    // SIMD width on each chunk's last partial 16 KiB, so chunks of varying length hash slower
    // than the same bytes in one piece. No chunker can make its pipeline faster than this.
    for (name, chunking) in [
        ("ChunkId alone, FastCDC chunks", Chunking::DEFAULT_CDC),
        ("ChunkId alone, S-box CDC chunks", Chunking::DEFAULT_SBOX_CDC),
    ] {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let spans = protocol::chunker::spans(&image, chunking).expect("valid chunking");
        let rate = gib / best_of(RUNS, || pipelines::hash_spans(black_box(&image), &spans)).as_secs_f64();
        let base = baseline.unwrap_or(rate);
        println!("{name:<40} {rate:>9.3} {:>11.3}x", rate / base);
    }
    for (name, chunking) in [
        ("FastCDC 16/64/256K", Chunking::DEFAULT_CDC),
        ("S-box CDC 16/64/256K", Chunking::DEFAULT_SBOX_CDC),
        ("Fixed 64K", pipelines::FIXED_64K),
    ] {
        println!("manifest bytes per GiB, {name}: {:.0}", pipelines::manifest_bytes_per_gib(&image, chunking));
    }
}
