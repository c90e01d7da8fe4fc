//! Throughput of the publishing pipeline against raw blake3, over a 256 MiB image.
//!
//! `cargo bench -p protocol --bench pipeline`. Samples are few and short so the run takes
//! about a minute and a half on a 2-core machine; compare pipelines by their ratio to the `raw blake3`
//! line of the same run (these machines are noisy), or use `scripts/bench-pipeline`, which
//! prints those ratios directly.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use protocol::chunker::Chunking;

#[path = "common/pipelines.rs"]
mod pipelines;

const IMAGE_BYTES: usize = 256 << 20;

fn pipeline(c: &mut Criterion) {
    let image = pipelines::image(IMAGE_BYTES);
    for (name, chunking) in [("FastCDC 16/64/256K", Chunking::DEFAULT_CDC), ("Fixed 64K", pipelines::FIXED_64K)] {
        // Not a timing, so criterion cannot report it; printed once per run instead.
        println!("manifest bytes per GiB, {name}: {:.0}", pipelines::manifest_bytes_per_gib(&image, chunking));
    }

    let mut group = c.benchmark_group("pipeline");
    group
        .throughput(Throughput::Bytes(IMAGE_BYTES as u64))
        // One iteration is 0.1–1 s; flat sampling keeps it at sample_size iterations
        // instead of criterion's default 1+2+…+n ramp.
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10));
    for (name, run) in pipelines::all() {
        group.bench_function(name, |b| b.iter(|| run(black_box(&image))));
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
