//! Damage on disk, for the tests of this crate and of the crates that use the store: what
//! a failing disk or a tampering process does behind the store's back.

use crate::ChunkStore;
use protocol::ChunkId;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

/// Flips the lowest bit of byte `at` of `id`'s stored body in place and returns the body as
/// it now reads on disk. Panics if the chunk is not on disk: tests call it on chunks they
/// stored.
pub fn flip_stored_byte(store: &ChunkStore, id: &ChunkId, at: u64) -> Vec<u8> {
    let body = store.body_on_disk(id).expect("the chunk is stored on disk");
    assert!(at < body.len, "byte {at} is past the body's {} bytes", body.len);
    let file = OpenOptions::new().read(true).write(true).open(&body.path).expect("open the body's file");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, body.offset + at).expect("read the byte");
    file.write_all_at(&[byte[0] ^ 1], body.offset + at).expect("write the byte back flipped");
    let mut now = vec![0u8; body.len as usize];
    file.read_exact_at(&mut now, body.offset).expect("read the body back");
    now
}
