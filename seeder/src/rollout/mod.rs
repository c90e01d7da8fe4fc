//! `seeder rollout …`: start a staged rollout of a signed release, see where it stands, and
//! pause, resume or abort it. Each command that changes a rollout signs a new version of its
//! policy under the `rollouts` delegation ([`crate::rollouts_role`]); nothing is signed when
//! a flag or the release is wrong. `seeder serve` runs the controller that advances and halts
//! rollouts from the fleet's reports.

mod args;
pub mod board;
pub mod drive;
mod record;
mod tracked;

use anyhow::{anyhow, bail, Context, Result};
use protocol::rollout::policy::limits::FULL_PPM;
use protocol::rollout::{Controller, HealthGate, Phase, RolloutPolicy, RolloutRelease, RolloutState, Wave};
use protocol::tuf::rollouts_role::policy_target_path;
use serde::Serialize;

use crate::repo::Repo;
use crate::{fleet, release, rollouts_role, time};

/// Defaults of `seeder rollout start`, documented in its `--help`.
pub mod defaults {
    /// Cumulative shares of the fleet per wave.
    pub const WAVES: &str = "1,10,50,100";
    /// Least time each wave runs before the next starts.
    pub const SOAK: &str = "1h";
    /// Failure rate (rolled back or failed) that halts the rollout, percent.
    pub const MAX_FAILURE_RATE: &str = "5";
    /// Final outcomes a wave needs before it may advance or be judged.
    pub const MIN_REPORTS: u32 = 10;
}

/// What `seeder rollout start` is asked for.
#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// Repository directory.
    #[arg(long)]
    pub repo: std::path::PathBuf,
    /// Release name (as published with `seeder release add`).
    pub name: String,
    /// Release version; it must be published already.
    pub version: String,
    /// Cumulative percentages of the fleet per wave, increasing, ending at 100.
    #[arg(long, default_value = defaults::WAVES)]
    pub waves: String,
    /// A device that installs in the first wave (its ed25519 public key, 64 hex digits, or
    /// its enrolled device id); repeat for more (at most 32).
    #[arg(long = "canary")]
    pub canaries: Vec<String>,
    /// Least time each wave runs before the next may start: 0, 90s, 30m, 2h, 1d.
    #[arg(long, default_value = defaults::SOAK)]
    pub soak: String,
    /// Failure rate (percent of a wave's final outcomes rolled back or failed) that halts
    /// the rollout.
    #[arg(long, default_value = defaults::MAX_FAILURE_RATE)]
    pub max_failure_rate: String,
    /// Final outcomes a wave needs before it may advance, and before its failure rate is
    /// judged.
    #[arg(long, default_value_t = defaults::MIN_REPORTS)]
    pub min_reports: u32,
    /// A maintenance window: SITES:DAYS:HH:MM-HH:MM:UTC_OFFSET, e.g.
    /// `plant-*:mon-fri:22:00-02:00:+01:00`. Devices download any time but switch slots only
    /// inside a window of their site; without windows, any time. Repeat for more.
    #[arg(long = "window")]
    pub windows: Vec<String>,
    /// Most devices of one site installing at once (0: no limit); edge nodes enforce it.
    #[arg(long, default_value_t = 0)]
    pub max_concurrent_per_site: u32,
    /// Rollout id (selects which devices fall in which wave) [default: NAME-VERSION].
    #[arg(long)]
    pub id: Option<String>,
}

/// One rollout as `seeder rollout status` and the other commands print it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    /// Rollout id.
    pub id: String,
    /// Release name, version and hardware class.
    pub release: String,
    /// Version.
    pub version: String,
    /// Hardware class.
    pub hw_class: String,
    /// running, paused, halted, aborted or complete.
    pub state: String,
    /// Why it halted.
    pub halt_reason: Option<String>,
    /// Policy sequence number (one per signed change).
    pub seq: u64,
    /// Index of the current wave.
    pub current_wave: usize,
    /// When the current wave started (RFC 3339).
    pub wave_started_at: String,
    /// The waves with their counts and gate decision.
    pub waves: Vec<WaveStatus>,
    /// Per site: latest outcome counts of its enrolled devices.
    pub sites: Vec<SiteStatus>,
}

