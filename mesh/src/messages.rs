//! The mesh's wire messages: parsed and encoded by [`protocol::mesh_wire`], where every parser
//! of bytes from the network lives (bounded and fuzzed); re-exported for the network layer.

pub use protocol::mesh_wire::*;
