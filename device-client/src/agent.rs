//! The Linux agent: drives `protocol::install::Engine` with real slots, a real bootloader
//! backend and real edge nodes.
//!
//! The loop is the sans-IO pattern: feed one input, then carry out every action the engine
//! queued, in order, then sleep until its timer. Files in `data_dir`:
//! - `record` — the engine's record (temp, fsync, rename on every `Persist`);
//! - `target.manifest` — the manifest being installed, written before the download starts;
//! - `installed.manifest` — the active slot's manifest, for chunk reuse;
//! - `progress` — which target chunks are durable in the inactive slot;
//! - `metadata/` — verified TUF metadata, `root.json` pinned;
//! - `status.json` — the last status document; `device.key` — the device identity;
//! - `rollout.policy`, `rollout.install` — the rollout this device follows (see `rollout`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use protocol::codec::ContentKey;
use protocol::install::{
    Action, Engine, EngineConfig, ErrorCode, GateDecision, HealthOutcome, Label, Offer, Record, Release, Slot, State,
};
use protocol::manifest::ManifestView;
use protocol::time::Instant;
use serde_json::Value;

use crate::bootloader::{self, Bootloader};
use crate::config::AgentConfig;
use crate::edges::EdgePool;
use crate::fetch::{self, Counts, DownloadError, DownloadJob, Downloaded};
use crate::health::{self, Verdict};
use crate::rollout::{RolloutState, Stage};
use crate::slot::ImageHasher;
use crate::status;
use crate::tuf_edge::{self, ManifestError, MetadataDir, RefreshError};
use crate::tuf_http::unix_now;
use host::fs::{write_atomic, PUBLIC};
use protocol::device::metadata::{self, MetadataSource, RefreshVerdict};
use protocol::device::release::DeviceIdentity;
use protocol::wire::device::EdgeHoldAnswer;
use protocol::ReleaseId;

/// Longest a reboot command may run before it counts as hung (`systemctl reboot` returns
/// once the shutdown is queued).
const REBOOT_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// `run` keeps going; `check` makes one update attempt (through reboots) and exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The daemon.
    Run,
    /// One attempt.
    Check,
}

/// How a `check` ended.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The record at the end.
    pub record: Record,
    /// The last status document.
    pub status: Value,
}

/// The agent.
pub struct Agent {
    config: AgentConfig,
    mode: Mode,
    engine: Engine,
    bootloader: Box<dyn Bootloader>,
    pool: EdgePool,
    metadata: MetadataDir,
    key: Option<ContentKey>,
    device_key: ed25519_dalek::SigningKey,
    /// The signed rollout policy this device follows and its gate.
    rollout: RolloutState,
    started: std::time::Instant,
    /// The verified manifest of the release offered in the current check.
    offered: Option<Vec<u8>>,
    counts: Option<Counts>,
    /// The last download's whole-image hash, carried over the slot as chunks were committed,
    /// and the release it was for; the image check finishes it instead of reading the slot
    /// from its start.
    image_hasher: Option<(ReleaseId, ImageHasher)>,
    health: Option<String>,
    last_status: Value,
    /// The newest status report reached no edge node: the daemon sends it again (re-signed
    /// under a new number) every check interval until one acknowledges it. Kept on disk
    /// (`status.unsent`) so a restart does not forget it.
    report_unsent: bool,
    progress_bar: Option<indicatif::ProgressBar>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("state", &self.engine.state()).finish()
    }
}

