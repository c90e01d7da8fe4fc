//! The chunk store: the one owner of how chunk bodies lie on disk, shared by the edge
//! node's cache and the seeder (which writes a release's chunks and, as the origin, serves
//! them to the mesh). No networking here: the mesh crate serves requests from it.
//!
//! - [`layout`]: `chunks/ab/<64 hex>`, the 256 fan-out directories, which names are chunks
//!   and which are hidden work files. Every path to a chunk file is made here.
//! - [`ChunkStore`]: verified reads (each file hashed against its name once per process),
//!   staging in memory, batched crash-safe writes, sizing without reading.
//! - [`repo_files`]: files of a TUF repository tree (`metadata/`, `targets/`) by the names
//!   peers and devices ask for, each name checked before it touches the filesystem.
#![deny(missing_docs)]

pub mod layout;
pub mod repo_files;
mod store;

pub use store::{Check, ChunkStore, OnDamage, ReadError};
