//! Known-answer tests from outside this project: the official BLAKE3 vectors and Project
//! Wycheproof's ed25519 and ECDSA P-256 suites, run through the same entry points a device
//! or edge node uses. Where our policy deliberately differs from Wycheproof's verdict, the
//! difference is listed here by test-case id with its reason, and the test fails if the set
//! of differences changes in either direction.

use std::collections::BTreeMap;
use std::path::PathBuf;

use protocol::sig::{verify_ecdsa_p256, Ed25519PublicKey};
use protocol::ChunkId;
use wycheproof::TestResult;

/// The shared vectors sit beside the repository (`/work/shared` next to `/work/main`, and
/// the same layout in CI). A missing file is a broken checkout, so the test fails on it
/// rather than passing vacuously.
fn blake3_vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/blake3_test_vectors.json")
}

#[test]
fn blake3_official_vectors_through_chunk_id() {
    let path = blake3_vectors_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("BLAKE3 vectors missing at {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("vectors are JSON");
    let cases = json["cases"].as_array().expect("a `cases` array");
    assert!(cases.len() >= 30, "expected the full official set, found {} cases", cases.len());
    for case in cases {
        let input_len = case["input_len"].as_u64().expect("input_len") as usize;
        let hash_hex = case["hash"].as_str().expect("hash");
        let input: Vec<u8> = (0..input_len).map(|i| (i % 251) as u8).collect();
        let expected = ChunkId::from_hex(&hash_hex[..64]).expect("64 hex digits");
        let got = ChunkId::of(&input);
        assert_eq!(got, expected, "input_len {input_len}");
        assert!(expected.matches(&input), "matches() disagrees with of() at input_len {input_len}");
        // The extended output must start with the default one: guards against reading the
        // wrong field of the vector file.
        assert_eq!(got.to_hex(), hash_hex[..64], "input_len {input_len}");
    }
}

/// Runs every test of a Wycheproof suite and returns, by tcId, the cases where our verdict
/// (`accepted`) differs from Wycheproof's. "Acceptable" cases are returned too, with our
/// verdict, because they are policy decisions that should be written down.
fn differences(
    cases: impl Iterator<Item = (usize, TestResult, String, bool)>,
) -> (BTreeMap<usize, (TestResult, String, bool)>, usize) {
    let mut out = BTreeMap::new();
    let mut count = 0;
    for (tc_id, expected, comment, accepted) in cases {
        count += 1;
        let agrees = match expected {
            TestResult::Valid => accepted,
            TestResult::Invalid => !accepted,
            TestResult::Acceptable => false,
        };
        if !agrees {
            out.insert(tc_id, (expected, comment, accepted));
        }
    }
    (out, count)
}

fn assert_exceptions(
    suite: &str,
    found: &BTreeMap<usize, (TestResult, String, bool)>,
    documented: &[(usize, bool, &str)],
) {
    let documented_map: BTreeMap<usize, bool> = documented.iter().map(|(id, acc, _)| (*id, *acc)).collect();
    let found_map: BTreeMap<usize, bool> = found.iter().map(|(id, (_, _, acc))| (*id, *acc)).collect();
    if found_map != documented_map {
        let mut report = String::new();
        for (id, (expected, comment, accepted)) in found {
            report.push_str(&format!("  tcId {id}: wycheproof {expected:?}, ours accepted={accepted} ({comment})\n"));
        }
        panic!("{suite}: differences from Wycheproof are not the documented ones.\nFound:\n{report}");
    }
}

/// Where our strict ed25519 policy (see `protocol::sig`) parts from Wycheproof, by tcId:
/// (tcId, whether we accept, why). Empty on purpose: every Wycheproof 0.6 "valid" vector
/// uses a canonical, full-order key and a canonical `R` and `s`, so strict verification
/// accepts them all, and it rejects all 62 "invalid" ones (malleable `s`, truncated or
/// padded signatures, wrong messages). Small-order keys, which we refuse and RFC 8032 may
/// accept, do not appear in this suite.
const ED25519_EXCEPTIONS: &[(usize, bool, &str)] = &[];

#[test]
fn wycheproof_ed25519() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    let mut cases = Vec::new();
    for group in &set.test_groups {
        let key_bytes: Result<[u8; 32], _> = group.key.pk.as_slice().try_into();
        let key = key_bytes.ok().and_then(|b| Ed25519PublicKey::from_bytes(&b).ok());
        for test in &group.tests {
            let accepted = key.is_some_and(|k| k.verify(&test.msg, &test.sig).is_ok());
            cases.push((test.tc_id, test.result, test.comment.clone(), accepted));
        }
    }
    let valid = cases.iter().filter(|c| c.1 == TestResult::Valid).count();
    assert!(valid > 0, "no valid vectors: wrong test set?");
    let (found, count) = differences(cases.into_iter());
    assert_eq!(count, set.number_of_tests, "every ed25519 vector ran");
    assert_exceptions("ed25519", &found, ED25519_EXCEPTIONS);
}

/// Where `verify_ecdsa_p256` parts from Wycheproof's DER suite: (tcId, whether we accept, why).
/// Empty: the suite has no "acceptable" cases, and accepting high-`s` signatures (which
/// securesystemslib and OpenSSL emit) agrees with Wycheproof, which calls them valid for
/// plain ECDSA. BER and other alternative encodings are rejected by the DER parser, and the
/// fallback to the fixed 64-byte `r | s` form accepts none of the suite's invalid inputs;
/// this test is what keeps both facts true.
const P256_EXCEPTIONS: &[(usize, bool, &str)] = &[];

#[test]
fn wycheproof_ecdsa_p256_sha256_der() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let set = TestSet::load(TestName::EcdsaSecp256r1Sha256).unwrap();
    let mut cases = Vec::new();
    for group in &set.test_groups {
        let key_hex = protocol::hex::encode(&group.key.key);
        for test in &group.tests {
            let accepted = verify_ecdsa_p256(&key_hex, &test.msg, &test.sig).is_ok();
            cases.push((test.tc_id, test.result, test.comment.clone(), accepted));
        }
    }
    let (found, count) = differences(cases.into_iter());
    assert_eq!(count, set.number_of_tests, "every P-256 vector ran");
    assert_exceptions("ECDSA P-256 SHA-256 DER", &found, P256_EXCEPTIONS);
}
