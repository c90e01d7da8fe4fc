//! Running an operator's command (bootloader tools, health checks, reboot): the one runner,
//! because external commands are not trusted to behave.
//!
//! - Each runs in its own process group with stdin closed, and nothing it starts outlives it:
//!   on a timeout the whole group is killed (a hung `fw_setenv` under a wrapper script would
//!   otherwise outlive the wrapper, holding the environment's lock and our pipes), and when
//!   the command exits, whatever it left running in its group is killed too.
//! - At most [`OUTPUT_LIMIT_BYTES`] of its stdout and of its stderr are kept; the rest is
//!   read and dropped, so a flood costs neither memory nor a writer blocked on a full pipe.
//! - Failures name the command line, its exit status and the end of its stderr.
//!
//! Blocking: async callers run it on a blocking thread.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Most of a command's stdout or stderr kept; the answers we parse are a few bytes, so more
/// means something is wrong and must not grow the agent's memory.
pub const OUTPUT_LIMIT_BYTES: usize = 64 * 1024;
/// Most of a command's stderr (or unexpected stdout) quoted in an error: enough for the
/// message that explains the failure, not a log dump.
pub const ERROR_EXCERPT_BYTES: usize = 500;

/// What was read from one of a command's pipes.
#[derive(Debug, Default)]
pub struct Captured {
    /// The first [`OUTPUT_LIMIT_BYTES`] bytes.
    pub bytes: Vec<u8>,
    /// True if the command wrote more than was kept.
    pub truncated: bool,
}

/// A command that exited (successfully or not) within its timeout.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output, bounded.
    pub stdout: Captured,
    /// Its standard error, bounded.
    pub stderr: Captured,
}

impl Finished {
    /// The command's stdout if it exited 0 and printed at most [`OUTPUT_LIMIT_BYTES`];
    /// otherwise an error naming `argv`, with its exit status and stderr.
    pub fn into_stdout(self, argv: &[OsString]) -> Result<Vec<u8>> {
        let shown = show_argv(argv);
        if !self.status.success() {
            bail!("`{shown}` failed ({}){}", self.status, stderr_suffix(&self.stderr));
        }
        if self.stdout.truncated {
            bail!("`{shown}` printed more than {} KiB; refusing to parse it", OUTPUT_LIMIT_BYTES / 1024);
        }
        Ok(self.stdout.bytes)
    }

    /// The last non-empty line of stderr, at most 200 characters: the one-line reason a
    /// failed check gives.
    pub fn last_stderr_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr.bytes);
        text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").chars().take(200).collect()
    }
}

/// Runs `argv` (no shell) with stdin closed and `env` added to the environment, collecting
/// its output; kills it, with every process it started, if it is not done within `timeout`.
pub fn run(argv: &[OsString], env: &[(&str, &str)], timeout: Duration) -> Result<Finished> {
    let shown = show_argv(argv);
    let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut command = Command::new(program);
    command.args(args).envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // setpgid(0, 0) in the child: its pid names the group everything it starts joins.
    command.process_group(0);
    let mut child = command.spawn().with_context(|| format!("cannot run `{shown}`"))?;
    let group = Group(child.id() as libc::pid_t);

    let (done_tx, done_rx) = mpsc::channel();
    let stdout = Arc::new(Mutex::new(Captured::default()));
    let stderr = Arc::new(Mutex::new(Captured::default()));
    let mut pipes = 0;
    if let Some(pipe) = child.stdout.take() {
        spawn_reader(pipe, Arc::clone(&stdout), done_tx.clone());
        pipes += 1;
    }
    if let Some(pipe) = child.stderr.take() {
        spawn_reader(pipe, Arc::clone(&stderr), done_tx);
        pipes += 1;
    }

    let deadline = Instant::now() + timeout;
    // Polling without reaping: the exited leader stays a zombie, so its pid — the group's id —
    // cannot be reused until we have killed the group and reaped it. The pause grows
    // quickly, so quick commands stay quick and slow ones cheap.
    let mut pause = Duration::from_millis(1);
    loop {
        match group.leader_exited() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                group.kill_and_reap(&mut child);
                return Err(error).with_context(|| format!("cannot wait for `{shown}`"));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            group.kill_and_reap(&mut child);
            bail!(
                "`{shown}` timed out after {} s and was killed{}",
                timeout.as_secs(),
                stderr_suffix(&take_captured(&stderr))
            );
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }

    // The pipes close when the last process holding them exits, which may be something the
    // command left running in the background.
    while pipes > 0 {
        match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => pipes -= 1,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let status = group.kill_and_reap(&mut child);
                bail!(
                    "`{shown}` exited ({}) but left a process holding its output past the {} s timeout; \
                     it was killed{}",
                    status.map_or_else(|| "status unknown".to_string(), |s| s.to_string()),
                    timeout.as_secs(),
                    stderr_suffix(&take_captured(&stderr))
                );
            }
        }
    }
    let status = group.kill_and_reap(&mut child).context("the command's exit status is lost")?;
    Ok(Finished { status, stdout: take_captured(&stdout), stderr: take_captured(&stderr) })
}

