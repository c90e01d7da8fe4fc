"""Harness for scripts/bench-api: the publisher's API answering a device-list page and a
rollout's status while status reports are ingested, with a fleet of a million devices.
Every process it starts is killed at exit, and its files are removed."""
import argparse, http.client, json, os, random, shutil, signal, statistics, subprocess, sys, tempfile, time

from bench_procs import Proc, kill_all

parser = argparse.ArgumentParser(
    prog="scripts/bench-api",
    description="Latency of GET /api/devices (a page) and GET /api/rollouts/NAME on a real `seeder serve` "
    "over a fleet database of SITES x PER_SITE devices, while `seeder fleet-test-ingest` commits RATE "
    "signed status reports per second into the same database.")
parser.add_argument("--sites", type=int, default=1000, help="sites (default 1000)")
parser.add_argument("--per-site", type=int, default=1000, help="devices per site (default 1000)")
parser.add_argument("--rate", type=int, default=5000, help="status reports per second ingested meanwhile (default 5000)")
parser.add_argument("--runs", type=int, default=3, help="measurement windows (default 3)")
parser.add_argument("--secs", type=float, default=20, help="seconds per window (default 20)")
parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
parser.add_argument("--postgres", action="store_true",
                    help="put the fleet database on a PostgreSQL server this harness starts from the Debian "
                    "package (its own cluster, a Unix socket only) instead of SQLite")
args = parser.parse_args()
if args.runs < 3:
    parser.error("at least 3 runs (a median and its spread)")

BIN = os.path.abspath("target/release/seeder")
BUDGET_MS = 50.0
READ_TOKEN = "bench-read-token-0123456789abcdef"
ROLLOUT = "gw-1.4.2-r1"
work = tempfile.mkdtemp(prefix="bench-api-")


postgres = {}


def cleanup(*_):
    if "server" in postgres:
        # Fast shutdown: the postmaster ends its backends (a SIGKILL would leave them).
        postgres["server"].p.send_signal(signal.SIGINT)
        try:
            postgres["server"].p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    kill_all()
    shutil.rmtree(work, ignore_errors=True)


signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(1)))


