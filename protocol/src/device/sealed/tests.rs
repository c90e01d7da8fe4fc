use super::*;
use crate::chunker::Chunking;
use crate::codec::Codec;
use crate::manifest::{ChunkEntry, ReleaseManifest};
use crate::rollout::policy::{HealthGate, RolloutPolicy, RolloutState, Wave};
use crate::seal::{seal, statement, KeySet};
use crate::ChunkId;
use alloc::string::String;
use alloc::vec::Vec;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn anchor(epoch: u32, targets: &SigningKey, rollouts: &SigningKey) -> TrustAnchor {
    TrustAnchor {
        epoch,
        targets: KeySet::new(1, &[targets.verifying_key().to_bytes()]).unwrap(),
        rollouts: KeySet::new(1, &[rollouts.verifying_key().to_bytes()]).unwrap(),
    }
}

fn policy(version: &str, hw_class: &str) -> Vec<u8> {
    RolloutPolicy {
        id: alloc::format!("sensor-{version}"),
        release: RolloutRelease { name: "sensor".into(), version: version.into(), hw_class: hw_class.into() },
        seq: 1,
        waves: alloc::vec![Wave { cumulative_ppm: 1_000_000, min_soak_secs: 0 }],
        canaries: Vec::new(),
        health: HealthGate { max_failure_ppm: 50_000, min_reports: 1 },
        windows: Vec::new(),
        max_concurrent_per_site: 0,
        state: RolloutState::Running,
        current_wave: 0,
        wave_started_at: 0,
    }
    .encode()
    .unwrap()
}

fn manifest(version: &str, counter: u64, chunks: u32) -> Vec<u8> {
    let codec = Codec { zstd: false, encrypted: false };
    ReleaseManifest {
        name: "sensor".into(),
        version: version.into(),
        hw_class: "stm32f7".into(),
        security_counter: counter,
        image_len: u64::from(chunks) * 4096,
        image_blake3: [1; 32],
        image_sha256: [2; 32],
        content_key_id: None,
        chunking: Chunking::Fixed { size_bytes: 4096 },
        chunks: (0..chunks)
            .map(|i| ChunkEntry {
                offset: u64::from(i) * 4096,
                length: 4096,
                codec,
                stored_length: 4096,
                id: ChunkId([i as u8; 32]),
            })
            .collect(),
    }
    .encode()
    .unwrap()
}

const DEVICE: DeviceLimits<'static> = DeviceLimits {
    release: "sensor",
    hw_class: "stm32f7",
    max_image_bytes: 64 * 4096,
    max_chunks: 64,
    max_stored_chunk_bytes: 4096 + 40,
};

fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

#[test]
fn four_requests_lead_from_the_policy_seal_to_an_offer() {
    let (targets, rollouts) = (key(1), key(2));
    let pinned = anchor(1, &targets, &rollouts);
    let policy = policy("2.0.0", "stm32f7");
    let manifest = manifest("2.0.0", 5, 3);
    let policy_seal = seal(SealKind::Policy, &policy, &[], &[&rollouts]).unwrap();
    let manifest_seal = seal(SealKind::Manifest, &manifest, &[], &[&targets]).unwrap();
    let mut buffer = [0u8; MAX_PATH_BYTES];

    assert_eq!(policy_seal_path("sensor", &mut buffer).unwrap(), "rollouts/sensor.policy.sig");
    let asked = policy_request("sensor", &policy_seal, &mut buffer).unwrap();
    assert_eq!(asked, alloc::format!("rollouts/{}.sensor.policy", sha256_hex(&policy)));
    let (opened, view) = check_policy(&pinned, &DEVICE, &policy_seal, &policy).unwrap();
    assert!(!opened.rotated);
    assert_eq!(manifest_seal_path(&view, &mut buffer).unwrap(), "releases/sensor/2.0.0.manifest.sig");
    let asked = manifest_request(&view, &manifest_seal, &mut buffer).unwrap();
    assert_eq!(asked, alloc::format!("releases/sensor/{}.2.0.0.manifest", sha256_hex(&manifest)));
    let (_, manifest_view, offer) = check_manifest(&opened.anchor, &DEVICE, &view, &manifest_seal, &manifest).unwrap();
    assert_eq!((offer.release.security_counter, offer.release.chunk_count), (5, 3));
    assert_eq!(offer.release.id, ReleaseId::of_manifest(&manifest));
    assert_eq!((offer.hw_class.as_str(), manifest_view.version()), ("stm32f7", "2.0.0"));
}

