//! Made-up devices and their signed reports, for the ingest benchmark (`seeder
//! bench-ingest`, run by `scripts/bench-ingest`), the durability test's child
//! (`seeder fleet-test-ingest`) and the unit tests. Nothing here runs in production.

use super::db::Param;
use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signer, SigningKey};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use protocol::sig::Ed25519PublicKey;
use protocol::status::{ReportProgress, StatusReport};

use super::enroll::{self, Enrollment};
use super::ingest::{IngestConfig, IngestCounts, Ingestor, Outcome};

/// The signing key of made-up device `i` (the same in every run).
pub fn device_key(i: u64) -> SigningKey {
    let seed = blake3::derive_key("otamesh fleet test device 2026-12", &i.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

/// Made-up device `i`'s enrollment: id `dev-<i>`, site `site-<i % 4>`, class `imx8`.
pub fn device_enrollment(i: u64) -> Enrollment {
    Enrollment {
        public_key: device_key(i).verifying_key().to_bytes(),
        device_id: format!("dev-{i:06}"),
        site: format!("site-{}", i % 4),
        hw_class: "imx8".into(),
    }
}

/// A plausible report from `key` with number `seq`.
pub fn report(key: &SigningKey, seq: u64) -> StatusReport {
    StatusReport {
        device: protocol::hex::encode(key.verifying_key().as_bytes()),
        seq,
        release: "gw".into(),
        version: "1.4.2".into(),
        installed_id: "7f".repeat(32),
        active_slot: "b".into(),
        state: if seq.is_multiple_of(7) { "downloading".into() } else { "committed".into() },
        target: None,
        progress: ReportProgress { chunks_done: 812, chunk_count: 812, bytes_fetched: 51_380_224, bytes_reused: 0 },
        error: None,
        health: Some("ok".into()),
        security_floor: 3,
        time: 1_800_000_000 + seq as i64,
        // A report in a rollout, as devices send them during one.
        rollout: Some("gw-1.4.2".into()),
        result: Some(protocol::status::InstallResult::Committed),
        error_code: None,
        install_secs: Some(94),
        slot: Some("b".into()),
    }
}

/// The signed wire form of `payload` (a report's JSON, possibly with fields this version of
/// `StatusReport` lacks) under `key`: `{"signed": payload, "signature": hex}`.
pub fn sign_payload(key: &SigningKey, payload: &str) -> Vec<u8> {
    let signature = protocol::hex::encode(&key.sign(payload.as_bytes()).to_bytes());
    serde_json::to_vec(&serde_json::json!({ "signed": payload, "signature": signature })).unwrap_or_default()
}

#[cfg(test)]
/// Made-up device `i`'s report number `seq`, signed, carrying the rollout fields.
pub fn signed_report(i: u64, seq: u64) -> Vec<u8> {
    sign_report_with(&device_key(i), seq)
}

/// What `seeder bench-ingest` prints (one JSON object).
#[derive(Debug, Serialize)]
pub struct BenchResult {
    /// Reports ingested in the timed section.
    pub reports: u64,
    /// Enrolled devices they came from.
    pub devices: u64,
    /// Verify threads.
    pub verify_threads: usize,
    /// Whether the signed bytes were stored.
    pub keep_signed: bool,
    /// Timed section: submit of the first report to the ack of the last.
    pub secs: f64,
    /// Reports per second (verify + store, acknowledged).
    pub reports_per_sec: f64,
    /// Bare strict ed25519 verifications per second on one thread (key decoding included),
    /// same keys and payloads, measured in this run.
    pub verify_per_sec_one_core: f64,
    /// reports_per_sec / verify_per_sec_one_core.
    pub ratio_to_one_core_verify: f64,
    /// CPU seconds the process used in the timed section (all threads).
    pub cpu_secs: f64,
    /// CPU microseconds per report in the timed section: what a report costs whatever else
    /// runs on the machine (the reports/s above depend on what other processes take).
    pub cpu_us_per_report: f64,
    /// CPU microseconds of one bare verification (thread CPU time, so other processes on
    /// the machine do not inflate it as they do `verify_per_sec_one_core`).
    pub verify_cpu_us: f64,
    /// cpu_us_per_report / verify_cpu_us: what a report costs in bare verifications.
    pub cpu_ratio_to_verify: f64,
    /// Resident memory once the reports were generated (they are held in memory).
    pub rss_before_mib: f64,
    /// Peak resident memory of the process.
    pub peak_rss_mib: f64,
    /// Size of the database files afterwards.
    pub db_mib: f64,
    /// Outcomes.
    pub counts: IngestCounts,
}

/// `seeder bench-ingest`: enrolls `devices`, generates `reports` (`reports / devices` per
/// device, increasing seq) outside the timed section, measures the bare verify rate, then
/// ingests them all into a new database in `dir`.
pub fn run(dir: &Path, reports: u64, devices: u64, keep_signed: bool) -> Result<BenchResult> {
    if devices == 0 || reports < devices {
        bail!("--reports must be at least --devices, and --devices at least 1");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let db = super::db_path(dir);
    if db.exists() {
        bail!("{} exists; give an empty --dir", db.display());
    }
    let per_device = reports / devices;
    let reports = per_device * devices;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let enrollments: Vec<Enrollment> = (0..devices).map(device_enrollment).collect();
    let db_file = db.clone();
    let db = super::Location::Sqlite(db);
    enroll::enroll(&super::open_write(&db)?, &enrollments, crate::time::now_unix(), |i, field| {
        format!("device {i} {field}: ")
    })?;

    // Seq-major order: each device's reports are `devices` apart in the stream, as many
    // devices reporting at once would interleave them.
    let generated = generate(devices, per_device, threads);
    let rss_before_mib = rss_mib("VmRSS:");

    let (verify_per_sec_one_core, verify_cpu_us) = bare_verify_rate(&generated[..generated.len().min(20_000)])?;

    let config = IngestConfig { keep_signed, ..IngestConfig::default() };
    let verify_threads = config.verify_threads;
    let cpu_start = cpu_secs();
    let start = Instant::now();
    let ingestor = Ingestor::start(&db, config)?;
    for signed in generated {
        ingestor.submit(signed, |_| {}).map_err(anyhow::Error::new)?;
    }
    let counts = ingestor.shutdown();
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = cpu_secs() - cpu_start;
    let reports_per_sec = reports as f64 / secs;
    let db_bytes: u64 = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db_file.display())).ok())
        .map(|m| m.len())
        .sum();
    if counts.accepted != reports {
        bail!("only {} of {reports} reports were accepted: {counts:?}", counts.accepted);
    }
    Ok(BenchResult {
        reports,
        devices,
        verify_threads,
        keep_signed,
        secs,
        reports_per_sec,
        verify_per_sec_one_core,
        ratio_to_one_core_verify: reports_per_sec / verify_per_sec_one_core,
        cpu_secs,
        cpu_us_per_report: cpu_secs * 1e6 / reports as f64,
        verify_cpu_us,
        cpu_ratio_to_verify: cpu_secs * 1e6 / reports as f64 / verify_cpu_us,
        rss_before_mib,
        peak_rss_mib: peak_rss_mib(),
        db_mib: db_bytes as f64 / 1048576.0,
        counts,
    })
}