impl Agent {
    /// Opens the data directory, the record and the bootloader.
    ///
    /// Everything that can be checked without writing is checked first (settings, trusted
    /// root, content key, record, bootloader, edges); the data directory is created only
    /// then, so a start that fails on its inputs leaves nothing behind.
    pub fn open(config: AgentConfig, mode: Mode) -> Result<Agent> {
        config.validate()?;
        let metadata = MetadataDir::new(config.data_dir.join("metadata"));
        let root_to_pin = match &config.trusted_root {
            Some(root) if !metadata.has_root() => Some(MetadataDir::read_trusted_root(root)?),
            Some(_) => None,
            None if !metadata.has_root() => {
                bail!("no trusted root: set trusted_root in the config (or --trusted-root) to the fleet's root.json")
            }
            None => None,
        };
        let key = match &config.content_key {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read content key {}", path.display()))?;
                let bytes = protocol::hex::decode_array::<32>(text.trim())
                    .map_err(|_| anyhow!("content key {} must be 64 hex characters", path.display()))?;
                Some(ContentKey(bytes))
            }
            None => None,
        };
        let record = load_record(&config)?;
        let hw_class = Label::new(&config.hw_class).context("hw_class is too long")?;
        let engine_config = EngineConfig {
            check_interval: protocol::time::Duration::from_secs(config.check_interval_secs),
            trial_deadline: protocol::time::Duration::from_secs(config.trial_deadline_secs),
            ..EngineConfig::new(hw_class)
        };
        let bootloader = bootloader::open(&config.bootloader, &config.data_dir)?;
        if config.edges.is_empty() && !config.mdns {
            bail!("no edge node to ask: `edges` is empty and mDNS discovery is off (mdns = false or --no-mdns)");
        }
        let mut pool = EdgePool::new(config.edge_addrs()?, config.timeouts());
        if config.mdns {
            pool =
                pool.with_discovery(Box::new(|| Box::pin(crate::discovery::browse(crate::discovery::BROWSE_TIMEOUT))));
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        if let Some(root) = &root_to_pin {
            metadata.pin_root(root)?;
        }
        let device_key = status::load_or_create_key(&config.data_dir)?;
        let rollout = RolloutState::load(&config.data_dir);
        let report_unsent = config.data_dir.join(UNSENT_MARKER).exists();
        Ok(Agent {
            engine: Engine::new(engine_config, record),
            config,
            mode,
            bootloader,
            pool,
            metadata,
            key,
            device_key,
            rollout,
            started: std::time::Instant::now(),
            offered: None,
            counts: None,
            image_hasher: None,
            health: None,
            last_status: Value::Null,
            report_unsent,
            progress_bar: None,
        })
    }

    fn now(&self) -> Instant {
        Instant(self.started.elapsed().as_micros() as u64)
    }

    /// Boots, then runs until `check` is done (or forever for `run`).
    pub async fn run(mut self) -> Result<CheckResult> {
        let boot = self.bootloader.boot_info().context("bootloader")?;
        tracing::info!(booted = boot.booted.name(), pending = ?boot.pending.map(|s| s.name()),
            state = self.engine.state().name(), version = self.engine.record().installed.version.as_str(), "agent start");
        let now = self.now();
        self.engine.handle_boot(now, boot);
        self.drain().await?;
        if is_resting(self.engine.state()) {
            let now = self.now();
            self.engine.handle_check(now);
            self.drain().await?;
        }
        loop {
            let record = self.engine.record();
            let attempt_failed = record.state == State::Downloading && record.last_error.is_some();
            // A staged image waits for the rollout gate (a window, a hold): this attempt is over.
            let staged = record.state == State::Staged;
            if self.mode == Mode::Check && (is_resting(record.state) || attempt_failed || staged) {
                self.report().await;
                return Ok(CheckResult { record: *self.engine.record(), status: self.last_status.clone() });
            }
            let Some(at) = self.engine.poll_timeout() else {
                if self.mode == Mode::Check {
                    bail!("install engine stopped in state {} with nothing to wait for", self.engine.state().name());
                }
                tokio::time::sleep(Duration::from_secs(self.config.check_interval_secs)).await;
                if self.report_unsent {
                    self.report().await;
                }
                let now = self.now();
                self.engine.handle_check(now);
                self.drain().await?;
                continue;
            };
            let wait = Duration::from_micros(at.0.saturating_sub(self.now().0));
            tokio::time::sleep(wait).await;
            let now = self.now();
            self.engine.handle_timeout(now);
            self.drain().await?;
        }
    }

    /// Carries out queued actions until none is left.
    async fn drain(&mut self) -> Result<()> {
        while let Some(action) = self.engine.poll_action() {
            tracing::debug!(?action, state = self.engine.state().name(), "action");
            self.execute(action).await?;
        }
        Ok(())
    }