/// One site in [`RolloutStatus`].
#[derive(Debug, Default, Clone, Serialize)]
pub struct SiteStatus {
    /// Site name (as enrolled).
    pub site: String,
    /// Enrolled devices of the release's hardware class in a started wave.
    pub targeted: u32,
    /// Its devices by latest outcome.
    #[serde(flatten)]
    pub counts: Counts,
}

/// Devices by latest outcome, and the failure rate of the final ones.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    /// Devices installing.
    pub installing: u32,
    /// Devices committed.
    pub committed: u32,
    /// Devices rolled back.
    pub rolled_back: u32,
    /// Devices whose install failed.
    pub failed: u32,
    /// Failure rate of final outcomes, percent.
    pub failure_percent: Option<f64>,
}

impl Counts {
    /// Counts `n` (1 or -1) more devices with `outcome`.
    fn add(&mut self, outcome: protocol::rollout::Outcome, n: i32) {
        use protocol::rollout::Outcome;
        let count = match outcome {
            Outcome::Installing => &mut self.installing,
            Outcome::Committed => &mut self.committed,
            Outcome::RolledBack => &mut self.rolled_back,
            Outcome::Failed(_) => &mut self.failed,
        };
        *count = count.saturating_add_signed(n);
    }

    /// Rolled back and failed, percent of the final outcomes (none yet: `None`).
    fn final_failure_percent(&self) -> Option<f64> {
        let finals = self.committed + self.rolled_back + self.failed;
        (finals > 0).then(|| (self.rolled_back + self.failed) as f64 * 100.0 / finals as f64)
    }
}

/// One wave in [`RolloutStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct WaveStatus {
    /// Wave index.
    pub index: usize,
    /// Cumulative share of the fleet, percent.
    pub cumulative_percent: f64,
    /// Least soak, seconds.
    pub min_soak_secs: u32,
    /// Enrolled devices of the release's hardware class in this wave.
    pub targeted: u32,
    /// Its devices by latest outcome.
    #[serde(flatten)]
    pub counts: Counts,
    /// What the gate says.
    pub gate: String,
}

/// Starts a rollout: checks every flag and the release, then signs its first policy. The
/// first rollout of a repository also delegates the rollouts role (signed with the targets
/// key).
pub fn start(args: &StartArgs) -> Result<RolloutStatus> {
    start_with(args, true)
}

/// [`start`] without ever using the targets key: refused while the rollouts role is not
/// delegated yet (the publisher's API, which holds no release key, starts rollouts so).
pub fn start_delegated(args: &StartArgs) -> Result<RolloutStatus> {
    start_with(args, false)
}

fn start_with(args: &StartArgs, may_delegate: bool) -> Result<RolloutStatus> {
    let repo = Repo::at(&args.repo);
    if !may_delegate && !rollouts_role::is_delegated(&repo.current()?) {
        bail!(
            "the rollouts role is not delegated yet (the targets key signs that); start the first rollout with \
             `seeder rollout start` on the machine that holds the targets key"
        );
    }
    let policy = build_policy(&repo, args, time::now_unix())?;
    let _lock = repo.lock()?;
    if let Some(existing) = current_policy(&repo, &args.name)? {
        if matches!(existing.state.phase(), Phase::Running | Phase::Paused | Phase::Halted) {
            bail!(
                "rollout {} of {} {} is {}; abort it first (`seeder rollout abort {}`)",
                existing.id,
                existing.release.name,
                existing.release.version,
                existing.state.phase().name(),
                args.name
            );
        }
    }
    rollouts_role::ensure_delegation(&repo)?;
    let bytes = policy.encode().map_err(|e| anyhow!("{e}"))?;
    rollouts_role::publish_policy(&repo, &args.name, &bytes)?;
    let conn = fleet::open_write(&fleet::location(&repo.dir))?;
    conn.transaction(|conn| record::record(conn, None, &policy, &bytes, time::now_unix()))?;
    Ok(status_of(&controller_for(policy)?))
}

