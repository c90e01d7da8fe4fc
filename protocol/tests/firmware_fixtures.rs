//! The fixtures `firmware/` embeds, generated here from fixed seeds: what an edge serves
//! the board agent for one release, and the trust anchor that release is sealed under.
//!
//! - `scripts/firmware-qemu` runs the agent (`otamesh_mcu::agent::run_once`) under QEMU
//!   against an in-memory edge that serves exactly these files, to measure its stack.
//! - `firmware/app` trusts `anchor.bin` when its build sets no `OTAMESH_ANCHOR`: a TEST
//!   anchor, whose private keys are the seeds below.
//!
//! The firmware crates cannot build them (they are `no_std` and have no signer or sealer),
//! so this test is their single source. Run with `OTAMESH_REGEN_FIXTURES=1` to (re)write
//! them; otherwise it fails when the committed files differ from what it would write, so a
//! change to a format cannot leave the firmware verifying stale bytes.

use std::path::PathBuf;

use ed25519_dalek::SigningKey;
use protocol::chunker::{Chunking, FixedSpans};
use protocol::codec::{self, ContentKey};
use protocol::device::sealed::{self, DeviceLimits};
use protocol::manifest::{ChunkEntry, ManifestView, ReleaseManifest};
use protocol::rollout::policy::{HealthGate, RolloutPolicy, RolloutState, Wave};
use protocol::rollout::RolloutRelease;
use protocol::seal::{seal, statement, KeySet, SealKind, TrustAnchor};
use sha2::Digest;

/// Two chunks, the second short: the download pads a tail to the flash's write size.
const IMAGE_BYTES: usize = 6001;
/// The board's chunk size (`firmware/app/src/sizes.rs`).
const CHUNK_BYTES: u32 = 4096;
/// The targets key the anchor pins (epoch 1) and the one a trust statement rotates to
/// (epoch 2): the seals carry that statement, so the agent under QEMU runs the deepest
/// verification there is — a statement's two signature checks inside a seal's.
const TARGETS_SEED: [u8; 32] = [0x5e; 32];
const NEXT_TARGETS_SEED: [u8; 32] = [0x5f; 32];
const ROLLOUTS_SEED: [u8; 32] = [0x6f; 32];
const CONTENT_KEY: [u8; 32] = [0xc7; 32];
/// The firmware app's defaults (`firmware/app/build.rs`).
const RELEASE: &str = "sensor-fw";
const HW_CLASS: &str = "nucleo-f767zi";
const VERSION: &str = "1.0.1";

