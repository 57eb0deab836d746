#!/usr/bin/env python3
"""Markdown table (and ratios) from cable-bench JSON lines: bench/summarize.py FILE.jsonl"""
import json
import sys


def row(d):
    c, i, b = d["connect"], d["idle"], d["broadcast"]
    return {
        "label": d.get("label") or d["url"],
        "n": d["n"],
        "ready": c["ready"],
        "failed": c["failed"],
        "rate": c["rate_per_s"],
        "kib": i["rss_per_conn_kb"],
        "last_p50": b["last_receiver_ms"]["p50"] if b["rounds_done"] else None,
        "last_max": b["last_receiver_ms"]["max"] if b["rounds_done"] else None,
        "lat_p99": b["latency_ms"]["p99"] if b["rounds_done"] else None,
        "missing": b["missing_total"],
        "cpu_round": b["server_cpu_ms_per_round"],
        "tool_cpu": b["tool_cpu_pct"],
    }


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"


def main(path):
    rows = [row(json.loads(l)) for l in open(path) if l.strip()]
    cols = ["label", "ready", "failed", "rate", "kib", "last_p50", "last_max", "lat_p99", "missing", "cpu_round", "tool_cpu"]
    heads = ["server", "connected", "failed", "connect/s", "RSS KiB/conn", "last recv p50 ms",
             "last recv max ms", "latency p99 ms", "missing", "server CPU ms/round", "tool CPU %"]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for r in rows:
        print("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    by_n = {}
    for r in rows:
        kind = "ferrocable" if r["label"].startswith("ferrocable") else "actioncable"
        by_n.setdefault(r["n"], {})[kind] = r
    print()
    print("| N | last-receiver p50 ratio (ActionCable ÷ ferrocable) | RSS/conn ratio | server CPU/round ratio |")
    print("|---|---|---|---|")
    for n, pair in sorted(by_n.items()):
        f, a = pair.get("ferrocable"), pair.get("actioncable")
        if not (f and a) or not f["last_p50"] or not a["last_p50"]:
            continue
        print(f"| {n:,} | {a['last_p50'] / f['last_p50']:.1f}× | {a['kib'] / max(f['kib'], 0.01):.1f}× | "
              f"{a['cpu_round'] / max(f['cpu_round'], 0.01):.1f}× |")


if __name__ == "__main__":
    main(sys.argv[1])