def seeder(*argv):
    out = subprocess.run([BIN, "--json", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"seeder {' '.join(argv)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def json_field(line, key):
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value.get(key) if isinstance(value, dict) else None


def start_postgres():
    """A PostgreSQL server in `work` (as the `postgres` user when root: it refuses root),
    listening on a Unix socket only; exports its URL as OTAMESH_DATABASE for every seeder."""
    import glob, pwd
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not bins:
        raise SystemExit("--postgres: PostgreSQL is not installed (apt-get install postgresql)")
    bindir = os.path.dirname(bins[-1])
    data, sock = os.path.join(work, "pgdata"), os.path.join(work, "pgsock")
    os.mkdir(data, 0o700)
    os.mkdir(sock, 0o700)
    prefix = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chmod(work, 0o711)
        for d in (data, sock):
            os.chown(d, user.pw_uid, user.pw_gid)
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    env = dict(os.environ, LC_ALL="C")
    subprocess.run(prefix + [f"{bindir}/initdb", "-D", data, "--auth=trust", "--username=postgres", "--locale=C",
                             "--encoding=UTF8", "--no-sync"], check=True, stdout=subprocess.DEVNULL, env=env)
    # Durable commits as the SQLite side has (synchronous=FULL); buffers for a million devices.
    postgres["server"] = Proc("postgres", prefix + [f"{bindir}/postgres", "-D", data, "-k", sock, "-p", "5432",
                                                    "-c", "listen_addresses=", "-c", "shared_buffers=1GB"])
    postgres["server"].wait_for(lambda l: True if "ready to accept connections" in l else None, "readiness")
    subprocess.run(prefix + [f"{bindir}/psql", "-h", sock, "-p", "5432", "-U", "postgres", "-qc", "CREATE DATABASE fleet"],
                   check=True, env=env)
    url = f"postgresql://postgres@{sock.replace('/', '%2F')}:5432/fleet"
    os.environ["OTAMESH_DATABASE"] = url
    return url


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


try:
    if args.postgres:
        print(f"fleet database on PostgreSQL: {start_postgres()}", flush=True)
    repo = os.path.join(work, "repo")
    seeder("init", "--repo", repo)
    image = os.path.join(work, "image.bin")
    with open(image, "wb") as f:
        f.write(random.Random(3).randbytes(100_000))
    seeder("release", "add", "--repo", repo, "--image", image, "--name", "gw", "--version", "1.4.2", "--hw-class", "imx8")
    # The id `fleet-test-ingest`'s reports carry, so the measured rollout is fed live.
    seeder("rollout", "start", "--repo", repo, "gw", "1.4.2", "--waves", "1,10,50,100", "--id", ROLLOUT)
    started = time.time()
    made = json.loads(seeder("fleet-test-populate", "--repo", repo, "--sites", str(args.sites),
                             "--per-site", str(args.per_site), "--rollout", ROLLOUT))
    print(f"fleet database: {made['devices']} devices, {made.get('events', '?')} status events "
          f"({time.time() - started:.0f} s to write)", flush=True)
    tokens = os.path.join(work, "api-tokens")
    with open(tokens, "w") as f:
        f.write(f"read {READ_TOKEN}\n")
    os.chmod(tokens, 0o600)
    serve = Proc("seeder serve", [BIN, "--json", "serve", "--repo", repo, "--listen", "/ip4/127.0.0.1/udp/0/quic-v1",
                                  "--no-mdns", "--http-listen", "127.0.0.1:0", "--api-tokens", tokens],
                 rust_log="warn")
    host, port = serve.wait_for(lambda l: json_field(l, "http"), "API address").rsplit(":", 1)

    # The ingest: acknowledgements counted as they come (each is printed after its commit).
    acks = {"n": 0}

    def count_ack(line):
        if line.startswith("ack "):
            acks["n"] += 1
            return True
        return False

    ingest = Proc("seeder fleet-test-ingest", [BIN, "fleet-test-ingest", "--repo", repo, "--devices", "10000",
                                               "--enroll", "--rate", str(args.rate)], rust_log="warn", on_line=count_ack)
    ingest.wait_for(lambda l: True if l == "ingesting" else None, "start of the ingest", timeout=300)

    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    auth = {"Authorization": f"Bearer {READ_TOKEN}"}

    def get(path):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=auth)
        response = conn.getresponse()
        body = response.read()
        ms = (time.perf_counter() - t0) * 1e3
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:300]!r}")
        return ms, body

    devices = made["devices"]
    rng = random.Random(7)
    kinds = {
        # A page anywhere in the inventory (by offset), a page of one site, and one rollout's status.
        "device page": lambda: f"/api/devices?limit=50&offset={rng.randrange(0, max(1, devices - 50))}",
        # The same, reached by keyset paging: the page after a device id (a previous page's `next`).
        "device page (after)": lambda: "/api/devices?limit=50&after="
        f"site-{rng.randrange(args.sites):04d}-dev-{rng.randrange(args.per_site):04d}",
        "site's device page": lambda: f"/api/devices?limit=50&site=site-{rng.randrange(args.sites):04d}",
        "rollout status": lambda: "/api/rollouts/gw",
    }
    for make in kinds.values():  # warm-up, not counted
        get(make())
    runs = []
    for run in range(args.runs):
        latencies = {k: [] for k in kinds}
        acks_before, t_start = acks["n"], time.time()
        while time.time() - t_start < args.secs:
            for kind, make in kinds.items():
                latencies[kind].append(get(make())[0])
        window = time.time() - t_start
        ingested = (acks["n"] - acks_before) / window
        result = {"ingest_per_sec": ingested}
        for kind, values in latencies.items():
            result[kind] = {"n": len(values), "p50_ms": statistics.median(values), "p99_ms": percentile(values, 0.99),
                            "max_ms": max(values)}
        runs.append(result)
        print(f"run {run + 1}: ingest {ingested:.0f} reports/s; " + "; ".join(
            f"{k} p50 {result[k]['p50_ms']:.1f} ms p99 {result[k]['p99_ms']:.1f} ms ({result[k]['n']})"
            for k in kinds), flush=True)

    summary = {"devices": devices, "rate_asked": args.rate,
               "ingest_per_sec_median": statistics.median(r["ingest_per_sec"] for r in runs)}
    print(f"{devices} devices in {args.sites} sites; {args.runs} windows of {args.secs:.0f} s, requests one at a "
          f"time on one keep-alive connection, each window's p99; ingest asked {args.rate}/s, got "
          f"{summary['ingest_per_sec_median']:.0f}/s (median):")
    ok = summary["ingest_per_sec_median"] >= 0.95 * args.rate
    for kind in kinds:
        p99s = [r[kind]["p99_ms"] for r in runs]
        summary[kind] = {"p99_ms_median": statistics.median(p99s), "p99_ms_min": min(p99s), "p99_ms_max": max(p99s),
                         "p50_ms_median": statistics.median(r[kind]["p50_ms"] for r in runs)}
        within = summary[kind]["p99_ms_median"] < BUDGET_MS
        ok = ok and within
        print(f"  {kind:<20} p99 {summary[kind]['p99_ms_median']:6.1f} ms (min {min(p99s):.1f}, max {max(p99s):.1f})"
              f"  p50 {summary[kind]['p50_ms_median']:5.1f} ms  {'within' if within else 'OVER'} {BUDGET_MS:.0f} ms")
    summary["within_budget"] = ok
    print(f"  budget: p99 < {BUDGET_MS:.0f} ms for each while ingesting >= 95 % of {args.rate}/s: "
          f"{'met' if ok else 'NOT met'}")
    if args.json:
        print(json.dumps(summary))
finally:
    cleanup()
