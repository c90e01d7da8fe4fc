//! Making statements and seals (the seeder's side; needs `alloc`).

use alloc::vec::Vec;

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use super::{
    seal_message, SealError, SealKind, TrustAnchor, FORMAT_VERSION, MAX_ANCHOR_BYTES, MAX_SIGNATURES, MAX_STATEMENTS,
    MAX_STATEMENT_BYTES, SEAL_MAGIC, STATEMENT_DOMAIN, STATEMENT_MAGIC,
};

/// A trust statement establishing `next`, signed by `signers` (a threshold of the current
/// targets keys and of `next`'s; one key in both sets signs once).
pub fn statement(next: &TrustAnchor, signers: &[&SigningKey]) -> Result<Vec<u8>, SealError> {
    let mut buffer = [0u8; MAX_ANCHOR_BYTES];
    let len = next.encode(&mut buffer);
    let anchor = &buffer[..len];
    let mut message = Vec::with_capacity(STATEMENT_DOMAIN.len() + anchor.len());
    message.extend_from_slice(STATEMENT_DOMAIN);
    message.extend_from_slice(anchor);
    let mut out = Vec::with_capacity(MAX_STATEMENT_BYTES);
    out.extend_from_slice(&STATEMENT_MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&(anchor.len() as u16).to_le_bytes());
    out.extend_from_slice(anchor);
    push_signatures(&mut out, &message, signers)?;
    Ok(out)
}

/// The seal of `subject` as `kind`, carrying `statements` (the newest [`MAX_STATEMENTS`] of
/// them, oldest first, if there are more), signed by `signers`.
pub fn seal(
    kind: SealKind,
    subject: &[u8],
    statements: &[Vec<u8>],
    signers: &[&SigningKey],
) -> Result<Vec<u8>, SealError> {
    let subject_len = u32::try_from(subject.len()).map_err(|_| SealError::Bounds)?;
    let sha256: [u8; 32] = Sha256::digest(subject).into();
    let carried = &statements[statements.len().saturating_sub(MAX_STATEMENTS)..];
    let mut out = Vec::new();
    out.extend_from_slice(&SEAL_MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&subject_len.to_le_bytes());
    out.extend_from_slice(&sha256);
    out.push(carried.len() as u8);
    for statement in carried {
        if statement.len() > MAX_STATEMENT_BYTES {
            return Err(SealError::Bounds);
        }
        out.extend_from_slice(&(statement.len() as u16).to_le_bytes());
        out.extend_from_slice(statement);
    }
    push_signatures(&mut out, &seal_message(kind, subject_len, &sha256), signers)?;
    Ok(out)
}

fn push_signatures(out: &mut Vec<u8>, message: &[u8], signers: &[&SigningKey]) -> Result<(), SealError> {
    let mut distinct: Vec<&SigningKey> = Vec::new();
    for key in signers {
        if !distinct.iter().any(|k| k.verifying_key() == key.verifying_key()) {
            distinct.push(key);
        }
    }
    if distinct.is_empty() || distinct.len() > MAX_SIGNATURES {
        return Err(SealError::Bounds);
    }
    out.push(distinct.len() as u8);
    for key in distinct {
        out.extend_from_slice(key.verifying_key().as_bytes());
        out.extend_from_slice(&key.sign(message).to_bytes());
    }
    Ok(())
}
