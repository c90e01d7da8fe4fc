//! The status key signs exactly as RFC 8032 and `ed25519-dalek` do.

use ed25519_dalek::{Signer, SigningKey, Verifier};
use otamesh_mcu::status_key::StatusKey;

fn hex<const N: usize>(text: &str) -> [u8; N] {
    protocol::hex::decode_array(text).unwrap()
}

#[test]
fn rfc_8032_test_vectors_1_to_3() {
    for (seed, public, message, signature) in [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ] {
        let key = StatusKey::from_seed(&hex(seed));
        assert_eq!(key.public(), hex::<32>(public));
        let message = (0..message.len() / 2).map(|i| u8::from_str_radix(&message[2 * i..2 * i + 2], 16).unwrap()).collect::<Vec<_>>();
        assert_eq!(key.sign(&message), hex::<64>(signature));
    }
}

#[test]
fn signatures_match_ed25519_dalek_and_verify() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..64usize {
        let mut seed = [0u8; 32];
        for b in seed.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let message: Vec<u8> = (0..n * 37).map(|i| (i as u8).wrapping_mul(x as u8)).collect();
        let reference = SigningKey::from_bytes(&seed);
        let key = StatusKey::from_seed(&seed);
        assert_eq!(key.public(), reference.verifying_key().to_bytes());
        let signature = key.sign(&message);
        assert_eq!(signature, reference.sign(&message).to_bytes(), "seed {n}");
        reference.verifying_key().verify(&message, &ed25519_dalek::Signature::from_bytes(&signature)).unwrap();
    }
}
