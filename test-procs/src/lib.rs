//! The one harness that runs otamesh's daemons (seeder, edge-node, device-client) as real
//! processes, for the integration tests and the live demo.
//!
//! - [`Proc`] starts a daemon in its own process group with stdin closed, keeps a bounded
//!   log of its stdout and stderr lines, and kills the whole group when dropped — also when
//!   a test panics — so nothing a daemon started outlives the test.
//! - Readiness is waited on, never slept for: [`Proc::wait_line`] wakes on each new output
//!   line; [`eventually`] polls a condition that has no event (a file appearing, an HTTP
//!   `/status` answering) on a short interval until a deadline.
//! - [`run_to_exit`] runs a command to its end through `host::process`, the runner the
//!   binaries use, with its timeout and group kill.
//! - [`postgres::Postgres`] runs a throwaway PostgreSQL server, on a Unix socket only, for
//!   the tests of the seeder's fleet database on PostgreSQL.
//!
//! Dev-only: the daemons never link it; simnet does, for the demo.

#![deny(missing_docs)]

mod daemons;
mod http;
pub mod postgres;
mod proc;
mod wait;

pub use daemons::{edge_addrs, edge_run_args, origin_addr, peer_id, EdgeAddrs, LOOPBACK_LAN_FLAGS};
pub use http::http_get;
pub use proc::{Options, Proc};
pub use wait::{eventually, wait_for_file};

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

/// What a process that ran to its end printed.
#[derive(Debug)]
pub struct Exited {
    /// Its exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    /// Its standard output (at most `host::process::OUTPUT_LIMIT_BYTES`).
    pub stdout: String,
    /// Its standard error (bounded the same way).
    pub stderr: String,
}

/// Runs `program` to its exit with `env` added and stdin closed; an error if it is still
/// running after `timeout` (then it and everything it started are killed) — a command
/// expected to fail that starts instead.
pub fn run_to_exit(program: &Path, args: &[String], env: &[(&str, &str)], timeout: Duration) -> Result<Exited> {
    let argv: Vec<_> = std::iter::once(program.as_os_str().to_owned()).chain(args.iter().map(Into::into)).collect();
    let finished = host::process::run(&argv, env, timeout)?;
    Ok(Exited {
        code: finished.status.code(),
        stdout: String::from_utf8_lossy(&finished.stdout.bytes).into_owned(),
        stderr: String::from_utf8_lossy(&finished.stderr.bytes).into_owned(),
    })
}

/// The value of `key=` in a daemon's log line (tracing's field format), quotes removed.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    Some(line[start..].split_whitespace().next()?.trim_matches('"'))
}

/// Deterministic pseudo-random bytes (xorshift64): incompressible test images and payloads
/// that a failing test can reproduce from `seed`, fast enough for 64 MiB in debug builds.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
