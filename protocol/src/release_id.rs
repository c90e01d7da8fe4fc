//! `ReleaseId`: the blake3 hash of a release's manifest bytes, its one name everywhere —
//! the edge scheduler, the mesh wire, the DHT key, logs, status JSON. Printed and parsed
//! as 64 lowercase hex digits; no other spelling exists.

use core::fmt;

/// A release's identity: blake3 of its manifest bytes. Two releases with the same name and
/// version but different bytes are different releases.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReleaseId(pub [u8; 32]);

crate::id_order::order_by_bytes32!(ReleaseId);

impl ReleaseId {
    /// The id of the release whose manifest is `manifest_bytes`.
    pub fn of_manifest(manifest_bytes: &[u8]) -> Self {
        ReleaseId(*blake3::hash(manifest_bytes).as_bytes())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, crate::hex::HexError> {
        crate::hex::decode_array(text).map(ReleaseId)
    }

    /// The id as 64 lowercase hex digits.
    #[cfg(feature = "alloc")]
    pub fn to_hex(&self) -> alloc::string::String {
        crate::hex::encode(&self.0)
    }
}

impl core::str::FromStr for ReleaseId {
    type Err = crate::hex::HexError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ReleaseId::from_hex(text)
    }
}

/// All 64 hex digits; `{:?}` shows the first 8 for logs.
impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::hex::write(f, &self.0)
    }
}

impl fmt::Debug for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReleaseId(")?;
        crate::hex::write(f, &self.0[..4])?;
        f.write_str(")")
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_other_spellings() {
        let id = ReleaseId::of_manifest(b"manifest");
        let text = id.to_hex();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ReleaseId>(), Ok(id));
        assert_eq!(alloc::format!("{id}"), text);
        assert!(text[..62].parse::<ReleaseId>().is_err());
        assert!(alloc::format!("{text}0").parse::<ReleaseId>().is_err());
        assert!(text.replacen(&text[..1], "g", 1).parse::<ReleaseId>().is_err());
    }
}
