//! The sans-IO driver: which bytes to read or fetch next, and what to do with them.

use alloc::collections::{BTreeSet, VecDeque};
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::metadata::TargetFile;
use super::trusted::TrustedMetadataSet;
use super::{Config, Error, RepositoryError};

/// Where the bytes for a [`Request`] come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The caller's local copy of previously trusted metadata (`<encoded role>.json`).
    /// Any failure to read it is answered with an `Err`; it only means "no cached copy".
    Cache,
    /// The remote repository, at `file_name` under the metadata base URL.
    Remote,
}

/// Bytes the updater needs before it can continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Role name (unencoded).
    pub role: String,
    /// Version asked for (versioned file name), if any.
    pub version: Option<u64>,
    /// Hard cap: the caller must not read more than `max_length + 1` bytes, and should
    /// answer [`FetchError::TooLarge`] if there are more than `max_length`.
    pub max_length: u64,
    /// Cache or repository.
    pub source: Source,
    /// File name relative to the metadata directory or URL, role name percent-encoded
    /// (`3.root.json`, `timestamp.json`, `7.%2Fdelegated.json`).
    pub file_name: String,
}

/// Why a request could not be answered with bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchError {
    /// The file does not exist (HTTP 403/404, or no cached copy).
    NotFound,
    /// More than `max_length` bytes were offered.
    TooLarge,
    /// Anything else: connection, status, IO.
    Failed,
}

/// Something the updater decided that the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Newly verified metadata: persist `bytes` as the trusted copy of `role` (write to a
    /// temporary file, sync, rename) so the next run starts from it.
    Persist {
        /// Role name (unencoded; see [`encode_role_name`] for a file name).
        role: String,
        /// The exact bytes that verified.
        bytes: Vec<u8>,
    },
    /// The top-level refresh finished: root, timestamp, snapshot and targets are current.
    Refreshed,
    /// The target search finished and found this target.
    TargetFound(TargetFile),
    /// The target search finished without finding the path in any delegated role.
    TargetNotFound {
        /// The path searched.
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Root { next_version: u64, last_version: u64 },
    CachedTimestamp,
    RemoteTimestamp,
    CachedSnapshot,
    RemoteSnapshot,
    CachedRole { role: String, delegator: String },
    RemoteRole { role: String, delegator: String },
}

#[derive(Debug, Clone)]
struct Walk {
    path: String,
    /// Stack of (role, delegator); the top is visited next.
    to_visit: Vec<(String, String)>,
    visited: BTreeSet<String>,
}

/// The TUF client workflow as a state machine (python-tuf ngclient's `Updater` without
/// the IO).
///
/// Driver contract: after [`Updater::refresh`] or [`Updater::find_target`], loop: drain
/// [`Updater::poll_event`]; take [`Updater::poll_request`]; if `None` the operation is
/// over; otherwise answer it with [`Updater::handle_response`]. An `Err` from
/// `handle_response` ends the operation. `poll_request` keeps returning the same request
/// until it is answered.
#[derive(Debug)]
pub struct Updater {
    config: Config,
    trusted: TrustedMetadataSet,
    phase: Phase,
    refreshed: bool,
    /// A lookup waiting for the implicit refresh to finish.
    pending_lookup: Option<String>,
    walk: Option<Walk>,
    events: VecDeque<Event>,
}

/// Percent-encodes a role name for URLs and file names exactly like Python's
/// `urllib.parse.quote(name, "")`, which is what repositories and python-tuf use: role
/// names such as `../x` or `a/b` must never become path separators.
pub fn encode_role_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

impl Updater {
    /// Starts from the locally trusted root at time `now` (unix seconds).
    pub fn new(trusted_root: &[u8], now: i64, config: Config) -> Result<Self, Error> {
        Ok(Updater {
            trusted: TrustedMetadataSet::new(trusted_root, now, config.verify_hook)?,
            config,
            phase: Phase::Idle,
            refreshed: false,
            pending_lookup: None,
            walk: None,
            events: VecDeque::new(),
        })
    }

    /// The verified metadata so far.
    pub fn trusted(&self) -> &TrustedMetadataSet {
        &self.trusted
    }

    /// Starts the top-level refresh (spec 5.3–5.6). Call once per `Updater`: trusted state
    /// only moves forward within one instance.
    pub fn refresh(&mut self) {
        let current = self.trusted.root().common.version;
        self.phase = Phase::Root {
            next_version: current + 1,
            last_version: current + u64::from(self.config.max_root_rotations),
        };
    }

    /// Starts the search for `path` (spec 5.7), refreshing first if that has not happened.
    /// Ends with [`Event::TargetFound`] or [`Event::TargetNotFound`]. Fails at once only
    /// if the already trusted metadata answers the search and is inconsistent (a bug).
    pub fn find_target(&mut self, path: &str) -> Result<(), Error> {
        if self.refreshed {
            self.start_walk(path.to_string())
        } else {
            self.pending_lookup = Some(path.to_string());
            self.refresh();
            Ok(())
        }
    }