    async fn execute(&mut self, action: Action) -> Result<()> {
        let now = self.now();
        match action {
            Action::Persist => self.persist()?,
            Action::FetchMetadata => self.fetch_metadata().await,
            Action::AskGate => {
                // Downloads pre-stage regardless of windows and of the site's install budget:
                // the edge is asked before the switch only.
                let device = self.device_id();
                let recheck = self.config.check_interval_secs;
                let decision = self.rollout.decide(
                    Stage::Download,
                    &device,
                    &self.config.site,
                    EdgeHoldAnswer::None,
                    now,
                    unix_now(),
                    recheck,
                );
                if decision == GateDecision::Proceed {
                    if let Some(manifest) = &self.offered {
                        write_atomic(&self.config.data_dir.join("target.manifest"), manifest, PUBLIC)?;
                    }
                    if let Some(offer) = self.engine.pending_offer() {
                        let id = offer.id;
                        self.rollout.mark_install(id, unix_now())?;
                    }
                }
                self.engine.handle_gate(now, decision);
            }
            Action::AskSwitch => {
                let (device, site, recheck) =
                    (self.device_id(), self.config.site.clone(), self.config.check_interval_secs);
                // The device's own verdict first: the edge is asked (and reserves a place in
                // the site's install budget) only for a device that would go now.
                let mut decision =
                    self.rollout.decide(Stage::Switch, &device, &site, EdgeHoldAnswer::None, now, unix_now(), recheck);
                if decision == GateDecision::Proceed {
                    let hold = self.edge_hold(&device).await;
                    if hold != EdgeHoldAnswer::None {
                        decision = self.rollout.decide(Stage::Switch, &device, &site, hold, now, unix_now(), recheck);
                    }
                }
                self.engine.handle_switch_gate(now, decision);
            }
            Action::ResetProgress => {
                let _ = std::fs::remove_file(self.config.data_dir.join("progress"));
                self.counts = None;
            }
            Action::Download { slot } => self.download(slot).await?,
            Action::VerifyImage { slot } => {
                let ok = self.verify_image(slot).await;
                self.engine.handle_image_verified(self.now(), ok);
            }
            Action::ActivateSlot { slot } => match self.bootloader.activate(slot) {
                Ok(()) => self.engine.handle_slot_activated(now),
                Err(e) => {
                    tracing::error!(slot = slot.name(), "cannot activate slot: {e:#}");
                    self.engine.handle_storage_failed(now);
                }
            },
            Action::Reboot => self.reboot().await?,
            Action::RunHealthChecks { deadline } => {
                let left = Duration::from_micros(deadline.0.saturating_sub(now.0));
                let record = self.engine.record();
                let trial = health::TrialInfo {
                    version: record.target.map(|t| t.version.as_str().to_string()).unwrap_or_default(),
                    slot: record.inactive().name().to_string(),
                };
                let checks = &self.config.health_check;
                let verdict =
                    health::run_checks(checks, &trial, &mut self.pool, std::time::Instant::now() + left).await;
                let outcome = match &verdict {
                    Verdict::Healthy => {
                        self.health = Some("healthy".into());
                        HealthOutcome::Healthy
                    }
                    Verdict::Failed { check, why } => {
                        tracing::warn!(check, why, "health check failed; rolling back");
                        self.health = Some(format!("{check}: {why}"));
                        HealthOutcome::Failed
                    }
                };
                self.engine.handle_health(self.now(), outcome);
            }
            Action::Commit { slot } => {
                self.bootloader.commit(slot).with_context(|| format!("committing slot {}", slot.name()))?;
                self.engine.handle_committed(now);
                tracing::info!(
                    version = self.engine.record().installed.version.as_str(),
                    slot = slot.name(),
                    "committed"
                );
            }
            Action::RollBack { slot } => {
                self.bootloader.roll_back(slot).with_context(|| format!("rolling back to slot {}", slot.name()))?;
                tracing::warn!(slot = slot.name(), "rolled back");
            }
            Action::Report => self.report().await,
        }
        Ok(())
    }