/// The policy `args` describe, checked: the release must be published, and the policy must
/// pass the rules devices apply (the error names the field).
fn build_policy(repo: &Repo, args: &StartArgs, now: i64) -> Result<RolloutPolicy> {
    let current = repo.current()?;
    let target = release::target_path(&args.name, &args.version);
    let entry = current.targets["targets"].get(&target).with_context(|| {
        format!("{} {} is not published; publish it with `seeder release add` first", args.name, args.version)
    })?;
    let meta =
        protocol::tuf::ReleaseTarget::from_custom(entry.get("custom")).map_err(|e| anyhow!("release {target}: {e}"))?;
    let soak = args::parse_soak(&args.soak)?;
    let waves = args::parse_waves(&args.waves)?
        .into_iter()
        .map(|cumulative_ppm| Wave { cumulative_ppm, min_soak_secs: soak })
        .collect();
    let canaries = args.canaries.iter().map(|c| parse_canary(repo, c)).collect::<Result<Vec<_>>>()?;
    let windows = args.windows.iter().map(|w| args::parse_window(w)).collect::<Result<Vec<_>>>()?;
    let id = args.id.clone().unwrap_or_else(|| format!("{}-{}", args.name, args.version));
    let policy = RolloutPolicy {
        id,
        release: RolloutRelease { name: args.name.clone(), version: args.version.clone(), hw_class: meta.hw_class },
        seq: 1,
        waves,
        canaries,
        health: HealthGate {
            max_failure_ppm: args::parse_percent_ppm("--max-failure-rate", &args.max_failure_rate)?,
            min_reports: args.min_reports,
        },
        windows,
        max_concurrent_per_site: args.max_concurrent_per_site,
        state: RolloutState::Running,
        current_wave: 0,
        wave_started_at: now,
    };
    policy.validate().map_err(|e| anyhow!("the rollout is not valid: {e}"))?;
    Ok(policy)
}

/// A canary given as a device key (64 hex digits) or an enrolled device id.
fn parse_canary(repo: &Repo, text: &str) -> Result<[u8; 32]> {
    if let Ok(key) = protocol::hex::decode_array(text.trim()) {
        return Ok(key);
    }
    let enrolled = match fleet::open_read(&fleet::location(&repo.dir))? {
        Some(conn) => conn
            .query_opt("SELECT public_key FROM devices WHERE device_id = ?1", &[&text], |row| row.get::<Vec<u8>>(0))?
            .and_then(|key| <[u8; 32]>::try_from(key.as_slice()).ok()),
        None => None,
    };
    enrolled
        .ok_or_else(|| anyhow!("--canary `{text}` is neither a device key (64 hex digits) nor an enrolled device id"))
}

/// The current policy for release `name`, if one was ever started.
pub fn current_policy(repo: &Repo, name: &str) -> Result<Option<RolloutPolicy>> {
    let Some((_, bytes)) = rollouts_role::current_policies(repo)?.into_iter().find(|(n, _)| n == name) else {
        return Ok(None);
    };
    let policy = RolloutPolicy::decode(&bytes)
        .map_err(|e| anyhow!("the signed policy {} does not decode: {e}", policy_target_path(name)))?;
    Ok(Some(policy))
}

/// Every rollout, or the one for release `name`, each computed from the fleet database.
pub fn status(repo: &Repo, name: Option<&str>) -> Result<Vec<RolloutStatus>> {
    board::Board::default().status(repo, name)
}

/// A rollout's status replayed from the fleet database (none yet: the policy alone).
fn status_from_database(conn: Option<&fleet::Db>, policy: RolloutPolicy) -> Result<RolloutStatus> {
    Ok(match conn {
        Some(conn) => tracked::Tracked::rebuild(conn, policy)?.status(),
        None => status_of(&controller_for(policy)?),
    })
}

/// An operator's command on the rollout of release `name`.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Stop new installs.
    Pause,
    /// Run again after a pause or a halt.
    Resume,
    /// Stop for good.
    Abort,
}

