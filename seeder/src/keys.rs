//! Signing keys and the fleet content key, as files in the repository's `keys/` directory.
//!
//! Only the seeder holds keys. Each signing key is a JSON file, mode 0600, holding the
//! ed25519 seed and its public TUF key object; the content key is 32 random bytes in hex.
//! `keys/` is never served: `seeder serve` exposes only `metadata/`, `targets/` and `chunks/`.

use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signer, SigningKey};
use protocol::codec::ContentKey;
use serde_json::{json, Value};
use sha2::Digest;
use std::fs;
use std::path::{Path, PathBuf};

/// The four top-level TUF roles.
pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// A role's signing key with its TUF key id.
pub struct RoleKey {
    /// sha256 of the canonical public key object, hex; TUF's key id.
    pub keyid: String,
    /// The ed25519 signing key.
    pub signing: SigningKey,
    /// Where it is stored.
    pub path: PathBuf,
}

impl RoleKey {
    /// Generates a fresh key from the OS random source.
    pub fn generate(path: PathBuf) -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).context("the OS random source failed")?;
        let signing = SigningKey::from_bytes(&seed);
        Ok(RoleKey { keyid: keyid(&public_key_object(&signing)), signing, path })
    }

    /// The TUF public key object: `{"keytype","scheme","keyval":{"public"}}`.
    pub fn public_object(&self) -> Value {
        public_key_object(&self.signing)
    }

    /// A TUF signature object over `canonical(signed)`.
    pub fn sign(&self, canonical_signed: &[u8]) -> Value {
        let sig = self.signing.sign(canonical_signed);
        json!({"keyid": self.keyid, "sig": protocol::hex::encode(&sig.to_bytes())})
    }

    /// Writes the key file (mode 0600) atomically.
    pub fn save(&self) -> Result<()> {
        let body = json!({
            "keyid": self.keyid,
            "key": self.public_object(),
            "private": protocol::hex::encode(self.signing.as_bytes()),
        });
        Ok(host::fs::write_atomic(&self.path, &serde_json::to_vec_pretty(&body)?, host::fs::PRIVATE)?)
    }

    /// Loads a key file written by [`RoleKey::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read(path).with_context(|| format!("cannot read key {}", path.display()))?;
        let body: Value =
            serde_json::from_slice(&text).with_context(|| format!("key {} is not JSON", path.display()))?;
        let private =
            body["private"].as_str().with_context(|| format!("key {} has no private part", path.display()))?;
        let seed: [u8; 32] =
            protocol::hex::decode_array(private).map_err(|e| anyhow::anyhow!("key {}: {e}", path.display()))?;
        let signing = SigningKey::from_bytes(&seed);
        let key = RoleKey { keyid: keyid(&public_key_object(&signing)), signing, path: path.to_owned() };
        if body["keyid"].as_str() != Some(key.keyid.as_str()) {
            bail!("key {} is damaged: its key id does not match its private key", path.display());
        }
        Ok(key)
    }
}

fn public_key_object(signing: &SigningKey) -> Value {
    json!({
        "keytype": "ed25519",
        "scheme": "ed25519",
        "keyval": {"public": protocol::hex::encode(signing.verifying_key().as_bytes())},
    })
}

/// TUF's key id: sha256 of the key object's canonical JSON.
pub fn keyid(public_object: &Value) -> String {
    let canonical = protocol::tuf::canonical::to_vec(public_object).unwrap_or_default();
    protocol::hex::encode(&sha2::Sha256::digest(&canonical))
}

/// Loads every signing key in `keys/` whose key id is in `keyids`.
pub fn load_for(keys_dir: &Path, keyids: &[String]) -> Result<Vec<RoleKey>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(keys_dir).with_context(|| format!("cannot read {}", keys_dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let key = RoleKey::load(&path)?;
        if keyids.contains(&key.keyid) {
            found.push(key);
        }
    }
    Ok(found)
}

/// The content key's file.
pub fn content_key_path(keys_dir: &Path) -> PathBuf {
    keys_dir.join("content.key")
}

/// Creates the fleet content key.
pub fn create_content_key(keys_dir: &Path) -> Result<ContentKey> {
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).context("the OS random source failed")?;
    host::fs::write_atomic(&content_key_path(keys_dir), protocol::hex::encode(&key).as_bytes(), host::fs::PRIVATE)?;
    Ok(ContentKey(key))
}

/// Reads the fleet content key (or the one at `path`, for devices and tests).
pub fn load_content_key(path: &Path) -> Result<ContentKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read content key {}; run `seeder init` first", path.display()))?;
    protocol::hex::decode_array(text.trim())
        .map(ContentKey)
        .map_err(|e| anyhow::anyhow!("content key {} is damaged: {e}", path.display()))
}
