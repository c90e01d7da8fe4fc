//! The chunk store: the one owner of how chunk bodies lie on disk, shared by the edge
//! node's cache and the seeder (which writes a release's chunks and, as the origin, serves
//! them to the mesh). No networking here: the mesh crate serves requests from it.
//!
//! - [`layout`]: `chunks/ab/<64 hex>`, the 256 fan-out directories, which names are chunks
//!   and which are hidden work files. Every path to a chunk file is made here.
//! - [`packs`]: an edge node's bodies, appended to a few large files with an index in
//!   memory rebuilt from their record headers at open.
//! - [`ChunkStore`]: verified reads (each body hashed against its id once per process),
//!   staging in memory, batched crash-safe writes, sizing without reading; over pack files
//!   (an edge node) or the file tree (the origin, read only).
//! - [`repo_files`]: files of a TUF repository tree (`metadata/`, `targets/`) by the names
//!   peers and devices ask for, each name checked before it touches the filesystem.
#![deny(missing_docs)]

pub mod layout;
pub mod packs;
pub mod repo_files;
mod store;
pub mod testing;

pub use store::{BodyOnDisk, Check, ChunkStore, OnDamage, ReadError};
