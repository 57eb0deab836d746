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
    bench/connect-cpu.py --n 19000 --repeat 4 --settle   # each run starts with TIME_WAIT drained
    bench/connect-cpu.py --n 19000 --repeat 6 --source-ips 4   # clients from 127.0.0.1..4

With several `--ferrocable LABEL=PATH` builds, each repetition runs the floor, then the builds
(their order reversed every other repetition), and the table adds each build's connect rate
against the first build's, per repetition.
"""
import argparse, json, os, statistics, sys

from server_cpu import ROOT, Server, bench_broadcast, build_floor, settle


def run(server, n, binary, label=None, settle_first=False, source_ips=0):
    waited = settle() if settle_first else None
    with Server(None if server == "floor" else binary, label or server) as srv:
        if not srv.listening():
            return {"server": srv.label, "error": "did not listen"}
        t0, _, d = bench_broadcast(srv, n, 1, 300, source_ips)
        if isinstance(d, str):
            return {"server": srv.label, "error": d}
        d = d["connect"]
        a, z = srv.cpu_at(t0), srv.cpu_at(t0 + d["total_ms"] / 1000)
        if a is None or z is None:
            return {"server": srv.label, "error": "no CPU samples"}
        ready = max(1, d["ready"])
        return {"server": srv.label, "n": n, "ready": d["ready"], "connect_per_s": d["rate_per_s"],
                "settled_s": waited, "source_ips": source_ips,
                "user_us_per_conn": round((z[0] - a[0]) * 1e6 / ready, 1),
                "sys_us_per_conn": round((z[1] - a[1]) * 1e6 / ready, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ferrocable", action="append", default=[],
                    help="LABEL=PATH of a ferrocable binary (default: this checkout's release build)")
    ap.add_argument("--settle", action="store_true",
                    help="before each run, wait until fewer than 1,000 sockets are in TIME_WAIT "
                         "(at 19,000 a run right after another is slowed by the port search)")
    ap.add_argument("--source-ips", type=int, default=0,
                    help="connect from 127.0.0.1..=127.0.0.K (0: the default source, as pair.py). With one "
                         "source, past ~14,000 sockets the kernel's search for a free ephemeral port makes "
                         "the tool CPU-bound and both servers' rates fall ~3x")
    o = ap.parse_args()
    builds = [tuple(b.split("=", 1)) if "=" in b else ("ferrocable", b) for b in o.ferrocable]
    builds = builds or [("ferrocable", os.path.join(ROOT, "target/release/ferrocable"))]
    build_floor()
    rows, reps = [], []
    for i in range(o.repeat):
        rep = {"floor": run("floor", o.n, None, settle_first=o.settle, source_ips=o.source_ips)}
        print(json.dumps(rep["floor"]), flush=True)
        for label, path in (builds if i % 2 == 0 else builds[::-1]):
            rep[label] = run("ferrocable", o.n, path, label, settle_first=o.settle,
                              source_ips=o.source_ips)
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