#[test]
fn a_lying_or_mistaken_edge_is_refused_at_the_step_it_lies_in() {
    let (targets, rollouts, thief) = (key(1), key(2), key(9));
    let pinned = anchor(1, &targets, &rollouts);
    let policy = policy("2.0.0", "stm32f7");
    let policy_seal = seal(SealKind::Policy, &policy, &[], &[&rollouts]).unwrap();
    let (_, view) = check_policy(&pinned, &DEVICE, &policy_seal, &policy).unwrap();

    // A policy for another class, even validly sealed, is not this device's.
    let other_class = self::policy("2.0.0", "stm32h7");
    let other_seal = seal(SealKind::Policy, &other_class, &[], &[&rollouts]).unwrap();
    assert_eq!(check_policy(&pinned, &DEVICE, &other_seal, &other_class).err(), Some(SealedError::PolicyNotForDevice));
    // A policy sealed by a key nobody pinned, or by the targets key (the wrong role).
    for signer in [&thief, &targets] {
        let forged = seal(SealKind::Policy, &policy, &[], &[signer]).unwrap();
        assert_eq!(
            check_policy(&pinned, &DEVICE, &forged, &policy).err(),
            Some(SealedError::Seal(SealError::Threshold))
        );
    }
    // Another release's manifest under its own valid seal: not the one the policy names.
    let older = manifest("1.0.0", 4, 3);
    let older_seal = seal(SealKind::Manifest, &older, &[], &[&targets]).unwrap();
    assert_eq!(check_manifest(&pinned, &DEVICE, &view, &older_seal, &older).err(), Some(SealedError::ManifestNotNamed));
    // The named manifest with a thief's seal, or with another manifest's seal.
    let manifest = manifest("2.0.0", 5, 3);
    let forged = seal(SealKind::Manifest, &manifest, &[], &[&thief]).unwrap();
    assert_eq!(
        check_manifest(&pinned, &DEVICE, &view, &forged, &manifest).err(),
        Some(SealedError::Seal(SealError::Threshold))
    );
    assert_eq!(
        check_manifest(&pinned, &DEVICE, &view, &older_seal, &manifest).err(),
        Some(SealedError::Seal(SealError::WrongSubject))
    );
    // Garbage where a manifest should be.
    assert_eq!(
        check_manifest(&pinned, &DEVICE, &view, &seal(SealKind::Manifest, b"junk", &[], &[&targets]).unwrap(), b"junk")
            .err(),
        Some(SealedError::Manifest)
    );
    // A release bigger than the device's update partition is nothing to install, not a lie.
    let big = self::manifest("2.0.0", 5, 65);
    let big_seal = seal(SealKind::Manifest, &big, &[], &[&targets]).unwrap();
    let error = check_manifest(&pinned, &DEVICE, &view, &big_seal, &big).err().unwrap();
    assert_eq!(error, SealedError::TooBig);
    assert!(!error.blames_edge());
}

#[test]
fn a_rotated_targets_key_is_learnt_from_the_manifest_seal() {
    let (old, new, rollouts) = (key(1), key(3), key(2));
    let pinned = anchor(1, &old, &rollouts);
    let next = anchor(2, &new, &rollouts);
    let chain = alloc::vec![statement(&next, &[&old, &new]).unwrap()];
    let policy = policy("2.0.0", "stm32f7");
    let policy_seal = seal(SealKind::Policy, &policy, &chain, &[&rollouts]).unwrap();
    let (opened, view) = check_policy(&pinned, &DEVICE, &policy_seal, &policy).unwrap();
    assert_eq!(opened, Opened { anchor: next, rotated: true });
    let manifest = manifest("2.0.0", 5, 3);
    let manifest_seal = seal(SealKind::Manifest, &manifest, &chain, &[&new]).unwrap();
    assert!(check_manifest(&opened.anchor, &DEVICE, &view, &manifest_seal, &manifest).is_ok());
    assert!(check_manifest(&pinned, &DEVICE, &view, &manifest_seal, &manifest).is_ok());
}

#[test]
fn names_too_long_for_the_device_buffers_are_refused_not_truncated() {
    let long = "x".repeat(MAX_PATH_BYTES);
    let mut buffer = [0u8; MAX_PATH_BYTES];
    assert_eq!(policy_seal_path(&long, &mut buffer).err(), Some(SealedError::PathTooLong));
    let mut small = [0u8; 8];
    assert_eq!(policy_seal_path("sensor", &mut small).err(), Some(SealedError::PathTooLong));
}
