//! Wall-clock helpers at the edge of the program: TUF expiry strings and durations.
//!
//! The clock is injectable: with `OTAMESH_SEEDER_NOW` set (unix seconds, or TUF's
//! `YYYY-MM-DDTHH:MM:SSZ`), the process starts its clock at that instant and lets it run at
//! the real rate. That is how tests (and an operator's dry run) see what the repository
//! looks like weeks from now — expiry, renewal, `seeder serve`'s renewal loop — without
//! waiting for it.

use anyhow::{bail, Context, Result};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The variable that moves the seeder's clock.
pub const NOW_ENV: &str = "OTAMESH_SEEDER_NOW";

/// `(unix seconds at start, when the process read it)` once [`init_from_env`] found an override.
static OVERRIDE: OnceLock<Option<(i64, Instant)>> = OnceLock::new();

/// Reads [`NOW_ENV`] once, at start; an unparsable value is an error rather than a silently
/// real clock.
pub fn init_from_env() -> Result<()> {
    let parsed = match std::env::var(NOW_ENV) {
        Ok(text) => Some((parse_now(&text)?, Instant::now())),
        Err(_) => None,
    };
    let _ = OVERRIDE.set(parsed);
    Ok(())
}

fn parse_now(text: &str) -> Result<i64> {
    let text = text.trim();
    match text.parse::<i64>() {
        Ok(unix) => Ok(unix),
        Err(_) => protocol::tuf::time::parse_expiry(text)
            .with_context(|| format!("{NOW_ENV}=`{text}` must be unix seconds or YYYY-MM-DDTHH:MM:SSZ")),
    }
}

/// Seconds since the Unix epoch, now (moved by [`NOW_ENV`] when set).
pub fn now_unix() -> i64 {
    if let Some(Some((start, read_at))) = OVERRIDE.get() {
        return start + read_at.elapsed().as_secs() as i64;
    }
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Parses a TUF `expires` string into unix seconds.
pub fn parse_expiry(text: &str) -> Result<i64> {
    protocol::tuf::time::parse_expiry(text).with_context(|| format!("expiry `{text}` is not YYYY-MM-DDTHH:MM:SSZ"))
}

/// Says how far away `unix` is from `now`, for people: `in 3d 4h`, `2h ago`.
pub fn describe_from(now: i64, unix: i64) -> String {
    let left = unix - now;
    let span = left.unsigned_abs();
    let text = match span {
        0..=119 => format!("{span}s"),
        120..=7199 => format!("{}m", span / 60),
        7200..=172_799 => format!("{}h", span / 3600),
        _ => format!("{}d {}h", span / 86_400, span % 86_400 / 3600),
    };
    if left >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// Formats unix seconds as TUF's `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_expiry(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Parses durations like `90s`, `30m`, `12h`, `7d`, `2w` into seconds.
pub fn parse_duration(text: &str) -> Result<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits.parse().with_context(|| format!("`{text}` is not a duration like 12h, 7d or 2w"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("`{text}` has unknown unit `{unit}`; use s, m, h, d or w"),
    };
    n.checked_mul(scale).filter(|s| *s > 0).context("duration must be positive and not absurdly long")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_dates() {
        assert_eq!(format_expiry(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_expiry(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_expiry(1_893_456_000 + 3661), "2030-01-01T01:01:01Z");
    }

    #[test]
    fn the_clock_override_takes_unix_seconds_or_tuf_dates() {
        assert_eq!(parse_now("951782400").unwrap(), 951_782_400);
        assert_eq!(parse_now("2000-02-29T00:00:00Z").unwrap(), 951_782_400);
        assert!(parse_now("next tuesday").is_err());
        assert_eq!(describe_from(0, 90), "in 90s");
        assert_eq!(describe_from(0, 3 * 86_400 + 7200), "in 3d 2h");
        assert_eq!(describe_from(7200, 0), "2h ago");
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("2w").unwrap(), 1_209_600);
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("h").is_err());
    }
}