    fn persist(&mut self) -> Result<()> {
        let record = self.engine.record();
        write_atomic(&self.config.data_dir.join("record"), &record.encode(), PUBLIC)?;
        // Keep the installed release's manifest for chunk reuse; drop a finished target's.
        let dir = &self.config.data_dir;
        let target = dir.join("target.manifest");
        if record.target.is_none() && target.exists() {
            let is_installed = std::fs::read(&target).is_ok_and(|m| ReleaseId::of_manifest(&m) == record.installed.id);
            if is_installed {
                std::fs::rename(&target, dir.join("installed.manifest"))?;
            } else {
                std::fs::remove_file(&target)?;
            }
            host::fs::sync_dir(dir)?;
        }
        Ok(())
    }

    /// Refreshes TUF and offers the chosen release to the engine.
    ///
    /// Which edges: every reachable edge's probe already claimed a timestamp version, so the
    /// refresh goes first through the edge claiming the newest (however slowly it ranks, and
    /// rotating among equally new ones), then through others only while they claim something
    /// newer than what verified (`metadata::metadata_order`): three fast stale mirrors cannot
    /// hold the device back while a slower honest edge has news, and the newest verified
    /// view wins. An edge whose metadata fails verification is penalized; one merely behind
    /// (validly signed, older than what the device trusts) is not used, and not penalized;
    /// one that does not answer is demoted.
    async fn fetch_metadata(&mut self) {
        let now = self.now();
        let mut edges = self.pool.connect_ranked().await;
        if edges.is_empty() {
            tracing::warn!("no edge node reachable");
            return self.engine.handle_check_failed(now, ErrorCode::Network);
        }
        let mut last = ErrorCode::Network;
        for edge in edges.iter().filter(|e| e.timestamp_error.is_some()) {
            let why = edge.timestamp_error.as_deref().unwrap_or_default();
            tracing::warn!(edge = %edge.addr, "metadata from edge node rejected: {why}");
            self.pool.penalize(edge.addr, "timestamp does not parse");
            last = ErrorCode::Verification;
        }
        edges.retain(|e| e.timestamp_error.is_none());
        let sources: Vec<MetadataSource> = edges
            .iter()
            .map(|e| MetadataSource { claimed_version: e.claimed_version, last_used: self.pool.metadata_used(&e.addr) })
            .collect();
        let mut behind = 0usize;
        // (verified timestamp version, metadata, index in `edges`)
        let mut best: Option<(u64, tuf_edge::Refreshed, usize)> = None;
        for i in metadata::metadata_order(&sources) {
            let edge = &mut edges[i];
            let best_version = best.as_ref().map(|(v, _, _)| *v);
            if !metadata::worth_refreshing(edge.claimed_version, best_version) {
                if edge.claimed_version.zip(best_version).is_some_and(|(claimed, newest)| claimed < newest) {
                    tracing::info!(edge = %edge.addr, claimed = edge.claimed_version, newest = best_version,
                        "edge node is behind; not used for this refresh");
                }
                continue;
            }
            match tuf_edge::refresh(&mut edge.client, &self.metadata, &self.config.release).await {
                Ok(refreshed) => {
                    self.pool.record_metadata_use(edge.addr);
                    let version = refreshed.trusted.timestamp().map_or(0, |t| t.common.version);
                    if best_version.is_none_or(|v| version > v) {
                        best = Some((version, refreshed, i));
                    }
                }
                Err(RefreshError::Metadata(e)) => match metadata::refresh_verdict(&e) {
                    RefreshVerdict::Behind => {
                        tracing::info!(edge = %edge.addr, "edge node is behind the metadata this device trusts; not used for this refresh: {e}");
                        behind += 1;
                        last = ErrorCode::Verification;
                    }
                    RefreshVerdict::Lied => {
                        tracing::warn!(edge = %edge.addr, "metadata from edge node rejected: {e}");
                        self.pool.penalize(edge.addr, "metadata failed verification");
                        last = ErrorCode::Verification;
                    }
                    RefreshVerdict::Failed => {
                        tracing::info!(edge = %edge.addr, "metadata refresh through edge node failed: {e}");
                        self.pool.demote(edge.addr, "metadata refresh failed");
                    }
                },
                Err(e @ RefreshError::Malformed(_)) => {
                    tracing::warn!(edge = %edge.addr, "metadata from edge node rejected: {e}");
                    self.pool.penalize(edge.addr, "malformed metadata response");
                    last = ErrorCode::Verification;
                }
                Err(RefreshError::Local(e)) => {
                    tracing::error!("cannot keep verified metadata: {e:#}");
                    return self.engine.handle_check_failed(self.now(), ErrorCode::Storage);
                }
            }
        }
        let Some((_, refreshed, source)) = best else {
            if behind > 0 {
                tracing::warn!(behind, "every edge node that answered is behind the metadata this device trusts");
            }
            return self.engine.handle_check_failed(self.now(), last);
        };
        // The edge the metadata came from has what it names; the others may be behind.
        let source_edge = edges.swap_remove(source);
        edges.insert(0, source_edge);
        let tuf_edge::Refreshed { trusted, rollouts, policy } = refreshed;
        // A repository that delegates rollouts: only what a verified policy names installs.
        let policy = match (rollouts, policy) {
            (false, _) => None,
            (true, None) => {
                tracing::info!(release = %self.config.release, "no rollout of this release has started; nothing to install");
                if let Err(e) = self.rollout.set_policy(None) {
                    tracing::warn!("cannot forget the last rollout policy: {e:#}");
                }
                return self.engine.handle_no_update(self.now());
            }
            (true, Some(target)) => match self.fetch_policy(&mut edges, &target).await {
                Some(bytes) => Some(bytes),
                None => return self.engine.handle_check_failed(self.now(), ErrorCode::Verification),
            },
        };
        if let Err(e) = self.rollout.set_policy(policy) {
            tracing::error!("cannot keep the rollout policy: {e:#}");
            return self.engine.handle_check_failed(self.now(), ErrorCode::Storage);
        }
        let named = self.rollout.policy().map(|p| {
            let r = p.release();
            protocol::rollout::RolloutRelease {
                name: r.name.to_string(),
                version: r.version.to_string(),
                hw_class: r.hw_class.to_string(),
            }
        });
        let device = DeviceIdentity {
            release: &self.config.release,
            hw_class: &self.config.hw_class,
            security_floor: self.engine.record().min_security_counter,
        };
        let Some((target, refusal)) =
            tuf_edge::choose_release(&trusted, &device, named.as_ref().map(|r| r.as_str()).as_ref())
        else {
            tracing::info!(release = %self.config.release, "no release published for this device");
            return self.engine.handle_no_update(self.now());
        };
        if let Some(reason) = refusal {
            // Offered all the same: the engine refuses it too and records why, for the
            // status report.
            tracing::info!(target = %target.path, ?reason, "the newest release is not one this device may install");
        }
        if named.is_some() && self.is_older_than_installed(target) {
            // A policy can pick only among signed releases, but not an older one: a stolen
            // rollout key must not roll devices back.
            tracing::warn!(target = %target.path, "the rollout policy names a release older than the installed one; ignored");
            return self.engine.handle_no_update(self.now());
        }
        let target = target.clone();
        for edge in edges.iter_mut() {
            let manifest = match tuf_edge::fetch_manifest(&mut edge.client, &target).await {
                Ok(m) => m,
                Err(ManifestError::Unavailable(why)) => {
                    tracing::info!(edge = %edge.addr, "manifest not available from edge node: {why}");
                    continue;
                }
                Err(ManifestError::Invalid(why)) => {
                    tracing::warn!(edge = %edge.addr, "manifest from edge node rejected: {why}");
                    self.pool.penalize(edge.addr, "manifest failed verification");
                    last = ErrorCode::Verification;
                    continue;
                }
            };
            let Ok(view) = ManifestView::new_checked(&manifest) else { continue };
            let (Some(version), Some(hw_class)) = (Label::new(view.version()), Label::new(view.hw_class())) else {
                last = ErrorCode::Verification;
                continue;
            };
            let offer = Offer {
                release: Release {
                    id: ReleaseId::of_manifest(&manifest),
                    version,
                    security_counter: view.security_counter(),
                    image_len: view.image_len(),
                    chunk_count: view.chunk_count(),
                },
                hw_class,
            };
            tracing::info!(edge = %edge.addr, version = view.version(), "release found");
            self.offered = Some(manifest);
            return self.engine.handle_offer(self.now(), offer);
        }
        self.engine.handle_check_failed(self.now(), last);
    }

