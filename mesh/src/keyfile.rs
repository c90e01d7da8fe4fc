//! The node's persistent libp2p identity. The key only names the node in the mesh (its
//! `PeerId`); it cannot authorize firmware, which only the seeder's keys do.

use std::{
    fs,
    io::{self, Read},
    path::Path,
};

use libp2p::identity::{KeyType, Keypair};

/// A protobuf-encoded ed25519 keypair is 68 bytes; anything much larger is not ours.
const MAX_KEY_FILE_BYTES: u64 = 1024;

/// Loads the node key from `path`, or creates one there if the file does not exist.
///
/// The file holds a protobuf-encoded ed25519 keypair. It is created with mode 0600, written
/// to a temporary file, fsynced and renamed into place (and the directory fsynced), so a
/// crash leaves either no key or a whole one, never a torn one that would change the
/// node's identity.
pub fn load_or_create_keypair(path: &Path) -> io::Result<Keypair> {
    match load_keypair(path)? {
        Some(keypair) => Ok(keypair),
        None => {
            let keypair = Keypair::generate_ed25519();
            save_keypair(path, &keypair)?;
            Ok(keypair)
        }
    }
}

/// Loads the node key from `path`; `None` if there is no such file. A start-up that may
/// still fail generates a key in memory and saves it with [`save_keypair`] only once it
/// succeeded, so a failed start leaves no key behind.
pub fn load_keypair(path: &Path) -> io::Result<Option<Keypair>> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "node key file is too large"));
    }
    let keypair = Keypair::from_protobuf_encoding(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("node key file: {e}")))?;
    if keypair.key_type() != KeyType::Ed25519 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "node key is not ed25519"));
    }
    Ok(Some(keypair))
}

/// Writes `keypair` to `path` (mode 0600, write-temp, fsync, rename, fsync the directory).
pub fn save_keypair(path: &Path, keypair: &Keypair) -> io::Result<()> {
    let bytes = keypair.to_protobuf_encoding().map_err(|e| io::Error::other(format!("encoding node key: {e}")))?;
    host::fs::write_atomic(path, &bytes, host::fs::PRIVATE)
}
