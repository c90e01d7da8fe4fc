//! Answering `GetChunks`: every request is sized against the budgets before any chunk body
//! is read.
//!
//! Why: a request names up to 256 ranges, and naming one 4 MiB chunk 256 times (or asking
//! 256 one-byte ranges of different 4 MiB chunks) used to read every body whole before the
//! response was sized, so one LAN client could make the node hold gigabytes. Now:
//! 1. distinct ids are collected (duplicates collapse to one size lookup and one read);
//! 2. their stored lengths come from the backend without reading ([`DeviceBackend::chunk_lens`]);
//! 3. each range is planned in order: a length of 0 means the rest of the stored chunk; an
//!    item is served only if the frame stays within `max_response_bytes`, the bodies to read
//!    stay within `max_response_bytes`, and frame plus reads fit what is left of
//!    `max_buffered_bytes`; the rest are `Busy` (ask again);
//! 4. frame plus reads are reserved from the global budget, then the bodies are read (each at
//!    most its sized length, or shared with the hot cache) and sent as they are: the frame is
//!    its small fields interleaved with the bodies (`ChunksPiecesBuilder`), never a copy of
//!    them. The reservation shrinks to what the answer holds (fields and bodies), which the
//!    transport keeps until the device has it.
//! 5. when the global budget is spent so that none of a request's chunks fit, the request
//!    waits in line for memory ([`DeviceServiceConfig::busy_wait`](super::DeviceServiceConfig))
//!    without holding a lookup slot, then is planned within what it got; only a request that
//!    waited that long in vain is answered `Busy`. With 1,000 devices against a 128 MiB
//!    budget, immediate `Busy` answers were 99 % of what the node did.

use std::collections::HashMap;

use bytes::Bytes;
use protocol::wire::{
    device::{
        chunk_item_bytes, ChunkRanges, ChunksPiecesBuilder, ErrorCode, CHUNKS_HEADER_BYTES, EMPTY_ITEM_BYTES,
        FRAME_HEADER_BYTES,
    },
    ChunkRange,
};
use protocol::ChunkId;

use super::{Answer, ChunkLookup, ChunkSize, DeviceBackend, Shared};
use crate::metrics::Metrics;

/// How one requested range is answered, decided before anything is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Bytes `start..end` of distinct chunk `chunk`, whose stored length is `len`.
    Serve {
        chunk: usize,
        len: u64,
        start: usize,
        end: usize,
    },
    NotFound,
    Busy,
}

/// The planned response: one plan per range, which distinct chunks to read, and the exact
/// bytes of the frame and of the reads.
#[derive(Debug)]
struct Sized {
    plans: Vec<Plan>,
    reads: Vec<(ChunkId, u64)>,
    /// Index into `reads` of each distinct chunk that is read.
    read_of: Vec<Option<usize>>,
    frame_bytes: usize,
    read_bytes: usize,
}

/// What one request may use.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Response body (`max_response_bytes`).
    max_body_bytes: usize,
    /// Chunk bodies read for it (also `max_response_bytes`).
    max_read_bytes: usize,
    /// Frame plus reads: what is left of `max_buffered_bytes`.
    available_bytes: usize,
}

/// Counts each requested range as a cache hit or miss.
fn count_lookups(metrics: &Metrics, chunk_of: &[usize], sizes: &[ChunkSize]) {
    for &chunk in chunk_of {
        match sizes.get(chunk).copied().unwrap_or(ChunkSize::Missing) {
            ChunkSize::Stored(_) => Metrics::add(&metrics.cache_hits, 1),
            ChunkSize::Missing => Metrics::add(&metrics.cache_misses, 1),
            ChunkSize::Busy => {}
        }
    }
}