fn generate(devices: u64, per_device: u64, threads: usize) -> Vec<Vec<u8>> {
    let total = devices * per_device;
    let chunk = total.div_ceil(threads as u64);
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..threads as u64)
            .map(|t| {
                scope.spawn(move || {
                    let keys: Vec<SigningKey> = (0..devices).map(device_key).collect();
                    let range = t * chunk..((t + 1) * chunk).min(total);
                    range.map(|n| sign_report_with(&keys[(n % devices) as usize], n / devices + 1)).collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|p| p.join().unwrap_or_default()).collect()
    })
}

/// `key`'s report number `seq`, signed, carrying the rollout fields.
pub fn sign_report_with(key: &SigningKey, seq: u64) -> Vec<u8> {
    let mut value = serde_json::to_value(report(key, seq)).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("rollout".into(), "gw-1.4.2-r1".into());
        object.insert("result".into(), "committed".into());
        object.insert("install_secs".into(), (40 + seq % 20).into());
    }
    sign_payload(key, &value.to_string())
}

/// Strict ed25519 verifications per second on this thread (wall clock), and the CPU
/// microseconds of one: the key decoded and the signature checked as
/// `protocol::status::verify` does, without the JSON.
fn bare_verify_rate(sample: &[Vec<u8>]) -> Result<(f64, f64)> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        signed: String,
        signature: String,
    }
    let mut inputs = Vec::with_capacity(sample.len());
    for bytes in sample {
        let envelope: Envelope = serde_json::from_slice(bytes)?;
        let report: StatusReport = serde_json::from_str(&envelope.signed)?;
        let key = protocol::hex::decode_array::<32>(&report.device).map_err(|e| anyhow::anyhow!("{e}"))?;
        let signature = protocol::hex::decode_array::<64>(&envelope.signature).map_err(|e| anyhow::anyhow!("{e}"))?;
        inputs.push((key, envelope.signed, signature));
    }
    let cpu_start = thread_cpu_secs();
    let start = Instant::now();
    for (key, message, signature) in &inputs {
        let key = Ed25519PublicKey::from_bytes(key).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        key.verify(message.as_bytes(), signature).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_secs() - cpu_start;
    Ok((inputs.len() as f64 / wall, cpu * 1e6 / inputs.len() as f64))
}

