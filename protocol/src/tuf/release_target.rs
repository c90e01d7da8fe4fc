//! What the seeder signs about a release in its manifest target's `custom.otamesh` object:
//! one typed shape for the seeder that writes it and every reader (release choice on
//! devices, `seeder inspect`, republishing checks), so no reader looks a field up by a
//! string key and silently gets a default when the writer renamed it.
//!
//! The object comes from signed targets metadata, which [`crate::tuf::Config`] already
//! bounds in size; parsing here additionally checks every string against the manifest's
//! own limits and the chunking parameters against [`Chunking::validate`], so a value that
//! could never describe a real manifest is refused, not carried along.

use alloc::string::String;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::chunker::Chunking;
use crate::manifest::limits;

/// The key under a target's `custom` object that holds a [`ReleaseTarget`].
pub const CUSTOM_KEY: &str = "otamesh";

/// The `custom.otamesh` metadata of a release manifest's TUF target. Unknown fields are
/// ignored, so a newer seeder may add some without breaking deployed readers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseTarget {
    /// Release name (the channel a device follows).
    pub name: String,
    /// Version label, ordered by [`crate::tuf`] readers as digit runs.
    pub version: String,
    /// Hardware class the image is built for.
    pub hw_class: String,
    /// Anti-rollback counter.
    pub security_counter: u64,
    /// Image length in bytes.
    pub image_length: u64,
    /// blake3 of the whole image.
    #[serde(with = "hex32")]
    pub image_blake3: [u8; 32],
    /// sha256 of the whole image.
    #[serde(with = "hex32")]
    pub image_sha256: [u8; 32],
    /// Number of chunks in the manifest.
    pub chunk_count: u64,
    /// Bytes of all chunks as stored (compressed, encrypted).
    pub stored_bytes: u64,
    /// Whether chunks are encrypted under the fleet content key.
    pub encrypted: bool,
    /// How the image was cut into chunks.
    #[serde(with = "chunking")]
    pub chunking: Chunking,
}

/// Why a target's `custom.otamesh` object was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseTargetError {
    /// The target has no `custom.otamesh` object.
    Missing,
    /// A field is missing or has the wrong type (serde's message).
    Malformed(String),
    /// A string field is longer than a manifest allows.
    TooLong {
        /// The field's name.
        field: &'static str,
        /// The most bytes it may have.
        max_bytes: usize,
    },
    /// More chunks than a manifest may hold.
    TooManyChunks,
    /// The chunking parameters are out of range.
    Chunking(crate::chunker::ChunkingError),
}

impl core::fmt::Display for ReleaseTargetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReleaseTargetError::Missing => write!(f, "target has no custom.{CUSTOM_KEY} metadata"),
            ReleaseTargetError::Malformed(why) => write!(f, "custom.{CUSTOM_KEY} is malformed: {why}"),
            ReleaseTargetError::TooLong { field, max_bytes } => {
                write!(f, "custom.{CUSTOM_KEY}.{field} is longer than {max_bytes} bytes")
            }
            ReleaseTargetError::TooManyChunks => {
                write!(f, "custom.{CUSTOM_KEY}.chunk_count is above {}", limits::MAX_CHUNKS)
            }
            ReleaseTargetError::Chunking(e) => write!(f, "custom.{CUSTOM_KEY}.chunking: {e}"),
        }
    }
}

impl ReleaseTarget {
    /// Parses and checks the `otamesh` member of a target's `custom` object.
    pub fn from_custom(custom: Option<&Value>) -> Result<ReleaseTarget, ReleaseTargetError> {
        let value = custom.and_then(|c| c.get(CUSTOM_KEY)).ok_or(ReleaseTargetError::Missing)?;
        let parsed =
            ReleaseTarget::deserialize(value).map_err(|e| ReleaseTargetError::Malformed(alloc::format!("{e}")))?;
        parsed.check()?;
        Ok(parsed)
    }

    /// The `custom` object of a target carrying this metadata (what the seeder signs).
    pub fn to_custom(&self) -> Value {
        let mut custom = serde_json::Map::new();
        // Serializing plain fields into a `Value` cannot fail.
        custom.insert(CUSTOM_KEY.into(), serde_json::to_value(self).unwrap_or(Value::Null));
        Value::Object(custom)
    }

    fn check(&self) -> Result<(), ReleaseTargetError> {
        for (field, text, max_bytes) in [
            ("name", &self.name, limits::MAX_NAME_BYTES),
            ("version", &self.version, limits::MAX_VERSION_BYTES),
            ("hw_class", &self.hw_class, limits::MAX_HW_CLASS_BYTES),
        ] {
            if text.len() > max_bytes {
                return Err(ReleaseTargetError::TooLong { field, max_bytes });
            }
        }
        if self.chunk_count > u64::from(limits::MAX_CHUNKS) {
            return Err(ReleaseTargetError::TooManyChunks);
        }
        self.chunking.validate().map_err(ReleaseTargetError::Chunking)
    }
}

impl crate::tuf::TargetFile {
    /// This target's release metadata (`custom.otamesh`), parsed and checked.
    pub fn release(&self) -> Result<ReleaseTarget, ReleaseTargetError> {
        ReleaseTarget::from_custom(self.custom.as_ref())
    }
}

