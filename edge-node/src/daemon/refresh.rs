//! Keeping the repository current: refreshes over the mesh (TUF through `tuf_sync`, from
//! the peers `meta_sources` orders), the root pinned on first use from a configured origin
//! only, gossip announcements verified before they order a refresh, and the retry backoff.

use anyhow::Result;
use libp2p::PeerId;
use protocol::edge::{PeerRole, SiteId};
use std::collections::HashSet;
use std::time::Instant as WallInstant;
use tracing::{debug, warn};

use super::meta_sources::SourceOutcomes;
use super::tuf_sync::{self, TufDirs};
use super::{node_id, unix_now, Daemon, Internal};
use crate::metrics::Metrics;
use mesh::NetworkClient;

/// What a finished refresh reports to the main loop.
pub(super) struct RefreshOutcome {
    /// New releases and rollout policies, or why the refresh failed.
    result: Result<(Vec<tuf_sync::FoundRelease>, Vec<tuf_sync::FoundPolicy>, Vec<tuf_sync::FoundSeal>)>,
    /// How each peer asked answered.
    sources: SourceOutcomes,
    /// The pinned root after the refresh (it may have rotated) and the trusted timestamp
    /// version, for checking announcements.
    root: Option<Vec<u8>>,
    timestamp_version: u64,
}

/// Pins the root on first use, from configured origins only (see `meta_sources`), after
/// checking it is a self-consistent root.
async fn pin_first_root(client: &NetworkClient, root_sources: &[PeerId], dirs: &TufDirs) -> Result<()> {
    for peer in root_sources {
        let Ok(resp) = client.request_meta(*peer, "metadata/1.root.json").await else { continue };
        let Some(root) = resp.body else { continue };
        match dirs.pin_root(&root, unix_now()) {
            Ok(()) => {
                warn!(%peer, "no trusted_root configured: pinned the configured origin's 1.root.json on first use");
                return Ok(());
            }
            Err(e) => warn!(%peer, "configured origin served an unusable root: {e:#}"),
        }
    }
    anyhow::bail!(
        "no trusted root yet: no configured origin is connected to take one from \
         (set --trusted-root, or --bootstrap the origin's address or --origin-peer its peer id)"
    )
}

impl Daemon {
    pub(super) fn start_refresh(&mut self) {
        if self.refreshing {
            self.refresh_again = true;
            return;
        }
        let now = WallInstant::now();
        let sources = self.meta_sources.order(self.peer_infos(), &self.config.site, now);
        if sources.is_empty() {
            return;
        }
        // Trust on first use only from configured origins (see `meta_sources`).
        let root_sources = self.meta_sources.root_sources(self.peer_infos(), now);
        self.refreshing = true;
        let (client, dirs, tx) = (self.client.clone(), self.dirs.clone(), self.internal_tx.clone());
        let announced = self.announced.take().map(|(_, bytes)| bytes);
        let known = self.releases.target_paths();
        let known_policies: HashSet<String> = self.policies.values().map(|(file, _)| file.clone()).collect();
        let known_seals: HashSet<String> = self.device.known_target_files();
        tokio::spawn(async move {
            let mut outcomes = SourceOutcomes::default();
            let result = async {
                if !dirs.has_root() {
                    pin_first_root(&client, &root_sources, &dirs).await?;
                }
                let trusted = tuf_sync::refresh(&client, &sources, &dirs, unix_now(), announced, &mut outcomes).await?;
                let found = tuf_sync::new_releases(
                    &client,
                    &sources,
                    &dirs,
                    &trusted,
                    &|path| known.contains(path),
                    &mut outcomes,
                )
                .await;
                let policies = tuf_sync::new_policies(
                    &client,
                    &sources,
                    &dirs,
                    &trusted,
                    &|file| known_policies.contains(file),
                    &mut outcomes,
                )
                .await;
                let seals = tuf_sync::new_seals(
                    &client,
                    &sources,
                    &dirs,
                    &trusted,
                    &|file| known_seals.contains(file),
                    &mut outcomes,
                )
                .await;
                Ok(((found, policies, seals), trusted.timestamp().map_or(0, |t| t.common.version)))
            }
            .await;
            let root = dirs.trusted.read_root(protocol::tuf::Config::default().root_max_length).ok();
            let (result, timestamp_version) = match result {
                Ok((found, version)) => (Ok(found), version),
                Err(e) => (Err(e), 0),
            };
            let outcome = RefreshOutcome { result, sources: outcomes, root, timestamp_version };
            let _ = tx.send(Internal::Refreshed(outcome)).await;
        });
    }

