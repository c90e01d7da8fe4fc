//! Progress on the terminal: an indicatif bar on a TTY, plain lines otherwise (CI logs).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::engine::Micros;

/// Reports one phase's progress (devices done out of a total, at a virtual time).
pub struct Progress {
    bar: Option<ProgressBar>,
    phase: String,
    total: u64,
    last_line: Instant,
    started: Instant,
    quiet: bool,
}

impl Progress {
    /// A reporter for `phase`, drawn among `bars` (phases that run at once share the
    /// terminal through it); `quiet` prints nothing.
    pub fn new(phase: &str, total: u64, quiet: bool, bars: &MultiProgress) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = bars.add(ProgressBar::new(total));
            let style = ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} devices  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(phase.to_string());
            bar
        });
        Progress { bar, phase: phase.into(), total, last_line: Instant::now(), started: Instant::now(), quiet }
    }

    /// Devices done so far at virtual time `now`.
    pub fn update(&mut self, now: Micros, done: u64) {
        let msg = format!("virtual {:.1} s", now as f64 / 1e6);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(msg);
        } else if !self.quiet && self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            eprintln!("{}: {done}/{} devices, {msg}", self.phase, self.total);
        }
    }

    /// The phase ended.
    pub fn finish(self, now: Micros, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.finish_with_message(format!(
                "virtual {:.1} s, wall {:.1} s",
                now as f64 / 1e6,
                self.started.elapsed().as_secs_f64()
            ));
        } else if !self.quiet {
            eprintln!(
                "{}: done, {done}/{} devices, virtual {:.1} s, wall {:.1} s",
                self.phase,
                self.total,
                now as f64 / 1e6,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}
