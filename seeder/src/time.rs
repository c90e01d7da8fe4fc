//! Wall-clock helpers at the edge of the program: TUF expiry strings and durations.

use anyhow::{bail, Context, Result};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
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
    fn parses_durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("2w").unwrap(), 1_209_600);
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("h").is_err());
    }
}
