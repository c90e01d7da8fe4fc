#!/usr/bin/env python3
"""A release from the seeder to N edge nodes on 127.0.0.1, against BitTorrent (aria2c +
opentracker) delivering the same file to N leechers, in one run. Prints times and the ratio.

Usage: scripts/bench_mesh.py [--mib 256] [--nodes 8] [--sites 1] [--only otamesh|bittorrent]
                            [--runs 3] [--warmup 1]
Each round runs both on a fresh filesystem; the first --warmup rounds are discarded (see
--help) and the summary gives medians of the rest with their range.
Needs: release builds of seeder and edge-node (the wrapper scripts/bench-mesh builds them),
and Debian's aria2, opentracker and mktorrent for the baseline.

What is timed:
- otamesh: from `seeder release add` returning (the origin announces within 0.5 s) until
  every edge node reports the release complete, which it does only once every chunk is
  verified against its blake3 id and durably in its store (appended to a pack file and
  fdatasynced before it is indexed).
  Metadata is verified through TUF.
- BitTorrent: from starting the leechers (the seeder is already seeding, the tracker up)
  until every leecher has exited with the whole file (aria2c checks every piece's SHA-1;
  it does not fsync).

Both run on one freshly made ext4 filesystem (a sparse file, loop-mounted; needs root and
mkfs.ext4, else `--fs tmp` is implied). Why fresh: ext4's inode allocator skips inodes freed
in the last minutes, and on a filesystem where thousands of files were just deleted (earlier
runs, other builds on the machine) creating files costs far more kernel time; when edge
nodes still wrote one file per chunk (~27k) it was half of all CPU time. Both systems now
create a handful of files, and each round still starts from the same clean state. `--fs ram` (the
default) backs that filesystem with /dev/shm: ext4, its journal and every sync still run,
but the 8 nodes do not queue on this VM's one shared disk, as 8 gateways with a disk each
would not. `--fs disk` backs it with /var/tmp; `--fs tmp` uses /tmp as it is.

Every child's output goes to a log file under the work directory (never an undrained pipe);
on failure the tail of each log is printed. Children are killed on exit, including on
SIGTERM and Ctrl-C.
"""
import argparse, json, os, re, resource, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "target", "release")


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Procs:
    """Children, each logging to its own file; killed (SIGKILL) by stop()."""

    def __init__(self, logdir):
        self.procs = []
        self.logdir = logdir

    def start(self, name, args, env=None):
        path = os.path.join(self.logdir, f"{name}.log")
        out = open(path, "w")
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        p.log_path = path
        p.name = name
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def dump_logs(self, lines=15):
        for p in self.procs:
            try:
                tail = open(p.log_path, errors="replace").read().splitlines()[-lines:]
            except OSError:
                continue
            log(f"--- {p.name} (exit {p.poll()}) {p.log_path}")
            for line in tail:
                print(f"    {line}", file=sys.stderr)


def wait_for(what, timeout, check, interval=0.05, progress=None, procs=None):
    log(f"waiting for {what}")
    deadline = time.monotonic() + timeout
    next_progress = time.monotonic() + 2
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if procs is not None:
            dead = [p for p in procs.procs if p.poll() is not None and getattr(p, "must_live", False)]
            if dead:
                procs.dump_logs()
                raise SystemExit(f"{dead[0].name} exited with {dead[0].returncode} while waiting for {what}")
        if progress and time.monotonic() >= next_progress:
            progress()
            next_progress = time.monotonic() + 2
        time.sleep(interval)
    if procs is not None:
        procs.dump_logs()
    raise SystemExit(f"timed out waiting for {what}")


def log_match(path, pattern):
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = re.search(pattern, line)
                if m:
                    return m.group(1)
    except OSError:
        pass
    return None


def status(http):
    try:
        with urllib.request.urlopen(f"http://{http}/status", timeout=2) as r:
            return json.load(r)
    except Exception:
        return None


