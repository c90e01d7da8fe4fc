//! The TUF 1.0 client workflow (specification sections 5.3–5.7), sans-IO.
//!
//! Goals: verify root rotation, timestamp, snapshot, targets and delegated targets exactly
//! as python-tuf's ngclient does (the reference the tuf-conformance suite encodes), with
//! every length bounded and every check reported as a precise error. Non-goals: fetching,
//! storage and the clock — [`Updater`] asks for bytes through [`Updater::poll_request`],
//! reports what to persist through [`Updater::poll_event`], and takes `now` as unix
//! seconds, so the same code runs on a gateway, in simnet and in tests.
//!
//! Layers:
//! - [`metadata`]: strict parsing of untrusted JSON, keys, glob matching, hashes.
//! - [`trusted::TrustedMetadataSet`]: the invariant "everything in here was verified
//!   against everything before it", with one `update_*` per role.
//! - [`Updater`]: the sequencing (cache first, then repository; root chain; delegation
//!   search) as a state machine.
pub mod canonical;
pub mod metadata;
pub mod naming;
pub mod release_target;
pub mod rollouts_role;
pub mod time;
pub mod trusted;
mod updater;

use alloc::string::String;

pub use metadata::{Key, TargetFile};
pub use naming::hashed_target_path;
pub use release_target::{ReleaseTarget, ReleaseTargetError};
pub use trusted::TrustedMetadataSet;
pub use updater::{encode_role_name, Event, FetchError, Request, Source, Updater};

/// Extra signature algorithms supplied by the host (for example RSA-PSS), consulted only
/// for keys whose type and scheme this crate does not implement. Returns whether `sig` is
/// `key`'s valid signature over `msg`.
pub type VerifyHook = fn(key: &Key, msg: &[u8], sig: &[u8]) -> bool;

/// Limits and extensions. Every size cap bounds what a malicious repository can make the
/// client download (endless-data attack); the counts bound work per refresh.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Most root versions accepted in one refresh.
    pub max_root_rotations: u32,
    /// Most targets roles visited in one target search.
    pub max_delegations: u32,
    /// Cap on root metadata bytes.
    pub root_max_length: u64,
    /// Cap on timestamp metadata bytes.
    pub timestamp_max_length: u64,
    /// Cap on snapshot metadata bytes when the timestamp does not state its length.
    pub snapshot_max_length: u64,
    /// Cap on targets metadata bytes when the snapshot does not state their length.
    pub targets_max_length: u64,
    /// Verifier for key types this crate lacks.
    pub verify_hook: Option<VerifyHook>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_root_rotations: 32,
            max_delegations: 32,
            root_max_length: 512_000,
            timestamp_max_length: 16_384,
            snapshot_max_length: 2_000_000,
            targets_max_length: 5_000_000,
            verify_hook: None,
        }
    }
}