/// Plans `ranges` given the sizes of their distinct chunks (`chunk_of[i]` indexes `ids` and
/// `sizes`) within `limits`.
fn plan(ranges: &[ChunkRange], chunk_of: &[usize], (ids, sizes): (&[ChunkId], &[ChunkSize]), limits: Limits) -> Sized {
    let Limits { max_body_bytes, max_read_bytes, available_bytes } = limits;
    let mut body = CHUNKS_HEADER_BYTES;
    let mut read_bytes = 0usize;
    let mut reads = Vec::new();
    let mut read_of = vec![None; ids.len()];
    let mut plans = Vec::with_capacity(ranges.len());
    for (i, (range, &chunk)) in ranges.iter().zip(chunk_of).enumerate() {
        // Room kept for the items after this one, which take at least a status byte each.
        let rest = (ranges.len() - i - 1) * EMPTY_ITEM_BYTES;
        let size = sizes.get(chunk).copied().unwrap_or(ChunkSize::Missing);
        let planned = match size {
            ChunkSize::Stored(len) => match usize::try_from(len).ok().and_then(|stored| range.bounds(stored)) {
                // Held, but the range is outside it.
                None => Plan::NotFound,
                Some(std::ops::Range { start, end }) => {
                    let item = chunk_item_bytes(end - start);
                    let extra_read =
                        if read_of[chunk].is_some() { 0 } else { usize::try_from(len).unwrap_or(usize::MAX) };
                    let new_body = body.saturating_add(item);
                    let new_read = read_bytes.saturating_add(extra_read);
                    let fits = new_body.saturating_add(rest) <= max_body_bytes
                        && new_read <= max_read_bytes
                        && (FRAME_HEADER_BYTES + new_body + rest).saturating_add(new_read) <= available_bytes;
                    if fits {
                        if read_of[chunk].is_none() {
                            read_of[chunk] = Some(reads.len());
                            reads.push((ids[chunk], len));
                        }
                        body = new_body;
                        read_bytes = new_read;
                        Plan::Serve { chunk, len, start, end }
                    } else {
                        Plan::Busy
                    }
                }
            },
            ChunkSize::Missing => Plan::NotFound,
            ChunkSize::Busy => Plan::Busy,
        };
        if !matches!(planned, Plan::Serve { .. }) {
            body += EMPTY_ITEM_BYTES;
        }
        plans.push(planned);
    }
    Sized { plans, reads, read_of, frame_bytes: FRAME_HEADER_BYTES + body, read_bytes }
}

/// Bytes of the chunk bodies read for one answer.
fn read_held_bytes(bodies: &[ChunkLookup]) -> usize {
    bodies.iter().map(|b| if let ChunkLookup::Found(bytes) = b { bytes.len() } else { 0 }).sum()
}

impl Sized {
    /// Frame plus reads: what answering this plan holds at its peak.
    fn cost(&self) -> usize {
        self.frame_bytes + self.read_bytes
    }

    fn serves(&self) -> usize {
        self.plans.iter().filter(|p| matches!(p, Plan::Serve { .. })).count()
    }
}