    /// The rollout policy `target` from the first edge that has it and serves it intact.
    async fn fetch_policy(
        &mut self,
        edges: &mut [crate::edges::Connected],
        target: &protocol::tuf::TargetFile,
    ) -> Option<Vec<u8>> {
        for edge in edges.iter_mut() {
            match tuf_edge::fetch_policy(&mut edge.client, target).await {
                Ok(bytes) => return Some(bytes),
                Err(ManifestError::Unavailable(why)) => tracing::info!(edge = %edge.addr, "{why}"),
                Err(ManifestError::Invalid(why)) => {
                    tracing::warn!(edge = %edge.addr, "rollout policy from edge node rejected: {why}");
                    self.pool.penalize(edge.addr, "rollout policy failed verification");
                }
            }
        }
        None
    }

    /// Whether `target` ranks below the installed release (lower security counter, or the
    /// same counter and a lower version).
    fn is_older_than_installed(&self, target: &protocol::tuf::TargetFile) -> bool {
        let installed = &self.engine.record().installed;
        let Ok(meta) = target.release() else { return false };
        meta.security_counter
            .cmp(&installed.security_counter)
            .then_with(|| protocol::device::release::compare_versions(&meta.version, installed.version.as_str()))
            .is_lt()
    }

    /// The target manifest on disk, checked against the record's target id.
    fn target_manifest(&self) -> Result<Vec<u8>> {
        let target = self.engine.record().target.context("no target")?;
        let bytes = std::fs::read(self.config.data_dir.join("target.manifest")).context("target manifest missing")?;
        if ReleaseId::of_manifest(&bytes) != target.id {
            bail!("target manifest on disk does not match the record");
        }
        Ok(bytes)
    }