/// CPU seconds this thread has used.
fn thread_cpu_secs() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the struct it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return 0.0;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// User + system CPU seconds of the whole process so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return rss_mib("VmHWM:");
    }
    usage.ru_maxrss as f64 / 1024.0 // KiB on Linux
}

/// `seeder fleet-test-ingest`: optionally enrolls made-up devices `0..devices`, then
/// submits their reports (seq-major, signed as it goes) and prints `ack <key hex> <seq>
/// <outcome>` for each acknowledgement — until `reports` are done (0: until killed). The
/// durability test kills it mid-stream and checks that every acked report is stored.
/// With `rate` > 0 it submits at most that many reports per second (`scripts/bench-api`).
pub fn test_ingest(repo: &Path, devices: u64, reports: u64, enroll_first: bool, rate: u64) -> Result<IngestCounts> {
    let db = super::location(repo);
    if enroll_first {
        let enrollments: Vec<Enrollment> = (0..devices).map(device_enrollment).collect();
        enroll::enroll(&super::open_write(&db)?, &enrollments, crate::time::now_unix(), |i, field| {
            format!("device {i} {field}: ")
        })?;
    }
    let keys: Vec<SigningKey> = (0..devices.max(1)).map(device_key).collect();
    let ingestor = Ingestor::start(&db, IngestConfig::default())?;
    println!("ingesting");
    let started = Instant::now();
    let mut n = 0u64;
    while reports == 0 || n < reports {
        if rate > 0 {
            // Paced to `rate`: report n is due n/rate seconds after the start (a load
            // generator's schedule, so a slow moment is caught up rather than lost).
            let due = std::time::Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(early) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(early);
            }
        }
        let key = &keys[(n % keys.len() as u64) as usize];
        let seq = n / keys.len() as u64 + 1;
        let hex = protocol::hex::encode(key.verifying_key().as_bytes());
        ingestor
            .submit(sign_report_with(key, seq), move |outcome| {
                let name = match outcome {
                    Outcome::Accepted => "accepted",
                    Outcome::Unenrolled => "unenrolled",
                    Outcome::Replayed { .. } => "replayed",
                    Outcome::BadSignature => "bad_signature",
                    Outcome::Malformed => "malformed",
                    Outcome::NotStored => "not_stored",
                };
                // Written and flushed before the next ack: the test sees a line only after
                // the report's commit returned.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "ack {hex} {seq} {name}");
                let _ = out.flush();
            })
            .map_err(anyhow::Error::new)?;
        n += 1;
    }
    Ok(ingestor.shutdown())
}

/// What `seeder fleet-test-populate` made.
#[derive(Debug, Serialize)]
pub struct Populated {
    /// Devices enrolled.
    pub devices: u64,
    /// Of those, with a latest state.
    pub reported: u64,
    /// Status events stored.
    pub events: u64,
    /// Seconds it took.
    pub secs: f64,
}

/// `seeder fleet-test-populate`: a made-up fleet written straight into the database (no
/// signatures: for the console's tests and its 1,000 × 1,000 first-paint measurement, where
/// verifying a million reports would take minutes). `sites` sites named `site-0000`… with
/// `per_site` devices each (`<site>-dev-0000`…), hardware classes imx8 (60 %), rpi4 (30 %)
/// and stm32 (10 %, installs about five times slower), 5 % never reported, most on gw
/// 1.4.2 (every seventh site lags on 1.4.1), about 2 % of installs failed, except site 1
/// where a quarter rolled back — under rollout `old_rollout` (as are the lagging devices'
/// commits), so `rollout`'s own outcomes stay healthy and its controller does not halt it. `events` status events per reporting
/// device (its history); the newest carries `rollout` for devices on 1.4.2.
pub fn populate(
    db: &super::Location,
    sites: u64,
    per_site: u64,
    events: u64,
    rollout: &str,
    old_rollout: &str,
) -> Result<Populated> {
    populate_at(db, (sites, per_site, events), rollout, old_rollout, crate::time::now_unix())
}

