"""Harness for scripts/bench-mcu. Runs inside the network namespace the wrapper made, whose TAP
device om-tap has 10.78.0.1/24 on the kernel side; every process it starts is killed at exit."""
import argparse, json, os, random, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time
import urllib.request

from bench_procs import Proc, kill_all

parser = argparse.ArgumentParser(
    prog="scripts/bench-mcu",
    description="The MCU agent's install download (mcu-agent's run_once) over a TAP device against "
    "mcu-plain-download of as many bytes over the same stack and buffers; needs root.")
parser.add_argument("--runs", type=int, default=5, help="runs, each K agent installs and K plain downloads (default 5)")
parser.add_argument("--installs", type=int, default=5, help="K: installs (and plain downloads) per run (default 5)")
parser.add_argument("--image-kib", type=int, default=240, help="image size; ACTIVE holds 256 KiB (default 240)")
parser.add_argument("--flash-dir", help="where the flash files go (default: a temporary directory on disk; "
                    "on tmpfs, e.g. /dev/shm, the flash file's fsyncs cost nothing)")
parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
args = parser.parse_args()
if args.runs < 3 or args.installs < 1:
    parser.error("at least 3 runs (a median and its spread) of at least 1 install")

TAP, TAP_HOST_IP, AGENT_IP = "om-tap", "10.78.0.1", "10.78.0.2/24"
BIN = os.path.abspath("target/release")
MCU_BIN = os.path.abspath("device-client/mcu/target/release")
RUN_TIMEOUT_S = 120
MIB = 1024 * 1024
work = tempfile.mkdtemp(prefix="bench-mcu-")
flash_dir = tempfile.mkdtemp(prefix="bench-mcu-flash-", dir=args.flash_dir) if args.flash_dir else work


def cleanup(*_):
    kill_all()
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(flash_dir, ignore_errors=True)


signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(1)))


def field(line, key):
    """`key=value` from a log line, or None."""
    for word in line.split():
        if word.startswith(key + "="):
            return word[len(key) + 1:]
    return None


def json_line(line, key):
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and key in value else None


# The edge's ops HTTP is on this namespace's loopback: never through a proxy.
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def status(addr):
    try:
        return json.load(http.open(f"http://{addr}/status", timeout=2))
    except Exception:
        return {}


def until(what, check, timeout=120):
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def seeder(*argv):
    out = subprocess.run([f"{BIN}/seeder", "--json", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"seeder {' '.join(argv)} failed:\n{out.stdout}{out.stderr}")
    try:
        return json.loads(out.stdout)
    except ValueError:
        return None


def run_json(argv):
    """Runs a host binary to its end; its JSON line, which must say ok."""
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=RUN_TIMEOUT_S)
    lines = out.stdout.strip().splitlines()
    report = json_line(lines[-1], "ok") if lines else None
    if out.returncode != 0 or not report or report["ok"] is not True:
        raise SystemExit(f"{os.path.basename(argv[0])} failed ({out.returncode}):\n{out.stdout}{out.stderr[-3000:]}")
    return report


