//! The device's status key: Ed25519 signing (RFC 8032, section 5.1.6) for its status reports,
//! over curve25519-dalek's constant-time primitives.
//!
//! Why not `ed25519-dalek`'s `SigningKey`: its signing multiplies by the base point through
//! curve25519-dalek's precomputed base point table when that feature is on — and the board
//! build turns it on for *verification*, whose stack it shortens. The signing table alone is
//! about 30 KiB of flash, a quarter of the agent's budget, for one signature per report. Here
//! the multiplication is curve25519-dalek's variable-base one (constant time, a small table on
//! the stack), so a report costs a few KiB of code. The host tests check every signature
//! against `ed25519-dalek` and RFC 8032's vectors.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};

/// An Ed25519 key pair from its 32-byte seed, expanded once.
#[derive(Clone)]
pub struct StatusKey {
    /// The secret scalar `a` (clamped, reduced).
    scalar: Scalar,
    /// The nonce prefix: the upper half of SHA-512(seed).
    prefix: [u8; 32],
    /// `A = a·B`, compressed: the device's id.
    public: [u8; 32],
}

impl StatusKey {
    /// The key pair of `seed` (the Linux agent's `device.key` holds the same seed as hex).
    #[inline(never)]
    pub fn from_seed(seed: &[u8; 32]) -> StatusKey {
        let hash = Sha512::digest(seed);
        let mut lower = [0u8; 32];
        lower.copy_from_slice(&hash[..32]);
        lower[0] &= 248;
        lower[31] &= 127;
        lower[31] |= 64;
        let scalar = Scalar::from_bytes_mod_order(lower);
        let mut prefix = [0u8; 32];
        prefix.copy_from_slice(&hash[32..]);
        let public = (ED25519_BASEPOINT_POINT * scalar).compress().to_bytes();
        StatusKey { scalar, prefix, public }
    }

    /// The public key: the device's id in rollouts and the key its reports verify under.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The Ed25519 signature of `message` (deterministic: the same as any RFC 8032 signer's).
    /// Out of line: its scalar multiplication's table (about 1.3 KiB) must sit in its own
    /// frame, called at the end of a run, not in the agent's poll frame under every seal check.
    #[inline(never)]
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let r = wide_scalar(Sha512::new().chain_update(self.prefix).chain_update(message));
        let big_r = (ED25519_BASEPOINT_POINT * r).compress().to_bytes();
        let k = wide_scalar(Sha512::new().chain_update(big_r).chain_update(self.public).chain_update(message));
        let s = k * self.scalar + r;
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&big_r);
        signature[32..].copy_from_slice(s.as_bytes());
        signature
    }
}

/// A SHA-512 digest reduced modulo the group order.
fn wide_scalar(hasher: Sha512) -> Scalar {
    let mut wide = [0u8; 64];
    wide.copy_from_slice(&hasher.finalize());
    Scalar::from_bytes_mod_order_wide(&wide)
}
