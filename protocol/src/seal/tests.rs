use super::*;
use alloc::vec::Vec;
use ed25519_dalek::SigningKey;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(keys: &[&SigningKey]) -> Vec<[u8; 32]> {
    keys.iter().map(|k| k.verifying_key().to_bytes()).collect()
}

fn anchor(epoch: u32, threshold: u8, targets: &[&SigningKey], rollouts: &[&SigningKey]) -> TrustAnchor {
    TrustAnchor {
        epoch,
        targets: KeySet::new(threshold, &public(targets)).unwrap(),
        rollouts: KeySet::new(u8::from(!rollouts.is_empty()), &public(rollouts)).unwrap(),
    }
}

const MANIFEST: &[u8] = b"a manifest's bytes";

#[test]
fn seal_paths_name_a_manifest_or_a_policy() {
    assert_eq!(sealed_target_path("releases/gw/2.0.0.manifest.sig"), Some("releases/gw/2.0.0.manifest"));
    assert_eq!(sealed_target_path("rollouts/gw.policy.sig"), Some("rollouts/gw.policy"));
    assert_eq!(sealed_target_path("releases/gw/2.0.0.manifest"), None);
    assert_eq!(sealed_target_path("releases/gw/2.0.0.img.sig"), None);
    assert_eq!(sealed_target_path("rollouts/a/b.policy.sig"), None);
}

#[test]
fn a_content_name_is_the_consistent_snapshot_path_and_a_seal_names_its_subject() {
    let a = key(1);
    let sealed = seal(SealKind::Policy, b"policy bytes", &[], &[&a]).unwrap();
    let claimed = claimed_subject(&sealed).unwrap();
    let sha256: [u8; 32] = Sha256::digest(b"policy bytes").into();
    assert_eq!(claimed, ClaimedSubject { kind: Some(SealKind::Policy), len: 12, sha256 });
    let mut buffer = [0u8; 128];
    let name = content_name("rollouts/gw.policy", &sha256, &mut buffer).unwrap();
    assert_eq!(name, crate::tuf::hashed_target_path("rollouts/gw.policy", &crate::hex::encode(&sha256)));
    let name = content_name("top", &sha256, &mut buffer).unwrap();
    assert_eq!(name, crate::tuf::hashed_target_path("top", &crate::hex::encode(&sha256)));
    assert_eq!(content_name("rollouts/gw.policy", &sha256, &mut [0u8; 80]), None);
    assert_eq!(claimed_subject(&sealed[..20]), Err(SealError::Truncated));
    assert_eq!(claimed_subject(b"OTTA\x01........................................"), Err(SealError::BadMagic));
}

#[test]
fn an_anchor_round_trips_and_refuses_bad_key_sets() {
    let (a, b, r) = (key(1), key(2), key(3));
    let pinned = anchor(7, 2, &[&a, &b], &[&r]);
    let bytes = pinned.to_vec();
    assert_eq!(TrustAnchor::decode(&bytes), Ok(pinned));
    assert_eq!(TrustAnchor::decode(&bytes[..bytes.len() - 1]), Err(SealError::Truncated));
    assert_eq!(TrustAnchor::decode(&[bytes.as_slice(), &[0]].concat()), Err(SealError::Trailing));
    // No targets keys; a threshold above the count; a repeated key; too many keys.
    assert_eq!(KeySet::new(1, &[]), Err(SealError::Bounds));
    assert_eq!(KeySet::new(3, &public(&[&a, &b])), Err(SealError::Bounds));
    assert_eq!(KeySet::new(1, &public(&[&a, &a])), Err(SealError::Bounds));
    let nine: Vec<SigningKey> = (10..19).map(key).collect();
    assert_eq!(KeySet::new(1, &public(&nine.iter().collect::<Vec<_>>())), Err(SealError::Bounds));
    let no_targets = TrustAnchor { targets: KeySet::EMPTY, ..pinned }.to_vec();
    assert_eq!(TrustAnchor::decode(&no_targets), Err(SealError::Bounds));
}