    /// The next decision for the caller; see the driver contract on [`Updater`].
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// What the updater needs next, or `None` when the current operation is over. Changes
    /// only after `handle_response`, `refresh` or `find_target`.
    pub fn poll_request(&self) -> Option<Request> {
        let consistent = self.trusted.root().consistent_snapshot;
        let remote = |role: &str, version: Option<u64>, max_length: u64| {
            let encoded = encode_role_name(role);
            Request {
                role: role.to_string(),
                version,
                max_length,
                source: Source::Remote,
                file_name: match version {
                    Some(v) => alloc::format!("{v}.{encoded}.json"),
                    None => alloc::format!("{encoded}.json"),
                },
            }
        };
        let cached = |role: &str, max_length: u64| Request {
            role: role.to_string(),
            version: None,
            max_length,
            source: Source::Cache,
            file_name: alloc::format!("{}.json", encode_role_name(role)),
        };
        Some(match &self.phase {
            Phase::Idle => return None,
            Phase::Root { next_version, .. } => remote("root", Some(*next_version), self.config.root_max_length),
            Phase::CachedTimestamp => cached("timestamp", self.config.timestamp_max_length),
            Phase::RemoteTimestamp => remote("timestamp", None, self.config.timestamp_max_length),
            Phase::CachedSnapshot => cached("snapshot", self.config.snapshot_max_length),
            Phase::RemoteSnapshot => {
                let meta = &self.trusted.timestamp()?.snapshot_meta;
                remote(
                    "snapshot",
                    consistent.then_some(meta.version),
                    meta.length.unwrap_or(self.config.snapshot_max_length),
                )
            }
            Phase::CachedRole { role, .. } => cached(role, self.config.targets_max_length),
            Phase::RemoteRole { role, .. } => {
                let meta = self.trusted.snapshot()?.meta.get(&alloc::format!("{role}.json"))?;
                remote(role, consistent.then_some(meta.version), meta.length.unwrap_or(self.config.targets_max_length))
            }
        })
    }

    /// Feeds the answer to the current [`Request`]. On `Err` the operation is over and
    /// the error says which role failed which check.
    pub fn handle_response(&mut self, response: Result<Vec<u8>, FetchError>) -> Result<(), Error> {
        let result = self.step(response);
        if result.is_err() {
            self.phase = Phase::Idle;
            self.walk = None;
            self.pending_lookup = None;
        }
        result
    }

    /// Feeds bytes for the current *remote* request that came from one of several
    /// interchangeable sources (mesh peers, mirrors), none of which is trusted.
    ///
    /// Unlike [`Updater::handle_response`], bytes that fail verification do not end the
    /// operation: the request stays pending, so the driver can answer it again with the next
    /// source's bytes. Otherwise one peer serving forged metadata first would stop every
    /// refresh. The trusted state keeps only what verified (an expired timestamp or snapshot
    /// that verified is kept for rollback protection, as the spec says). The error is
    /// returned so the driver can tell a source that lied from one that is merely behind
    /// ([`Error::source_is_behind`]). When no source is left, the driver ends the request
    /// with `handle_response(Err(..))`.
    pub fn handle_candidate(&mut self, bytes: Vec<u8>) -> Result<(), Error> {
        let remote = matches!(self.poll_request(), Some(Request { source: Source::Remote, .. }));
        let (phase, events) = (self.phase.clone(), self.events.len());
        let result = self.step(Ok(bytes));
        match &result {
            // Nothing was persisted: the failure was the candidate's, not the state's.
            Err(Error::Repository(_)) if remote && self.events.len() == events => self.phase = phase,
            Err(_) => {
                self.phase = Phase::Idle;
                self.walk = None;
                self.pending_lookup = None;
            }
            Ok(()) => {}
        }
        result
    }

