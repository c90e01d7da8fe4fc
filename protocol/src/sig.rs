//! Signature verification.
//!
//! Ed25519 policy (everything a device or edge node accepts):
//! - public keys must be canonical encodings (y < p) of points that are not of small order;
//! - signatures must have a canonical `s` (< ℓ) and a canonical `R` that is not of small
//!   order, and must satisfy the cofactorless equation `[s]B = R + [k]A`
//!   (ed25519-dalek's `verify_strict`).
//!
//! This refuses every malleable or weak-key form, so one message has one valid signature per
//! key and a key cannot be forged to "verify" everything. It is stricter than RFC 8032's
//! cofactored check and than ZIP-215; any signature a standard signer produces passes.
//!
//! ECDSA P-256 (SHA-256) is accepted on the host for TUF interoperability: signatures in DER
//! (securesystemslib) or fixed 64-byte form, keys as PEM SubjectPublicKeyInfo or hex SEC1.

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, VerifyingKey};

/// Why a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigError {
    /// The public key is malformed, non-canonical or weak.
    BadKey,
    /// The signature is malformed or non-canonical.
    BadSignature,
    /// Well-formed, but not a signature of this message by this key.
    Mismatch,
}

impl core::fmt::Display for SigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SigError::BadKey => "public key is malformed or weak",
            SigError::BadSignature => "signature is malformed",
            SigError::Mismatch => "signature does not match",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SigError {}

/// A checked ed25519 public key: canonical and not of small order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ed25519PublicKey(VerifyingKey);

impl core::fmt::Debug for Ed25519PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Ed25519PublicKey(")?;
        crate::hex::write(f, self.0.as_bytes())?;
        f.write_str(")")
    }
}

impl Ed25519PublicKey {
    /// Checks and wraps 32 encoded bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SigError> {
        let point = CompressedEdwardsY(*bytes).decompress().ok_or(SigError::BadKey)?;
        if point.compress().as_bytes() != bytes || point.is_small_order() {
            return Err(SigError::BadKey);
        }
        VerifyingKey::from_bytes(bytes).map(Ed25519PublicKey).map_err(|_| SigError::BadKey)
    }

    /// The encoded key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Verifies under the policy in the module docs.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SigError> {
        let bytes: &[u8; 64] = signature.try_into().map_err(|_| SigError::BadSignature)?;
        // A non-canonical `s` (>= the group order) is a malformed signature, not a mismatch.
        let s: [u8; 32] = bytes[32..].try_into().map_err(|_| SigError::BadSignature)?;
        if curve25519_dalek::Scalar::from_canonical_bytes(s).is_none().into() {
            return Err(SigError::BadSignature);
        }
        let sig = Signature::from_bytes(bytes);
        self.0.verify_strict(message, &sig).map_err(|_| SigError::Mismatch)
    }
}

/// Verifies an ECDSA P-256 / SHA-256 signature. `public` is PEM SPKI or hex SEC1;
/// `signature` is DER or the fixed 64-byte `r | s` form. High-`s` signatures are accepted,
/// as securesystemslib and OpenSSL produce them.
#[cfg(feature = "std")]
pub fn verify_ecdsa_p256(public: &str, message: &[u8], signature: &[u8]) -> Result<(), SigError> {
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::{Signature as EcSignature, VerifyingKey as EcKey};
    use p256::pkcs8::DecodePublicKey;

    let key = if public.trim_start().starts_with("-----BEGIN") {
        EcKey::from_public_key_pem(public.trim()).map_err(|_| SigError::BadKey)?
    } else {
        let sec1 = crate::hex::decode(public).map_err(|_| SigError::BadKey)?;
        EcKey::from_sec1_bytes(&sec1).map_err(|_| SigError::BadKey)?
    };
    let sig = EcSignature::from_der(signature)
        .or_else(|_| EcSignature::from_slice(signature))
        .map_err(|_| SigError::BadSignature)?;
    // The p256 verifier rejects high-s only through `normalize_s`; verify the signature as
    // given, and also its normalized form, so both encodings of one signature verify.
    let sig = sig.normalize_s().unwrap_or(sig);
    key.verify(message, &sig).map_err(|_| SigError::Mismatch)
}
