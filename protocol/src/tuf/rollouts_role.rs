//! The `rollouts` delegation's names: one owner for the contract between the seeder that
//! signs rollout policies, the edge nodes that mirror them and the devices that obey them.
//!
//! Rollout policies are targets `rollouts/<release name>.policy` of a delegated role
//! `rollouts` (terminating, paths `rollouts/*`) whose online key `seeder serve` holds. The
//! top-level targets role, offline, alone signs releases; the delegation keeps the online key
//! to policies. A repository whose targets metadata delegates this role has opted into
//! rollouts: its devices install only what a verified policy names.

use alloc::format;
use alloc::string::String;

use super::metadata::Targets;

/// The delegated role's name (its metadata file is `N.rollouts.json`).
pub const ROLE: &str = "rollouts";
/// The only paths the role may sign.
pub const PATHS: &str = "rollouts/*";
/// A path inside the delegation that names no policy: looking it up makes a TUF client load
/// (and verify) the `rollouts` metadata, after which every policy it lists is known.
pub const INDEX_LOOKUP: &str = "rollouts/.index";

/// The target path of the policy rolling out release `release_name`: one current policy per
/// release name, each state change a new version of the same target.
pub fn policy_target_path(release_name: &str) -> String {
    format!("rollouts/{release_name}.policy")
}

/// The release name a policy target path is for, if it is one.
pub fn release_of_policy_path(path: &str) -> Option<&str> {
    path.strip_prefix("rollouts/")?.strip_suffix(".policy").filter(|n| !n.is_empty() && !n.contains('/'))
}

/// Whether verified top-level targets metadata delegates the `rollouts` role.
pub fn is_delegated(targets: &Targets) -> bool {
    targets.delegations.as_ref().is_some_and(|d| d.roles.iter().any(|r| r.name == ROLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_paths_round_trip_and_nothing_else_is_one() {
        assert_eq!(release_of_policy_path(&policy_target_path("gw")), Some("gw"));
        assert_eq!(release_of_policy_path("rollouts/.policy"), None);
        assert_eq!(release_of_policy_path("rollouts/a/b.policy"), None);
        assert_eq!(release_of_policy_path("releases/gw/1.0.manifest"), None);
        assert_eq!(release_of_policy_path(INDEX_LOOKUP), None);
        assert!(super::super::metadata::path_matches(PATHS, INDEX_LOOKUP));
    }
}
