#!/usr/bin/env python3
"""Server CPU per connection during the connect + subscribe phase, ferrocable against this
machine's floor (../shared/peers/floor, the C epoll server), alternating, under the same load
tool (`ferrocable-bench broadcast`, 500 connections in flight, as pair.py runs it).

The server's user and kernel CPU are sampled from /proc every 10 ms and read at the moment
the tool's connect phase ended (its own `connect.total_ms`), so the idle hold and the one
broadcast round after it are not counted. One JSON line per run on stdout; a table of medians
last. Environment variables reach ferrocable (e.g. FERROCABLE_PING_INTERVAL_MS=600000 for no
pings, TOKIO_WORKER_THREADS=1 for a one-worker runtime).

    bench/connect-cpu.py --n 10000 --repeat 5
    bench/connect-cpu.py --n 10000 --repeat 8 --ferrocable a=/tmp/a/ferrocable --ferrocable b=target/release/ferrocable

With several `--ferrocable LABEL=PATH` builds, each repetition runs the floor, then the builds
(their order reversed every other repetition), and the table adds each build's connect rate
against the first build's, per repetition.
"""
import argparse, json, os, socket, statistics, subprocess, sys, threading, time

HZ = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, secs=30):
    end = time.time() + secs
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close(); return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) / HZ, int(f[12]) / HZ
    except (OSError, IndexError):
        return None


def run(server, n, binary, label=None):
    port = free_port()
    data = f"/tmp/connect-cpu-{port}"
    if server == "floor":
        cmd = ["/tmp/floor-server", str(port)]
    else:
        cmd = [binary, "serve", "--bind", f"127.0.0.1:{port}",
               "--bench-channel", "--disable-forgery-protection", "--session-store", "memory", "--data-dir", data]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(port):
            return {"server": label or server, "error": "did not listen"}
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                c = cpu(p.pid)
                if c:
                    samples.append((time.time(), *c))
                time.sleep(0.01)

        t = threading.Thread(target=sample, daemon=True); t.start()
        time.sleep(0.05)
        t0 = time.time()
        out = subprocess.run([os.path.join(ROOT, "target/release/ferrocable-bench"), "broadcast", "--addr",
                              f"127.0.0.1:{port}", "--n", str(n), "--rounds", "1", "--concurrency", "500"],
                             capture_output=True, text=True, timeout=300)
        stop.set(); t.join()
        line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("{")), None)
        if not line:
            return {"server": label or server, "error": (out.stderr or out.stdout)[-300:]}
        d = json.loads(line)["connect"]
        end = t0 + d["total_ms"] / 1000
        a = max((s for s in samples if s[0] <= t0), default=samples[0])
        z = max((s for s in samples if s[0] <= end), default=samples[-1])
        ready = max(1, d["ready"])
        return {"server": label or server, "n": n, "ready": d["ready"], "connect_per_s": d["rate_per_s"],
                "user_us_per_conn": round((z[1] - a[1]) * 1e6 / ready, 1),
                "sys_us_per_conn": round((z[2] - a[2]) * 1e6 / ready, 1)}
    finally:
        p.terminate(); p.wait()
        subprocess.run(["rm", "-rf", data])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ferrocable", action="append", default=[],
                    help="LABEL=PATH of a ferrocable binary (default: this checkout's release build)")
    o = ap.parse_args()
    builds = [tuple(b.split("=", 1)) if "=" in b else ("ferrocable", b) for b in o.ferrocable]
    builds = builds or [("ferrocable", os.path.join(ROOT, "target/release/ferrocable"))]
    if not os.path.exists("/tmp/floor-server"):
        floor_c = os.path.join(ROOT, "../shared/peers/floor/floor.c")
        subprocess.run(["cc", "-O2", "-o", "/tmp/floor-server", floor_c, "-lcrypto"], check=True)
    rows, reps = [], []
    for i in range(o.repeat):
        rep = {"floor": run("floor", o.n, None)}
        print(json.dumps(rep["floor"]), flush=True)
        for label, path in (builds if i % 2 == 0 else builds[::-1]):
            rep[label] = run("ferrocable", o.n, path, label)
            print(json.dumps(rep[label]), flush=True)
        reps.append(rep)
        rows.extend(rep.values())
    first = builds[0][0]
    print("| server | runs | connects/s | / floor | / " + first + " | user µs / conn | kernel µs / conn |")
    print("|---|---|---|---|---|---|---|")
    for label in ["floor"] + [b[0] for b in builds]:
        ok = [r for r in rows if r["server"] == label and "error" not in r]
        if not ok:
            continue
        med = lambda k: statistics.median(r[k] for r in ok)

        def ratio(other):
            xs = [rep[label]["connect_per_s"] / rep[other]["connect_per_s"] for rep in reps
                  if "error" not in rep[label] and "error" not in rep[other]]
            return f"{statistics.median(xs):.2f}x" if xs else "-"

        print(f"| {label} | {len(ok)} | {med('connect_per_s'):,.0f} | {ratio('floor')} | {ratio(first)} "
              f"| {med('user_us_per_conn'):.1f} | {med('sys_us_per_conn'):.1f} |")
    sys.exit(0 if all("error" not in r for r in rows) else 1)


if __name__ == "__main__":
    main()
