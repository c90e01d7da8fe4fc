//! The fixtures the `firmware/` size-check binary embeds, generated here from fixed seeds.
//!
//! The firmware crate cannot build them itself (it is `no_std` and has no signer, no
//! sealer), so this test is their single source. Run with `OTAMESH_REGEN_FIXTURES=1` to
//! (re)write them; otherwise it fails when the committed files differ from what it would
//! write, so a change to the manifest layout or the codec cannot leave the firmware
//! verifying stale bytes.

use std::path::PathBuf;

use ed25519_dalek::{Signer, SigningKey};
use protocol::chunker::{Chunking, FixedSpans};
use protocol::codec::{self, ContentKey};
use protocol::manifest::{ChunkEntry, ManifestView, ReleaseManifest};
use protocol::reassemble::ImageVerifier;
use protocol::sig::Ed25519PublicKey;
use sha2::Digest;

/// One fixed chunk: small enough to keep the firmware's flash image dominated by code, and
/// the smallest flash-page-aligned size the chunker accepts times four.
const IMAGE_BYTES: usize = 1024;
const SIGNING_SEED: [u8; 32] = [0x5e; 32];
const CONTENT_KEY: [u8; 32] = [0xc7; 32];

struct Fixtures {
    manifest: Vec<u8>,
    signature: Vec<u8>,
    chunk: Vec<u8>,
    public_key: Vec<u8>,
    content_key: Vec<u8>,
}

fn image() -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..IMAGE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn generate() -> Fixtures {
    let image = image();
    let key = ContentKey(CONTENT_KEY);
    let chunking = Chunking::Fixed { size_bytes: IMAGE_BYTES as u32 };
    let mut chunks = Vec::new();
    let mut stored = Vec::new();
    for span in FixedSpans::new(image.len() as u64, IMAGE_BYTES as u32) {
        let plain = &image[span.offset as usize..][..span.length as usize];
        let sealed = codec::seal(plain, None, Some(&key)).unwrap();
        chunks.push(ChunkEntry {
            offset: span.offset,
            length: span.length,
            codec: sealed.codec,
            stored_length: sealed.stored.len() as u32,
            id: sealed.id,
        });
        stored = sealed.stored;
    }
    assert_eq!(chunks.len(), 1, "the firmware embeds exactly one chunk");
    let manifest = ReleaseManifest {
        name: "sensor-fw".into(),
        version: "1.0.0".into(),
        hw_class: "stm32f4-demo".into(),
        security_counter: 3,
        image_len: image.len() as u64,
        image_blake3: *blake3::hash(&image).as_bytes(),
        image_sha256: sha2::Sha256::digest(&image).into(),
        content_key_id: Some(key.id()),
        chunking,
        chunks,
    }
    .encode()
    .unwrap();
    let signer = SigningKey::from_bytes(&SIGNING_SEED);
    Fixtures {
        signature: signer.sign(&manifest).to_bytes().to_vec(),
        public_key: signer.verifying_key().to_bytes().to_vec(),
        manifest,
        chunk: stored,
        content_key: CONTENT_KEY.to_vec(),
    }
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../firmware/fixtures")
}

impl Fixtures {
    fn files(&self) -> [(&'static str, &[u8]); 5] {
        [
            ("manifest.bin", &self.manifest),
            ("manifest.sig", &self.signature),
            ("chunk.bin", &self.chunk),
            ("pubkey.bin", &self.public_key),
            ("content.key", &self.content_key),
        ]
    }
}

#[test]
fn firmware_fixtures_are_current() {
    let fixtures = generate();
    let dir = fixtures_dir();
    if std::env::var_os("OTAMESH_REGEN_FIXTURES").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in fixtures.files() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, expected) in fixtures.files() {
        let path = dir.join(name);
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run OTAMESH_REGEN_FIXTURES=1 cargo test -p protocol --test firmware_fixtures",
                path.display()
            )
        });
        assert!(
            committed == expected,
            "{} is stale; run OTAMESH_REGEN_FIXTURES=1 cargo test -p protocol --test firmware_fixtures",
            path.display()
        );
    }
}

/// The firmware runs exactly these steps; checking them on the host means a failing
/// firmware run points at the firmware build, not at the fixtures.
#[test]
fn fixtures_pass_the_device_pipeline() {
    let f = generate();
    let view = ManifestView::new_checked(&f.manifest).unwrap();
    let key = Ed25519PublicKey::from_bytes(&f.public_key.clone().try_into().unwrap()).unwrap();
    key.verify(&f.manifest, &f.signature).unwrap();
    let entry = view.chunk(0).unwrap();
    let content_key = ContentKey(f.content_key.clone().try_into().unwrap());
    assert_eq!(view.content_key_id(), Some(content_key.id()));
    let mut stored = f.chunk.clone();
    let plain = codec::open_in_place(&entry, Some(&content_key), &mut stored).unwrap();
    let mut verifier = ImageVerifier::new();
    verifier.update(&entry, plain).unwrap();
    verifier.finish(&view).unwrap();

    // And the pipeline must be able to say no.
    let mut tampered = f.manifest.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(key.verify(&tampered, &f.signature).is_err());
    let mut stored = f.chunk.clone();
    stored[30] ^= 1;
    assert!(codec::open_in_place(&entry, Some(&content_key), &mut stored).is_err());
}
