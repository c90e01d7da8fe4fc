#!/usr/bin/env python3
"""A release from the seeder to N edge nodes on 127.0.0.1, against BitTorrent (aria2c +
opentracker) delivering the same file to N leechers, in one run. Prints times and the ratio.

Usage: scripts/bench_mesh.py [--mib 256] [--nodes 8] [--sites 1]
Needs: release builds of seeder and edge-node (the wrapper scripts/bench-mesh builds them),
and Debian's aria2, opentracker and mktorrent for the baseline.

What is timed:
- otamesh: from `seeder release add` returning (the origin announces within 0.5 s) until
  every edge node reports the release complete. Every chunk is verified against its blake3
  id before it is stored; metadata is verified through TUF.
- BitTorrent: from starting the leechers (the seeder is already seeding, the tracker up)
  until every leecher has exited with the whole file (aria2c checks every piece's SHA-1).
"""
import argparse, json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "target", "release")


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def wait(what, timeout, check, interval=0.05):
    log(f"waiting for {what}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        p = subprocess.Popen(args, stdout=kw.pop("stdout", subprocess.PIPE), stderr=kw.pop("stderr", subprocess.PIPE), text=True, **kw)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()


def read_line_matching(stream, pattern, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            time.sleep(0.01)
            continue
        m = re.search(pattern, line)
        if m:
            return m.group(1)
    raise SystemExit(f"no line matching {pattern}")


def status(http):
    try:
        with urllib.request.urlopen(f"http://{http}/status", timeout=2) as r:
            return json.load(r)
    except Exception:
        return None


def bench_otamesh(work, image, nodes, sites):
    procs = Procs()
    try:
        repo = os.path.join(work, "repo")
        subprocess.run([f"{TARGET}/seeder", "init", "--repo", repo], check=True, capture_output=True)
        origin = procs.start([f"{TARGET}/seeder", "--json", "serve", "--repo", repo, "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--no-mdns"])
        origin_addr = json.loads(origin.stdout.readline())["addrs"][0]
        for stream in (origin.stdout, origin.stderr):
            threading.Thread(target=lambda s=stream: [None for _ in s], daemon=True).start()
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
            p = procs.start(args, env={**os.environ, "NO_COLOR": "1", "RUST_LOG": "info,libp2p=warn"})
            p2p = read_line_matching(p.stderr, r"addr=(\S+/p2p/\S+)")
            http = read_line_matching(p.stderr, r"ops HTTP listening addr=(\S+)")
            # Keep draining the log so the pipe never blocks the node.
            threading.Thread(target=lambda s=p.stderr: [None for _ in s], daemon=True).start()
            firsts.setdefault(site, []).append(p2p)
            log(f"edge {i} at {p2p}, http {http}")
            edges.append(http)
        per_site = nodes // sites
        for http in edges:
            wait("peers", 60, lambda h=http: (status(h) or {}).get("peers") and len(status(h)["peers"]) >= per_site)
        subprocess.run([f"{TARGET}/seeder", "release", "add", "--repo", repo, "--image", image, "--name", "bench",
                        "--version", "1", "--hw-class", "x86"], check=True, capture_output=True)
        t0 = time.monotonic()

        def all_done():
            for http in edges:
                s = status(http) or {}
                if not any(r.get("complete") for r in s.get("releases", [])):
                    return False
            return True
        wait("all edge nodes complete", 600, all_done)
        elapsed = time.monotonic() - t0
        backhaul = sum((status(h)["bytes_in"]["origin"] + status(h)["bytes_in"]["wan"]) for h in edges)
        return elapsed, backhaul
    finally:
        procs.stop()


def bench_bittorrent(work, image, nodes):
    for tool in ("aria2c", "opentracker", "mktorrent"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y aria2 opentracker mktorrent")
    procs = Procs()
    try:
        port = 16969
        torrent = os.path.join(work, "f.torrent")
        seed_dir = os.path.dirname(image)
        subprocess.run(["mktorrent", "-a", f"http://127.0.0.1:{port}/announce", "-l", "20", "-p", "-o", torrent, image],
                       check=True, capture_output=True)
        info = subprocess.run(["aria2c", "-S", torrent], check=True, capture_output=True, text=True).stdout
        info_hash = re.search(r"Info Hash: ([0-9a-f]{40})", info).group(1)
        whitelist = os.path.join(work, "whitelist")
        open(whitelist, "w").write(info_hash + "\n")
        procs.start(["opentracker", "-i", "127.0.0.1", "-p", str(port), "-P", str(port), "-w", whitelist],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        common = ["--enable-dht=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--console-log-level=warn",
                  "--summary-interval=0", "--file-allocation=none", "--bt-tracker-interval=1", "--bt-max-peers=55"]
        procs.start(["aria2c", *common, "-V", "--seed-ratio=0.0", "-d", seed_dir, "--listen-port=17000", torrent],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let the seeder verify its file and announce (outside the timed part)
        t0 = time.monotonic()
        leechers = []
        for i in range(nodes):
            d = os.path.join(work, f"leech{i}")
            os.makedirs(d)
            leechers.append(procs.start(["aria2c", *common, "--seed-time=0", "-d", d, f"--listen-port={17001 + i}", torrent],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in leechers:
            p.wait(timeout=900)
        elapsed = time.monotonic() - t0
        if any(p.returncode != 0 for p in leechers):
            raise SystemExit("a leecher failed")
        return elapsed
    finally:
        procs.stop()


def main():
    # `timeout` and Ctrl-C must still run the cleanup that kills every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--sites", type=int, default=1)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="otamesh-bench-")
    try:
        image = os.path.join(work, "seed", "image.bin")
        os.makedirs(os.path.dirname(image))
        with open(image, "wb") as f:
            f.write(os.urandom(a.mib << 20))
        ours, backhaul = bench_otamesh(work, image, a.nodes, a.sites)
        bt = bench_bittorrent(work, image, a.nodes)
        print(f"{a.mib} MiB to {a.nodes} nodes ({a.sites} site(s)) on 127.0.0.1")
        print(f"  otamesh (verified, TUF):  {ours:7.2f} s   origin+wan bytes {backhaul / (a.mib << 20):.2f}x the image")
        print(f"  aria2c + opentracker:     {bt:7.2f} s")
        print(f"  ratio otamesh / BitTorrent time: {ours / bt:.2f} (goal <= 1.0)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
