//! The demo's images: v1 looks like a filesystem (half compressible blocks, half
//! random), v2 rewrites three regions and inserts a config block, about 3% of the bytes.
//! A fixed seed makes every run publish the same bytes.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::rng::Rng;

/// Writes `v1.img` and `v2.img` of `mib` MiB into `dir`.
pub fn write(dir: &Path, mib: usize) -> Result<(PathBuf, PathBuf)> {
    let mut rng = Rng::new(7);
    let len = mib << 20;
    let mut image = Vec::with_capacity(len + 4096);
    let mut block = [0u8; 4096];
    let mut i = 0usize;
    while image.len() < len {
        if i.is_multiple_of(2) {
            // A compressible block: a short pattern repeated, like text or zeroed space.
            let mut pattern = [0u8; 64];
            fill(&mut rng, &mut pattern);
            for chunk in block.chunks_mut(64) {
                chunk.copy_from_slice(&pattern);
            }
        } else {
            fill(&mut rng, &mut block);
        }
        image.extend_from_slice(&block);
        i += 1;
    }
    image.truncate(len);
    let v1 = dir.join("v1.img");
    std::fs::write(&v1, &image)?;
    let region = len / 100;
    for at in [len / 8, len / 2, len * 7 / 8] {
        let end = (at + region).min(image.len());
        fill(&mut rng, &mut image[at..end]);
    }
    let insert_at = len / 4;
    image.splice(insert_at..insert_at, b"inserted config block ".iter().copied().cycle().take(2200));
    let v2 = dir.join("v2.img");
    std::fs::write(&v2, &image)?;
    Ok((v1, v2))
}

fn fill(rng: &mut Rng, bytes: &mut [u8]) {
    for chunk in bytes.chunks_mut(8) {
        let word = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// Writes `v3.img`: v2 with one more region rewritten (what changed does not matter; its
/// health check fails on every device).
pub fn write_v3(dir: &Path, v2: &Path) -> Result<PathBuf> {
    let mut image = std::fs::read(v2)?;
    let mut rng = Rng::new(11);
    let (at, len) = (image.len() / 3, image.len() / 100);
    fill(&mut rng, &mut image[at..at + len]);
    let v3 = dir.join("v3.img");
    std::fs::write(&v3, &image)?;
    Ok(v3)
}
