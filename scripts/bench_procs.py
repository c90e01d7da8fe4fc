"""What the benchmark harnesses share: daemons whose output is read by a thread (pipes always
drained, so a chatty daemon never blocks), waiting on their lines with a timeout, and killing
every one of them at exit."""
import os, subprocess, threading, time

# Every process started through `Proc`, killed by `kill_all`.
procs = []


class Proc:
    """A daemon whose output lines are collected by a thread. `on_line` sees each line first;
    a line it returns True for is consumed (not kept): a counter of a fast stream, say."""

    def __init__(self, name, argv, rust_log="info,libp2p=warn", on_line=None):
        self.name, self.lines, self.cv, self.on_line = name, [], threading.Condition(), on_line
        env = dict(os.environ, RUST_LOG=rust_log, NO_COLOR="1")
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        procs.append(self.p)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            line = line.rstrip("\n")
            if self.on_line and self.on_line(line):
                continue
            with self.cv:
                self.lines.append(line)
                self.cv.notify_all()

    def wait_for(self, predicate, what, timeout=60):
        """The first non-None `predicate(line)`, waiting up to `timeout` seconds for it."""
        deadline, seen = time.time() + timeout, 0
        with self.cv:
            while True:
                for line in self.lines[seen:]:
                    found = predicate(line)
                    if found is not None:
                        return found
                seen = len(self.lines)
                left = deadline - time.time()
                if left <= 0 or self.p.poll() is not None:
                    raise SystemExit(f"{self.name}: no {what} in {timeout}s:\n" + "\n".join(self.lines[-20:]))
                self.cv.wait(min(left, 1.0))


def kill_all():
    for p in procs:
        try:
            p.kill()
            p.wait(timeout=5)
        except Exception:
            pass
