//! The simulated release: chunk ids and sizes, and how devices batch their requests.
//! Bodies are never materialized; a chunk is its id, its stored length and, in flight, a
//! flag saying whether someone tampered with it.

use protocol::edge::{ChunkSpec, ReleaseSpec};
use protocol::ChunkId;
use protocol::ReleaseId;

use crate::rng::Rng;
use crate::scenario::Scenario;

/// One device request: chunks `first..end` of the manifest.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// First chunk index.
    pub first: u32,
    /// One past the last chunk index.
    pub end: u32,
    /// Stored bytes.
    pub bytes: u64,
}

/// The release as every role sees it.
#[derive(Debug, Clone)]
pub struct Release {
    /// Its id.
    pub id: ReleaseId,
    /// What edge nodes are given (as after TUF and manifest checks).
    pub spec: ReleaseSpec,
    /// Total stored bytes.
    pub bytes: u64,
    /// Device batches in order.
    pub batches: Vec<Batch>,
    /// The batch of each chunk.
    pub batch_of: Vec<u32>,
}

/// Hardware class of the simulated fleet.
pub const HW_CLASS: &str = "sim-gateway";

impl Release {
    /// Chunk sizes vary like content-defined chunks (a quarter to four times the average),
    /// drawn from the run's seed; the total is exactly `release.bytes`.
    pub fn new(scenario: &Scenario, seed: u64) -> Release {
        let mut rng = Rng::stream(seed, 0x07e1_ea5e);
        let avg = scenario.release.chunk_avg_bytes as f64;
        let (min, max) = ((avg / 4.0).max(1.0) as u64, (avg * 4.0) as u64);
        let mut chunks = Vec::new();
        let mut left = scenario.release.bytes;
        let mut i: u64 = 0;
        while left > 0 {
            // 2^U, U uniform in [-2, 2], has mean 1.35: divide so the average is `avg`.
            let u = rng.f64() * 4.0 - 2.0;
            let len = ((avg * u.exp2() / 1.3525) as u64).clamp(min, max).min(left);
            let mut label = [0u8; 16];
            label[..8].copy_from_slice(&seed.to_le_bytes());
            label[8..].copy_from_slice(&i.to_le_bytes());
            chunks.push(ChunkSpec { id: ChunkId::of(&label), stored_len: len as u32 });
            left -= len;
            i += 1;
        }
        let mut batches = Vec::new();
        let mut batch_of = Vec::with_capacity(chunks.len());
        let mut first = 0u32;
        let mut bytes = 0u64;
        for (index, c) in chunks.iter().enumerate() {
            bytes += c.stored_len as u64;
            batch_of.push(batches.len() as u32);
            if bytes >= scenario.devices.batch_bytes || index + 1 == chunks.len() {
                batches.push(Batch { first, end: index as u32 + 1, bytes });
                first = index as u32 + 1;
                bytes = 0;
            }
        }
        let mut manifest_label = b"simnet release ".to_vec();
        manifest_label.extend_from_slice(&seed.to_le_bytes());
        manifest_label.extend_from_slice(scenario.name.as_bytes());
        Release {
            id: ReleaseId::of_manifest(&manifest_label),
            spec: ReleaseSpec { hw_class: HW_CLASS.into(), chunks },
            bytes: scenario.release.bytes,
            batches,
            batch_of,
        }
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.spec.chunks.len() as u32
    }
}
