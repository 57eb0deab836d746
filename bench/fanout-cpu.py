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
    bench/fanout-cpu.py --n 10000 --settle --ferrocable old=/tmp/old/ferrocable --ferrocable new=target/release/ferrocable

--settle waits for TIME_WAIT sockets below 12,000 before each run (server_cpu.settle), as the
30-round figures of docs/benchmarks.md since 2026-12-07 were taken.
"""
import argparse, json, os, statistics, sys

from server_cpu import ROOT, Server, bench_broadcast, build_floor, settle

HOLD_S = 2.0  # the tool idles this long between connecting and the first round


def run(server, n, rounds, binary, label=None):
    with Server(None if server == "floor" else binary, label or server) as srv:
        if not srv.listening():
            return {"server": srv.label, "error": "did not listen"}
        t0, t1, d = bench_broadcast(srv, n, rounds, 900)
        if isinstance(d, str):
            return {"server": srv.label, "error": d}
        start = t0 + d["connect"]["total_ms"] / 1000 + HOLD_S
        a, z = srv.cpu_at(start), srv.cpu_at(t1)
        if a is None or z is None:
            return {"server": srv.label, "error": "no CPU samples"}
        deliveries = max(1, d["connect"]["ready"] * rounds)
        user, sys_ = (z[0] - a[0]) * 1e6 / deliveries, (z[1] - a[1]) * 1e6 / deliveries
        return {"server": srv.label, "n": n, "rounds": rounds, "ready": d["connect"]["ready"],
                "missing": d["broadcast"]["missing_total"], "last_p50_ms": d["broadcast"]["last_receiver_ms"].get("p50"),
                "user_us_per_delivery": round(user, 2), "sys_us_per_delivery": round(sys_, 2),
                "cpu_us_per_delivery": round(user + sys_, 2), "rss_per_conn_kib": d["idle"]["rss_per_conn_kb"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=19000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--out", help="append each run's JSON line to this file too")
    ap.add_argument("--settle", action="store_true", help="TIME_WAIT below 12,000 before each run")
    ap.add_argument("--ferrocable", action="append", default=[],
                    help="LABEL=PATH of a ferrocable binary (default: this checkout's release build)")
    o = ap.parse_args()
    builds = [tuple(b.split("=", 1)) if "=" in b else ("ferrocable", b) for b in o.ferrocable]
    builds = builds or [("ferrocable", os.path.join(ROOT, "target/release/ferrocable"))]
    build_floor()
    out = open(o.out, "a") if o.out else None
    rows, reps = [], []
    for i in range(o.repeat):
        rep = {}
        for label, path in [("floor", None)] + (builds if i % 2 == 0 else builds[::-1]):
            if o.settle:
                settle(limit=12000)
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
