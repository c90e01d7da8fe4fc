//! Maintenance windows: when a site's devices may switch slots and reboot.
//!
//! A window opens on each weekday its mask names, at `start_minute` local time, and stays
//! open until `end_minute` — on the next day when `end_minute < start_minute` (a window from
//! 22:00 to 04:00 opened on Friday closes Saturday 04:00; only the opening day must be in the
//! mask). Local time is UTC plus the window's fixed offset: no time-zone database on an MCU,
//! and a fixed offset means a policy reads the same on every device; publishers re-sign around
//! daylight-saving changes if they care about the hour.
//!
//! Which windows apply: those whose site pattern matches the device's site (a glob where `*`
//! matches any run of bytes, including none). A site open in any applicable window is open.
//! **A site no pattern matches is unrestricted**: windows exist to protect the sites they
//! name, and a policy that names `factory-*` should not freeze every other site forever;
//! a publisher who wants every site restricted adds a `*` window. No windows at all is the
//! same: always open.
//!
//! Time is unix seconds (`i64`) from the caller; nothing here reads a clock.

/// Minutes in a day.
const DAY_MINUTES: i64 = 1440;
/// Seconds in a day.
const DAY_SECS: i64 = 86_400;
/// How far [`next_open`] looks ahead: a valid window opens at least once a week.
pub const SEARCH_DAYS: i64 = 8;

/// One maintenance window. `S` is `&str` in a [`super::PolicyView`] and `String` in an owned
/// policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Window<S> {
    /// Site names this window applies to; `*` matches any run of bytes.
    pub site_pattern: S,
    /// Days the window opens on: bit 0 Monday … bit 6 Sunday (ISO order).
    pub weekdays: u8,
    /// Local minute of the day the window opens (0..1440).
    pub start_minute: u16,
    /// Local minute of the day it closes (0..1440); below `start_minute` means the next day.
    pub end_minute: u16,
    /// Local time minus UTC, in minutes (−840..=840).
    pub utc_offset_minutes: i16,
}

impl<S: AsRef<str>> Window<S> {
    /// Borrowed form.
    pub fn as_str(&self) -> Window<&str> {
        Window {
            site_pattern: self.site_pattern.as_ref(),
            weekdays: self.weekdays,
            start_minute: self.start_minute,
            end_minute: self.end_minute,
            utc_offset_minutes: self.utc_offset_minutes,
        }
    }

    /// Owned form.
    #[cfg(feature = "alloc")]
    pub fn to_owned(&self) -> Window<alloc::string::String> {
        Window {
            site_pattern: self.site_pattern.as_ref().into(),
            weekdays: self.weekdays,
            start_minute: self.start_minute,
            end_minute: self.end_minute,
            utc_offset_minutes: self.utc_offset_minutes,
        }
    }

    /// Whether this window applies to `site`.
    pub fn applies_to(&self, site: &str) -> bool {
        glob_match(self.site_pattern.as_ref(), site)
    }

    /// How long the window stays open once it opens, in seconds (0 for a window that never
    /// opens, which validation refuses).
    fn open_secs(&self) -> i64 {
        (self.end_minute as i64 - self.start_minute as i64).rem_euclid(DAY_MINUTES) * 60
    }

    /// When the window opens on local day `day` (days since 1970-01-01 local), if it does.
    fn opening(&self, day: i64) -> Option<i64> {
        if self.weekdays & (1 << weekday(day)) == 0 || self.start_minute as i64 >= DAY_MINUTES {
            return None;
        }
        day.checked_mul(DAY_SECS)?
            .checked_add(self.start_minute as i64 * 60)?
            .checked_sub(self.utc_offset_minutes as i64 * 60)
    }

    /// The local day `unix` falls on.
    fn local_day(&self, unix: i64) -> Option<i64> {
        Some(unix.checked_add(self.utc_offset_minutes as i64 * 60)?.div_euclid(DAY_SECS))
    }

    /// Whether the window is open at `unix` (ignoring the site).
    pub fn is_open_at(&self, unix: i64) -> bool {
        let Some(today) = self.local_day(unix) else { return false };
        let len = self.open_secs();
        // A window is shorter than a day, so only an opening today or yesterday can cover now.
        [today - 1, today].into_iter().filter_map(|d| self.opening(d)).any(|o| o <= unix && unix - o < len)
    }

    /// The first opening at or after `unix` within [`SEARCH_DAYS`] (ignoring the site).
    fn next_opening(&self, unix: i64) -> Option<i64> {
        if self.open_secs() == 0 {
            return None;
        }
        let today = self.local_day(unix)?;
        (today..=today + SEARCH_DAYS).filter_map(|d| self.opening(d)).find(|o| *o >= unix)
    }
}

/// ISO weekday of local day `day` (days since 1970-01-01): 0 Monday … 6 Sunday.
/// 1970-01-01 was a Thursday (3).
pub fn weekday(day: i64) -> u32 {
    (day + 3).rem_euclid(7) as u32
}

