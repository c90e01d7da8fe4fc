//! XChaCha20-Poly1305 opening through ring's ChaCha20-Poly1305 (feature `ring-aead`).
//!
//! XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha) is ChaCha20-Poly1305 (RFC 8439) under a
//! subkey: HChaCha20(key, first 16 nonce bytes), with the 12-byte nonce made of four zero
//! bytes and the last 8 nonce bytes. ring implements the RFC 8439 part in assembly; the
//! RustCrypto backend that `codec` uses otherwise took a third of a Linux agent's CPU per
//! install (scripts/bench-agent profile). Only opening goes through here: the seeder seals
//! with the portable code, and the tests below check both agree.

use chacha20::cipher::consts::U10;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};

/// Why opening failed; the caller maps it to its own error (tag mismatch or bad lengths).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OpenFailed;

/// Decrypts `payload` in place if `tag` authenticates it with `aad` under `key` and the
/// 24-byte `nonce`; on failure `payload` holds no plaintext the caller may use.
pub(crate) fn open_in_place(
    key: &[u8; 32],
    nonce: &[u8],
    aad: &[u8],
    payload: &mut [u8],
    tag: &[u8],
) -> Result<(), OpenFailed> {
    let nonce: &[u8; 24] = nonce.try_into().map_err(|_| OpenFailed)?;
    let tag = Tag::try_from(tag).map_err(|_| OpenFailed)?;
    let subkey = chacha20::hchacha::<U10>(key.into(), nonce[..16].into());
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &subkey).map_err(|_| OpenFailed)?);
    let mut inner_nonce = [0u8; 12];
    inner_nonce[4..].copy_from_slice(&nonce[16..]);
    key.open_in_place_separate_tag(Nonce::assume_unique_for_key(inner_nonce), Aad::from(aad), tag, payload, 0..)
        .map(|_| ())
        .map_err(|_| OpenFailed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use proptest::prelude::*;

    fn seal(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], plain: &[u8]) -> (Vec<u8>, [u8; 16]) {
        let mut buf = plain.to_vec();
        let tag = XChaCha20Poly1305::new(key.into())
            .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut buf)
            .unwrap();
        (buf, tag.into())
    }

    /// The test vector of draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    #[test]
    fn draft_xchacha_vector() {
        let hex = |s: &str| crate::hex::decode(s).unwrap();
        let key: [u8; 32] = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f").try_into().unwrap();
        let nonce = hex("404142434445464748494a4b4c4d4e4f5051525354555657");
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let mut ct = hex(concat!(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb",
            "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452",
            "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9",
            "21f9664c97637da9768812f615c68b13b52e"
        ));
        let tag = hex("c0875924c1c7987947deafd8780acf49");
        open_in_place(&key, &nonce, &aad, &mut ct, &tag).unwrap();
        assert_eq!(&ct[..], &plain[..]);
    }

    /// Every Wycheproof XChaCha20-Poly1305 case: valid ones open to their plaintext, invalid
    /// ones are refused.
    #[test]
    fn wycheproof_xchacha20_poly1305() {
        use wycheproof::aead::{TestName, TestSet};
        let set = TestSet::load(TestName::XChaCha20Poly1305).unwrap();
        let mut checked = 0;
        for group in &set.test_groups {
            for test in &group.tests {
                let Ok(key) = <[u8; 32]>::try_from(&test.key[..]) else { continue };
                let mut buf = test.ct.to_vec();
                let opened = open_in_place(&key, &test.nonce, &test.aad, &mut buf, &test.tag);
                match test.result {
                    wycheproof::TestResult::Valid => {
                        assert_eq!(opened, Ok(()), "case {}", test.tc_id);
                        assert_eq!(&buf[..], &test.pt[..], "case {}", test.tc_id);
                    }
                    wycheproof::TestResult::Invalid => assert_eq!(opened, Err(OpenFailed), "case {}", test.tc_id),
                    wycheproof::TestResult::Acceptable => {}
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} cases");
    }

    proptest! {
        #[test]
        fn opens_what_the_portable_code_seals_and_nothing_altered(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 24]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..40),
            plain in proptest::collection::vec(any::<u8>(), 0..3000),
            flip in any::<usize>(),
        ) {
            let (ct, tag) = seal(&key, &nonce, &aad, &plain);
            let mut opened = ct.clone();
            prop_assert_eq!(open_in_place(&key, &nonce, &aad, &mut opened, &tag), Ok(()));
            prop_assert_eq!(&opened, &plain);
            // One flipped bit anywhere in ciphertext, tag or aad is refused.
            let mut bad_ct = ct.clone();
            let mut bad_tag = tag;
            let mut bad_aad = aad.clone();
            let spots = ct.len() + 16 + aad.len();
            let spot = flip % spots;
            if spot < ct.len() {
                bad_ct[spot] ^= 1;
            } else if spot < ct.len() + 16 {
                bad_tag[spot - ct.len()] ^= 1;
            } else {
                bad_aad[spot - ct.len() - 16] ^= 1;
            }
            prop_assert_eq!(open_in_place(&key, &nonce, &bad_aad, &mut bad_ct, &bad_tag), Err(OpenFailed));
            prop_assert_eq!(open_in_place(&key, &nonce[..23], &aad, &mut ct.clone(), &tag), Err(OpenFailed));
        }
    }
}
