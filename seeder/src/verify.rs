//! `seeder verify`: checks every metadata file, target file and chunk, and names each problem.

use anyhow::{bail, Result};
use protocol::manifest::ManifestView;
use protocol::rollout::RolloutPolicy;
use protocol::tuf::metadata::{verify_threshold, Envelope, Root, Targets};
use protocol::tuf::rollouts_role;
use protocol::ChunkId;
use serde::Serialize;
use sha2::Digest;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::repo::Repo;
use crate::trusted;

/// One thing that is wrong, and where.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// The file at fault.
    pub file: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The outcome of `seeder verify`.
#[derive(Debug, Serialize, Default)]
pub struct VerifyReport {
    /// True when nothing is wrong.
    pub ok: bool,
    /// Metadata files checked.
    pub metadata_files: usize,
    /// Releases (manifests) checked.
    pub releases: usize,
    /// Chunk files checked.
    pub chunk_files: usize,
    /// Everything that is wrong.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    fn problem(&mut self, file: impl AsRef<Path>, problem: impl ToString) {
        self.problems.push(Problem { file: file.as_ref().display().to_string(), problem: problem.to_string() });
    }
}

/// Verifies `repo` from its first root (or `root_file`) at time `now`.
///
/// A missing repository or an unreadable `root_file` is an error of the command, not a
/// finding about the repository: it fails before any report is made.
pub fn run(repo: &Repo, root_file: Option<&Path>, now: i64) -> Result<VerifyReport> {
    if !repo.metadata_dir().is_dir() {
        bail!("{} is not a seeder repository (no metadata/); check --repo", repo.dir.display());
    }
    if let Some(path) = root_file {
        let bytes = crate::trusted::read_capped(path, protocol::tuf::Config::default().root_max_length)
            .map_err(|e| anyhow::anyhow!("--root: {e:#}; pass the fleet's root.json"))?;
        Envelope::parse("root", &bytes).and_then(Root::parse).map_err(|e| {
            anyhow::anyhow!("--root {} is not TUF root metadata ({e}); pass the fleet's root.json", path.display())
        })?;
    }
    let mut report = VerifyReport::default();
    let mut referenced_targets = HashSet::new();
    let mut referenced_chunks = HashSet::new();
    match trusted::load(repo, root_file, now) {
        Err(e) => report.problem(repo.metadata_dir(), format!("{e:#}")),
        Ok(verified) => {
            report.metadata_files = verified.files.len();
            let anchors = match crate::mcu_trust::chain(repo) {
                Ok(chain) => chain.into_iter().map(|(anchor, _)| anchor).collect(),
                Err(e) => {
                    report.problem(crate::mcu_trust::chain_dir(repo), format!("{e:#}"));
                    Vec::new()
                }
            };
            for target in verified.targets() {
                let Some(sha256) = target.hashes.get("sha256") else {
                    report.problem(&target.path, "target has no sha256 hash");
                    continue;
                };
                let path = repo.target_file_path(&target.path, sha256);
                referenced_targets.insert(path.clone());
                if let Some(sealed) = protocol::seal::sealed_target_path(&target.path) {
                    check_seal(repo, &verified, "targets", (&target.path, sealed), &anchors, &mut report);
                    continue;
                }
                let bytes = match verified.read_target(repo, "targets", &target.path) {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => continue,
                    Err(e) => {
                        report.problem(&path, format!("{e:#}"));
                        continue;
                    }
                };
                report.releases += 1;
                match ManifestView::new_checked(&bytes) {
                    Err(e) => report.problem(&path, format!("manifest does not decode: {e}")),
                    Ok(view) => {
                        for (index, entry) in view.chunks().enumerate() {
                            if !referenced_chunks.insert(entry.id) {
                                continue;
                            }
                            let chunk_path = repo.chunk_path(&entry.id);
                            match fs::read(&chunk_path) {
                                Err(_) => {
                                    report.problem(&chunk_path, format!("chunk {index} of {} is missing", target.path))
                                }
                                Ok(stored) => {
                                    if let Err(e) = protocol::codec::verify_stored(&entry, &stored) {
                                        report.problem(&chunk_path, format!("chunk {index} of {}: {e}", target.path));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for policy in verified.policies() {
                if let Some(sha256) = policy.hashes.get("sha256") {
                    referenced_targets.insert(repo.target_file_path(&policy.path, sha256));
                }
                if let Some(sealed) = protocol::seal::sealed_target_path(&policy.path) {
                    check_seal(repo, &verified, rollouts_role::ROLE, (&policy.path, sealed), &anchors, &mut report);
                    continue;
                }
                let path = repo.targets_dir().join(&policy.path);
                match verified.read_target(repo, rollouts_role::ROLE, &policy.path) {
                    Ok(Some(bytes)) => {
                        if let Err(e) = RolloutPolicy::decode(&bytes) {
                            report.problem(&path, format!("rollout policy does not decode: {e}"));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => report.problem(&path, format!("{e:#}")),
                }
            }
        }
    }
    check_all_metadata(repo, &mut report)?;
    check_unreferenced_targets(repo, &referenced_targets, &mut report);
    check_chunk_store(repo, &referenced_chunks, &mut report);
    report.ok = report.problems.is_empty();
    Ok(report)
}

/// A seal (`protocol::seal`) must open, for the file it seals, under some anchor of the
/// repository's MCU trust chain: the one current when it was made.
fn check_seal(
    repo: &Repo,
    verified: &trusted::Verified,
    role: &str,
    (seal_path, sealed_path): (&str, &str),
    anchors: &[protocol::seal::TrustAnchor],
    report: &mut VerifyReport,
) {
    let path = repo.targets_dir().join(seal_path);
    let kind =
        if role == rollouts_role::ROLE { protocol::seal::SealKind::Policy } else { protocol::seal::SealKind::Manifest };
    let (seal, sealed) =
        match (verified.read_target(repo, role, seal_path), verified.read_target(repo, role, sealed_path)) {
            (Ok(Some(seal)), Ok(Some(sealed))) => (seal, sealed),
            (Ok(_), Ok(None)) => return report.problem(&path, format!("seals {sealed_path}, which is not published")),
            (Err(e), _) | (_, Err(e)) => return report.problem(&path, format!("{e:#}")),
            (Ok(None), _) => return,
        };
    let opened = anchors.iter().rev().find_map(|anchor| protocol::seal::open(anchor, &seal, kind, &sealed).ok());
    if opened.is_none() {
        report.problem(&path, format!("the seal of {sealed_path} opens under no anchor of the MCU trust chain"));
    }
}

/// Every versioned metadata file, referenced or not, must be well-formed and signed by a
/// threshold of its role's keys under some root in the chain: so a flipped byte in an old
/// `3.targets.json` is caught even though clients no longer fetch it.
fn check_all_metadata(repo: &Repo, report: &mut VerifyReport) -> Result<()> {
    let dir = repo.metadata_dir();
    let mut roots: Vec<Root> = Vec::new();
    let mut others: Vec<(PathBuf, String, Option<u64>)> = Vec::new();
    let mut newest_root: Option<(u64, Vec<u8>)> = None;
    let Ok(entries) = fs::read_dir(&dir) else {
        report.problem(&dir, "metadata directory is missing");
        return Ok(());
    };
    let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        if name.starts_with('.') {
            continue;
        }
        let path = dir.join(&name);
        let Some(stem) = name.strip_suffix(".json") else {
            report.problem(&path, "unexpected file in metadata/");
            continue;
        };
        let (version, role) = match stem.split_once('.') {
            Some((v, role)) => match v.parse::<u64>() {
                Ok(v) => (Some(v), role.to_string()),
                Err(_) => (None, stem.to_string()),
            },
            None => (None, stem.to_string()),
        };
        if role == "root" {
            let bytes = fs::read(&path)?;
            if let Some(v) = version {
                match Envelope::parse("root", &bytes).and_then(Root::parse) {
                    Ok(root) if root.common.version == v => {
                        if newest_root.as_ref().is_none_or(|(n, _)| v > *n) {
                            newest_root = Some((v, bytes));
                        }
                        roots.push(root);
                    }
                    Ok(_) => report.problem(&path, "version inside does not match the file name"),
                    Err(e) => report.problem(&path, e),
                }
            }
        } else {
            others.push((path, role, version));
        }
    }
    // Each root must be signed by its own root keys (the chain itself was checked by the
    // TUF walk; this catches damage to roots the walk did not reach).
    for root in &roots {
        if let Err(e) = verify_threshold("root", &root.keys, &root.roles["root"], &root.envelope, None) {
            report.problem(dir.join(format!("{}.root.json", root.common.version)), e);
        }
    }
    match (newest_root, fs::read(dir.join("root.json"))) {
        (Some((_, newest)), Ok(copy)) if newest != copy => {
            report.problem(dir.join("root.json"), "differs from the newest N.root.json")
        }
        (_, Err(_)) => report.problem(dir.join("root.json"), "missing"),
        _ => {}
    }
    // Every delegation any targets version made (a rotated delegated key signed the older
    // files of its role).
    let delegations: Vec<_> = others
        .iter()
        .filter(|(_, role, version)| role == "targets" && version.is_some())
        .filter_map(|(path, role, _)| {
            let envelope = Envelope::parse(role, &fs::read(path).ok()?).ok()?;
            Targets::parse(role, &envelope).ok()?.delegations
        })
        .collect();
    for (path, role, version) in others {
        let bytes = fs::read(&path)?;
        let envelope = match Envelope::parse(&role, &bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                report.problem(&path, e);
                continue;
            }
        };
        if let Some(v) = version {
            if envelope.signed["version"].as_u64() != Some(v) {
                report.problem(&path, "version inside does not match the file name");
                continue;
            }
        }
        let signed = if role == rollouts_role::ROLE {
            // A delegated role: its keys are the ones some targets version delegates to it.
            delegations.iter().any(|d| {
                d.roles
                    .iter()
                    .any(|r| r.name == role && verify_threshold(&role, &d.keys, &r.keys, &envelope, None).is_ok())
            })
        } else {
            roots.iter().any(|root| {
                root.roles
                    .get(role.as_str())
                    .is_some_and(|keys| verify_threshold(&role, &root.keys, keys, &envelope, None).is_ok())
            })
        };
        if !signed {
            let under = if role == rollouts_role::ROLE { "any targets delegation" } else { "any root" };
            report.problem(&path, format!("not signed by a threshold of {role} keys under {under}"));
        }
    }
    Ok(())
}

/// Target files no metadata references must still hash to their consistent-snapshot name.
fn check_unreferenced_targets(repo: &Repo, referenced: &HashSet<PathBuf>, report: &mut VerifyReport) {
    for path in walk_files(&repo.targets_dir()) {
        if referenced.contains(&path) {
            continue;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some((prefix, _)) = protocol::tuf::naming::split_hashed_file_name(&name) else {
            report.problem(&path, "target file name has no hash prefix");
            continue;
        };
        let actual = fs::read(&path).map(|b| protocol::hex::encode(&sha2::Sha256::digest(&b))).unwrap_or_default();
        if actual != prefix {
            report.problem(&path, "target file does not match the sha256 in its name");
        }
    }
}

/// Every chunk file must hash to its name and sit in the right fan-out directory.
fn check_chunk_store(repo: &Repo, referenced: &HashSet<ChunkId>, report: &mut VerifyReport) {
    let root = repo.chunks_dir();
    for path in walk_files(&root) {
        report.chunk_files += 1;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(id) = chunk_store::layout::chunk_id_of(&name) else {
            report.problem(&path, "not a chunk file name");
            continue;
        };
        if repo.chunk_path(&id) != path {
            report.problem(&path, "chunk is in the wrong fan-out directory");
            continue;
        }
        if referenced.contains(&id) {
            continue; // already verified against its manifest entry
        }
        match fs::read(&path) {
            Ok(bytes) if id.matches(&bytes) => {}
            _ => report.problem(&path, "chunk bytes do not match its name"),
        }
    }
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() && !entry.file_name().to_string_lossy().starts_with(".") => out.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    out
}
