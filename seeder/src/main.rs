//! `seeder`: the otamesh publisher. Holds the signing keys, builds releases into a standard
//! TUF repository, and verifies what it published.
#![deny(missing_docs)]

// Part of the fleet API is for `seeder serve` and the rollout controller to wire in; the
// unit tests use all of it.
#[cfg_attr(not(test), allow(dead_code))]
mod api;
mod fleet;
mod freshness;
mod init;
mod inspect;
mod keys;
mod mcu_trust;
mod origin;
mod release;
mod repo;
mod rollout;
mod rollouts_role;
mod rotate;
mod serve;
mod time;
mod trusted;
mod verify;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

use repo::Repo;

/// otamesh publisher: signs firmware releases into a TUF repository.
///
/// Environment: OTAMESH_SEEDER_NOW (unix seconds or YYYY-MM-DDTHH:MM:SSZ) starts the
/// seeder's clock at that instant, to see expiry and renewal weeks ahead.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The fleet database as a PostgreSQL URL (`postgres://USER:PASSWORD@HOST/DB`, or
    /// `postgresql:///DB?host=/run/postgresql` over a Unix socket), so several `seeder serve`
    /// replicas share one fleet; one of them runs the rollout controller at a time. Also read
    /// from OTAMESH_DATABASE (keeps a password off the command line). Default: fleet.sqlite in
    /// the repository.
    #[arg(long, global = true, value_name = "URL")]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository: keys for root, targets, snapshot, timestamp, and root v1.
    Init {
        /// Repository directory (created if missing).
        #[arg(long)]
        repo: PathBuf,
        /// Keys per role, e.g. `--keys root=3` (default 1 each).
        #[arg(long = "keys", value_parser = parse_role_count)]
        keys: Vec<(String, usize)>,
        /// Signatures required per role, e.g. `--threshold root=2` (default 1).
        #[arg(long = "threshold", value_parser = parse_role_count)]
        threshold: Vec<(String, usize)>,
    },
    /// Add or extract releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Staged rollouts: start one, see where each stands, pause, resume or abort.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Verify all metadata, every target and every chunk; name each problem.
    Verify {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Trusted root to start from (default: the repository's metadata/1.root.json).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Show roles, keys, expiries, releases, chunk counts and deduplication; warn (on
    /// stderr) about every role that expires soon.
    Inspect {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Warn about roles expiring within this (the timestamp: within half its 7-day lifetime at most).
        #[arg(long, default_value = "7d", value_parser = duration_secs)]
        warn_within: i64,
    },
    /// Manage signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage the timestamp role.
    #[command(subcommand)]
    Timestamp(TimestampCommand),
    /// Microcontroller trust: the anchor MCUs pin to verify release seals.
    #[command(subcommand)]
    Mcu(McuCommand),
    /// Join the mesh as the origin: serve metadata and chunks, announce every new release,
    /// and renew timestamp and snapshot before they expire.
    Serve {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// libp2p listen multiaddr (repeatable).
        #[arg(long, default_values_t = ["/ip4/0.0.0.0/udp/4100/quic-v1".to_string(), "/ip4/0.0.0.0/tcp/4100".to_string()])]
        listen: Vec<String>,
        /// Peer to dial at start (repeatable).
        #[arg(long)]
        bootstrap: Vec<String>,
        /// Disable mDNS discovery.
        #[arg(long)]
        no_mdns: bool,
        /// Seconds between re-announcements of an unchanged timestamp.
        #[arg(long, default_value_t = 30)]
        announce_secs: u64,
        /// Edge nodes each chunk is handed to at once; the others are answered Busy and take
        /// it from each other over the WAN, so about this many copies of a release leave the
        /// origin instead of one per site. 0 serves every request (one copy per site).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1000))]
        handout_copies: u32,
        /// Seconds a handout stands before the chunk is handed out again (the wait a site
        /// whose source went offline may see).
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=3600))]
        handout_window_secs: u64,
        #[command(flatten)]
        renewal: RenewalArgs,
        /// Serve the publisher's API (REST, events, /metrics) on this address, e.g.
        /// 127.0.0.1:8080. Needs --api-tokens.
        #[arg(long, requires = "api_tokens")]
        http_listen: Option<std::net::SocketAddr>,
        /// The API's bearer tokens: lines `read TOKEN` or `operator TOKEN` (32+ characters
        /// each) in a file only its owner can read (chmod 600).
        #[arg(long, requires = "http_listen")]
        api_tokens: Option<PathBuf>,
    },
    /// Enroll devices and see their latest state (the fleet database, REPO/fleet.sqlite).
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Benchmark: ingest (verify + store) signed status reports from made-up devices.
    #[command(hide = true)]
    BenchIngest {
        /// Empty directory for the database.
        #[arg(long)]
        dir: PathBuf,
        /// Reports to ingest.
        #[arg(long, default_value_t = 1_000_000)]
        reports: u64,
        /// Enrolled devices they come from.
        #[arg(long, default_value_t = 10_000)]
        devices: u64,
        /// Store each report's signed bytes too.
        #[arg(long)]
        keep_signed: bool,
    },
    /// Test support: ingest made-up devices' reports, printing each acknowledgement.
    #[command(hide = true)]
    FleetTestIngest {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Made-up devices.
        #[arg(long)]
        devices: u64,
        /// Reports to submit (0: until killed).
        #[arg(long, default_value_t = 0)]
        reports: u64,
        /// Enroll the devices first.
        #[arg(long)]
        enroll: bool,
        /// Reports per second at most (0: as fast as the ingestor takes them).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Test support: a made-up fleet written straight into the fleet database (the
    /// console's tests and first-paint measurement).
    #[command(hide = true)]
    FleetTestPopulate {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Sites.
        #[arg(long)]
        sites: u64,
        /// Devices per site.
        #[arg(long)]
        per_site: u64,
        /// Status events per reporting device.
        #[arg(long, default_value_t = 2)]
        events: u64,
        /// The rollout the healthy reports are about.
        #[arg(long, default_value = "gw-1.4.2")]
        rollout: String,
        /// The rollout the failing site's reports are about.
        #[arg(long, default_value = "gw-1.4.1")]
        old_rollout: String,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Enroll one device (--key, --id, --site, --hw-class) or many (--from FILE). Only
    /// enrolled devices' status reports are counted.
    ///
    /// --from FILE is JSON lines, one device per line:
    /// {"key": "<64 hex digits>", "id": "gw-0001", "site": "plant-3", "hw_class": "imx8"}
    /// Blank lines and lines starting with # are skipped. The file is enrolled in one
    /// transaction: if any line is bad, or names a key or id already enrolled, the error
    /// names the line and field and nothing is enrolled.
    Enroll {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The device's ed25519 public key: 64 hex digits, or a file holding them.
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        key: Option<String>,
        /// The device's name, unique in the fleet.
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        id: Option<String>,
        /// The device's site.
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        site: Option<String>,
        /// The device's hardware class.
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        hw_class: Option<String>,
        /// Enroll every device in this JSON-lines file instead (see above).
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// List enrolled devices with the latest state each reported.
    /// The fleet's inventory: every enrolled device with what it last reported — release and
    /// slot, install state, anti-rollback floor, last error, when it was last heard from.
    /// Filters combine; devices not heard from within --stale-after are marked stale.
    List {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Only devices at this site.
        #[arg(long)]
        site: Option<String>,
        /// Only devices following this release name (`gw`) or running this release
        /// (`gw@2.0.0`).
        #[arg(long)]
        release: Option<String>,
        /// Only devices in this install state (idle, downloading, staged, trial, committed,
        /// rolled-back, …) or `never-reported`.
        #[arg(long)]
        state: Option<String>,
        /// Only devices not heard from within this long (e.g. 2h, 7d), never-reported ones
        /// included.
        #[arg(long, value_name = "DURATION")]
        stale: Option<String>,
        /// A device not heard from within this long is marked stale.
        #[arg(long, value_name = "DURATION", default_value = "1d")]
        stale_after: String,
        /// At most this many devices (0: all).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Skip this many matching devices first.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// One device (by its id or its public key in hex): its inventory entry and update
    /// history, newest first.
    Show {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The device's enrolled id, or its public key (64 hex digits).
        device: String,
        /// History events to show.
        #[arg(long, default_value_t = 50)]
        history: u64,
        /// A device not heard from within this long is marked stale.
        #[arg(long, value_name = "DURATION", default_value = "1d")]
        stale_after: String,
    },
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Chunk an image into the content store and publish its manifest as a TUF target.
    Add {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The image file.
        #[arg(long)]
        image: PathBuf,
        /// Release name (A-Z a-z 0-9 . _ + -).
        #[arg(long)]
        name: String,
        /// Release version.
        #[arg(long)]
        version: String,
        /// Hardware class the image is built for.
        #[arg(long)]
        hw_class: String,
        /// Anti-rollback counter; devices refuse releases below the one they have.
        #[arg(long, default_value_t = 0)]
        security_counter: u64,
        /// `auto`: the chunking of the release this name's devices of this hardware class
        /// would install now (they reuse only chunks of releases cut the same way), `cdc` for
        /// a new name. Or `cdc` (FastCDC 16/64/256 KiB, for filesystem images), `sbox-cdc`
        /// (the same bounds, cut points found about 2x faster on CPUs with AVX-512 and GFNI,
        /// 3x slower on others; agents and edge nodes older than this seeder cannot read its
        /// manifests, and its first release after `cdc` ones shares no chunks with them) or
        /// `fixed:BYTES` (MCU flash sectors).
        #[arg(long, default_value = "auto")]
        chunking: String,
        /// `zstd` or `none`.
        #[arg(long, default_value = "zstd")]
        compress: String,
        /// Store chunks in plaintext instead of encrypting them under the fleet content key.
        #[arg(long)]
        no_encrypt: bool,
    },
    /// Rebuild a release's image, verifying metadata, manifest, every chunk and the image.
    Extract {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Release name.
        #[arg(long)]
        name: String,
        /// Release version.
        #[arg(long)]
        version: String,
        /// Output file (written only if everything verifies).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Roll a published release out in waves: sign its first policy under the `rollouts`
    /// delegation (created, with its own online key, on first use). `seeder serve` then
    /// advances waves after their soak and enough healthy reports, and halts on failures.
    Start(rollout::StartArgs),
    /// Per wave: targeted share, installing, committed, rolled back, failure rate, gate.
    Status {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Only the rollout of this release name.
        name: Option<String>,
    },
    /// Stop new installs (devices already switched finish their trial).
    Pause {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Release name.
        name: String,
    },
    /// Run again after a pause or a halt (the current wave's soak starts over).
    Resume {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Release name.
        name: String,
    },
    /// Stop for good; start a new rollout to replace it.
    Abort {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Release name.
        name: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Replace a role's keys and publish a new root signed by the old and new root keys.
    Rotate {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// root, targets, snapshot or timestamp.
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum McuCommand {
    /// Write the trust anchor MCUs pin (targets and rollouts keys, thresholds, epoch): the
    /// binary a firmware build embeds or a provisioning step writes to flash. Extends the
    /// trust chain first if the keys changed (needs the targets keys).
    Anchor {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Where to write the binary anchor (it is also printed as hex).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TimestampCommand {
    /// Re-sign the timestamp with a new expiry so clients do not see a frozen repository.
    Refresh {
        /// Repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// Lifetime such as 12h, 7d, 2w.
        #[arg(long, default_value = "7d", value_parser = duration_secs)]
        expires: i64,
        /// Also re-sign the snapshot (same targets) when less than this is left of it.
        #[arg(long, default_value = "7d", value_parser = duration_secs)]
        snapshot_renew_before: i64,
    },
}

/// When `seeder serve` renews metadata.
#[derive(clap::Args)]
struct RenewalArgs {
    /// Lifetime of each timestamp `serve` signs.
    #[arg(long, default_value = "7d", value_parser = duration_secs)]
    timestamp_expires: i64,
    /// Renew the timestamp when less than this is left [default: half of --timestamp-expires].
    #[arg(long, value_parser = duration_secs)]
    timestamp_renew_before: Option<i64>,
    /// Renew the snapshot (same targets, 30-day lifetime) when less than this is left.
    #[arg(long, default_value = "7d", value_parser = duration_secs)]
    snapshot_renew_before: i64,
}

fn duration_secs(text: &str) -> Result<i64, String> {
    time::parse_duration(text).map_err(|e| format!("{e:#}"))
}

fn parse_role_count(text: &str) -> Result<(String, usize), String> {
    let (role, n) = text.split_once('=').ok_or_else(|| format!("`{text}` must look like ROLE=N"))?;
    let n = n.parse().map_err(|_| format!("`{n}` is not a number"))?;
    Ok((role.to_string(), n))
}

fn main() {
    let cli: Cli = host::cli::parse_args();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match time::init_from_env().and_then(|()| run(&cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            if cli.json {
                println!("{}", serde_json::json!({"ok": false, "error": format!("{e:#}")}));
            }
            host::cli::print_error(&e);
            std::process::exit(1);
        }
    }
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> Result<()> {
    use std::io::Write;
    let out = if json { serde_json::to_string_pretty(value)? } else { text() };
    // A reader that went away (`| head`) is not an error worth a panic.
    match writeln!(std::io::stdout(), "{out}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn run(cli: &Cli) -> Result<i32> {
    if let Some(url) = cli.database.clone().or_else(|| std::env::var("OTAMESH_DATABASE").ok().filter(|v| !v.is_empty()))
    {
        fleet::use_database(&url)?;
    }
    match &cli.command {
        Command::Devices(_)
        | Command::BenchIngest { .. }
        | Command::FleetTestIngest { .. }
        | Command::FleetTestPopulate { .. } => run_fleet(cli)?,
        Command::Init { repo, keys, threshold } => {
            let counts: BTreeMap<_, _> = keys.iter().cloned().collect();
            let thresholds: BTreeMap<_, _> = threshold.iter().cloned().collect();
            let report = init::run(&Repo::at(repo), &counts, &thresholds)?;
            print(cli.json, &report.roles, || {
                let mut out = format!("initialized {}", repo.display());
                for (role, (ids, t)) in &report.roles {
                    out += &format!("\n  {role:<9} {t} of {} keys", ids.len());
                }
                out
            })?;
        }
        Command::Release(ReleaseCommand::Add {
            repo,
            image,
            name,
            version,
            hw_class,
            security_counter,
            chunking,
            compress,
            no_encrypt,
        }) => {
            let zstd_level = match compress.as_str() {
                "zstd" => Some(release::ZSTD_LEVEL),
                "none" => None,
                other => anyhow::bail!("--compress `{other}` must be zstd or none"),
            };
            let req = release::AddRequest {
                image,
                name,
                version,
                hw_class,
                security_counter: *security_counter,
                chunking: release::parse_chunking(chunking)?,
                zstd_level,
                encrypt: !no_encrypt,
                progress: !cli.json,
            };
            let r = release::add(&Repo::at(repo), &req)?;
            print(cli.json, &r, || {
                if r.published {
                    format!(
                        "published {name} {version} as {}: {} chunks ({} new, {}), {} image bytes, {} stored ({} new), manifest {} bytes",
                        r.target, r.chunks, r.new_chunks, r.chunking, r.image_bytes, r.stored_bytes, r.new_stored_bytes, r.manifest_bytes
                    )
                } else {
                    format!("{name} {version} is already published with this content; nothing to do")
                }
            })?;
        }
        Command::Release(ReleaseCommand::Extract { repo, name, version, out }) => {
            let r = release::extract(&Repo::at(repo), name, version, out)?;
            print(cli.json, &r, || {
                format!(
                    "wrote {} ({} bytes, {} chunks verified, blake3 {})",
                    r.out, r.image_bytes, r.chunks, r.image_blake3
                )
            })?;
        }
        Command::Verify { repo, root } => {
            let r = verify::run(&Repo::at(repo), root.as_deref(), time::now_unix())?;
            print(cli.json, &r, || {
                let mut out = format!(
                    "{}: {} metadata files, {} releases, {} chunk files checked, {} problems",
                    if r.ok { "ok" } else { "FAILED" },
                    r.metadata_files,
                    r.releases,
                    r.chunk_files,
                    r.problems.len()
                );
                for p in &r.problems {
                    out += &format!("\n  {}: {}", p.file, p.problem);
                }
                out
            })?;
            if !r.ok {
                // The report is the output (stdout); stderr still ends in one `error:` line.
                host::cli::print_error(&anyhow::anyhow!(
                    "{} verification problems (listed in the report); restore the named files from a backup or republish",
                    r.problems.len()
                ));
                return Ok(1);
            }
        }
        Command::Inspect { repo, warn_within } => {
            let now = time::now_unix();
            let r = inspect::run(&Repo::at(repo), now, *warn_within)?;
            for w in &r.warnings {
                let when = time::describe_from(now, w.seconds_left + now);
                let verb = if w.seconds_left < 0 { "expired" } else { "expires" };
                eprintln!("warning: {} metadata {verb} {} ({when}); {}", w.role, w.expires, w.fix);
            }
            print(cli.json, &r, || {
                let mut out = String::from("roles:");
                for role in &r.roles {
                    out += &format!(
                        "\n  {:<9} v{:<4} {} of {} keys, expires {}",
                        role.role,
                        role.version,
                        role.threshold,
                        role.keyids.len(),
                        role.expires
                    );
                }
                out += &format!("\nreleases: {}", r.releases.len());
                for rel in &r.releases {
                    out += &format!(
                        "\n  {} {} [{}] counter {}: {} bytes, {} chunks, {} stored",
                        rel.name,
                        rel.version,
                        rel.hw_class,
                        rel.security_counter,
                        rel.image_bytes,
                        rel.chunks,
                        rel.stored_bytes
                    );
                }
                out += &format!(
                    "\nstore: {} chunks, {} bytes, dedup ratio {:.2}",
                    r.store_chunks, r.store_bytes, r.dedup_ratio
                );
                out
            })?;
        }
        Command::Rollout(RolloutCommand::Start(args)) => {
            let status = rollout::start(args)?;
            print(cli.json, &status, || format!("started {}", rollout::describe(&status)))?;
        }
        Command::Rollout(RolloutCommand::Status { repo, name }) => {
            let all = rollout::status(&Repo::at(repo), name.as_deref())?;
            print(cli.json, &all, || match all.is_empty() {
                true => "no rollouts; start one with `seeder rollout start NAME VERSION`".into(),
                false => all.iter().map(rollout::describe).collect::<Vec<_>>().join("\n"),
            })?;
        }
        Command::Rollout(
            RolloutCommand::Pause { repo, name }
            | RolloutCommand::Resume { repo, name }
            | RolloutCommand::Abort { repo, name },
        ) => {
            let (verb, command) = match &cli.command {
                Command::Rollout(RolloutCommand::Pause { .. }) => ("paused", rollout::Command::Pause),
                Command::Rollout(RolloutCommand::Resume { .. }) => ("resumed", rollout::Command::Resume),
                _ => ("aborted", rollout::Command::Abort),
            };
            let status = rollout::command(&Repo::at(repo), name, command)?;
            print(cli.json, &status, || format!("{verb} {}", rollout::describe(&status)))?;
        }
        Command::Mcu(McuCommand::Anchor { repo, out }) => {
            let repo = Repo::at(repo);
            let anchor = {
                let _lock = repo.lock()?;
                mcu_trust::sync(&repo, &repo.current()?)?
            };
            let bytes = anchor.to_vec();
            if let Some(out) = out {
                host::fs::write_atomic(out, &bytes, host::fs::PUBLIC)?;
            }
            let hex_keys = |set: &protocol::seal::KeySet| -> Vec<String> {
                set.keys().iter().map(|k| protocol::hex::encode(k)).collect()
            };
            let report = serde_json::json!({
                "epoch": anchor.epoch,
                "targets": {"threshold": anchor.targets.threshold(), "keys": hex_keys(&anchor.targets)},
                "rollouts": {"threshold": anchor.rollouts.threshold(), "keys": hex_keys(&anchor.rollouts)},
                "anchor_hex": protocol::hex::encode(&bytes),
                "out": out,
            });
            print(cli.json, &report, || {
                format!(
                    "MCU trust anchor, epoch {}: targets {} of {}, rollouts {} of {}{}\n{}",
                    anchor.epoch,
                    anchor.targets.threshold(),
                    anchor.targets.keys().len(),
                    anchor.rollouts.threshold(),
                    anchor.rollouts.keys().len(),
                    out.as_ref().map(|o| format!(", written to {}", o.display())).unwrap_or_default(),
                    protocol::hex::encode(&bytes)
                )
            })?;
        }
        Command::Key(KeyCommand::Rotate { repo, role }) => {
            let ids = rotate::rotate(&Repo::at(repo), role)?;
            print(cli.json, &serde_json::json!({"role": role, "keyids": ids}), || {
                format!("rotated {role}: new key ids {}", ids.join(", "))
            })?;
        }
        Command::Serve {
            repo,
            listen,
            bootstrap,
            no_mdns,
            announce_secs,
            handout_copies,
            handout_window_secs,
            renewal,
            http_listen,
            api_tokens,
        } => {
            let policy = freshness::Policy::new(
                renewal.timestamp_expires,
                renewal.timestamp_renew_before,
                renewal.snapshot_renew_before,
            )?;
            repo::Repo::at(repo).current().context("nothing to serve")?;
            let api = match (http_listen, api_tokens) {
                (Some(addr), Some(path)) => Some((*addr, api::Tokens::load(path)?)),
                _ => None,
            };
            let config = origin::OriginConfig {
                repo: repo.clone(),
                listen: listen.clone(),
                bootstrap: bootstrap.clone(),
                key_path: repo.join("keys/origin-node.key"),
                mdns: !no_mdns,
                announce_every: std::time::Duration::from_secs((*announce_secs).max(1)),
                handout: origin::shared_handout(protocol::edge::origin_handout::HandoutConfig {
                    copies: *handout_copies,
                    window: protocol::time::Duration::from_secs(*handout_window_secs),
                    ..Default::default()
                }),
            };
            let json = cli.json;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(serve::run(config, policy, api, move |handle, http| {
                let addrs: Vec<String> = handle.addrs.iter().map(|a| a.to_string()).collect();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "peer_id": handle.client.local_peer_id().to_string(), "addrs": addrs,
                            "http": http.map(|a| a.to_string()),
                        })
                    );
                } else {
                    println!("origin {} listening; edge nodes bootstrap to:", handle.client.local_peer_id());
                    for addr in &addrs {
                        println!("  {addr}");
                    }
                    if let Some(http) = http {
                        println!("publisher API on http://{http}/api/ (OpenAPI: /api/openapi.json, metrics: /metrics)");
                    }
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }))?;
        }
        Command::Timestamp(TimestampCommand::Refresh { repo, expires, snapshot_renew_before }) => {
            let policy = freshness::Policy::new(*expires, None, *snapshot_renew_before)?;
            let r = freshness::renew_if_due(&Repo::at(repo), &policy, true)?;
            print(cli.json, &r, || {
                let mut out = format!("timestamp v{} expires {}", r.timestamp_version, r.timestamp_expires);
                if r.renewed_snapshot {
                    out += &format!(
                        "\nsnapshot v{} expires {} (re-signed: it was close to expiry)",
                        r.snapshot_version, r.snapshot_expires
                    );
                }
                out
            })?;
        }
    }
    Ok(0)
}

/// Names entry `i`'s field (`key` or `id`) in an enrollment error: its file line, or the flag.
type EnrollLabel = dyn Fn(usize, &str) -> String;

/// `seeder devices ...` and the hidden fleet commands.
fn run_fleet(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Devices(DevicesCommand::Enroll { repo, key, id, site, hw_class, from }) => {
            fleet::check_repo(repo)?;
            // Everything is checked before the database is opened: bad input creates nothing.
            let (devices, label): (Vec<fleet::enroll::Enrollment>, Box<EnrollLabel>) = match from {
                Some(path) => {
                    let (lines, devices) = fleet::enroll::read_bulk(path)?.into_iter().unzip::<_, _, Vec<_>, _>();
                    let name = path.display().to_string();
                    (devices, Box::new(move |i, field| format!("{name} line {}: field `{field}`: ", lines[i])))
                }
                None => {
                    let arg = |v: &Option<String>, what: &str| {
                        v.clone().ok_or_else(|| anyhow::anyhow!("{what} is required without --from"))
                    };
                    let device = fleet::enroll::Enrollment::new(
                        &arg(key, "--key")?,
                        &arg(id, "--id")?,
                        &arg(site, "--site")?,
                        &arg(hw_class, "--hw-class")?,
                    )?;
                    (vec![device], Box::new(|_, field| format!("--{field} ")))
                }
            };
            let db = fleet::location(repo);
            let created = matches!(&db, fleet::Location::Sqlite(path) if !path.exists());
            let result =
                fleet::open_write(&db).and_then(|conn| fleet::enroll::enroll(&conn, &devices, time::now_unix(), label));
            if let Err(e) = result {
                if let (true, fleet::Location::Sqlite(path)) = (created, &db) {
                    fleet::remove_created(path);
                }
                return Err(e);
            }
            let ids: Vec<&str> = devices.iter().map(|d| d.device_id.as_str()).collect();
            print(cli.json, &serde_json::json!({"enrolled": ids.len(), "ids": ids}), || match ids.as_slice() {
                [one] => format!("enrolled {one}"),
                many => format!("enrolled {} devices", many.len()),
            })?;
        }
        Command::Devices(DevicesCommand::List { repo, site, release, state, stale, stale_after, limit, offset }) => {
            fleet::check_repo(repo)?;
            let now = time::now_unix();
            let stale_after = time::parse_duration(stale_after).context("--stale-after")?;
            let stale_before =
                stale.as_deref().map(time::parse_duration).transpose().context("--stale")?.map(|d| now - d);
            let filter = fleet::query::DeviceFilter {
                site: site.as_deref(),
                release: release.as_deref(),
                state: state.as_deref(),
                stale_before,
                limit: *limit,
                offset: *offset,
                ..Default::default()
            };
            let page = match fleet::open_read(&fleet::location(repo))? {
                Some(conn) => fleet::query::find_devices(&conn, &filter)?,
                None => fleet::query::DevicePage { total: 0, devices: Vec::new() },
            };
            let listed: Vec<fleet::inventory::Listed> =
                page.devices.iter().map(|d| fleet::inventory::Listed::new(d, now, stale_after)).collect();
            let doc = serde_json::json!({"total": page.total, "offset": offset, "devices": listed});
            print(cli.json, &doc, || fleet::inventory::render_list(page.total, &listed))?;
        }
        Command::Devices(DevicesCommand::Show { repo, device, history, stale_after }) => {
            fleet::check_repo(repo)?;
            let now = time::now_unix();
            let stale_after = time::parse_duration(stale_after).context("--stale-after")?;
            let conn = fleet::open_read(&fleet::location(repo))?
                .with_context(|| format!("no device `{device}`: no device is enrolled in {}", repo.display()))?;
            let (row, events) = fleet::query::show_device(&conn, device, *history)?.with_context(|| {
                format!("no device `{device}` is enrolled; `seeder devices list` shows the ones that are")
            })?;
            let listed = fleet::inventory::Listed::new(&row, now, stale_after);
            let doc = serde_json::json!({"device": listed, "history": events});
            print(cli.json, &doc, || fleet::inventory::render_show(&listed, &events))?;
        }
        Command::BenchIngest { dir, reports, devices, keep_signed } => {
            let r = fleet::bench::run(dir, *reports, *devices, *keep_signed)?;
            print(cli.json, &r, || {
                format!(
                    "{} reports from {} devices in {:.2} s: {:.0} reports/s; bare verify {:.0}/s on one core (ratio {:.2}); peak RSS {:.0} MiB ({:.0} MiB before ingest)",
                    r.reports, r.devices, r.secs, r.reports_per_sec, r.verify_per_sec_one_core,
                    r.ratio_to_one_core_verify, r.peak_rss_mib, r.rss_before_mib
                )
            })?;
        }
        Command::FleetTestIngest { repo, devices, reports, enroll, rate } => {
            let counts = fleet::bench::test_ingest(repo, *devices, *reports, *enroll, *rate)?;
            println!("done {}", serde_json::to_string(&counts)?);
        }
        Command::FleetTestPopulate { repo, sites, per_site, events, rollout, old_rollout } => {
            fleet::check_repo(repo)?;
            let made =
                fleet::bench::populate(&fleet::location(repo), *sites, *per_site, *events, rollout, old_rollout)?;
            println!("{}", serde_json::to_string(&made)?);
        }
        _ => unreachable!("run_fleet is only called for fleet commands"),
    }
    Ok(())
}
