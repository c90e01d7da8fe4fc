//! Seals for microcontrollers, as the publisher makes them: the real `seeder` binary on a
//! real repository, and `protocol::seal::open` — what an MCU runs — on the files it wrote.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::seal::{open, Opened, SealError, SealKind, TrustAnchor};
use serde_json::Value;

fn seeder(args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = Command::new(env!("CARGO_BIN_EXE_seeder")).args(&all).output().expect("seeder runs");
    assert!(
        out.status.success(),
        "seeder {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Repo {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        seeder(&["init", "--repo", root.to_str().unwrap()]);
        Repo { _dir: dir, root }
    }

    fn path(&self) -> &str {
        self.root.to_str().unwrap()
    }

    fn add(&self, version: &str, counter: &str) {
        let image = self._dir.path().join(format!("{version}.img"));
        fs::write(&image, test_procs::random_bytes(300_000, version.len() as u64 + counter.len() as u64)).unwrap();
        seeder(&[
            "release",
            "add",
            "--repo",
            self.path(),
            "--image",
            image.to_str().unwrap(),
            "--name",
            "gw",
            "--version",
            version,
            "--hw-class",
            "stm32f7",
            "--security-counter",
            counter,
        ]);
    }

    fn anchor(&self) -> (TrustAnchor, Value) {
        let out = self._dir.path().join("anchor.bin");
        let report = seeder(&["mcu", "anchor", "--repo", self.path(), "--out", out.to_str().unwrap()]);
        (TrustAnchor::decode(&fs::read(out).unwrap()).unwrap(), report)
    }

    fn metadata(&self, name: &str) -> Value {
        serde_json::from_slice(&fs::read(self.root.join("metadata").join(name)).unwrap()).unwrap()
    }

    /// The current bytes of target `path` of `role` (targets or rollouts), as named by the
    /// repository's current metadata.
    fn target(&self, role: &str, path: &str) -> Vec<u8> {
        let snapshot_version = self.metadata("timestamp.json")["signed"]["meta"]["snapshot.json"]["version"].clone();
        let snapshot = self.metadata(&format!("{snapshot_version}.snapshot.json"));
        let version = &snapshot["signed"]["meta"][format!("{role}.json")]["version"];
        let role_meta = self.metadata(&format!("{version}.{role}.json"));
        let entry = &role_meta["signed"]["targets"][path];
        let sha256 = entry["hashes"]["sha256"].as_str().unwrap_or_else(|| panic!("{role} names no {path}"));
        let file: PathBuf = Path::new("targets").join(protocol::tuf::hashed_target_path(path, sha256));
        fs::read(self.root.join(file)).unwrap()
    }

    fn manifest_and_seal(&self, version: &str) -> (Vec<u8>, Vec<u8>) {
        let manifest = format!("releases/gw/{version}.manifest");
        (self.target("targets", &manifest), self.target("targets", &format!("{manifest}.sig")))
    }
}

#[test]
fn every_release_is_sealed_by_the_targets_keys_the_exported_anchor_pins() {
    let repo = Repo::new();
    let (anchor, report) = repo.anchor();
    assert_eq!((anchor.epoch, anchor.targets.threshold(), anchor.rollouts.is_empty()), (1, 1, true), "{report}");
    repo.add("1.0.0", "1");
    let (manifest, seal) = repo.manifest_and_seal("1.0.0");
    assert_eq!(open(&anchor, &seal, SealKind::Manifest, &manifest), Ok(Opened { anchor, rotated: false }));
    // The seal is for this manifest only, and only as a manifest.
    let mut other = manifest.clone();
    other[20] ^= 1;
    assert_eq!(open(&anchor, &seal, SealKind::Manifest, &other), Err(SealError::WrongSubject));
    assert_eq!(open(&anchor, &seal, SealKind::Policy, &manifest), Err(SealError::WrongKind));
    // Asking again changes nothing: the keys did not change.
    assert_eq!(repo.anchor().0, anchor);
}

#[test]
fn a_device_pinned_before_a_targets_key_rotation_follows_it_through_the_next_release() {
    let repo = Repo::new();
    let (pinned, _) = repo.anchor();
    repo.add("1.0.0", "1");
    seeder(&["key", "rotate", "--repo", repo.path(), "--role", "targets"]);
    let (rotated, _) = repo.anchor();
    assert_eq!(rotated.epoch, 2);
    assert_ne!(rotated.targets, pinned.targets);
    repo.add("2.0.0", "2");

    let (manifest, seal) = repo.manifest_and_seal("2.0.0");
    // The old device follows the statement the seal carries and learns the new keys.
    assert_eq!(open(&pinned, &seal, SealKind::Manifest, &manifest), Ok(Opened { anchor: rotated, rotated: true }));
    assert_eq!(open(&rotated, &seal, SealKind::Manifest, &manifest), Ok(Opened { anchor: rotated, rotated: false }));
    // 1.0.0's seal, made under the old keys, no longer opens for a device that rotated.
    let (old_manifest, old_seal) = repo.manifest_and_seal("1.0.0");
    assert!(open(&pinned, &old_seal, SealKind::Manifest, &old_manifest).is_ok());
    assert_eq!(open(&rotated, &old_seal, SealKind::Manifest, &old_manifest), Err(SealError::Threshold));
    // `seeder verify` opens every seal under the chain's anchor of its time.
    let verified = seeder(&["verify", "--repo", repo.path()]);
    assert_eq!(verified["ok"], true, "{verified}");
}

#[test]
fn rollout_policies_are_sealed_by_the_rollouts_key_that_the_chain_introduces() {
    let repo = Repo::new();
    let (pinned, _) = repo.anchor();
    repo.add("1.0.0", "1");
    seeder(&["rollout", "start", "--repo", repo.path(), "gw", "1.0.0", "--waves", "10,100"]);
    let (with_rollouts, _) = repo.anchor();
    assert_eq!((with_rollouts.epoch, with_rollouts.rollouts.threshold()), (2, 1));
    assert_eq!(with_rollouts.targets, pinned.targets);

    let policy = repo.target("rollouts", "rollouts/gw.policy");
    let seal = repo.target("rollouts", "rollouts/gw.policy.sig");
    let opened = open(&pinned, &seal, SealKind::Policy, &policy).unwrap();
    assert_eq!(opened, Opened { anchor: with_rollouts, rotated: true });
    assert!(protocol::rollout::PolicyView::parse(&policy).is_ok());
    // A manifest seal does not stand in for a policy's.
    let (manifest, manifest_seal) = repo.manifest_and_seal("1.0.0");
    assert_eq!(open(&with_rollouts, &manifest_seal, SealKind::Policy, &manifest), Err(SealError::WrongKind));

    // Pausing re-signs the policy, and its seal with it.
    seeder(&["rollout", "pause", "--repo", repo.path(), "gw"]);
    let paused = repo.target("rollouts", "rollouts/gw.policy");
    assert_ne!(paused, policy);
    let seal = repo.target("rollouts", "rollouts/gw.policy.sig");
    assert!(open(&with_rollouts, &seal, SealKind::Policy, &paused).is_ok());
    assert_eq!(open(&with_rollouts, &seal, SealKind::Policy, &policy), Err(SealError::WrongSubject));
    let verified = seeder(&["verify", "--repo", repo.path()]);
    assert_eq!(verified["ok"], true, "{verified}");
}
