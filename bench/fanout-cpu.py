#!/usr/bin/env python3
"""Server CPU per delivered broadcast, builds of ferrocable against this machine's floor
(../shared/peers/floor, the C epoll server), alternating, under the same load tool
(`ferrocable-bench broadcast`, as pair.py runs it) but with many rounds (30 by default): a
pair.py run of 10 rounds spreads +-15 % on this box, too much to see a change of 5 %.

The server's user and kernel CPU are sampled from /proc every 10 ms and read from the end of
the tool's connect phase plus its 2 s hold to the tool's exit, so connecting and closing are not
counted. One JSON line per run on stdout (and appended to --out); a table of medians last, with
each build's CPU per delivery against the floor's and the first build's, per repetition.
Environment variables reach ferrocable (FERROCABLE_PING_INTERVAL_MS=600000: no pings).

    bench/fanout-cpu.py --n 19000 --repeat 4
    bench/fanout-cpu.py --n 19000 --repeat 4 --ferrocable old=/tmp/old/ferrocable --ferrocable new=target/release/ferrocable
"""
import argparse, json, os, socket, statistics, subprocess, sys, threading, time

HZ = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD_S = 2.0  # the tool idles this long between connecting and the first round


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


def run(server, n, rounds, binary, label=None):
    port = free_port()
    data = f"/tmp/fanout-cpu-{port}"
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
                              f"127.0.0.1:{port}", "--n", str(n), "--rounds", str(rounds), "--concurrency", "500",
                              "--server-pid", str(p.pid)],
                             capture_output=True, text=True, timeout=900)
        t1 = time.time()
        stop.set(); t.join()
        line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("{")), None)
        if not line:
            return {"server": label or server, "error": (out.stderr or out.stdout)[-300:]}
        d = json.loads(line)
        start = t0 + d["connect"]["total_ms"] / 1000 + HOLD_S
        a = max((s for s in samples if s[0] <= start), default=samples[0])
        z = max((s for s in samples if s[0] <= t1), default=samples[-1])
        deliveries = max(1, d["connect"]["ready"] * rounds)
        user, sys_ = (z[1] - a[1]) * 1e6 / deliveries, (z[2] - a[2]) * 1e6 / deliveries
        return {"server": label or server, "n": n, "rounds": rounds, "ready": d["connect"]["ready"],
                "missing": d["broadcast"]["missing_total"], "last_p50_ms": d["broadcast"]["last_receiver_ms"].get("p50"),
                "user_us_per_delivery": round(user, 2), "sys_us_per_delivery": round(sys_, 2),
                "cpu_us_per_delivery": round(user + sys_, 2), "rss_per_conn_kib": d["idle"]["rss_per_conn_kb"]}
    finally:
        p.terminate(); p.wait()
        subprocess.run(["rm", "-rf", data])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=19000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--out", help="append each run's JSON line to this file too")
    ap.add_argument("--ferrocable", action="append", default=[],
                    help="LABEL=PATH of a ferrocable binary (default: this checkout's release build)")
    o = ap.parse_args()
    builds = [tuple(b.split("=", 1)) if "=" in b else ("ferrocable", b) for b in o.ferrocable]
    builds = builds or [("ferrocable", os.path.join(ROOT, "target/release/ferrocable"))]
    if not os.path.exists("/tmp/floor-server"):
        floor_c = os.path.join(ROOT, "../shared/peers/floor/floor.c")
        subprocess.run(["cc", "-O2", "-o", "/tmp/floor-server", floor_c, "-lcrypto"], check=True)
    out = open(o.out, "a") if o.out else None
    rows, reps = [], []
    for i in range(o.repeat):
        rep = {}
        for label, path in [("floor", None)] + (builds if i % 2 == 0 else builds[::-1]):
            rep[label] = run("floor" if path is None else "ferrocable", o.n, o.rounds, path, label)
            rep[label]["repetition"] = i + 1
            line = json.dumps(rep[label])
            print(line, flush=True)
            if out:
                out.write(line + "\n"); out.flush()
        reps.append(rep)
        rows.extend(rep.values())
    first = builds[0][0]
    print(f"| server | runs | CPU µs / delivery | / floor | / {first} | user µs | kernel µs | last p50 ms | missing |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in ["floor"] + [b[0] for b in builds]:
        ok = [r for r in rows if r["server"] == label and "error" not in r]
        if not ok:
            continue
        med = lambda k: statistics.median(r[k] for r in ok)

        def ratio(other):
            xs = [rep[label]["cpu_us_per_delivery"] / rep[other]["cpu_us_per_delivery"] for rep in reps
                  if "error" not in rep[label] and "error" not in rep[other] and rep[other]["cpu_us_per_delivery"] > 0]
            return f"{statistics.median(xs):.2f}x" if xs else "-"

        print(f"| {label} | {len(ok)} | {med('cpu_us_per_delivery'):.2f} | {ratio('floor')} | {ratio(first)} "
              f"| {med('user_us_per_delivery'):.2f} | {med('sys_us_per_delivery'):.2f} | {med('last_p50_ms'):.0f} "
              f"| {sum(r['missing'] for r in ok)} |")
    sys.exit(0 if all("error" not in r and r["missing"] == 0 for r in rows) else 1)


if __name__ == "__main__":
    main()