#[test]
fn a_seal_opens_only_for_its_subject_kind_and_keys() {
    let (a, r, stranger) = (key(1), key(3), key(9));
    let pinned = anchor(1, 1, &[&a], &[&r]);
    let sealed = seal(SealKind::Manifest, MANIFEST, &[], &[&a]).unwrap();
    assert_eq!(open(&pinned, &sealed, SealKind::Manifest, MANIFEST), Ok(Opened { anchor: pinned, rotated: false }));
    assert_eq!(open(&pinned, &sealed, SealKind::Manifest, b"other bytes"), Err(SealError::WrongSubject));
    assert_eq!(open(&pinned, &sealed, SealKind::Policy, MANIFEST), Err(SealError::WrongKind));
    // Signed by a key the device does not pin, or by the rollouts key for a manifest.
    let forged = seal(SealKind::Manifest, MANIFEST, &[], &[&stranger]).unwrap();
    assert_eq!(open(&pinned, &forged, SealKind::Manifest, MANIFEST), Err(SealError::Threshold));
    let by_rollouts = seal(SealKind::Manifest, MANIFEST, &[], &[&r]).unwrap();
    assert_eq!(open(&pinned, &by_rollouts, SealKind::Manifest, MANIFEST), Err(SealError::Threshold));
    let policy = seal(SealKind::Policy, b"policy", &[], &[&r]).unwrap();
    assert!(open(&pinned, &policy, SealKind::Policy, b"policy").is_ok());
    // Without a rollouts role pinned, no policy seal opens.
    let no_rollouts = anchor(1, 1, &[&a], &[]);
    assert_eq!(open(&no_rollouts, &policy, SealKind::Policy, b"policy"), Err(SealError::Threshold));
}

#[test]
fn a_threshold_counts_each_pinned_key_once_and_ignores_bad_signatures() {
    let (a, b, c) = (key(1), key(2), key(3));
    let pinned = anchor(1, 2, &[&a, &b, &c], &[]);
    let one = seal(SealKind::Manifest, MANIFEST, &[], &[&a]).unwrap();
    assert_eq!(open(&pinned, &one, SealKind::Manifest, MANIFEST), Err(SealError::Threshold));
    let two = seal(SealKind::Manifest, MANIFEST, &[], &[&a, &c]).unwrap();
    assert!(open(&pinned, &two, SealKind::Manifest, MANIFEST).is_ok());
    // The same signature twice is one signer.
    let mut doubled = one.clone();
    let entry = doubled[doubled.len() - 96..].to_vec();
    let count_at = doubled.len() - 97;
    doubled[count_at] = 2;
    doubled.extend_from_slice(&entry);
    assert_eq!(open(&pinned, &doubled, SealKind::Manifest, MANIFEST), Err(SealError::Threshold));
    // A corrupted signature from a pinned key does not count; the other two still do.
    let mut three = seal(SealKind::Manifest, MANIFEST, &[], &[&a, &b, &c]).unwrap();
    let last = three.len() - 1;
    three[last] ^= 1;
    assert!(open(&pinned, &three, SealKind::Manifest, MANIFEST).is_ok());
    let mut two_bad = two.clone();
    let last = two_bad.len() - 1;
    two_bad[last] ^= 1;
    assert_eq!(open(&pinned, &two_bad, SealKind::Manifest, MANIFEST), Err(SealError::Threshold));
}

#[test]
fn a_rotation_is_followed_only_when_old_and_new_keys_both_signed_the_next_epoch() {
    let (old, new, r) = (key(1), key(2), key(3));
    let pinned = anchor(1, 1, &[&old], &[&r]);
    let next = anchor(2, 1, &[&new], &[&r]);
    let good = statement(&next, &[&old, &new]).unwrap();
    let sealed = seal(SealKind::Manifest, MANIFEST, std::slice::from_ref(&good), &[&new]).unwrap();
    assert_eq!(open(&pinned, &sealed, SealKind::Manifest, MANIFEST), Ok(Opened { anchor: next, rotated: true }));
    // A device already at epoch 2 skips the statement.
    assert_eq!(open(&next, &sealed, SealKind::Manifest, MANIFEST), Ok(Opened { anchor: next, rotated: false }));
    // The new key alone cannot seal for a device that never saw the statement.
    let bare = seal(SealKind::Manifest, MANIFEST, &[], &[&new]).unwrap();
    assert_eq!(open(&pinned, &bare, SealKind::Manifest, MANIFEST), Err(SealError::Threshold));
    // A thief with only the new key, or only the old one, cannot move the anchor.
    for signers in [&[&new][..], &[&old][..]] {
        let half = statement(&next, signers).unwrap();
        let sealed = seal(SealKind::Manifest, MANIFEST, &[half], &[&new, &old]).unwrap();
        assert_eq!(open(&pinned, &sealed, SealKind::Manifest, MANIFEST), Err(SealError::Threshold));
    }
    // Epochs may not skip: a statement for epoch 3 does not extend epoch 1.
    let skipping = statement(&TrustAnchor { epoch: 3, ..next }, &[&old, &new]).unwrap();
    let sealed = seal(SealKind::Manifest, MANIFEST, &[skipping], &[&new]).unwrap();
    assert_eq!(open(&pinned, &sealed, SealKind::Manifest, MANIFEST), Err(SealError::EpochGap));
}