class PlainServer:
    """Sends `payload` to each connection, then closes it: what mcu-plain-download reads."""

    def __init__(self):
        self.payload = b""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((TAP_HOST_IP, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            conn, _ = self.sock.accept()
            with conn:
                conn.sendall(self.payload)


try:
    rng = random.Random(12)
    image_bytes = args.image_kib * 1024
    factory, image, anchor = (os.path.join(work, n) for n in ("factory.bin", "v2.bin", "anchor.bin"))
    for path in (factory, image):
        with open(path, "wb") as f:
            f.write(rng.randbytes(image_bytes))
    repo = os.path.join(work, "repo")
    seeder("init", "--repo", repo)
    origin = Proc("origin", [f"{BIN}/seeder", "--json", "serve", "--repo", repo,
                             "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--no-mdns"])
    origin_addr = origin.wait_for(lambda l: (json_line(l, "addrs") or {}).get("addrs", [None])[0], "mesh address")
    # The device pins the anchor of the fresh repository (the rollouts key reaches it through
    # the statement the seals carry), as tests/tests/mcu.rs does.
    seeder("mcu", "anchor", "--repo", repo, "--out", anchor)
    # Every agent run is a new embassy-net stack that exits without closing its connections:
    # the edge keeps them until its idle timeout, more than the default per-client cap.
    edge = Proc("edge", [f"{BIN}/edge-node", "run", "--data-dir", f"{work}/edge", "--site", "bench",
                         "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--no-mdns", "--http-listen", "127.0.0.1:0",
                         "--device-quic-listen", f"{TAP_HOST_IP}:0", "--device-tcp-listen", f"{TAP_HOST_IP}:0",
                         "--bootstrap", origin_addr, "--max-connections-per-client", "512"])
    edge_http = edge.wait_for(lambda l: field(l, "addr") if "ops HTTP listening" in l else None, "ops HTTP address")
    edge_tcp = edge.wait_for(
        lambda l: (field(l, "tcp") or "")[5:-1] or None if "device service listening" in l else None,
        "device TCP address")
    published = seeder("release", "add", "--repo", repo, "--image", image, "--name", "gw", "--version", "2.0.0",
                       "--hw-class", "mcu", "--security-counter", "2", "--chunking", "fixed:4K", "--compress", "none")
    seeder("rollout", "start", "--repo", repo, "gw", "2.0.0", "--waves", "100")
    until("the rollout at the edge", lambda: any(
        r.get("rollout") == "gw-2.0.0" for r in status(edge_http).get("rollouts", [])))

    def agent(n):
        flash = os.path.join(flash_dir, f"flash-{n}.bin")
        report = run_json([f"{MCU_BIN}/mcu-agent", "--tap", TAP, "--ip", AGENT_IP, "--edge", edge_tcp,
                           "--flash", flash, "--factory", factory, "--anchor", anchor,
                           "--content-key", f"{repo}/keys/content.key", "--release", "gw", "--hw-class", "mcu"])
        os.remove(flash)
        if report["outcome"] != "reboot" or report["state"] != "pending-reboot":
            raise SystemExit(f"the agent did not stage the release: {report}")
        return report

    # Two plain servers: as many bytes as a whole run reads, and as many as its download
    # connection reads (the chunk answers).
    run_server, download_server = PlainServer(), PlainServer()

    def plain(server):
        report = run_json([f"{MCU_BIN}/mcu-plain-download", "--tap", TAP, "--ip", AGENT_IP,
                           "--server", f"{TAP_HOST_IP}:{server.port}"])
        if report["bytes"] != len(server.payload):
            raise SystemExit(f"the plain download read {report['bytes']} of {len(server.payload)} bytes")
        return report

    def download_connection(report):
        """The connection that carried the chunks: the one that read the most."""
        return max(report["connections"], key=lambda c: c["bytes"])

    # Warm-up, not counted: the edge fetches the chunks from the origin on the first install
    # (if it has not pre-staged them) and the page cache takes the binaries.
    warm = agent("warm-up")
    received, download_bytes = warm["received_bytes"], download_connection(warm)["bytes"]
    run_server.payload = rng.randbytes(received)
    download_server.payload = rng.randbytes(download_bytes)
    plain(run_server)
    plain(download_server)

    runs = []
    for run in range(args.runs):
        agent_ms, plain_ms, dl_ms, plain_dl_ms = [], [], [], []
        agent_cpu_ms, plain_cpu_ms = 0.0, 0.0
        # Interleaved, so drift on a shared machine hits both sides alike.
        for k in range(args.installs):
            a = agent(f"{run}-{k}")
            if a["received_bytes"] != received or download_connection(a)["bytes"] != download_bytes:
                raise SystemExit(f"an install read {a['received_bytes']} bytes, the warm-up {received}")
            p = plain(run_server)
            d = plain(download_server)
            agent_ms.append(a["elapsed_ms"])
            plain_ms.append(p["elapsed_ms"])
            dl_ms.append(download_connection(a)["ms"])
            plain_dl_ms.append(d["elapsed_ms"])
            agent_cpu_ms, plain_cpu_ms = agent_cpu_ms + a["cpu_ms"], plain_cpu_ms + p["cpu_ms"]
        # Medians: one TCP retransmission timeout (200 ms and more) would swamp a mean.
        a_ms, p_ms = statistics.median(agent_ms), statistics.median(plain_ms)
        d_ms, pd_ms = statistics.median(dl_ms), statistics.median(plain_dl_ms)
        mib, dl_mib = received / MIB, download_bytes / MIB
        runs.append({"agent_mib_s": mib / (a_ms / 1e3), "plain_mib_s": mib / (p_ms / 1e3), "ratio": a_ms / p_ms,
                     "agent_ms": a_ms, "plain_ms": p_ms, "agent_ms_max": max(agent_ms), "plain_ms_max": max(plain_ms),
                     "download_mib_s": dl_mib / (d_ms / 1e3), "plain_download_mib_s": dl_mib / (pd_ms / 1e3),
                     "download_ratio": d_ms / pd_ms, "download_ms": d_ms, "plain_download_ms": pd_ms,
                     "agent_cpu_ms_per_mib": agent_cpu_ms / (mib * args.installs),
                     "plain_cpu_ms_per_mib": plain_cpu_ms / (mib * args.installs)})
        r = runs[-1]
        print(f"run {run + 1}: download {r['download_mib_s']:6.2f} MiB/s ({d_ms:.1f} ms) vs plain "
              f"{r['plain_download_mib_s']:6.2f} MiB/s ({pd_ms:.1f} ms): {r['download_ratio']:.2f}x;  whole run "
              f"{r['agent_mib_s']:6.2f} MiB/s ({a_ms:.1f} ms, max {max(agent_ms):.1f}) vs plain "
              f"{r['plain_mib_s']:6.2f} MiB/s ({p_ms:.1f} ms, max {max(plain_ms):.1f}): {r['ratio']:.2f}x", flush=True)

    ratios = [r["ratio"] for r in runs]
    download_ratios = [r["download_ratio"] for r in runs]
    med = lambda key: statistics.median(r[key] for r in runs)
    summary = {
        "flash_dir": args.flash_dir, "image_bytes": image_bytes, "chunks": published["chunks"], "received_bytes": received,
        "download_bytes": download_bytes, "installs_per_run": args.installs, "runs": runs,
        "median_download_ratio": statistics.median(download_ratios), "min_download_ratio": min(download_ratios),
        "max_download_ratio": max(download_ratios),
        "median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
        "agent_mib_s": med("agent_mib_s"), "plain_mib_s": med("plain_mib_s"),
        "download_mib_s": med("download_mib_s"), "plain_download_mib_s": med("plain_download_mib_s"),
        "agent_cpu_ms_per_mib": med("agent_cpu_ms_per_mib"), "plain_cpu_ms_per_mib": med("plain_cpu_ms_per_mib"),
    }
    print(f"{args.image_kib} KiB image in {published['chunks']} fixed 4 KiB chunks, encrypted; {args.runs} runs of "
          f"{args.installs} installs, each against plain downloads of as many bytes, each run's median time; "
          f"flash files in {args.flash_dir or 'a temporary directory on disk'}; medians of the runs:")
    print(f"  the download ({download_bytes} bytes on its connection: requests, chunk answers, verify, decrypt, "
          f"write flash, progress marks):")
    print(f"    mcu-agent {summary['download_mib_s']:6.2f} MiB/s, mcu-plain-download {summary['plain_download_mib_s']:6.2f}"
          f" MiB/s: {summary['median_download_ratio']:.2f}x the time (min {min(download_ratios):.2f}, "
          f"max {max(download_ratios):.2f})")
    print(f"  the whole run_once ({received} bytes: also the seal, policy, manifest, whole-image sha256, status report):")
    print(f"    mcu-agent {summary['agent_mib_s']:6.2f} MiB/s {summary['agent_cpu_ms_per_mib']:7.1f} CPU ms/MiB, "
          f"mcu-plain-download {summary['plain_mib_s']:6.2f} MiB/s {summary['plain_cpu_ms_per_mib']:7.1f} CPU ms/MiB: "
          f"{summary['median_ratio']:.2f}x the time (min {min(ratios):.2f}, max {max(ratios):.2f})")
    if args.json:
        print(json.dumps(summary))
finally:
    cleanup()
