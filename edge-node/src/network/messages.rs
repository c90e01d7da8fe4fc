//! The mesh's wire messages: parsed and encoded by [`protocol::wire::mesh`], where every parser
//! of bytes from the network lives (bounded and fuzzed); re-exported for the network layer.

pub use protocol::wire::{mesh::*, ChunkRange};
