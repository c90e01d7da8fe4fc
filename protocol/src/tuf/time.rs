//! TUF expiry timestamps without a clock or a date library.
//!
//! TUF writes expiry as `YYYY-MM-DDTHH:MM:SSZ` (python-tuf parses exactly that format
//! with `strptime`), so this accepts exactly that format and nothing looser: a lenient
//! parser would let two clients disagree about whether metadata has expired.

/// Parses `YYYY-MM-DDTHH:MM:SSZ` into unix seconds. `None` if the text is not exactly that
/// form or names an impossible date.
pub fn parse_expiry(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z'
    {
        return None;
    }
    let num = |range: core::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[range] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_expiry;

    #[test]
    fn parses_known_instants() {
        assert_eq!(parse_expiry("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_expiry("2030-01-01T00:00:00Z"), Some(1_893_456_000));
        assert_eq!(parse_expiry("2000-02-29T12:34:56Z"), Some(951_827_696));
        assert_eq!(parse_expiry("2001-02-29T00:00:00Z"), None);
        assert_eq!(parse_expiry("2030-01-01T00:00:00"), None);
        assert_eq!(parse_expiry("2030-01-01 00:00:00Z"), None);
        assert_eq!(parse_expiry("2030-01-01T24:00:00Z"), None);
    }
}