    /// A timestamp pushed by gossip. It orders nothing until it verifies against the pinned
    /// root: a forged one is dropped and its author skipped for metadata for a while.
    pub(super) fn handle_announcement(&mut self, source: Option<PeerId>, bytes: Vec<u8>) {
        let Some(root) = &self.pinned_root else {
            // Nothing to check it against yet: a refresh pins a root from a configured origin.
            self.start_refresh();
            return;
        };
        match tuf_sync::verify_announcement(root, &bytes, unix_now()) {
            Ok(version) => {
                let pending = self.announced.as_ref().map_or(0, |(v, _)| *v);
                debug!(version, trusted = self.trusted_timestamp_version, "release announcement");
                // Gossip may deliver an older timestamp after a newer one (re-announcements
                // travel different paths); refreshing with it would fail as a rollback.
                if version > self.trusted_timestamp_version && version > pending {
                    self.announced = Some((version, bytes));
                    self.start_refresh();
                }
            }
            Err(e) => {
                Metrics::add(&self.metrics.announcements_rejected, 1);
                warn!(?source, "announcement rejected: {e:#}");
                if let Some(peer) = source {
                    self.meta_sources.penalize(peer, WallInstant::now());
                }
            }
        }
    }

    pub(super) fn handle_refreshed(&mut self, outcome: RefreshOutcome) {
        self.refreshing = false;
        let RefreshOutcome { result, sources, root, timestamp_version } = outcome;
        Metrics::add(&self.metrics.metadata_rejected, sources.lied.len() as u64);
        let now = WallInstant::now();
        self.meta_sources.record(&sources, now);
        for peer in &sources.lied {
            warn!(%peer, "peer served repository metadata that failed verification; not asking it for 10 min");
        }
        // A peer that claims to be the origin and proved it by serving metadata that verified
        // is scheduled as the origin from now on.
        let sched_now = self.now();
        for peer in &sources.verified {
            if let Some((site, true)) = self.sites.get(peer) {
                if self.meta_sources.acts_as_origin(peer, true) {
                    let site = SiteId::from_name(site);
                    self.scheduler.handle_peer_up(sched_now, node_id(peer), site, PeerRole::Origin);
                }
            }
        }
        if root.is_some() {
            self.pinned_root = root;
        }
        match result {
            Ok((found, policies, seals)) => {
                self.refresh_failures = 0;
                self.trusted_timestamp_version = self.trusted_timestamp_version.max(timestamp_version);
                if self.announced.as_ref().is_some_and(|(v, _)| *v <= self.trusted_timestamp_version) {
                    self.announced = None;
                }
                for release in found {
                    self.register_release(&release.target_path, &release.manifest);
                }
                for policy in policies {
                    self.register_policy(policy);
                }
                for seal in seals {
                    self.device.publish_target(seal.target_path, seal.mirror_file);
                }
                if std::mem::take(&mut self.refresh_again) {
                    self.start_refresh();
                }
            }
            Err(e) => {
                // E.g. a stale announcement (an older timestamp than we trust) or a
                // peer that has not caught up: try again soon from the peers rather
                // than wait for the periodic refresh, backing off while it fails.
                warn!("repository refresh failed: {e:#}");
                self.refresh_again = false;
                let delay_ms = (250u64 << self.refresh_failures.min(8)).min(self.config.refresh_secs * 1000);
                self.refresh_failures += 1;
                let tx = self.internal_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                    let _ = tx.send(Internal::RefreshDue).await;
                });
            }
        }
    }
}