/// Signs the policy `command` leads to.
pub fn command(repo: &Repo, name: &str, command: Command) -> Result<RolloutStatus> {
    let _lock = repo.lock()?;
    let policy = current_policy(repo, name)?
        .with_context(|| format!("no rollout of {name}; start one with `seeder rollout start {name} VERSION`"))?;
    let mut controller = controller_for(policy.clone())?;
    let next = match command {
        Command::Pause => controller.pause(),
        Command::Resume => controller.resume(time::now_unix()),
        Command::Abort => controller.abort(),
    }
    .map_err(|e| anyhow!("{e}"))?;
    let bytes = next.encode().map_err(|e| anyhow!("{e}"))?;
    rollouts_role::publish_policy(repo, name, &bytes)?;
    let conn = fleet::open_write(&fleet::location(&repo.dir))?;
    conn.transaction(|conn| record::record(conn, Some(&policy), &next, &bytes, time::now_unix()))?;
    Ok(status_of(&controller_for(next)?))
}

/// A controller for `policy`, its device map keyed by a fresh secret seed (device ids are
/// keys devices choose; see `protocol::rollout::MapSeed`).
pub(crate) fn controller_for(policy: RolloutPolicy) -> Result<Controller> {
    Controller::new(policy, host::random::map_seed()?).map_err(|e| anyhow!("{e}"))
}

/// What `controller` knows, for printing.
pub fn status_of(controller: &Controller) -> RolloutStatus {
    let policy = controller.policy();
    let percent = |ppm: u32| ppm as f64 * 100.0 / FULL_PPM as f64;
    RolloutStatus {
        id: policy.id.clone(),
        release: policy.release.name.clone(),
        version: policy.release.version.clone(),
        hw_class: policy.release.hw_class.clone(),
        state: policy.state.phase().name().into(),
        halt_reason: match &policy.state {
            RolloutState::Halted { reason, .. } => Some(reason.clone()),
            _ => None,
        },
        seq: policy.seq,
        current_wave: policy.current_wave,
        wave_started_at: time::format_expiry(policy.wave_started_at),
        waves: controller
            .wave_summaries(time::now_unix())
            .into_iter()
            .map(|w| WaveStatus {
                index: w.index,
                cumulative_percent: percent(w.cumulative_ppm),
                min_soak_secs: policy.waves[w.index].min_soak_secs,
                targeted: 0,
                counts: Counts {
                    installing: w.tally.installing,
                    committed: w.tally.committed,
                    rolled_back: w.tally.rolled_back,
                    failed: w.tally.failed,
                    failure_percent: w.failure_ppm.map(percent),
                },
                gate: w.gate,
            })
            .collect(),
        sites: Vec::new(),
    }
}

/// The text form of a rollout.
pub fn describe(s: &RolloutStatus) -> String {
    let mut out = format!(
        "{} {} {} [{}]: {} (policy v{}), wave {} of {} since {}",
        s.id,
        s.release,
        s.version,
        s.hw_class,
        s.state,
        s.seq,
        s.current_wave + 1,
        s.waves.len(),
        s.wave_started_at
    );
    if let Some(reason) = &s.halt_reason {
        out += &format!("\n  halted: {reason}");
    }
    out += "\n  wave  fleet%  targeted  installing  committed  rolled-back  failed  fail%  gate";
    for w in &s.waves {
        out += &format!(
            "\n  {:>4}  {:>6.2}  {:>8}  {:>10}  {:>9}  {:>11}  {:>6}  {:>5}  {}",
            w.index,
            w.cumulative_percent,
            w.targeted,
            w.counts.installing,
            w.counts.committed,
            w.counts.rolled_back,
            w.counts.failed,
            w.counts.failure_percent.map_or("-".into(), |p| format!("{p:.1}")),
            w.gate
        );
    }
    if !s.sites.is_empty() {
        out += "\n  site                  targeted  installing  committed  rolled-back  failed  fail%";
        for site in &s.sites {
            out += &format!(
                "\n  {:<20}  {:>8}  {:>10}  {:>9}  {:>11}  {:>6}  {:>5}",
                site.site,
                site.targeted,
                site.counts.installing,
                site.counts.committed,
                site.counts.rolled_back,
                site.counts.failed,
                site.counts.failure_percent.map_or("-".into(), |p| format!("{p:.1}"))
            );
        }
    }
    out
}