/// 32-byte digests as 64 lowercase hex digits.
mod hex32 {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = <&str>::deserialize(d)?;
        crate::hex::decode_array::<32>(text).map_err(|_| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// [`Chunking`] as `{"kind": "fixed", "size_bytes": N}` or
/// `{"kind": "fastcdc", "min_bytes": .., "avg_bytes": .., "max_bytes": ..}` or the same with
/// `"kind": "sboxcdc"`.
mod chunking {
    use super::*;

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "lowercase")]
    enum Repr {
        Fixed { size_bytes: u32 },
        FastCdc { min_bytes: u32, avg_bytes: u32, max_bytes: u32 },
        SboxCdc { min_bytes: u32, avg_bytes: u32, max_bytes: u32 },
    }

    pub fn serialize<S: Serializer>(chunking: &Chunking, s: S) -> Result<S::Ok, S::Error> {
        match *chunking {
            Chunking::Fixed { size_bytes } => Repr::Fixed { size_bytes },
            Chunking::FastCdc { min_bytes, avg_bytes, max_bytes } => Repr::FastCdc { min_bytes, avg_bytes, max_bytes },
            Chunking::SboxCdc { min_bytes, avg_bytes, max_bytes } => Repr::SboxCdc { min_bytes, avg_bytes, max_bytes },
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Chunking, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Fixed { size_bytes } => Chunking::Fixed { size_bytes },
            Repr::FastCdc { min_bytes, avg_bytes, max_bytes } => Chunking::FastCdc { min_bytes, avg_bytes, max_bytes },
            Repr::SboxCdc { min_bytes, avg_bytes, max_bytes } => Chunking::SboxCdc { min_bytes, avg_bytes, max_bytes },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> ReleaseTarget {
        ReleaseTarget {
            name: "gw".into(),
            version: "1.10.0".into(),
            hw_class: "gw-a".into(),
            security_counter: 3,
            image_length: 1 << 20,
            image_blake3: [0xab; 32],
            image_sha256: [0x01; 32],
            chunk_count: 16,
            stored_bytes: 900_000,
            encrypted: true,
            chunking: Chunking::DEFAULT_CDC,
        }
    }

    #[test]
    fn the_written_shape_is_the_one_readers_and_other_clients_see() {
        let custom = sample().to_custom();
        let o = &custom["otamesh"];
        assert_eq!(o["hw_class"], "gw-a");
        assert_eq!(o["security_counter"], 3);
        assert_eq!(o["image_blake3"], "ab".repeat(32));
        assert_eq!(
            o["chunking"],
            json!({"kind": "fastcdc", "min_bytes": 16384, "avg_bytes": 65536, "max_bytes": 262144})
        );
        assert_eq!(ReleaseTarget::from_custom(Some(&custom)), Ok(sample()));
        let fixed = ReleaseTarget { chunking: Chunking::Fixed { size_bytes: 4096 }, ..sample() };
        assert_eq!(fixed.to_custom()["otamesh"]["chunking"], json!({"kind": "fixed", "size_bytes": 4096}));
        assert_eq!(ReleaseTarget::from_custom(Some(&fixed.to_custom())), Ok(fixed));
        let sbox = ReleaseTarget { chunking: Chunking::DEFAULT_SBOX_CDC, ..sample() };
        assert_eq!(
            sbox.to_custom()["otamesh"]["chunking"],
            json!({"kind": "sboxcdc", "min_bytes": 16384, "avg_bytes": 65536, "max_bytes": 262144})
        );
        assert_eq!(ReleaseTarget::from_custom(Some(&sbox.to_custom())), Ok(sbox));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut custom = sample().to_custom();
        custom["otamesh"]["added_later"] = json!([1, 2]);
        assert_eq!(ReleaseTarget::from_custom(Some(&custom)), Ok(sample()));
    }

    #[test]
    fn missing_wrong_typed_and_out_of_bounds_values_are_refused() {
        assert_eq!(ReleaseTarget::from_custom(None), Err(ReleaseTargetError::Missing));
        assert_eq!(ReleaseTarget::from_custom(Some(&json!({"other": {}}))), Err(ReleaseTargetError::Missing));

        let with = |field: &str, value: Value| {
            let mut custom = sample().to_custom();
            custom["otamesh"][field] = value;
            ReleaseTarget::from_custom(Some(&custom))
        };
        assert!(matches!(with("security_counter", json!("3")), Err(ReleaseTargetError::Malformed(_))));
        assert!(matches!(with("security_counter", json!(-1)), Err(ReleaseTargetError::Malformed(_))));
        assert!(matches!(with("image_blake3", json!("ab")), Err(ReleaseTargetError::Malformed(_))));
        assert!(matches!(with("chunking", json!({"kind": "rabin"})), Err(ReleaseTargetError::Malformed(_))));
        assert_eq!(
            with("name", json!("n".repeat(limits::MAX_NAME_BYTES + 1))),
            Err(ReleaseTargetError::TooLong { field: "name", max_bytes: limits::MAX_NAME_BYTES })
        );
        assert_eq!(
            with("hw_class", json!("h".repeat(limits::MAX_HW_CLASS_BYTES + 1))),
            Err(ReleaseTargetError::TooLong { field: "hw_class", max_bytes: limits::MAX_HW_CLASS_BYTES })
        );
        assert_eq!(
            with("chunk_count", json!(u64::from(limits::MAX_CHUNKS) + 1)),
            Err(ReleaseTargetError::TooManyChunks)
        );
        assert!(matches!(
            with("chunking", json!({"kind": "fixed", "size_bytes": 1})),
            Err(ReleaseTargetError::Chunking(_))
        ));
        let mut custom = sample().to_custom();
        custom["otamesh"].as_object_mut().unwrap().remove("version");
        assert!(matches!(ReleaseTarget::from_custom(Some(&custom)), Err(ReleaseTargetError::Malformed(_))));
    }
}