#[test]
fn a_chain_of_rotations_is_applied_in_order_and_only_the_newest_four_are_carried() {
    let keys: Vec<SigningKey> = (1..=7).map(key).collect();
    let anchors: Vec<TrustAnchor> = (0..7).map(|i| anchor(i as u32 + 1, 1, &[&keys[i]], &[])).collect();
    let statements: Vec<Vec<u8>> = (1..7).map(|i| statement(&anchors[i], &[&keys[i - 1], &keys[i]]).unwrap()).collect();
    let sealed = seal(SealKind::Manifest, MANIFEST, &statements, &[&keys[6]]).unwrap();
    // Carried: epochs 4..=7. A device at epoch 3 follows all four; one at epoch 1 cannot.
    let opened = open(&anchors[2], &sealed, SealKind::Manifest, MANIFEST).unwrap();
    assert_eq!(opened.anchor, anchors[6]);
    assert_eq!(open(&anchors[0], &sealed, SealKind::Manifest, MANIFEST), Err(SealError::EpochGap));
}

#[test]
fn the_largest_seal_fits_its_bound_and_every_truncation_is_refused() {
    let keys: Vec<SigningKey> = (1..=8).map(key).collect();
    let all: Vec<&SigningKey> = keys.iter().collect();
    let anchors: Vec<TrustAnchor> =
        (0..5).map(|e| TrustAnchor { epoch: e + 1, ..anchor(e + 1, 8, &all, &all) }).collect();
    let statements: Vec<Vec<u8>> = (1..5).map(|i| statement(&anchors[i], &all).unwrap()).collect();
    let sealed = seal(SealKind::Manifest, MANIFEST, &statements, &all).unwrap();
    assert_eq!(sealed.len(), MAX_SEAL_BYTES);
    assert_eq!(statements[0].len(), MAX_STATEMENT_BYTES);
    assert!(open(&anchors[0], &sealed, SealKind::Manifest, MANIFEST).is_ok());
    for len in 0..sealed.len() {
        assert!(open(&anchors[0], &sealed[..len], SealKind::Manifest, MANIFEST).is_err(), "{len}");
    }
    let longer = [sealed.as_slice(), &[0]].concat();
    assert_eq!(open(&anchors[0], &longer, SealKind::Manifest, MANIFEST), Err(SealError::Bounds));
    let small = seal(SealKind::Manifest, MANIFEST, &[], &[&keys[0]]).unwrap();
    let trailing = [small.as_slice(), &[0]].concat();
    assert_eq!(open(&anchors[0], &trailing, SealKind::Manifest, MANIFEST), Err(SealError::Trailing));
}

proptest::proptest! {
    #[test]
    fn hostile_bytes_never_panic_and_never_open(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
        let a = key(1);
        let pinned = anchor(1, 1, &[&a], &[&a]);
        proptest::prop_assert!(open(&pinned, &bytes, SealKind::Manifest, MANIFEST).is_err());
        let _ = TrustAnchor::decode(&bytes);
        let _ = pinned.apply(&bytes);
    }

    #[test]
    fn a_flipped_bit_in_a_seal_never_opens(index in 0usize..200, bit in 0u8..8) {
        let (old, new) = (key(1), key(2));
        let pinned = anchor(1, 1, &[&old], &[]);
        let next = anchor(2, 1, &[&new], &[]);
        let sealed = seal(SealKind::Manifest, MANIFEST, &[statement(&next, &[&old, &new]).unwrap()], &[&new]).unwrap();
        let mut flipped = sealed.clone();
        let index = index % flipped.len();
        flipped[index] ^= 1 << bit;
        proptest::prop_assert!(open(&pinned, &flipped, SealKind::Manifest, MANIFEST).is_err(), "byte {}", index);
    }
}
