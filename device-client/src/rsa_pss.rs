//! RSA-PSS verification for TUF keys of type `rsa` with scheme `rsassa-pss-sha256`.
//!
//! Devices never need RSA (otamesh signs with ed25519), so it stays out of `protocol` and is
//! plugged into the TUF verifier through its `VerifyHook` on hosts that read third-party
//! repositories. Keys must be PEM SubjectPublicKeyInfo of at least 2048 bits; the PSS salt
//! length is detected from the signature, since signers differ (digest length or maximum).

use protocol::tuf::Key;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;

/// Smallest modulus accepted, in bytes (2048 bits).
const MIN_MODULUS_BYTES: usize = 256;

/// A `protocol::tuf::VerifyHook` for `rsa` / `rsassa-pss-sha256` keys.
pub fn verify_hook(key: &Key, message: &[u8], signature: &[u8]) -> bool {
    if key.keytype != "rsa" || key.scheme != "rsassa-pss-sha256" {
        return false;
    }
    let Ok(public) = rsa::RsaPublicKey::from_public_key_pem(key.public.trim()) else {
        return false;
    };
    if public.size() < MIN_MODULUS_BYTES || signature.len() != public.size() {
        return false;
    }
    let Ok(signature) = rsa::pss::Signature::try_from(signature) else {
        return false;
    };
    rsa::pss::VerifyingKey::<sha2::Sha256>::new(public).verify(message, &signature).is_ok()
}
