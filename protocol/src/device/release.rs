//! Which signed release a device should run: among the releases published under the name
//! the device follows, the one for its hardware class with the highest security counter,
//! then the highest version (digit runs compare as numbers, so `1.10.0` follows `1.9.0`).
//!
//! The choice also says when the best candidate is one this device must refuse — none for
//! its hardware class, or a security counter below its anti-rollback floor — so a driver
//! never downloads it. The install engine checks the same two conditions again on the offer
//! and records why it refused; the two checks agree by construction (same fields, same
//! comparisons).
//!
//! No heap: candidates are borrowed and compared in place.

use core::cmp::Ordering;

/// The path prefix of release manifests among the signed targets.
pub const RELEASES_PREFIX: &str = "releases/";
/// The file suffix of release manifests.
pub const MANIFEST_SUFFIX: &str = ".manifest";

/// One signed release as the choice sees it (from its target's custom metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseCandidate<'a> {
    /// The release name it is published under (`releases/NAME/…`).
    pub name: &'a str,
    /// Its hardware class.
    pub hw_class: &'a str,
    /// Its anti-rollback counter.
    pub security_counter: u64,
    /// Its version string.
    pub version: &'a str,
}

/// What a device follows and what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceIdentity<'a> {
    /// The release name it follows.
    pub release: &'a str,
    /// Its hardware class.
    pub hw_class: &'a str,
    /// Its anti-rollback floor (the install record's `min_security_counter`).
    pub security_floor: u64,
}

/// Why the best candidate is one to refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Releases exist under the name, none for this hardware class.
    WrongHardwareClass,
    /// The best release for this hardware class is below the anti-rollback floor.
    SecurityCounterTooOld,
}

/// The outcome of [`choose_release`]; indices are positions in the candidates given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseChoice {
    /// Nothing is published under the device's release name.
    Nothing,
    /// This one: it is for this hardware class and at or above the floor.
    Install(usize),
    /// The best there is, which this device must refuse, and why.
    Refuse {
        /// The candidate.
        index: usize,
        /// Why.
        reason: Refusal,
    },
}

/// The release name of a target path `releases/NAME/FILE.manifest`; `None` for any other
/// target.
pub fn release_name(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(RELEASES_PREFIX)?;
    let (name, file) = rest.split_once('/')?;
    (!name.is_empty() && file.ends_with(MANIFEST_SUFFIX)).then_some(name)
}

/// Chooses among `candidates` for `device` (see the module doc). Among equal counters and
/// versions the first wins.
pub fn choose_release<'a>(
    candidates: impl IntoIterator<Item = ReleaseCandidate<'a>>,
    device: &DeviceIdentity<'_>,
) -> ReleaseChoice {
    let mut best_matching: Option<(usize, ReleaseCandidate<'a>)> = None;
    let mut best_any: Option<(usize, ReleaseCandidate<'a>)> = None;
    let better = |new: &ReleaseCandidate<'_>, old: &Option<(usize, ReleaseCandidate<'_>)>| {
        old.as_ref().is_none_or(|(_, old)| rank(new, old) == Ordering::Greater)
    };
    for (index, candidate) in candidates.into_iter().enumerate() {
        if candidate.name != device.release {
            continue;
        }
        if better(&candidate, &best_any) {
            best_any = Some((index, candidate));
        }
        if candidate.hw_class == device.hw_class && better(&candidate, &best_matching) {
            best_matching = Some((index, candidate));
        }
    }
    match (best_matching, best_any) {
        (Some((index, c)), _) if c.security_counter < device.security_floor => {
            ReleaseChoice::Refuse { index, reason: Refusal::SecurityCounterTooOld }
        }
        (Some((index, _)), _) => ReleaseChoice::Install(index),
        (None, Some((index, _))) => ReleaseChoice::Refuse { index, reason: Refusal::WrongHardwareClass },
        (None, None) => ReleaseChoice::Nothing,
    }
}

/// Counter first, then version.
fn rank(a: &ReleaseCandidate<'_>, b: &ReleaseCandidate<'_>) -> Ordering {
    a.security_counter.cmp(&b.security_counter).then_with(|| compare_versions(a.version, b.version))
}

/// Orders version strings: alternating digit runs (compared as numbers; one too long for a
/// u64 counts as 0) and text runs (compared as text).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    VersionParts(a).cmp(VersionParts(b))
}