/// [`populate`] as of `now`: `shape` is (sites, devices per site, events per device).
pub fn populate_at(
    db: &super::Location,
    (sites, per_site, events): (u64, u64, u64),
    rollout: &str,
    old_rollout: &str,
    now: i64,
) -> Result<Populated> {
    let start = Instant::now();
    let conn = super::open_write(db)?;
    let (mut devices, mut reported, mut stored_events) = (0u64, 0u64, 0u64);
    conn.transaction(|tx| {
        let device = |values: &[&dyn Param]| {
            tx.query_one(
                "INSERT INTO devices (public_key, device_id, site, hw_class, enrolled_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 RETURNING id",
                values,
                |row| row.get::<i64>(0),
            )
        };
        let state = |values: &[&dyn Param]| {
            tx.execute(
                "INSERT INTO device_state (device, last_seq, release, version, installed_id, state, rollout, result,
                                           error, health, slot, updated_at, active_slot, security_floor, install_secs)
                 VALUES (?1, ?2, 'gw', ?3, ?4, ?5, ?6, ?7, ?8, 'ok', 'b', ?9, 'b', 3, ?10)",
                values,
            )
        };
        let event = |values: &[&dyn Param]| {
            tx.execute(
                "INSERT INTO status_events (device, seq, rollout, state, result, error, install_secs, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                values,
            )
        };
        let installed_id = "7f".repeat(32);
        for s in 0..sites {
            let site = format!("site-{s:04}");
            for d in 0..per_site {
                let i = s * per_site + d;
                // A well-mixed number per device, so classes and states do not line up with
                // the index.
                let mix =
                    u64::from_le_bytes(blake3::hash(&i.to_le_bytes()).as_bytes()[..8].try_into().unwrap_or([0; 8]));
                let key = blake3::derive_key("otamesh console test fleet 2027-01", &i.to_le_bytes());
                let hw_class = match mix % 10 {
                    0..=5 => "imx8",
                    6..=8 => "rpi4",
                    _ => "stm32",
                };
                let id = device(&[&&key[..], &format!("{site}-dev-{d:04}"), &site, &hw_class, &(now - 86_400 * 30)])?;
                devices += 1;
                let roll = (mix >> 8) % 1000;
                if roll < 50 {
                    continue; // never reported
                }
                reported += 1;
                let failing_site = s == 1;
                let failed = if failing_site { roll < 300 } else { roll < 70 };
                let lagging = s % 7 == 3 && roll < 700;
                let version = if failed || lagging { "1.4.1" } else { "1.4.2" };
                let state_name = match (failed, (mix >> 20) % 100) {
                    (true, _) => "rolled-back",
                    (false, 0..=4) => "downloading",
                    (false, 5..=7) => "trial",
                    (false, 8..=9) => "staged",
                    _ => "committed",
                };
                let result = match state_name {
                    "rolled-back" => Some("rolled-back"),
                    "committed" => Some("committed"),
                    _ => Some("installing"),
                };
                // Lagging devices committed the previous release under the old rollout: every
                // reporting device has a result, so no site's failure rate is skewed.
                let about = if (failing_site && failed) || (lagging && !failed) { old_rollout } else { rollout };
                let about = Some(about);
                let result = about.and(result);
                let base = if hw_class == "stm32" { 300 } else { 45 };
                let install_secs = (result == Some("committed")).then_some(base + ((mix >> 32) % 30) as i64);
                // 1 % not heard from for two days: stale.
                let updated_at =
                    if (mix >> 40) % 100 == 0 { now - 2 * 86_400 } else { now - ((mix >> 44) % 3600) as i64 };
                let error = failed.then_some("health-check-failed");
                let last_seq = events.max(1) as i64;
                state(&[
                    &id,
                    &last_seq,
                    &version,
                    &installed_id,
                    &state_name,
                    &about,
                    &result,
                    &error,
                    &updated_at,
                    &install_secs,
                ])?;
                for seq in 1..=events {
                    let newest = seq == events;
                    event(&[
                        &id,
                        &(seq as i64),
                        &if newest { about } else { None },
                        &if newest { state_name } else { "downloading" },
                        &if newest { result } else { None },
                        &if newest { error } else { None },
                        &if newest { install_secs } else { None },
                        &(updated_at - (events - seq) as i64 * 60),
                    ])?;
                    stored_events += 1;
                }
            }
        }
        Ok(())
    })?;
    // After a bulk load PostgreSQL plans without statistics until autovacuum's analyze comes
    // round: one site's device page took 59 ms at the median and 269 ms at p99 in the first
    // 20 s of scripts/bench-api --postgres, and 3 ms once analyzed. ANALYZE after populating
    // is PostgreSQL's own advice.
    if conn.is_postgres() {
        conn.execute_batch("ANALYZE")?;
    }
    Ok(Populated { devices, reported, events: stored_events, secs: start.elapsed().as_secs_f64() })
}
