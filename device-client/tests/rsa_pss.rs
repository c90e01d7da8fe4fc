//! RSA-PSS keys from securesystemslib (the signer python-tuf uses) verify through our hook.
//! The vector was made with `CryptoSigner.generate_rsa().sign(b"otamesh rsa-pss test message")`.

use protocol::tuf::Key;

fn key() -> Key {
    Key {
        keytype: "rsa".into(),
        scheme: "rsassa-pss-sha256".into(),
        public: include_str!("data/rsa3072_pub.pem").into(),
    }
}

fn signature() -> Vec<u8> {
    protocol::hex::decode(include_str!("data/rsa3072_pss_sig.hex").trim()).unwrap()
}

#[test]
fn securesystemslib_rsa_pss_signature_verifies() {
    let msg = b"otamesh rsa-pss test message";
    assert!(device_client::rsa_pss::verify_hook(&key(), msg, &signature()));
    assert!(key().verify(msg, &signature(), Some(device_client::rsa_pss::verify_hook)));
}

#[test]
fn wrong_message_scheme_or_signature_fails() {
    let msg = b"otamesh rsa-pss test message";
    assert!(!device_client::rsa_pss::verify_hook(&key(), b"other message", &signature()));
    let mut bad = signature();
    bad[10] ^= 1;
    assert!(!device_client::rsa_pss::verify_hook(&key(), msg, &bad));
    let pkcs1 = Key { scheme: "rsa-pkcs1v15-sha256".into(), ..key() };
    assert!(!device_client::rsa_pss::verify_hook(&pkcs1, msg, &signature()));
    // Without the hook, protocol alone does not know RSA.
    assert!(!key().verify(msg, &signature(), None));
}