impl<B: DeviceBackend> Shared<B> {
    /// Answers a `GetChunks` (see the module doc).
    pub(super) async fn answer_chunks(&self, ranges: ChunkRanges<'_>) -> Answer {
        let ranges: Vec<ChunkRange> = ranges.iter().collect();
        let mut ids: Vec<ChunkId> = Vec::new();
        let mut index: HashMap<ChunkId, usize> = HashMap::with_capacity(ranges.len());
        let chunk_of: Vec<usize> = ranges
            .iter()
            .map(|r| {
                *index.entry(r.id).or_insert_with(|| {
                    ids.push(r.id);
                    ids.len() - 1
                })
            })
            .collect();
        // Held while sizes are looked up and bodies read: bounds disk reads and blocking
        // threads. Not held while waiting for memory, so waiting requests stall no one.
        let Ok(mut reading) = self.lookups.acquire().await else { return Answer::error(ErrorCode::BUSY) };
        let sizes = self.backend.chunk_lens(ids.clone()).await;
        count_lookups(&self.metrics, &chunk_of, &sizes);
        let max = self.config.max_response_bytes;
        let within = |available_bytes| {
            plan(
                &ranges,
                &chunk_of,
                (&ids, &sizes),
                Limits { max_body_bytes: max, max_read_bytes: max, available_bytes },
            )
        };
        let mut sized = within(self.memory.available_permits());
        let mut memory = self.reserve(sized.cost());
        // Nothing fits what is left of the budget (planned only then: the common case is
        // served at once): wait in line for what the whole request needs, then serve what
        // the memory received covers.
        let unserved = memory.is_none() || sized.serves() == 0;
        if let Some(needed) = unserved.then(|| within(usize::MAX)).filter(|all| all.serves() > 0).map(|all| all.cost())
        {
            drop(memory.take());
            drop(reading);
            let waited = self.wait_for_memory(needed).await;
            let Ok(again) = self.lookups.acquire().await else { return Answer::error(ErrorCode::BUSY) };
            reading = again;
            if let Some(mut got) = waited {
                sized = within(got.num_permits());
                let surplus = got.num_permits().saturating_sub(sized.cost());
                if surplus > 0 {
                    drop(got.split(surplus));
                }
                memory = Some(got);
            } else {
                sized = within(0);
            }
        }
        let _reading = reading;
        let Sized { mut plans, reads, read_of, frame_bytes, .. } = sized;
        if memory.is_none() {
            // Another request took the budget since it was looked at: nothing is read.
            for plan in plans.iter_mut().filter(|p| matches!(p, Plan::Serve { .. })) {
                *plan = Plan::Busy;
            }
        }
        let bodies = if memory.is_some() && !reads.is_empty() { self.backend.chunks(reads).await } else { Vec::new() };

        let mut builder = ChunksPiecesBuilder::<Bytes>::new();
        for (range, planned) in ranges.iter().zip(&plans) {
            let pushed = match *planned {
                Plan::Serve { chunk, len, start, end } => match read_of[chunk].and_then(|i| bodies.get(i)) {
                    Some(ChunkLookup::Found(bytes)) if bytes.len() as u64 == len => {
                        builder.push_ok(range.id, bytes.slice(start..end))
                    }
                    Some(ChunkLookup::Missing) => builder.push_not_found(range.id),
                    // Changed since it was sized, or being fetched.
                    _ => builder.push_busy(range.id),
                },
                Plan::NotFound => builder.push_not_found(range.id),
                Plan::Busy => builder.push_busy(range.id),
            };
            // Planned within the limits above, so pushing cannot fail; if it did, the client
            // would see a short batch, which it treats as a protocol error.
            if pushed.is_err() {
                return Answer::error(ErrorCode::INTERNAL);
            }
        }
        debug_assert!(builder.frame_len() <= frame_bytes);
        let pieces = builder.finish();
        // What the answer holds from here until the device has it: the small fields and the
        // bodies it sends from (a range keeps its whole chunk's buffer alive). Bodies the
        // hot cache also holds are counted again here: the bound stays conservative.
        let held: usize = pieces.fields.len() + read_held_bytes(&bodies);
        if let Some(memory) = memory.as_mut() {
            let surplus = memory.num_permits().saturating_sub(held);
            if surplus > 0 {
                drop(memory.split(surplus));
            }
        }
        let fields = Bytes::from(pieces.fields);
        let mut frame = Vec::with_capacity(pieces.pieces.len() * 2);
        for (run, body) in pieces.pieces {
            if !run.is_empty() {
                frame.push(fields.slice(run));
            }
            frame.extend(body.filter(|b| !b.is_empty()));
        }
        drop(bodies);
        Answer::from_parts(frame, memory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    /// Limits in MiB.
    fn limits(body_mib: usize, read_mib: usize, available_mib: usize) -> Limits {
        Limits { max_body_bytes: body_mib << 20, max_read_bytes: read_mib << 20, available_bytes: available_mib << 20 }
    }

    #[test]
    fn duplicates_are_read_once_and_zero_length_means_the_whole_chunk() {
        let mib = 1 << 20;
        let ranges = vec![ChunkRange::whole(id(1)); 256];
        let sized = plan(&ranges, &[0; 256], (&[id(1)], &[ChunkSize::Stored(mib)]), limits(8, 8, 256));
        assert_eq!(sized.reads, vec![(id(1), mib)]);
        let served = sized.plans.iter().filter(|p| matches!(p, Plan::Serve { .. })).count();
        // Each served copy carries 1 MiB in the frame: at most 7 fit 8 MiB with the rest Busy.
        assert_eq!(served, 7);
        assert!(sized.frame_bytes <= FRAME_HEADER_BYTES + (8 << 20));
        assert_eq!(sized.read_bytes, mib as usize);
    }

    #[test]
    fn reads_and_frame_are_charged_against_what_is_available() {
        let ranges: Vec<ChunkRange> = (0..4).map(|n| ChunkRange { id: id(n), offset: 0, length: 1 }).collect();
        let sizes = vec![ChunkSize::Stored(1 << 20); 4];
        // One-byte ranges of 1 MiB chunks: the reads are what costs, and 2.5 MiB allows two.
        let ids = [id(0), id(1), id(2), id(3)];
        let sized =
            plan(&ranges, &[0, 1, 2, 3], (&ids, &sizes), Limits { available_bytes: 5 << 19, ..limits(8, 8, 0) });
        assert_eq!(sized.reads.len(), 2);
        assert_eq!(sized.plans[2..], [Plan::Busy, Plan::Busy]);
        assert!(sized.frame_bytes + sized.read_bytes <= 5 << 19);
        // And a per-request read limit of 1 MiB allows one.
        let sized = plan(&ranges, &[0, 1, 2, 3], (&ids, &sizes), limits(8, 1, 256));
        assert_eq!(sized.reads.len(), 1);
    }
}
