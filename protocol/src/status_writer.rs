//! A signed status report written without a heap: what an MCU sends where the Linux agent
//! uses [`crate::status`]'s serde types. The bytes are the same wire form —
//! `{"signed":"<the report as a JSON string>","signature":"<128 hex>"}` — so an edge node
//! and the seeder verify and read both with [`crate::status::verify`].
//!
//! The report is written into a caller's scratch buffer, signed there, then wrapped as a
//! JSON string into the output buffer; both are bounded, and a report that does not fit is
//! an error, never a truncated document.

use core::fmt::Write;

use crate::install::Record;
use crate::rollout::InstallResult;

/// What the report says beyond the install record.
#[derive(Debug, Clone, Copy)]
pub struct ReportDraft<'a> {
    /// The device's ed25519 public key.
    pub device: [u8; 32],
    /// Report number, strictly increasing per device across restarts.
    pub seq: u64,
    /// The release name the device follows.
    pub release: &'a str,
    /// The install record the report describes.
    pub record: &'a Record,
    /// Last health-check result, if any.
    pub health: Option<&'a str>,
    /// The device's clock, unix seconds.
    pub time: i64,
    /// The rollout part, when the record is about an install under a rollout.
    pub rollout: Option<RolloutPart<'a>>,
}

/// The rollout fields of a report.
#[derive(Debug, Clone, Copy)]
pub struct RolloutPart<'a> {
    /// The rollout id.
    pub id: &'a str,
    /// Where the install stands ([`crate::rollout::install_result`]).
    pub result: InstallResult,
    /// Seconds since the install started.
    pub install_secs: u64,
}

/// The report did not fit the buffer it was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportTooLarge;

/// Writes `draft` signed by `sign` into `out`, using `scratch` for the unwrapped report;
/// returns the wire form's length. Out of line, so an MCU agent's poll frame does not carry
/// its buffers under deeper calls.
#[inline(never)]
pub fn write_signed(
    draft: &ReportDraft<'_>,
    sign: impl FnOnce(&[u8]) -> [u8; 64],
    scratch: &mut [u8],
    out: &mut [u8],
) -> Result<usize, ReportTooLarge> {
    let report_len = {
        let mut w = SliceWriter { buf: &mut *scratch, len: 0 };
        write_report(&mut w, draft).map_err(|_| ReportTooLarge)?;
        w.len
    };
    let report = core::str::from_utf8(&scratch[..report_len]).map_err(|_| ReportTooLarge)?;
    let signature = sign(report.as_bytes());
    let mut w = SliceWriter { buf: out, len: 0 };
    let mut hex = [0u8; 128];
    let signature = crate::hex::encode_into(&signature, &mut hex).ok_or(ReportTooLarge)?;
    (|| {
        w.write_str("{\"signed\":")?;
        json_string(&mut w, report)?;
        write!(w, ",\"signature\":\"{signature}\"}}")
    })()
    .map_err(|_| ReportTooLarge)?;
    Ok(w.len)
}

/// The report object, its keys in [`crate::status::StatusReport`]'s order.
fn write_report(w: &mut SliceWriter<'_>, d: &ReportDraft<'_>) -> core::fmt::Result {
    let r = d.record;
    let mut hex = [0u8; 64];
    w.write_str("{\"device\":")?;
    json_string(w, crate::hex::encode_into(&d.device, &mut hex).ok_or(core::fmt::Error)?)?;
    write!(w, ",\"seq\":{},\"release\":", d.seq)?;
    json_string(w, d.release)?;
    w.write_str(",\"version\":")?;
    json_string(w, r.installed.version.as_str())?;
    w.write_str(",\"installed_id\":")?;
    json_string(w, crate::hex::encode_into(&r.installed.id.0, &mut hex).ok_or(core::fmt::Error)?)?;
    write!(w, ",\"active_slot\":\"{}\",\"state\":\"{}\",\"target\":", r.active.name(), r.state.name())?;
    match r.target {
        Some(t) => {
            w.write_str("{\"version\":")?;
            json_string(w, t.version.as_str())?;
            w.write_str(",\"id\":")?;
            json_string(w, crate::hex::encode_into(&t.id.0, &mut hex).ok_or(core::fmt::Error)?)?;
            w.write_str("}")?;
        }
        None => w.write_str("null")?,
    }
    write!(
        w,
        ",\"progress\":{{\"chunks_done\":{},\"chunk_count\":{},\"bytes_fetched\":{},\"bytes_reused\":{}}}",
        r.chunks_done,
        r.target.map_or(0, |t| t.chunk_count),
        r.bytes_fetched,
        r.bytes_reused
    )?;
    w.write_str(",\"error\":")?;
    match r.last_error {
        Some(e) => json_string(w, e.name())?,
        None => w.write_str("null")?,
    }
    w.write_str(",\"health\":")?;
    match d.health {
        Some(h) => json_string(w, h)?,
        None => w.write_str("null")?,
    }
    write!(w, ",\"security_floor\":{},\"time\":{}", r.min_security_counter, d.time)?;
    if let Some(rollout) = d.rollout {
        w.write_str(",\"rollout\":")?;
        json_string(w, rollout.id)?;
        write!(w, ",\"result\":\"{}\"", rollout.result.name())?;
        if let Some(code) = r.last_error {
            write!(w, ",\"error_code\":{}", code as u16)?;
        }
        write!(w, ",\"install_secs\":{},\"slot\":\"{}\"", rollout.install_secs, r.inactive().name())?;
    }
    w.write_str("}")
}