def rss_mib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_s(pid):
    """User plus system CPU seconds a live process has used so far."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def reaped_children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bench_otamesh(work, image, nodes, sites):
    procs = Procs(work)
    env = {**os.environ, "NO_COLOR": "1", "RUST_LOG": os.environ.get("BENCH_RUST_LOG", "info,libp2p=warn")}
    try:
        repo = os.path.join(work, "repo")
        subprocess.run([f"{TARGET}/seeder", "init", "--repo", repo], check=True, capture_output=True)
        origin = procs.start("origin", [f"{TARGET}/seeder", "--json", "serve", "--repo", repo,
                                        "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--no-mdns"], env=env)
        origin.must_live = True
        origin_addr = wait_for("the origin's address", 30,
                               lambda: log_match(origin.log_path, r'"addrs":\["([^"]+)"'), procs=procs)
        log(f"origin at {origin_addr}")
        edges = []
        firsts = {}
        for i in range(nodes):
            site = f"site-{i % sites}"
            # Site-mates dial each other, as mDNS makes them do on a real LAN.
            boot = [origin_addr] + firsts.get(site, [])
            args = [f"{TARGET}/edge-node", "run", "--data-dir", os.path.join(work, f"edge{i}"), "--site", site,
                    "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--no-mdns", "--http-listen", "127.0.0.1:0",
                    "--device-quic-listen", "127.0.0.1:0", "--device-tcp-listen", "127.0.0.1:0"]
            for b in boot:
                args += ["--bootstrap", b]
            p = procs.start(f"edge{i}", args, env=env)
            p.must_live = True
            p2p = wait_for(f"edge {i}'s address", 30, lambda: log_match(p.log_path, r"addr=(\S+/p2p/\S+)"), procs=procs)
            http = wait_for(f"edge {i}'s http", 30, lambda: log_match(p.log_path, r"ops HTTP listening addr=(\S+)"),
                            procs=procs)
            firsts.setdefault(site, []).append(p2p)
            log(f"edge {i} at {p2p}, http {http}")
            edges.append((http, p))
        # Everyone sees the origin and every site-mate (identify done) before the release.
        expected = 1 + nodes // sites - 1
        for http, _ in edges:
            wait_for(f"{http} to see {expected} peers", 60,
                     lambda h=http: len((status(h) or {}).get("peers", [])) >= expected, procs=procs)
        t_add = time.monotonic()
        subprocess.run([f"{TARGET}/seeder", "release", "add", "--repo", repo, "--image", image, "--name", "bench",
                        "--version", "1", "--hw-class", "x86"], check=True, capture_output=True)
        t0 = time.monotonic()
        cpu0 = sum(cpu_s(p.pid) for p in procs.procs)
        log(f"release added in {t0 - t_add:.1f} s (not timed)")
        chunks = [0]

        def snapshot():
            out = []
            for http, _ in edges:
                s = status(http) or {}
                rel = (s.get("releases") or [{}])[0]
                chunks[0] = rel.get("chunks", chunks[0])
                out.append((rel.get("have", 0), bool(rel.get("complete")), s))
            return out

        def all_done():
            return all(done for _, done, _ in snapshot())

        def progress():
            snap = snapshot()
            origin_mib = sum((s.get("bytes_in") or {}).get("origin", 0) for _, _, s in snap) / (1 << 20)
            failed = sum((s.get("requests") or {}).get("failed", 0) for _, _, s in snap)
            sent = sum((s.get("requests") or {}).get("sent", 0) for _, _, s in snap)
            log(f"t={time.monotonic() - t0:5.1f}s have/{chunks[0]}: " + " ".join(f"{h}{'*' if d else ''}" for h, d, _ in snap)
                + f" | from origin {origin_mib:.0f} MiB, requests {sent} sent {failed} failed")

        wait_for("all edge nodes complete", 600, all_done, interval=0.2, progress=progress, procs=procs)
        elapsed = time.monotonic() - t0
        cpu = sum(cpu_s(p.pid) for p in procs.procs) - cpu0
        backhaul = sum((status(h)["bytes_in"]["origin"] + status(h)["bytes_in"]["wan"]) for h, _ in edges)
        peak_rss = max(rss_mib(p.pid) for _, p in edges)
        return elapsed, backhaul, peak_rss, cpu
    except SystemExit:
        procs.dump_logs()
        raise
    finally:
        procs.stop()


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def bench_bittorrent(work, image, nodes):
    for tool in ("aria2c", "opentracker", "mktorrent"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y aria2 opentracker mktorrent")
    procs = Procs(work)
    try:
        port = 16969
        if port_open(port):
            raise SystemExit(f"127.0.0.1:{port} is taken (a leftover opentracker?)")
        torrent = os.path.join(work, "f.torrent")
        subprocess.run(["mktorrent", "-a", f"http://127.0.0.1:{port}/announce", "-l", "20", "-p", "-o", torrent, image],
                       check=True, capture_output=True)
        info = subprocess.run(["aria2c", "-S", torrent], check=True, capture_output=True, text=True).stdout
        info_hash = re.search(r"Info Hash: ([0-9a-f]{40})", info).group(1)
        # opentracker drops privileges to `nobody` before it reads its whitelist: the file
        # and every directory above it must be readable by others (mkdtemp makes 0700).
        wl_dir = tempfile.mkdtemp(prefix="otamesh-bt-whitelist-")
        os.chmod(wl_dir, 0o755)
        whitelist = os.path.join(wl_dir, "whitelist")
        with open(whitelist, "w") as f:
            f.write(info_hash + "\n")
        os.chmod(whitelist, 0o644)
        tracker = procs.start("opentracker", ["opentracker", "-i", "127.0.0.1", "-p", str(port), "-P", str(port),
                                              "-w", whitelist])
        tracker.must_live = True
        wait_for("the tracker", 10, lambda: port_open(port), procs=procs)
        time.sleep(0.2)
        if "Can't open accesslist" in open(tracker.log_path, errors="replace").read():
            raise SystemExit(f"opentracker cannot read {whitelist}")
        common = ["--enable-dht=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--console-log-level=warn",
                  "--summary-interval=0", "--file-allocation=none", "--bt-tracker-interval=1", "--bt-max-peers=55",
                  "--bt-stop-timeout=600"]
        seeder = procs.start("aria2-seed", ["aria2c", *common, "-V", "--seed-ratio=0.0", "-d", os.path.dirname(image),
                                            "--listen-port=17000", torrent])
        seeder.must_live = True
        time.sleep(1.5)  # let the seeder check its file and announce (outside the timed part)
        t0 = time.monotonic()
        # Leechers are reaped as they exit, so their CPU time is in RUSAGE_CHILDREN; the seeder
        # and the tracker are still running at the end and are read from /proc.
        cpu0 = reaped_children_cpu_s() + cpu_s(seeder.pid) + cpu_s(tracker.pid)
        leechers = []
        for i in range(nodes):
            d = os.path.join(work, f"leech{i}")
            os.makedirs(d)
            leechers.append(procs.start(f"leech{i}", ["aria2c", *common, "--seed-time=0", "-d", d,
                                                      f"--listen-port={17001 + i}", torrent]))
        target = os.path.getsize(image)

        def progress():
            sizes = []
            for i in range(nodes):
                path = os.path.join(work, f"leech{i}", os.path.basename(image))
                sizes.append(os.path.getsize(path) >> 20 if os.path.exists(path) else 0)
            log(f"t={time.monotonic() - t0:5.1f}s leechers (MiB on disk; sparse files count their end): {sizes}")

        wait_for("all leechers done", 900, lambda: all(p.poll() is not None for p in leechers), interval=0.05,
                 progress=progress, procs=procs)
        elapsed = time.monotonic() - t0
        cpu = reaped_children_cpu_s() + cpu_s(seeder.pid) + cpu_s(tracker.pid) - cpu0
        for i, p in enumerate(leechers):
            got = os.path.join(work, f"leech{i}", os.path.basename(image))
            if p.returncode != 0 or not os.path.exists(got) or os.path.getsize(got) != target:
                procs.dump_logs()
                raise SystemExit(f"leecher {i} failed (exit {p.returncode})")
        shutil.rmtree(wl_dir, ignore_errors=True)
        return elapsed, cpu
    except SystemExit:
        procs.dump_logs()
        raise
    finally:
        procs.stop()


def fresh_filesystem(size_gib, backing_dir):
    """A new ext4 filesystem, loop-mounted; returns (mountpoint, cleanup) or None."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        return None
    image = tempfile.mktemp(prefix="otamesh-bench-fs-", suffix=".img", dir=backing_dir)
    mnt = tempfile.mkdtemp(prefix="otamesh-bench-mnt-")

    def cleanup():
        for args in (["umount", mnt], ["umount", "-l", mnt]):
            if subprocess.run(args, capture_output=True).returncode == 0:
                break
        for path in (image,):
            try:
                os.unlink(path)
            except OSError:
                pass
        try:
            os.rmdir(mnt)
        except OSError:
            pass

    try:
        subprocess.run(["truncate", "-s", f"{size_gib}G", image], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", image, mnt], check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        log(f"cannot make a fresh filesystem ({e}); using /tmp")
        cleanup()
        return None
    return mnt, cleanup


def one_round(a, label):
    """Both systems on one fresh filesystem; returns (ours, backhaul, rss, bt, where)."""
    size_gib = max(4, (a.mib * (2 * a.nodes + 4) >> 10) + 2)
    fs = None
    if a.fs != "tmp":
        fs = fresh_filesystem(size_gib, "/dev/shm" if a.fs == "ram" else "/var/tmp")
    work = tempfile.mkdtemp(prefix="otamesh-bench-", dir=fs[0] if fs else None)
    where = {"ram": "fresh ext4 backed by /dev/shm", "disk": "fresh ext4 backed by /var/tmp"}.get(a.fs) if fs else "/tmp"
    log(f"{label}: work directory {work} ({where})")
    ok = False
    try:
        image = os.path.join(work, "seed", "image.bin")
        os.makedirs(os.path.dirname(image))
        with open(image, "wb") as f:
            f.write(os.urandom(a.mib << 20))
        ours = backhaul = rss = bt = ours_cpu = bt_cpu = None
        if a.only != "bittorrent":
            ours, backhaul, rss, ours_cpu = bench_otamesh(work, image, a.nodes, a.sites)
            log(f"{label}: otamesh {ours:.2f} s")
        if a.only != "otamesh":
            bt, bt_cpu = bench_bittorrent(work, image, a.nodes)
            log(f"{label}: BitTorrent {bt:.2f} s")
        ok = True
        return ours, backhaul, rss, bt, where, ours_cpu, bt_cpu
    finally:
        if a.keep or not ok:
            logs = tempfile.mkdtemp(prefix="otamesh-bench-logs-")
            for name in os.listdir(work):
                if name.endswith(".log"):
                    shutil.copy(os.path.join(work, name), logs)
            log(f"logs kept in {logs}")
        if fs:
            fs[1]()
        else:
            shutil.rmtree(work, ignore_errors=True)


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def spread(values, fmt="{:.2f}"):
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main():
    # `timeout` and Ctrl-C must still run the cleanup that kills every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--sites", type=int, default=1)
    ap.add_argument("--only", choices=["otamesh", "bittorrent"])
    ap.add_argument("--runs", type=int, default=3, help="measured rounds; the summary gives medians (default 3)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="discarded rounds first (default 1): on these VMs memory handed back to the host "
                         "costs a host fault per page when first written again, which the first run after a "
                         "quiet spell (or a build) pays alone")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    ap.add_argument("--fs", choices=["ram", "disk", "tmp"], default="ram",
                    help="fresh ext4 on /dev/shm (default) or /var/tmp, or plain /tmp")
    a = ap.parse_args()
    if a.runs < 1 or a.warmup < 0:
        raise SystemExit("--runs must be at least 1 and --warmup at least 0")
    rounds = []
    for i in range(a.warmup + a.runs):
        label = f"warm-up {i + 1}" if i < a.warmup else f"run {i - a.warmup + 1}"
        result = one_round(a, label)
        if i >= a.warmup:
            rounds.append(result)
    where = rounds[0][4]
    print(f"{a.mib} MiB to {a.nodes} nodes ({a.sites} site(s)) on 127.0.0.1, {os.cpu_count()} cores, files on {where};"
          f" {a.runs} run(s) after {a.warmup} discarded")
    gib = a.mib * a.nodes / 1024
    for n, (ours, backhaul, rss, bt, _, ours_cpu, bt_cpu) in enumerate(rounds, 1):
        line = f"  run {n}:"
        if ours is not None:
            line += (f" otamesh (verified, TUF, durable) {ours:6.2f} s, {a.mib * a.nodes / ours:4.0f} MiB/s delivered,"
                     f" {ours_cpu / gib:.2f} CPU s/GiB delivered, origin+wan bytes {backhaul / (a.mib << 20):.2f}x"
                     f" the image, peak edge RSS {rss:.0f} MiB;")
        if bt is not None:
            line += f" aria2c + opentracker {bt:6.2f} s, {bt_cpu / gib:.2f} CPU s/GiB;"
        if ours is not None and bt is not None:
            line += f" ratio {ours / bt:.2f}"
        print(line)
    ours = [r[0] for r in rounds if r[0] is not None]
    bts = [r[3] for r in rounds if r[3] is not None]
    if ours:
        print(f"  otamesh time, median (min-max): {spread(ours)} s;"
              f" CPU s per GiB delivered: {spread([r[5] / gib for r in rounds])} (origin and edge nodes, timed part)")
    if bts:
        print(f"  BitTorrent time, median (min-max): {spread(bts)} s;"
              f" CPU s per GiB delivered: {spread([r[6] / gib for r in rounds])} (seeder, tracker and leechers)")
    if ours and bts:
        ratios = [r[0] / r[3] for r in rounds]
        print(f"  ratio otamesh / BitTorrent time, median (min-max): {spread(ratios)} (goal <= 1.0)")

if __name__ == "__main__":
    main()