/// Whether `site` may switch slots at `unix_now`: open in any window that applies to it, or
/// no window applies (see the module doc).
pub fn is_open<S: AsRef<str>>(windows: impl IntoIterator<Item = Window<S>>, site: &str, unix_now: i64) -> bool {
    let mut applies = false;
    for window in windows.into_iter().filter(|w| w.applies_to(site)) {
        if window.is_open_at(unix_now) {
            return true;
        }
        applies = true;
    }
    !applies
}

/// When `site` may next switch slots: `unix_now` itself if it is open now (or unrestricted),
/// else the earliest opening of an applicable window within [`SEARCH_DAYS`]. `None` only
/// when no applicable window opens in that time, which a validated policy cannot express.
pub fn next_open<S: AsRef<str>>(
    windows: impl IntoIterator<Item = Window<S>> + Clone,
    site: &str,
    unix_now: i64,
) -> Option<i64> {
    if is_open(windows.clone(), site, unix_now) {
        return Some(unix_now);
    }
    windows.into_iter().filter(|w| w.applies_to(site)).filter_map(|w| w.next_opening(unix_now)).min()
}

/// Glob match where `*` matches any run of bytes (including none) and every other byte
/// matches itself. Linear backtracking to the last `*`, no recursion and no heap, so a
/// hostile pattern costs at most `pattern.len() × text.len()` steps (64 × site length).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where the last `*` was and the text position it currently absorbs up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(pattern: &str, weekdays: u8, start: u16, end: u16, offset: i16) -> Window<&str> {
        Window { site_pattern: pattern, weekdays, start_minute: start, end_minute: end, utc_offset_minutes: offset }
    }

    /// 2024-01-01 00:00 UTC, a Monday.
    const MONDAY: i64 = 1_704_067_200;

    #[test]
    fn weekday_of_known_dates() {
        assert_eq!(weekday(0), 3, "1970-01-01 was a Thursday");
        assert_eq!(weekday(MONDAY / DAY_SECS), 0);
        assert_eq!(weekday(-1), 2, "1969-12-31 was a Wednesday");
    }

    #[test]
    fn glob_matches_stars_only() {
        assert!(glob_match("*", ""));
        assert!(glob_match("factory-*", "factory-berlin"));
        assert!(!glob_match("factory-*", "store-berlin"));
        assert!(glob_match("*-berlin", "factory-berlin"));
        assert!(glob_match("f*y-*n", "factory-berlin"));
        assert!(!glob_match("f*y-*x", "factory-berlin"));
        assert!(glob_match("site-1", "site-1"));
        assert!(!glob_match("site-1", "site-10"));
        assert!(!glob_match("site-?", "site-1"), "only * is special");
        assert!(glob_match("a**b", "ab"));
    }

    #[test]
    fn a_window_across_midnight_belongs_to_its_opening_day() {
        // Mondays 22:00 to 04:00 UTC.
        let w = [window("*", 0b1, 22 * 60, 4 * 60, 0)];
        assert!(!is_open(w.clone(), "s", MONDAY + 21 * 3600));
        assert!(is_open(w.clone(), "s", MONDAY + 22 * 3600));
        assert!(is_open(w.clone(), "s", MONDAY + 27 * 3600), "Tuesday 03:00 is Monday's window");
        assert!(!is_open(w.clone(), "s", MONDAY + 28 * 3600), "the end minute is closed");
        assert!(!is_open(w.clone(), "s", MONDAY + 3 * 3600), "Monday 03:00 is Sunday's window, and Sunday is off");
        assert_eq!(next_open(w.clone(), "s", MONDAY), Some(MONDAY + 22 * 3600));
        assert_eq!(next_open(w, "s", MONDAY + 28 * 3600), Some(MONDAY + 7 * DAY_SECS + 22 * 3600));
    }

    #[test]
    fn the_offset_shifts_local_time() {
        // 02:00 to 03:00 local at UTC+2 on Mondays: 00:00 to 01:00 UTC.
        let w = [window("*", 0b1, 120, 180, 120)];
        assert!(is_open(w.clone(), "s", MONDAY + 1800));
        assert!(!is_open(w.clone(), "s", MONDAY + 2 * 3600));
        // At UTC−5 the local Monday starts at 05:00 UTC.
        let w = [window("*", 0b1, 0, 60, -300)];
        assert!(!is_open(w.clone(), "s", MONDAY + 1800));
        assert!(is_open(w, "s", MONDAY + 5 * 3600 + 60));
    }

    #[test]
    fn sites_no_window_names_are_unrestricted() {
        let w = [window("factory-*", 0b1, 0, 60, 0)];
        assert!(is_open(w.clone(), "store-1", MONDAY + 12 * 3600));
        assert!(!is_open(w.clone(), "factory-1", MONDAY + 12 * 3600));
        assert_eq!(next_open(w, "store-1", MONDAY + 12 * 3600), Some(MONDAY + 12 * 3600));
        assert!(is_open(core::iter::empty::<Window<&str>>(), "any", 0));
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let w = [window("*", 0x7f, 0, 1, 840), window("*", 0x7f, 1439, 0, -840)];
        for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
            let _ = is_open(w.clone(), "s", t);
            let _ = next_open(w.clone(), "s", t);
        }
    }
}
