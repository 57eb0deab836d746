#!/usr/bin/env python3
"""Side-by-side: ferrocable and Rails ActionCable, started in turn on the same port, measured
with the same Rust load generator (`ferrocable-bench broadcast`), on the same machine, in one
run. Adds the server's and the load tool's CPU time to every JSON line, appends the lines to
--out, and writes a markdown table with ratios into docs/benchmarks.md between the markers
`<!-- compare:begin -->` and `<!-- compare:end -->`.

    bench/compare.sh                      # N = 10000 19000, 10 rounds
    NS="1000" ROUNDS=3 bench/compare.sh   # quick

Loopback only; every run is bounded (the tool's round timeout, a subprocess timeout).
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return None


def wait_http(url, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except Exception:
            time.sleep(0.1)
    return False


class Ferrocable:
    name = "ferrocable"

    def __init__(self, port, log):
        self.port, self.log = port, log

    def start(self):
        self.proc = subprocess.Popen(
            [f"{ROOT}/target/release/ferrocable", "serve", "--bind", f"127.0.0.1:{self.port}",
             "--bench-channel", "--disable-forgery-protection", "--session-store", "memory",
             "--data-dir", f"{ROOT}/target/bench/data"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        if not wait_http(f"http://127.0.0.1:{self.port}/health"):
            raise SystemExit("ferrocable did not start")
        return self.proc.pid

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


class ActionCable:
    name = "actioncable"

    def __init__(self, port, peers):
        self.port, self.dir = port, os.path.join(peers, "actioncable")

    def start(self):
        env = dict(os.environ, PORT=str(self.port))
        subprocess.run(["./stop.sh"], cwd=self.dir, env=env, capture_output=True)
        subprocess.run(["./start.sh"], cwd=self.dir, env=env, check=True, capture_output=True, timeout=120)
        with open(os.path.join(self.dir, "run", "puma.pid")) as f:
            pid = int(f.read().strip())
        time.sleep(1)
        return pid

    def stop(self):
        subprocess.run(["./stop.sh"], cwd=self.dir, env=dict(os.environ, PORT=str(self.port)),
                       capture_output=True, timeout=120)


def run_one(server, n, rounds, port, label):
    pid = server.start()
    try:
        before = cpu_seconds(pid)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.time()
        out = subprocess.run(
            [f"{ROOT}/target/release/ferrocable-bench", "broadcast", "--addr", f"127.0.0.1:{port}",
             "--n", str(n), "--rounds", str(rounds), "--concurrency", "200", "--server-pid", str(pid),
             "--round-timeout-ms", "20000", "--label", label],
            capture_output=True, text=True, timeout=900)
        wall = time.time() - started
        after_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = cpu_seconds(pid)
    finally:
        server.stop()
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else None
    if not line:
        raise SystemExit(f"{label}: no result\n{out.stderr[-2000:]}")
    result = json.loads(line)
    tool_cpu = (after_usage.ru_utime - usage.ru_utime) + (after_usage.ru_stime - usage.ru_stime)
    server_cpu = (after - before) if before is not None and after is not None else None
    result["cpu"] = {
        "server_s": round(server_cpu, 2) if server_cpu is not None else None,
        "tool_s": round(tool_cpu, 2),
        "wall_s": round(wall, 2),
        "tool_share": round(tool_cpu / (tool_cpu + server_cpu), 3) if server_cpu else None,
    }
    result["server"] = server.name
    return result


def g(r, *path):
    for p in path:
        if r is None:
            return None
        r = r.get(p) if isinstance(r, dict) else None
    return r


def fmt(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def table(results, commit):
    rows = [
        ("connections held", ("connect", "ready"), 0, "higher"),
        ("connect + subscribe rate (/s)", ("connect", "rate_per_s"), 0, "higher"),
        ("server RSS per idle connection (KiB)", ("idle", "rss_per_conn_kb"), 2, "lower"),
        ("broadcast last receiver p50 (ms)", ("broadcast", "last_receiver_ms", "p50"), 1, "lower"),
        ("broadcast last receiver p99 (ms)", ("broadcast", "last_receiver_ms", "p99"), 1, "lower"),
        ("all receivers p99 (ms)", ("broadcast", "latency_ms", "p99"), 1, "lower"),
        ("missing deliveries", ("broadcast", "missing_total"), 0, None),
        ("server CPU for the run (s)", ("cpu", "server_s"), 2, "lower"),
        ("load tool CPU share of the run", ("cpu", "tool_share"), 3, None),
    ]
    out = [f"Run of {time.strftime('%Y-%m-%d')}, commit `{commit}`, "
           "`bench/compare.sh` (the same `ferrocable-bench broadcast` against each server in turn; "
           "ratio = how many times better ferrocable is).", ""]
    by_n = {}
    for r in results:
        by_n.setdefault(r["n"], {})[r["server"]] = r
    for n in sorted(by_n):
        f, a = by_n[n].get("ferrocable"), by_n[n].get("actioncable")
        out += [f"**N = {n:,}**", "", "| figure | ferrocable | Rails ActionCable | ratio |", "|---|---:|---:|---:|"]
        for name, path, digits, better in rows:
            fv, av = g(f, *path), g(a, *path)
            ratio = "–"
            if better and isinstance(fv, (int, float)) and isinstance(av, (int, float)) and fv and av:
                x = av / fv if better == "lower" else fv / av
                ratio = f"{x:,.1f}×"
            out.append(f"| {name} | {fmt(fv, digits)} | {fmt(av, digits)} | {ratio} |")
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", default=os.environ.get("NS", "10000 19000"))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", "10")))
    ap.add_argument("--servers", default=os.environ.get("SERVERS", "ferrocable actioncable"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8081")))
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench", "compare.jsonl"))
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    peers = os.path.join(ROOT, "target", "peers")
    shared = os.environ.get("SHARED", os.path.join(ROOT, "..", "shared"))
    if "actioncable" in args.servers and not os.path.isdir(os.path.join(peers, "actioncable")):
        os.makedirs(peers, exist_ok=True)
        shutil.copytree(os.path.join(shared, "peers", "actioncable"), os.path.join(peers, "actioncable"))
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "ferrocable", "--bin", "ferrocable-bench"],
                   cwd=ROOT, check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if "actioncable" in args.servers:
        subprocess.run(["bash", os.path.join(peers, "actioncable", "setup.sh")], check=True, capture_output=True)
    results = []
    for name in args.servers.split():
        server = Ferrocable(args.port, os.path.join(ROOT, "target", "bench", "ferrocable.log")) \
            if name == "ferrocable" else ActionCable(args.port, peers)
        for n in [int(x) for x in args.ns.split()]:
            print(f"== {name} n={n}", file=sys.stderr)
            r = run_one(server, n, args.rounds, args.port, f"{name} {commit} n={n}")
            results.append(r)
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
    md = table(results, commit)
    print(md)
    with open(args.docs) as f:
        doc = f.read()
    begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
    if begin in doc and end in doc:
        doc = doc.split(begin)[0] + begin + "\n" + md + "\n" + end + doc.split(end, 1)[1]
        with open(args.docs, "w") as f:
            f.write(doc)


if __name__ == "__main__":
    main()
