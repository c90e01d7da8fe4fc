//! The edge node's status document, one typed shape for every party: the daemon builds it,
//! its `/status` endpoint serves it as JSON, `edge-node status` renders it, and the live demo
//! reads it back. Before, each read the JSON by string keys and a renamed field broke them
//! one at a time, silently.
//!
//! Every field has a default, so a reader accepts a document from a node that lacks a
//! newer field (it reads as zero or empty) instead of refusing it.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// What `GET /status` on an edge node's operations port answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeStatus {
    /// The node's libp2p peer id.
    pub node_id: String,
    /// Its site.
    pub site: String,
    /// Identified peers.
    pub peers: Vec<PeerStatus>,
    /// Releases it knows, complete or not.
    pub releases: Vec<ReleaseStatus>,
    /// The chunk cache.
    pub store: StoreStatus,
    /// Verified chunk bytes received, by source class.
    pub bytes_in: BytesIn,
    /// Chunks from peers that failed verification.
    pub corrupt_chunks: u64,
    /// Chunk requests to peers.
    pub requests: RequestCounts,
    /// Chunks admitted to the cache and not yet durably written.
    pub unwritten_chunks: u64,
    /// What the node refused to trust.
    pub trust: TrustStatus,
    /// Each rollout whose policy the node holds: its site's counts and whether the site
    /// halted itself.
    pub rollouts: Vec<RolloutGuardStatus>,
    /// Device status reports stored here and forwarded to the origin.
    pub reports: ReportsStatus,
}

/// The node's device status reports on their way to the origin (store and forward).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportsStatus {
    /// On disk, awaiting the origin's acknowledgement.
    pub queued: u64,
    /// Acknowledged by the origin since the node started.
    pub forwarded: u64,
    /// Refused because the queue was full.
    pub dropped: u64,
}

/// One rollout as an edge node's site sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RolloutGuardStatus {
    /// The rollout id.
    pub rollout: String,
    /// The newest signed policy's sequence number the node holds.
    pub policy_seq: u64,
    /// That policy's state (running, paused, halted, aborted, complete).
    pub state: String,
    /// The site's own failures crossed the threshold: new installs here are held.
    pub site_halted: bool,
    /// The site's devices installing (latest report).
    pub installing: u32,
    /// Committed.
    pub committed: u32,
    /// Rolled back.
    pub rolled_back: u32,
    /// Failed before the switch.
    pub failed: u32,
}

/// An identified peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerStatus {
    /// Its libp2p peer id.
    pub peer: String,
    /// The site it announced.
    pub site: String,
    /// Scheduled as the origin: configured as one, or proven by serving metadata that
    /// verified while claiming to be one.
    pub origin: bool,
    /// It claims to be the origin (its identify message); a claim alone orders nothing.
    pub claims_origin: bool,
}

/// A release the node knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReleaseStatus {
    /// Release name.
    pub name: String,
    /// Release version.
    pub version: String,
    /// Hardware class.
    pub hw_class: String,
    /// TUF target path of its manifest.
    pub target: String,
    /// Chunks in the release.
    pub chunks: u64,
    /// Chunks cached.
    pub have: u64,
    /// Every chunk cached and durably written.
    pub complete: bool,
}

/// The chunk cache's size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreStatus {
    /// Chunks cached.
    pub chunks: u64,
    /// Bytes cached.
    pub bytes: u64,
    /// The configured capacity.
    pub capacity_bytes: u64,
}

/// Verified chunk bytes received, by where they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BytesIn {
    /// From site-mates over the LAN.
    pub site: u64,
    /// From other sites' edge nodes.
    pub wan: u64,
    /// From the origin.
    pub origin: u64,
}

/// Chunk requests to peers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestCounts {
    /// Sent.
    pub sent: u64,
    /// Failed (timeout, refused, connection lost).
    pub failed: u64,
    /// Duplicates sent at a release's tail.
    pub tail_duplicates: u64,
}

/// What the node refused to trust, and what it trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrustStatus {
    /// Version of the newest timestamp that verified.
    pub timestamp_version: u64,
    /// Repository metadata from peers that failed verification.
    pub metadata_rejected: u64,
    /// Gossip announcements whose timestamp did not verify.
    pub announcements_rejected: u64,
    /// Device status reports refused.
    pub status_reports_rejected: u64,
    /// Devices whose reports were accepted.
    pub reporting_devices: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_missing_fields_reads_with_defaults_and_round_trips() {
        let status: EdgeStatus =
            serde_json::from_str(r#"{"node_id":"n","peers":[{"peer":"p","site":"s"}],"bytes_in":{"wan":7}}"#).unwrap();
        assert_eq!(status.node_id, "n");
        assert_eq!(status.peers[0].site, "s");
        assert!(!status.peers[0].origin);
        assert_eq!(status.bytes_in, BytesIn { site: 0, wan: 7, origin: 0 });
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<EdgeStatus>(&json).unwrap(), status);
    }
}