/// The repository (or whoever controls the bytes) served something a correct repository
/// never would. These are never transient: retrying the same bytes fails the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryError {
    /// The file is not well-formed TUF metadata.
    Malformed {
        /// Role being loaded.
        role: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// `signed._type` is not the role type that was requested.
    WrongType {
        /// Role being loaded.
        role: String,
    },
    /// One key id appears twice in `signatures`.
    DuplicateSignature {
        /// Role being loaded.
        role: String,
    },
    /// Too few distinct authorized keys signed.
    ThresholdNotMet {
        /// Role being loaded.
        role: String,
        /// Distinct valid signatures from authorized keys.
        valid: u32,
        /// Required.
        threshold: u32,
    },
    /// The version is not the one the referencing metadata (or the root chain) demands.
    BadVersion {
        /// Role being loaded.
        role: String,
        /// Version demanded.
        expected: u64,
        /// Version received.
        got: u64,
    },
    /// A version went backwards against trusted metadata (rollback attack).
    Rollback {
        /// Role whose version decreased.
        role: String,
        /// Trusted version.
        trusted: u64,
        /// Version received.
        got: u64,
    },
    /// The metadata is expired at `now` (freeze attack).
    ExpiredMetadata {
        /// Role being loaded.
        role: String,
    },
    /// Bytes do not match the length or a hash the referencing metadata states.
    LengthOrHashMismatch {
        /// Role or target path being checked.
        role: String,
    },
    /// None of the hash algorithms listed is supported, so the bytes cannot be bound.
    NoSupportedHash {
        /// Role or target path being checked.
        role: String,
    },
    /// More bytes than the cap for this file (endless-data attack).
    TooLarge {
        /// Role or target path.
        role: String,
        /// The cap.
        max_length: u64,
    },
    /// A delegated role is not listed in the snapshot.
    MissingFromSnapshot {
        /// Role.
        role: String,
    },
    /// A new snapshot dropped a role the trusted snapshot listed.
    RoleRemoved {
        /// Role file name missing from the new snapshot.
        role: String,
    },
    /// The named delegator does not delegate to this role.
    NotDelegated {
        /// Role being loaded.
        role: String,
        /// The role that supposedly delegates to it.
        delegator: String,
    },
}

/// Why an update or lookup stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Metadata or a target failed verification: the repository lied or is broken.
    Repository(RepositoryError),
    /// A required download did not complete (network, HTTP status, local IO). Retrying
    /// may help; nothing untrusted was accepted.
    Fetch {
        /// Role (or target path) being fetched.
        role: String,
        /// How it failed.
        failure: FetchError,
    },
    /// The caller drove the state machine out of order (a programming error).
    InvalidState(&'static str),
}

impl Error {
    /// Whether the bytes were authentic but older than what is trusted (a rollback) or
    /// expired: what a mirror or peer that has not caught up serves. Such a source is behind,
    /// not lying; every other repository error means the bytes were forged or broken.
    pub fn source_is_behind(&self) -> bool {
        matches!(self, Error::Repository(RepositoryError::Rollback { .. } | RepositoryError::ExpiredMetadata { .. }))
    }
}

impl From<RepositoryError> for Error {
    fn from(e: RepositoryError) -> Self {
        Error::Repository(e)
    }
}

impl core::fmt::Display for RepositoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use RepositoryError::*;
        match self {
            Malformed { role, reason } => write!(f, "{role}: malformed metadata: {reason}"),
            WrongType { role } => write!(f, "{role}: wrong metadata _type"),
            DuplicateSignature { role } => write!(f, "{role}: duplicate signature key id"),
            ThresholdNotMet { role, valid, threshold } => {
                write!(f, "{role}: {valid} valid signatures, threshold {threshold}")
            }
            BadVersion { role, expected, got } => write!(f, "{role}: expected version {expected}, got {got}"),
            Rollback { role, trusted, got } => {
                write!(f, "{role}: version rollback from {trusted} to {got}")
            }
            ExpiredMetadata { role } => write!(f, "{role}: metadata expired"),
            LengthOrHashMismatch { role } => write!(f, "{role}: length or hash mismatch"),
            NoSupportedHash { role } => write!(f, "{role}: no supported hash algorithm"),
            TooLarge { role, max_length } => write!(f, "{role}: larger than {max_length} bytes"),
            MissingFromSnapshot { role } => write!(f, "{role}: not listed in snapshot"),
            RoleRemoved { role } => write!(f, "snapshot: {role} removed from meta"),
            NotDelegated { role, delegator } => {
                write!(f, "{role}: not delegated by {delegator}")
            }
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Repository(e) => write!(f, "repository error: {e}"),
            Error::Fetch { role, failure } => write!(f, "fetching {role} failed: {failure:?}"),
            Error::InvalidState(what) => write!(f, "invalid updater use: {what}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RepositoryError {}
#[cfg(feature = "std")]
impl std::error::Error for Error {}