    fn step(&mut self, response: Result<Vec<u8>, FetchError>) -> Result<(), Error> {
        let request = self.poll_request().ok_or(Error::InvalidState("response without a request"))?;
        // Enforce the cap here too: a driver that forgot to bound its read must not make
        // the updater parse an endless response.
        let response = match response {
            Ok(bytes) if bytes.len() as u64 > request.max_length => Err(FetchError::TooLarge),
            other => other,
        };
        let fetch_error = |failure: FetchError| -> Error {
            match failure {
                FetchError::TooLarge => {
                    RepositoryError::TooLarge { role: request.role.clone(), max_length: request.max_length }.into()
                }
                failure => Error::Fetch { role: request.role.clone(), failure },
            }
        };
        match core::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Idle => return Err(Error::InvalidState("no operation in progress")),
            Phase::Root { next_version, last_version } => match response {
                Ok(bytes) => {
                    self.trusted.update_root(&bytes)?;
                    self.persist("root", bytes);
                    self.phase = if next_version < last_version {
                        Phase::Root { next_version: next_version + 1, last_version }
                    } else {
                        Phase::CachedTimestamp
                    };
                }
                Err(FetchError::NotFound) => self.phase = Phase::CachedTimestamp,
                Err(e) => return Err(fetch_error(e)),
            },
            Phase::CachedTimestamp => {
                if let Ok(bytes) = response {
                    // A cached timestamp only provides rollback protection; if it no longer
                    // verifies (rotated keys: fast-forward recovery) or is expired, the
                    // remote one decides.
                    let _ = self.trusted.update_timestamp(&bytes);
                }
                self.phase = Phase::RemoteTimestamp;
            }
            Phase::RemoteTimestamp => {
                let bytes = response.map_err(fetch_error)?;
                if self.trusted.update_timestamp(&bytes)? {
                    self.persist("timestamp", bytes);
                }
                self.phase = Phase::CachedSnapshot;
            }
            Phase::CachedSnapshot => {
                let usable = match response {
                    Ok(bytes) => self.trusted.update_snapshot(&bytes, true).is_ok(),
                    Err(_) => false,
                };
                if usable {
                    self.load_role("targets".to_string(), "root".to_string())?;
                } else {
                    self.phase = Phase::RemoteSnapshot;
                }
            }
            Phase::RemoteSnapshot => {
                let bytes = response.map_err(fetch_error)?;
                self.trusted.update_snapshot(&bytes, false)?;
                self.persist("snapshot", bytes);
                self.load_role("targets".to_string(), "root".to_string())?;
            }
            Phase::CachedRole { role, delegator } => {
                let loaded = match response {
                    Ok(bytes) => self.trusted.update_delegated_targets(&bytes, &role, &delegator).is_ok(),
                    Err(_) => false,
                };
                if loaded {
                    self.role_loaded(&role)?;
                } else {
                    self.go_remote(role, delegator)?;
                }
            }
            Phase::RemoteRole { role, delegator } => {
                let bytes = response.map_err(fetch_error)?;
                self.trusted.update_delegated_targets(&bytes, &role, &delegator)?;
                self.persist(&role, bytes);
                self.role_loaded(&role)?;
            }
        }
        Ok(())
    }

    fn persist(&mut self, role: &str, bytes: Vec<u8>) {
        self.events.push_back(Event::Persist { role: role.to_string(), bytes });
    }

    /// Uses the trusted copy if it was verified via this delegator, else asks the cache.
    fn load_role(&mut self, role: String, delegator: String) -> Result<(), Error> {
        if self.trusted.contains(&role, &delegator) {
            return self.role_loaded(&role);
        }
        self.phase = Phase::CachedRole { role, delegator };
        Ok(())
    }

    fn go_remote(&mut self, role: String, delegator: String) -> Result<(), Error> {
        let listed = self.trusted.snapshot().is_some_and(|s| s.meta.contains_key(&alloc::format!("{role}.json")));
        if !listed {
            return Err(RepositoryError::MissingFromSnapshot { role }.into());
        }
        self.phase = Phase::RemoteRole { role, delegator };
        Ok(())
    }

    fn role_loaded(&mut self, role: &str) -> Result<(), Error> {
        let Some(walk) = self.walk.as_mut() else {
            // The top-level targets finished a refresh.
            self.refreshed = true;
            self.events.push_back(Event::Refreshed);
            if let Some(path) = self.pending_lookup.take() {
                return self.start_walk(path);
            }
            return Ok(());
        };
        let targets = self.trusted.targets(role).ok_or(Error::InvalidState("loaded role missing"))?;
        if let Some(target) = targets.targets.get(&walk.path) {
            self.events.push_back(Event::TargetFound(target.clone()));
            self.walk = None;
            return Ok(());
        }
        walk.visited.insert(role.to_string());
        if let Some(delegations) = &targets.delegations {
            let mut children = Vec::new();
            for (child, terminating) in delegations.roles_for_target(&walk.path) {
                children.push((child, role.to_string()));
                if terminating {
                    walk.to_visit.clear();
                    break;
                }
            }
            children.reverse();
            walk.to_visit.extend(children);
        }
        self.advance_walk()
    }

    fn start_walk(&mut self, path: String) -> Result<(), Error> {
        self.walk = Some(Walk {
            path,
            to_visit: alloc::vec![("targets".to_string(), "root".to_string())],
            visited: BTreeSet::new(),
        });
        let result = self.advance_walk();
        if result.is_err() {
            self.walk = None;
            self.phase = Phase::Idle;
        }
        result
    }

    fn advance_walk(&mut self) -> Result<(), Error> {
        loop {
            let max = self.config.max_delegations as usize;
            let Some(walk) = self.walk.as_mut() else {
                return Ok(());
            };
            if walk.visited.len() > max || walk.to_visit.is_empty() {
                let path = core::mem::take(&mut walk.path);
                self.walk = None;
                self.events.push_back(Event::TargetNotFound { path });
                return Ok(());
            }
            let Some((role, delegator)) = walk.to_visit.pop() else {
                continue;
            };
            if walk.visited.contains(&role) {
                continue;
            }
            // Either answered from the trusted set (recursing through `role_loaded`,
            // which calls back into this loop) or waiting for bytes.
            return self.load_role(role, delegator);
        }
    }
}
