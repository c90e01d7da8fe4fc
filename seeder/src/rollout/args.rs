//! Parsing `seeder rollout start`'s flags into policy fields. Each parser names the flag and
//! the expected form in its one-line error, so a typo is fixed without reading the docs.

use anyhow::{bail, Context, Result};
use protocol::rollout::policy::limits::{FULL_PPM, MAX_UTC_OFFSET_MINUTES};
use protocol::rollout::Window;

/// `--waves 1,10,50,100`: cumulative percentages of the fleet → parts per million. The
/// policy's own validation checks that they increase and end at 100.
pub fn parse_waves(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(|part| {
            let part = part.trim().trim_end_matches('%');
            let pct: f64 = part.parse().ok().filter(|p: &f64| p.is_finite()).with_context(|| {
                format!("--waves: `{part}` is not a percentage; give cumulative shares like 1,10,50,100")
            })?;
            if !(0.0..=100.0).contains(&pct) {
                bail!("--waves: {pct}% is outside 0..100");
            }
            Ok((pct / 100.0 * FULL_PPM as f64).round() as u32)
        })
        .collect()
}

/// `--max-failure-rate 5` (percent) → parts per million.
pub fn parse_percent_ppm(flag: &str, text: &str) -> Result<u32> {
    let pct: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .ok()
        .filter(|p: &f64| p.is_finite() && (0.0..=100.0).contains(p))
        .with_context(|| format!("{flag}: `{text}` is not a percentage between 0 and 100"))?;
    Ok((pct / 100.0 * FULL_PPM as f64).round() as u32)
}

/// `--soak 30m`: `0` or a duration like 90s, 30m, 2h, 1d.
pub fn parse_soak(text: &str) -> Result<u32> {
    if text.trim() == "0" {
        return Ok(0);
    }
    let secs = crate::time::parse_duration(text).context("--soak")?;
    u32::try_from(secs).ok().context("--soak: at most 136 years")
}

/// `--window SITES:DAYS:HH:MM-HH:MM:UTC_OFFSET`, e.g. `plant-*:mon-fri:22:00-02:00:+01:00`:
/// sites matching the pattern (`*` any run) may switch slots on those days between the two
/// local times (an end before the start crosses midnight). DAYS is `daily`, a day (`mon`),
/// a range (`mon-fri`) or a list (`sat,sun`); the offset is `+HH:MM`, `-HH:MM`, `+H` or `Z`.
pub fn parse_window(text: &str) -> Result<Window<String>> {
    let form = "SITES:DAYS:HH:MM-HH:MM:UTC_OFFSET, e.g. plant-*:mon-fri:22:00-02:00:+01:00";
    let bad = |why: &str| anyhow::anyhow!("--window `{text}`: {why}; the form is {form}");
    let (sites, rest) = text.split_once(':').ok_or_else(|| bad("no site pattern"))?;
    let (days, times) = rest.split_once(':').ok_or_else(|| bad("no days"))?;
    // HH:MM-HH:MM:OFFSET: fixed-width times, then the offset.
    let (Some(start), Some('-'), Some(end), Some(':'), Some(offset)) =
        (times.get(0..5), times.chars().nth(5), times.get(6..11), times.chars().nth(11), times.get(12..))
    else {
        return Err(bad("the times must be HH:MM-HH:MM followed by :UTC_OFFSET"));
    };
    if sites.is_empty() {
        return Err(bad("empty site pattern (use * for every site)"));
    }
    Ok(Window {
        site_pattern: sites.to_string(),
        weekdays: parse_days(days).map_err(|e| bad(&e))?,
        start_minute: parse_clock(start).map_err(|e| bad(&e))?,
        end_minute: parse_clock(end).map_err(|e| bad(&e))?,
        utc_offset_minutes: parse_offset(offset).map_err(|e| bad(&e))?,
    })
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Weekday bitmask, bit 0 Monday.
fn parse_days(text: &str) -> Result<u8, String> {
    if matches!(text, "daily" | "*") {
        return Ok(0x7f);
    }
    let day = |name: &str| {
        DAYS.iter()
            .position(|d| name.eq_ignore_ascii_case(d))
            .ok_or_else(|| format!("`{name}` is not a day (mon … sun, or daily)"))
    };
    let mut mask = 0u8;
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                // A range may wrap the week: fri-mon.
                let mut d = from;
                loop {
                    mask |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << day(part)?,
        }
    }
    Ok(mask)
}

/// `HH:MM` → minute of the day.
fn parse_clock(text: &str) -> Result<u16, String> {
    let (h, m) = text.split_once(':').ok_or_else(|| format!("`{text}` is not HH:MM"))?;
    let (h, m): (u16, u16) = (
        h.parse().map_err(|_| format!("`{text}` is not HH:MM"))?,
        m.parse().map_err(|_| format!("`{text}` is not HH:MM"))?,
    );
    if h > 23 || m > 59 {
        return Err(format!("`{text}` is not a time of day"));
    }
    Ok(h * 60 + m)
}

/// `+01:00`, `-05:30`, `+2`, `Z`/`UTC` → minutes east of UTC.
fn parse_offset(text: &str) -> Result<i16, String> {
    if matches!(text, "Z" | "UTC" | "0") {
        return Ok(0);
    }
    let bad = || format!("`{text}` is not a UTC offset like +01:00, -05:30 or Z");
    let (sign, digits) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = digits.split_once(':').unwrap_or((digits, "0"));
    let (h, m): (i16, i16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let minutes = sign * (h * 60 + m);
    if m > 59 || minutes.abs() > MAX_UTC_OFFSET_MINUTES {
        return Err(bad());
    }
    Ok(minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_are_cumulative_percentages() {
        assert_eq!(parse_waves("1,10,50,100").unwrap(), vec![10_000, 100_000, 500_000, 1_000_000]);
        assert_eq!(parse_waves("0.5, 100%").unwrap(), vec![5_000, 1_000_000]);
        assert!(parse_waves("1,x").unwrap_err().to_string().contains("--waves"));
        assert!(parse_waves("150").is_err());
    }

    #[test]
    fn windows_parse_with_colons_in_times_and_offsets() {
        let w = parse_window("plant-*:mon-fri:22:00-02:00:+01:00").unwrap();
        assert_eq!(w.site_pattern, "plant-*");
        assert_eq!(w.weekdays, 0b0011111);
        assert_eq!((w.start_minute, w.end_minute, w.utc_offset_minutes), (22 * 60, 2 * 60, 60));
        let w = parse_window("*:sat,sun:01:30-03:30:-05:30").unwrap();
        assert_eq!(w.weekdays, 0b1100000);
        assert_eq!(w.utc_offset_minutes, -330);
        assert_eq!(parse_window("*:fri-mon:00:00-01:00:Z").unwrap().weekdays, 0b1110001);
        for bad in [
            "*:daily:25:00-01:00:Z",
            "*:someday:01:00-02:00:Z",
            "*:daily:01:00-02:00:+15:00",
            "x",
            ":daily:01:00-02:00:Z",
        ] {
            let e = parse_window(bad).unwrap_err().to_string();
            assert!(e.starts_with("--window"), "{bad}: {e}");
        }
    }

    #[test]
    fn percentages_and_soak() {
        assert_eq!(parse_percent_ppm("--max-failure-rate", "5").unwrap(), 50_000);
        assert!(parse_percent_ppm("--max-failure-rate", "-1").is_err());
        assert_eq!(parse_soak("0").unwrap(), 0);
        assert_eq!(parse_soak("30m").unwrap(), 1800);
    }
}