/// A command's process group, named by its leader's pid.
struct Group(libc::pid_t);

impl Group {
    /// True once the leader has exited; it is left unreaped (see [`run`]).
    fn leader_exited(&self) -> io::Result<bool> {
        loop {
            // SAFETY: an all-zero siginfo_t is valid; waitid only writes into it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` outlives the call; the pid is our unreaped child's.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.0 as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            if rc == 0 {
                // SAFETY: waitid filled `info` for a child-state change, or left it zeroed.
                return Ok(unsafe { info.si_pid() } != 0);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// Kills every process in the group (the leader too, if it still runs), then reaps the
    /// leader. Errors mean the processes are already gone, which is the goal.
    fn kill_and_reap(&self, child: &mut Child) -> Option<ExitStatus> {
        // SAFETY: killpg only reads its arguments. The group id cannot name another group:
        // the leader is not reaped yet, so its pid is not free for reuse.
        unsafe { libc::killpg(self.0, libc::SIGKILL) };
        child.wait().ok()
    }
}

/// Reads `pipe` to its end, keeping the first [`OUTPUT_LIMIT_BYTES`] and draining the rest
/// (a writer blocked on a full pipe would otherwise look like a hang).
fn spawn_reader(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Captured>>, done: mpsc::Sender<()>) {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let Ok(mut captured) = into.lock() else { break };
                    let room = OUTPUT_LIMIT_BYTES - captured.bytes.len();
                    captured.bytes.extend_from_slice(&buf[..n.min(room)]);
                    captured.truncated |= n > room;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
}

fn take_captured(captured: &Mutex<Captured>) -> Captured {
    match captured.lock() {
        Ok(mut guard) => std::mem::take(&mut *guard),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    }
}

/// `; stderr: <excerpt>` for an error message, or a note that stderr was empty.
fn stderr_suffix(stderr: &Captured) -> String {
    let text = String::from_utf8_lossy(&stderr.bytes);
    let text = text.trim();
    if text.is_empty() {
        return String::from(" with nothing on stderr");
    }
    format!("; stderr: {}", bounded_text(text))
}

/// The end of `text` (where a failing script's last, most telling message is), at most
/// [`ERROR_EXCERPT_BYTES`] long, marked with `…` when cut.
pub fn bounded_text(text: &str) -> String {
    let text = text.trim();
    if text.len() <= ERROR_EXCERPT_BYTES {
        return text.to_string();
    }
    let mut start = text.len() - ERROR_EXCERPT_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// A command line for messages: arguments with spaces or quotes (or empty ones) are quoted.
pub fn show_argv(argv: &[OsString]) -> String {
    argv.iter()
        .map(|arg| {
            let arg = arg.to_string_lossy();
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                format!("{arg:?}")
            } else {
                arg.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sh(script: &str) -> Vec<OsString> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    /// Whether `pid` still runs (a zombie waiting for init to reap it does not).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
            Err(_) => false,
        }
    }

    /// Waits (bounded) for `pid` to stop running: SIGKILL is delivered at once, but the
    /// process state changes when the kernel next schedules it.
    fn gone_within(pid: i32, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !alive(pid) {
                return true;
            }
            thread::yield_now();
        }
        !alive(pid)
    }

    fn read_pid(path: &Path) -> i32 {
        std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn output_status_and_environment() {
        let argv = sh("echo \"$OTAMESH_SLOT\"; echo warn >&2; exit 0");
        let finished = run(&argv, &[("OTAMESH_SLOT", "b")], Duration::from_secs(10)).unwrap();
        assert!(finished.status.success());
        assert_eq!(finished.stderr.bytes, b"warn\n");
        assert_eq!(finished.into_stdout(&argv).unwrap(), b"b\n");

        let argv = sh("echo first >&2; echo 'the reason' >&2; exit 3");
        let finished = run(&argv, &[], Duration::from_secs(10)).unwrap();
        assert_eq!(finished.last_stderr_line(), "the reason");
        let error = format!("{:#}", finished.into_stdout(&argv).unwrap_err());
        assert!(error.contains("exit status: 3") && error.contains("the reason"), "{error}");
    }

    /// A grandchild in the background, not holding the pipes, would outlive the script:
    /// the runner kills it when the script exits.
    #[test]
    fn a_grandchild_does_not_outlive_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild");
        let script = format!("sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {}; exit 0", pid_file.display());
        let finished = run(&sh(&script), &[], Duration::from_secs(30)).unwrap();
        assert!(finished.status.success());
        let grandchild = read_pid(&pid_file);
        assert!(gone_within(grandchild, Duration::from_secs(10)), "grandchild {grandchild} still runs");
    }

    /// A hung script whose child holds the pipes: the timeout kills both, not only the script.
    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild");
        let script = format!("sleep 300 & echo $! > {}; echo 'waiting for a lock' >&2; wait", pid_file.display());
        let started = Instant::now();
        let error = format!("{:#}", run(&sh(&script), &[], Duration::from_secs(1)).unwrap_err());
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        assert!(error.contains("timed out after 1 s and was killed"), "{error}");
        assert!(error.contains("waiting for a lock"), "{error}");
        let grandchild = read_pid(&pid_file);
        assert!(gone_within(grandchild, Duration::from_secs(10)), "grandchild {grandchild} still runs");
    }

    /// A script that exits but leaves a child writing to its stdout past the timeout.
    #[test]
    fn a_leftover_process_holding_the_output_is_killed_at_the_timeout() {
        let error = format!("{:#}", run(&sh("sleep 300 & exit 0"), &[], Duration::from_secs(1)).unwrap_err());
        assert!(error.contains("left a process holding its output"), "{error}");
    }

    /// A flood of output is read to its end (the writer never blocks) but only the first
    /// [`OUTPUT_LIMIT_BYTES`] are kept.
    #[test]
    fn flooding_output_is_bounded() {
        let argv = sh("head -c 20000000 /dev/zero; head -c 20000000 /dev/zero >&2");
        let finished = run(&argv, &[], Duration::from_secs(60)).unwrap();
        assert!(finished.status.success());
        assert_eq!(finished.stdout.bytes.len(), OUTPUT_LIMIT_BYTES);
        assert!(finished.stdout.truncated && finished.stderr.truncated);
        assert_eq!(finished.stderr.bytes.len(), OUTPUT_LIMIT_BYTES);
        let error = format!("{:#}", finished.into_stdout(&argv).unwrap_err());
        assert!(error.contains("printed more than 64 KiB"), "{error}");

        // An endless flood ends at the timeout with memory still bounded.
        let error = format!("{:#}", run(&sh("yes flood"), &[], Duration::from_secs(1)).unwrap_err());
        assert!(error.contains("timed out"), "{error}");
    }

    #[test]
    fn a_missing_program_is_named() {
        let argv: Vec<OsString> = vec!["/nonexistent/slotctl".into(), "info".into()];
        let error = format!("{:#}", run(&argv, &[], Duration::from_secs(1)).unwrap_err());
        assert!(error.contains("cannot run `/nonexistent/slotctl info`"), "{error}");
        assert!(run(&[], &[], Duration::from_secs(1)).is_err());
    }

    #[test]
    fn long_stderr_is_quoted_by_its_end() {
        let text = format!("{}the real reason", "noise ".repeat(1000));
        let excerpt = bounded_text(&text);
        assert!(excerpt.starts_with('…') && excerpt.ends_with("the real reason"));
        assert!(excerpt.len() <= ERROR_EXCERPT_BYTES + '…'.len_utf8());
        assert_eq!(show_argv(&sh("a b")), "/bin/sh -c \"a b\"");
    }
}
