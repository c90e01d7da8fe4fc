//! A long-running daemon under test: its own process group, its output lines kept (bounded)
//! and waited on, the whole group killed on drop.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Longest output line kept whole; a longer one is split (a daemon's log lines are short).
const LINE_LIMIT_BYTES: u64 = 64 * 1024;

/// How a [`Proc`] is started.
#[derive(Clone, Debug)]
pub struct Options {
    /// Environment added to the child's (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Start the child in a process group of its own, so that drop kills everything it
    /// started. The live demo turns this off: its children must stay in the terminal's
    /// group so that Ctrl-C, which ends the demo without running drops, reaches them too.
    pub own_group: bool,
    /// Most output lines kept; past it the oldest half is dropped (a test asserting on
    /// output sets this above what its daemons print, and the demo keeps only a tail).
    pub max_lines: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            env: vec![("RUST_LOG".into(), "info,libp2p=warn".into()), ("NO_COLOR".into(), "1".into())],
            own_group: true,
            max_lines: 200_000,
        }
    }
}

/// A running child whose stdout and stderr lines are collected; killed with its whole
/// process group on drop.
pub struct Proc {
    /// The name used in messages.
    pub name: String,
    child: Child,
    own_group: bool,
    reaped: bool,
    output: Arc<Output>,
}

/// Lines from both pipes in arrival order, and a wake-up for waiters.
struct Output {
    log: Mutex<Log>,
    changed: Condvar,
}

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    /// Lines dropped from the front to keep the bound; absolute index = dropped + position.
    dropped: usize,
    /// Pipes that reached their end (2: the process and everything holding them are gone).
    closed: usize,
}

impl Proc {
    /// Starts `program` with `args` and the default [`Options`].
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> Result<Proc> {
        Proc::spawn_with(name, program, args, &Options::default())
    }

    /// Starts `program` with `args` as `options` say, capturing stdout and stderr by line.
    pub fn spawn_with(name: &str, program: &Path, args: &[String], options: &Options) -> Result<Proc> {
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if options.own_group {
            // setpgid(0, 0) in the child: its pid names the group everything it starts joins.
            command.process_group(0);
        }
        let mut child = command.spawn().with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let output = Arc::new(Output { log: Mutex::new(Log::default()), changed: Condvar::new() });
        let streams: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().context("stdout")?), Box::new(child.stderr.take().context("stderr")?)];
        for stream in streams {
            let output = Arc::clone(&output);
            let max_lines = options.max_lines.max(2);
            std::thread::spawn(move || collect_lines(stream, &output, max_lines));
        }
        Ok(Proc { name: name.into(), child, own_group: options.own_group, reaped: false, output })
    }

    /// Waits until an output line satisfies `find`, returning what it extracted; an error
    /// with the output's tail after `timeout`, or as soon as the process has closed both
    /// pipes without printing such a line.
    pub fn wait_line<T>(&self, what: &str, timeout: Duration, find: impl Fn(&str) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut seen: usize = 0;
        let mut log = self.output.lock();
        loop {
            let start = seen.saturating_sub(log.dropped);
            for line in &log.lines[start..] {
                if let Some(found) = find(line) {
                    return Ok(found);
                }
            }
            seen = log.dropped + log.lines.len();
            if log.closed == 2 {
                drop(log);
                bail!("{}: exited without a line with {what}; last output:\n{}", self.name, self.tail(40));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(log);
                bail!("{}: no line with {what} within {timeout:?}; last output:\n{}", self.name, self.tail(40));
            }
            log = match self.output.changed.wait_timeout(log, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// The process id (to read `/proc/PID/status`, or to send a signal).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every output line kept, joined.
    pub fn output(&self) -> String {
        self.output.lock().lines.join("\n")
    }

    /// The last `n` output lines (what explains a failure).
    pub fn tail(&self, n: usize) -> String {
        let log = self.output.lock();
        log.lines[log.lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL to the process and its group, as a power cut or an OOM kill would; then reaps
    /// it. Idempotent.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        if self.own_group {
            // SAFETY: killpg only reads its arguments. The group id cannot name another
            // group: the leader is not reaped yet, so its pid is not free for reuse.
            unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Output {
    /// The log, also after a reader panicked while holding it (the lines are still valid).
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads `stream` line by line into `output` until it closes, keeping at most `max_lines`.
fn collect_lines(stream: Box<dyn Read + Send>, output: &Output, max_lines: usize) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(LINE_LIMIT_BYTES).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                let mut log = output.lock();
                if log.lines.len() >= max_lines {
                    let half = max_lines / 2;
                    log.lines.drain(..half);
                    log.dropped += half;
                }
                log.lines.push(String::from_utf8_lossy(&buf).into_owned());
                output.changed.notify_all();
            }
        }
    }
    output.lock().closed += 1;
    output.changed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Proc {
        Proc::spawn("sh", Path::new("sh"), &["-c".into(), script.into()]).unwrap()
    }

    #[test]
    fn a_line_is_found_on_either_pipe() {
        let proc = sh("echo one; echo 'addr=127.0.0.1:9 ready' >&2; sleep 30");
        let addr = proc.wait_line("addr", Duration::from_secs(10), |l| crate::field(l, "addr").map(String::from));
        assert_eq!(addr.unwrap(), "127.0.0.1:9");
    }

    #[test]
    fn a_process_that_exits_without_the_line_fails_at_once() {
        let proc = sh("echo nothing here");
        let start = Instant::now();
        let error =
            proc.wait_line("ready", Duration::from_secs(30), |l| l.contains("ready").then_some(())).unwrap_err();
        assert!(error.to_string().contains("exited without a line with ready"), "{error}");
        assert!(error.to_string().contains("nothing here"), "{error}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_line_times_out() {
        let proc = sh("sleep 30");
        let error = proc.wait_line("ready", Duration::from_millis(200), |_| Some(())).unwrap_err();
        assert!(error.to_string().contains("within"), "{error}");
    }

    #[test]
    fn output_is_bounded() {
        let options = Options { max_lines: 100, ..Options::default() };
        let proc =
            Proc::spawn_with("sh", Path::new("sh"), &["-c".into(), "seq 1 1000; echo done".into()], &options).unwrap();
        proc.wait_line("done", Duration::from_secs(10), |l| (l == "done").then_some(())).unwrap();
        let output = proc.output();
        assert!(output.lines().count() <= 100, "{} lines kept", output.lines().count());
        assert!(output.ends_with("1000\ndone"), "{output}");
    }

    /// What the child started dies with it: the group is killed, not only the leader.
    #[test]
    fn drop_kills_the_whole_group() {
        let proc = sh("sleep 300 & echo \"bg=$!\"; wait");
        let bg: libc::pid_t =
            proc.wait_line("bg", Duration::from_secs(10), |l| crate::field(l, "bg")?.parse().ok()).unwrap();
        drop(proc);
        // The background sleep was our grandchild, reparented on the leader's death: once
        // its group is killed it is gone, or a zombie until init reaps it.
        crate::eventually("the grandchild to die", Duration::from_secs(10), || {
            let stat = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("").to_string();
            (state.is_empty() || state == "Z").then_some(())
        })
        .unwrap();
    }
}