/// `text` as a JSON string literal: quotes, backslashes and control characters escaped.
fn json_string(w: &mut SliceWriter<'_>, text: &str) -> core::fmt::Result {
    w.write_str("\"")?;
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || (c as u32) < 0x20) {
        w.write_str(&rest[..at])?;
        let c = rest.as_bytes()[at];
        match c {
            b'"' => w.write_str("\\\"")?,
            b'\\' => w.write_str("\\\\")?,
            b'\n' => w.write_str("\\n")?,
            b'\r' => w.write_str("\\r")?,
            b'\t' => w.write_str("\\t")?,
            _ => write!(w, "\\u{:04x}", c)?,
        }
        rest = &rest[at + 1..];
    }
    w.write_str(rest)?;
    w.write_str("\"")
}

/// `core::fmt::Write` into a fixed slice; running out of room is an error.
struct SliceWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(core::fmt::Error)?;
        self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::install::{ErrorCode, Label, Release, Slot, State};
    use crate::status::{verify, ReportProgress, ReportTarget, StatusReport};
    use crate::ReleaseId;
    use ed25519_dalek::{Signer, SigningKey};
    use proptest::prelude::*;

    fn record(state: State, error: Option<ErrorCode>) -> Record {
        let mut r = Record::factory(Slot::A, Release::unknown(Label::new("1.0.0").unwrap(), 0));
        r.state = state;
        r.target = Some(Release {
            id: ReleaseId([7; 32]),
            chunk_count: 9,
            image_len: 36_000,
            ..Release::unknown(Label::new("2.0.0").unwrap(), 3)
        });
        r.chunks_done = 5;
        r.bytes_fetched = 20_480;
        r.last_error = error;
        r.min_security_counter = 2;
        r
    }

    /// What device-client's serde path would say for the same inputs.
    fn expected(d: &ReportDraft<'_>) -> StatusReport {
        let r = d.record;
        StatusReport {
            device: crate::hex::encode(&d.device),
            seq: d.seq,
            release: d.release.into(),
            version: r.installed.version.as_str().into(),
            installed_id: r.installed.id.to_hex(),
            active_slot: r.active.name().into(),
            state: r.state.name().into(),
            target: r.target.map(|t| ReportTarget { version: t.version.as_str().into(), id: t.id.to_hex() }),
            progress: ReportProgress {
                chunks_done: r.chunks_done,
                chunk_count: r.target.map_or(0, |t| t.chunk_count),
                bytes_fetched: r.bytes_fetched,
                bytes_reused: r.bytes_reused,
            },
            error: r.last_error.map(|e| e.name().into()),
            health: d.health.map(Into::into),
            security_floor: r.min_security_counter,
            time: d.time,
            rollout: d.rollout.map(|p| p.id.into()),
            result: d.rollout.map(|p| p.result),
            error_code: d.rollout.and(r.last_error).map(|e| e as u16),
            install_secs: d.rollout.map(|p| p.install_secs),
            slot: d.rollout.map(|_| r.inactive().name().into()),
        }
    }

    fn roundtrip(d: &ReportDraft<'_>, key: &SigningKey) -> StatusReport {
        let (mut scratch, mut out) = ([0u8; 2048], [0u8; 4096]);
        let n = write_signed(d, |m| key.sign(m).to_bytes(), &mut scratch, &mut out).unwrap();
        let verified = verify(&out[..n]).expect("the written report verifies");
        assert_eq!(verified.device, d.device);
        verified.report
    }

    #[test]
    fn a_written_report_verifies_and_reads_as_the_serde_report() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let device = key.verifying_key().to_bytes();
        for (state, error, rollout) in [
            (State::Idle, None, None),
            (State::PendingReboot, None, Some(InstallResult::Installing)),
            (State::RolledBack, Some(ErrorCode::HealthCheckFailed), Some(InstallResult::RolledBack)),
        ] {
            let rec = record(state, error);
            let d = ReportDraft {
                device,
                seq: 41,
                release: "gw",
                record: &rec,
                health: Some("failed"),
                time: 1_790_000_000,
                rollout: rollout.map(|result| RolloutPart { id: "gw-2.0.0", result, install_secs: 12 }),
            };
            assert_eq!(roundtrip(&d, &key), expected(&d));
        }
    }

    #[test]
    fn a_report_that_does_not_fit_is_refused_not_truncated() {
        let rec = record(State::Idle, None);
        let d =
            ReportDraft { device: [1; 32], seq: 1, release: "gw", record: &rec, health: None, time: 0, rollout: None };
        let (mut scratch, mut out) = ([0u8; 100], [0u8; 4096]);
        assert_eq!(write_signed(&d, |_| [0; 64], &mut scratch, &mut out), Err(ReportTooLarge));
        let (mut scratch, mut out) = ([0u8; 2048], [0u8; 300]);
        assert_eq!(write_signed(&d, |_| [0; 64], &mut scratch, &mut out), Err(ReportTooLarge));
    }

    proptest! {
        /// Any text in the free-form fields (quotes, backslashes, control characters,
        /// non-ASCII) survives escaping twice (report, then envelope).
        #[test]
        fn any_text_round_trips(release in "\\PC{0,40}|[\"\\\\\u{0}-\u{1f}]{0,10}", rollout in "[ -~]{1,40}") {
            let key = SigningKey::from_bytes(&[3; 32]);
            let rec = record(State::Committed, None);
            let d = ReportDraft {
                device: key.verifying_key().to_bytes(),
                seq: u64::MAX,
                release: &release,
                record: &rec,
                health: Some(&release),
                time: i64::MIN,
                rollout: Some(RolloutPart { id: &rollout, result: InstallResult::Committed, install_secs: u64::MAX }),
            };
            prop_assert_eq!(roundtrip(&d, &key), expected(&d));
        }
    }
}