    fn installed_manifest(&self) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.config.data_dir.join("installed.manifest")).ok()?;
        (ReleaseId::of_manifest(&bytes) == self.engine.record().installed.id).then_some(bytes)
    }

    async fn download(&mut self, slot: Slot) -> Result<()> {
        self.image_hasher = None;
        let manifest = match self.target_manifest() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("{e:#}; abandoning this target");
                self.engine.handle_storage_failed(self.now());
                return Ok(());
            }
        };
        let record = *self.engine.record();
        // After a failed image check the active slot is suspect: fetch everything.
        let reuse_from = (record.verify_failures == 0)
            .then(|| self.installed_manifest())
            .flatten()
            .map(|m| (self.config.slot_path(record.active).to_path_buf(), m));
        let job = DownloadJob {
            manifest: manifest.clone(),
            key: self.key.clone(),
            slot: self.config.slot_path(slot).to_path_buf(),
            reuse_from,
            progress: self.config.data_dir.join("progress"),
            carried: (record.bytes_fetched, record.bytes_reused),
            parallel_edges: self.config.parallel_edges,
        };
        let view = ManifestView::new_checked(&manifest).map_err(|e| anyhow!("{e}"))?;
        let bar = self.progress_bar(view.image_len(), view.version());
        let image_len = view.image_len().max(1);
        let chunk_count = view.chunk_count().max(1);
        let mut last_log = std::time::Instant::now();
        let engine = &mut self.engine;
        let data_dir = self.config.data_dir.clone();
        // Actions the engine queues during the download other than `Persist` (none today)
        // are carried out, in order, as soon as the download returns: none is dropped.
        let mut deferred: Vec<Action> = Vec::new();
        let result = fetch::download(job, &mut self.pool, |counts| {
            engine.handle_progress(counts.chunks_done, counts.bytes_fetched, counts.bytes_reused);
            while let Some(action) = engine.poll_action() {
                if action == Action::Persist && deferred.is_empty() {
                    write_atomic(&data_dir.join("record"), &engine.record().encode(), PUBLIC)?;
                } else {
                    deferred.push(action);
                }
            }
            let done = counts.chunks_done as u64 * image_len / chunk_count as u64;
            match &bar {
                Some(bar) => bar.set_position(done),
                None if last_log.elapsed() > Duration::from_secs(2) => {
                    last_log = std::time::Instant::now();
                    tracing::info!(
                        chunks = counts.chunks_done,
                        of = counts.chunk_count,
                        fetched = counts.bytes_fetched,
                        reused = counts.bytes_reused,
                        "downloading"
                    );
                }
                None => {}
            }
            Ok(())
        })
        .await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        // Kept before the deferred actions run, so a download among them would replace it.
        let result = result.map(|Downloaded { counts, image_hasher }| {
            self.image_hasher = image_hasher.map(|h| (ReleaseId::of_manifest(&manifest), h));
            counts
        });
        for action in deferred {
            tracing::debug!(?action, "action queued during the download");
            Box::pin(self.execute(action)).await?;
        }
        let now = self.now();
        match result {
            Ok(counts) => {
                tracing::info!(
                    fetched = counts.bytes_fetched,
                    reused = counts.bytes_reused,
                    chunks = counts.chunk_count,
                    "download complete"
                );
                self.counts = Some(counts);
                self.engine.handle_download_done(now);
            }
            Err(DownloadError::Network(why)) => {
                tracing::warn!("download stopped: {why}");
                self.engine.handle_download_failed(now, ErrorCode::Network);
            }
            Err(DownloadError::Storage(e)) => {
                tracing::error!("download failed: {e:#}");
                self.engine.handle_storage_failed(now);
            }
        }
        Ok(())
    }

    fn progress_bar(&self, total: u64, version: &str) -> Option<indicatif::ProgressBar> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new(total);
        let style =
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .ok()?;
        bar.set_style(style.progress_chars("=> "));
        bar.set_message(format!("v{version}"));
        let _ = &self.progress_bar;
        Some(bar)
    }

    async fn verify_image(&mut self, slot: Slot) -> bool {
        let Ok(manifest) = self.target_manifest() else { return false };
        let path = self.config.slot_path(slot).to_path_buf();
        let release = ReleaseId::of_manifest(&manifest);
        let carried = self.image_hasher.take().filter(|(id, _)| *id == release).map(|(_, hasher)| hasher);
        let result = tokio::task::spawn_blocking(move || {
            let view = ManifestView::new_checked(&manifest).map_err(|e| anyhow!("{e}"))?;
            let hasher = match carried.filter(|h| h.path() == path && h.image_len() == view.image_len()) {
                Some(hasher) => hasher,
                None => ImageHasher::open(&path, view.image_len())?,
            };
            let hashed_during_download = hasher.hashed();
            let blake = hasher.finish()?;
            Ok::<_, anyhow::Error>((blake == view.image_blake3(), hashed_during_download))
        })
        .await;
        match result {
            Ok(Ok((true, hashed_during_download))) => {
                tracing::info!(slot = slot.name(), hashed_during_download, "image hash matches the manifest");
                true
            }
            Ok(Ok((false, hashed_during_download))) => {
                tracing::error!(
                    slot = slot.name(),
                    hashed_during_download,
                    "image hash does not match the manifest; downloading again"
                );
                false
            }
            Ok(Err(e)) => {
                tracing::error!(slot = slot.name(), "cannot verify image: {e:#}");
                false
            }
            Err(_) => false,
        }
    }

    async fn reboot(&mut self) -> Result<()> {
        self.report().await;
        if !self.config.reboot.is_empty() {
            tracing::info!(command = ?self.config.reboot, "rebooting");
            let argv: Vec<std::ffi::OsString> = self.config.reboot.iter().map(Into::into).collect();
            // `systemctl reboot` returns once the shutdown is queued; a command still running
            // after REBOOT_COMMAND_TIMEOUT is hung, and is killed with what it started.
            let finished = tokio::task::spawn_blocking(move || host::process::run(&argv, &[], REBOOT_COMMAND_TIMEOUT))
                .await
                .context("the reboot command's runner failed")?
                .context("reboot command failed")?;
            if !finished.status.success() {
                bail!(
                    "reboot command {:?} failed: {}; stderr: {}",
                    self.config.reboot,
                    finished.status,
                    finished.last_stderr_line()
                );
            }
            // The machine is going down; wait for it.
            tokio::time::sleep(Duration::from_secs(600)).await;
            bail!("reboot command returned but the device did not reboot");
        }
        tracing::info!("restarting the agent (reboot stand-in)");
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().context("cannot find own executable")?;
        let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
        Err(anyhow!("cannot restart the agent: {err}"))
    }

    /// This device's identity in rollouts: its status key.
    fn device_id(&self) -> [u8; 32] {
        self.device_key.verifying_key().to_bytes()
    }

    /// What the first edge node that answers says about this device in the policy's
    /// rollout; no answer holds nothing (the device's own gate still decides).
    async fn edge_hold(&mut self, device: &[u8; 32]) -> EdgeHoldAnswer {
        let Some(rollout) = self.rollout.policy().map(|p| p.id().to_string()) else {
            return EdgeHoldAnswer::None;
        };
        let ask = async {
            let mut edge = self.pool.connect_first().await?;
            edge.client.set_request_timeout(Duration::from_secs(2));
            edge.client.rollout_hold(&rollout, *device).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(5), ask).await.ok().flatten().unwrap_or(EdgeHoldAnswer::None)
    }

    async fn report(&mut self) {
        let seq = match status::next_seq(&self.config.data_dir) {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!("status report not sent: {e:#}");
                return;
            }
        };
        let mut report = status::report(
            &self.device_key,
            seq,
            &self.config.release,
            self.engine.record(),
            self.counts,
            self.health.as_deref(),
            unix_now(),
        );
        let fields = self.rollout.report_fields(self.engine.record(), unix_now());
        (report.rollout, report.result, report.error_code, report.install_secs, report.slot) =
            (fields.rollout, fields.result, fields.error_code, fields.install_secs, fields.slot);
        let mut doc = serde_json::to_value(&report).unwrap_or_default();
        // Not signed or sent: why the device waits, for `device-client status`.
        if let (Some(why), Some(object)) = (&self.rollout.waiting, doc.as_object_mut()) {
            object.insert("waiting".into(), Value::String(why.clone()));
        }
        if let Ok(bytes) = serde_json::to_vec_pretty(&doc) {
            let _ = write_atomic(&self.config.data_dir.join("status.json"), &bytes, PUBLIC);
        }
        let signed = status::sign(&self.device_key, &report);
        self.last_status = doc;
        // An edge node that is reachable right now forwards it; if none acknowledges it (no
        // edge, a busy or rate-limited one, a lost answer), the daemon tries again later: the
        // publisher's rollout counts this device only once a report arrives.
        let send = async {
            let mut edge = self.pool.connect_first().await?;
            edge.client.set_request_timeout(Duration::from_secs(2));
            match edge.client.report_status(&signed).await {
                Ok(()) => Some(()),
                Err(e) => {
                    tracing::debug!(edge = %edge.addr, %e, "status report not delivered");
                    None
                }
            }
        };
        let delivered = tokio::time::timeout(Duration::from_secs(5), send).await.ok().flatten().is_some();
        let marker = self.config.data_dir.join(UNSENT_MARKER);
        let marked = if delivered { std::fs::remove_file(&marker) } else { write_atomic(&marker, b"", PUBLIC) };
        if let Err(e) = marked {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!("cannot update {}: {e}", marker.display());
            }
        }
        if !delivered && !self.report_unsent {
            tracing::info!("status report not delivered; sending it again every check interval");
        }
        self.report_unsent = !delivered;
    }
}

/// Present while the newest status report is unacknowledged.
const UNSENT_MARKER: &str = "status.unsent";

fn is_resting(state: State) -> bool {
    matches!(state, State::Idle | State::Committed | State::RolledBack)
}

fn load_record(config: &AgentConfig) -> Result<Record> {
    let path = config.data_dir.join("record");
    match std::fs::read(&path) {
        Ok(bytes) => Record::decode(&bytes).map_err(|e| {
            anyhow!(
                "{} is damaged ({e:?}); restore it or delete it to treat slot A as the factory image",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let version = Label::new(&config.factory_version).context("factory_version too long")?;
            Ok(Record::factory(Slot::A, Release::unknown(version, config.factory_security_counter)))
        }
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// The data directory's status document, for `device-client status`.
pub fn read_status(data_dir: &Path) -> Result<Value> {
    let path: PathBuf = data_dir.join("status.json");
    let bytes = std::fs::read(&path)
        .with_context(|| format!("no status at {}: has the agent run with this data dir?", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}