struct Fixtures {
    anchor: Vec<u8>,
    policy: Vec<u8>,
    policy_seal: Vec<u8>,
    manifest: Vec<u8>,
    manifest_seal: Vec<u8>,
    /// Every stored chunk, in manifest order.
    chunks: Vec<u8>,
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

fn anchor(epoch: u32, targets_seed: &[u8; 32]) -> TrustAnchor {
    let targets = SigningKey::from_bytes(targets_seed).verifying_key().to_bytes();
    let rollouts = SigningKey::from_bytes(&ROLLOUTS_SEED).verifying_key().to_bytes();
    TrustAnchor { epoch, targets: KeySet::new(1, &[targets]).unwrap(), rollouts: KeySet::new(1, &[rollouts]).unwrap() }
}

fn generate() -> Fixtures {
    let image = image();
    let key = ContentKey(CONTENT_KEY);
    let mut entries = Vec::new();
    let mut chunks = Vec::new();
    for span in FixedSpans::new(image.len() as u64, CHUNK_BYTES) {
        let plain = &image[span.offset as usize..][..span.length as usize];
        let sealed = codec::seal(plain, None, Some(&key)).unwrap();
        entries.push(ChunkEntry {
            offset: span.offset,
            length: span.length,
            codec: sealed.codec,
            stored_length: sealed.stored.len() as u32,
            id: sealed.id,
        });
        chunks.extend_from_slice(&sealed.stored);
    }
    let manifest = ReleaseManifest {
        name: RELEASE.into(),
        version: VERSION.into(),
        hw_class: HW_CLASS.into(),
        security_counter: 3,
        image_len: image.len() as u64,
        image_blake3: *blake3::hash(&image).as_bytes(),
        image_sha256: sha2::Sha256::digest(&image).into(),
        content_key_id: Some(key.id()),
        chunking: Chunking::Fixed { size_bytes: CHUNK_BYTES },
        chunks: entries,
    }
    .encode()
    .unwrap();
    let policy = RolloutPolicy {
        id: format!("{RELEASE}-{VERSION}"),
        release: RolloutRelease { name: RELEASE.into(), version: VERSION.into(), hw_class: HW_CLASS.into() },
        seq: 1,
        waves: vec![Wave { cumulative_ppm: 1_000_000, min_soak_secs: 0 }],
        canaries: Vec::new(),
        health: HealthGate { max_failure_ppm: 50_000, min_reports: 1 },
        windows: Vec::new(),
        max_concurrent_per_site: 0,
        state: RolloutState::Running,
        current_wave: 0,
        wave_started_at: 0,
    }
    .encode()
    .unwrap();
    let targets = SigningKey::from_bytes(&TARGETS_SEED);
    let next_targets = SigningKey::from_bytes(&NEXT_TARGETS_SEED);
    let rollouts = SigningKey::from_bytes(&ROLLOUTS_SEED);
    let rotation = statement(&anchor(2, &NEXT_TARGETS_SEED), &[&targets, &next_targets]).unwrap();
    let chain = [rotation];
    Fixtures {
        anchor: anchor(1, &TARGETS_SEED).to_vec(),
        policy_seal: seal(SealKind::Policy, &policy, &chain, &[&rollouts]).unwrap(),
        manifest_seal: seal(SealKind::Manifest, &manifest, &chain, &[&next_targets]).unwrap(),
        policy,
        manifest,
        chunks,
        content_key: CONTENT_KEY.to_vec(),
    }
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../firmware/fixtures")
}

impl Fixtures {
    fn files(&self) -> [(&'static str, &[u8]); 7] {
        [
            ("anchor.bin", &self.anchor),
            ("policy.bin", &self.policy),
            ("policy.seal", &self.policy_seal),
            ("manifest.bin", &self.manifest),
            ("manifest.seal", &self.manifest_seal),
            ("chunks.bin", &self.chunks),
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

/// The agent under QEMU runs exactly these checks; passing them on the host means a failing
/// QEMU run points at the firmware build, not at the fixtures.
#[test]
fn fixtures_pass_the_device_pipeline() {
    let f = generate();
    let anchor = TrustAnchor::decode(&f.anchor).unwrap();
    let device = DeviceLimits {
        release: RELEASE,
        hw_class: HW_CLASS,
        max_image_bytes: 256 * 1024,
        max_chunks: 64,
        max_stored_chunk_bytes: CHUNK_BYTES + 40,
    };
    let (opened, policy) = sealed::check_policy(&anchor, &device, &f.policy_seal, &f.policy).unwrap();
    assert!(opened.rotated && opened.anchor == self::anchor(2, &NEXT_TARGETS_SEED), "the seals rotate the anchor");
    let (_, view, offer) =
        sealed::check_manifest(&opened.anchor, &device, &policy, &f.manifest_seal, &f.manifest).unwrap();
    assert_eq!(offer.release.chunk_count, 2);
    let content_key = ContentKey(f.content_key.clone().try_into().unwrap());
    let mut image = Vec::new();
    let mut at = 0;
    for entry in view.chunks() {
        let mut stored = f.chunks[at..at + entry.stored_length as usize].to_vec();
        at += entry.stored_length as usize;
        image.extend_from_slice(codec::open_in_place(&entry, Some(&content_key), &mut stored).unwrap());
    }
    assert_eq!(at, f.chunks.len());
    assert_eq!(<[u8; 32]>::from(sha2::Sha256::digest(&image)), view.image_sha256());

    // And the pipeline must be able to say no: a manifest the seal does not speak for, a
    // chunk changed in flight.
    let mut tampered = f.manifest.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(sealed::check_manifest(&opened.anchor, &device, &policy, &f.manifest_seal, &tampered).is_err());
    let entry = view.chunk(0).unwrap();
    let mut stored = f.chunks[..entry.stored_length as usize].to_vec();
    stored[30] ^= 1;
    assert!(codec::open_in_place(&entry, Some(&content_key), &mut stored).is_err());
    let _ = ManifestView::new_checked(&f.manifest).unwrap();
}