/// A version string as (number, text) parts: `1.10.0-rc2` is (1, "."), (10, "."), (0,
/// "-rc"), (2, "").
struct VersionParts<'a>(&'a str);

impl<'a> Iterator for VersionParts<'a> {
    type Item = (u64, &'a str);

    fn next(&mut self) -> Option<(u64, &'a str)> {
        if self.0.is_empty() {
            return None;
        }
        let rest = self.0;
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let text_end = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (text, next) = tail.split_at(text_end);
        self.0 = next;
        Some((number.parse().unwrap_or(0), text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate<'a>(hw_class: &'a str, security_counter: u64, version: &'a str) -> ReleaseCandidate<'a> {
        ReleaseCandidate { name: "gw", hw_class, security_counter, version }
    }

    const DEVICE: DeviceIdentity<'static> = DeviceIdentity { release: "gw", hw_class: "rpi4", security_floor: 2 };

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("1.10.0", "1.9.0"), Ordering::Greater);
        assert_eq!(compare_versions("2.0.0", "1.99.99"), Ordering::Greater);
        assert_eq!(compare_versions("1.0.0-rc2", "1.0.0-rc1"), Ordering::Greater);
        assert_eq!(compare_versions("1.0.0", "1.0.0"), Ordering::Equal);
    }

    #[test]
    fn the_highest_counter_then_version_for_this_hardware_class_wins() {
        let cs = [
            candidate("rpi4", 2, "1.9.0"),
            candidate("rpi4", 2, "1.10.0"),
            candidate("other", 9, "9.0.0"),
            ReleaseCandidate { name: "other-release", ..candidate("rpi4", 9, "9.0.0") },
            candidate("rpi4", 1, "3.0.0"),
        ];
        assert_eq!(choose_release(cs, &DEVICE), ReleaseChoice::Install(1));
    }

    #[test]
    fn release_choice_refuses_the_wrong_hardware_class() {
        let cs = [candidate("other", 5, "5.0.0"), candidate("other2", 3, "3.0.0")];
        assert_eq!(
            choose_release(cs, &DEVICE),
            ReleaseChoice::Refuse { index: 0, reason: Refusal::WrongHardwareClass }
        );
        assert_eq!(choose_release([candidate("rpi4", 2, "1.0.0")], &DEVICE), ReleaseChoice::Install(0));
    }

    #[test]
    fn release_choice_refuses_a_counter_below_the_floor() {
        let cs = [candidate("rpi4", 1, "9.0.0"), candidate("other", 7, "7.0.0")];
        assert_eq!(
            choose_release(cs, &DEVICE),
            ReleaseChoice::Refuse { index: 0, reason: Refusal::SecurityCounterTooOld }
        );
        // At the floor is accepted.
        assert_eq!(choose_release([candidate("rpi4", 2, "0.1.0")], &DEVICE), ReleaseChoice::Install(0));
        assert_eq!(choose_release([], &DEVICE), ReleaseChoice::Nothing);
        let elsewhere = ReleaseCandidate { name: "x", ..candidate("rpi4", 5, "5.0.0") };
        assert_eq!(choose_release([elsewhere], &DEVICE), ReleaseChoice::Nothing);
    }

    #[test]
    fn release_names_come_from_manifest_paths_only() {
        assert_eq!(release_name("releases/gw/2.0.0.manifest"), Some("gw"));
        assert_eq!(release_name("releases/gw/2.0.0.img"), None);
        assert_eq!(release_name("releases//2.0.0.manifest"), None);
        assert_eq!(release_name("other/gw/2.0.0.manifest"), None);
    }
}
