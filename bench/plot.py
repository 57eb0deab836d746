#!/usr/bin/env python3
"""Plots benchmark results as SVG, with no dependency beyond Python 3.

    bench/plot.py soak docs/bench/soak-*.jsonl > docs/bench/soak.svg
    bench/plot.py floor docs/bench/floor-scaling-*.jsonl [--actioncable FILE] > docs/bench/floor.svg
    bench/plot.py floor-table docs/bench/floor-scaling-*.jsonl [--rev REV] [--pool REGEX]

`soak`: server RSS (MiB) against time for every `ferrocable-bench soak` line in the files,
one line per run, with the baseline sample (after the first minute) and the 1.1x bound of
each run marked, and the midway event (a Redis restart) as a vertical rule.
"""

import html
import json
import re
import sys

W, H = 760, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 200, 40, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def json_lines(paths):
    """Every JSON object line of the files, in order."""
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    yield json.loads(line)


def runs(paths, scenario):
    return [v for v in json_lines(paths) if v.get("scenario") == scenario]


def nice_max(x):
    """The smallest of 1, 2, 5 times a power of ten that is at least x."""
    m = 1
    while True:
        for step in (1, 2, 5):
            if step * m >= x:
                return step * m
        m *= 10


def soak(paths):
    rs = runs(paths, "soak")
    if not rs:
        sys.exit("plot.py: no soak results in " + ", ".join(paths))
    t_max = max(r["samples"]["rows"][-1][0] for r in rs)
    mib_max = max(max(row[1] for row in r["samples"]["rows"]) for r in rs) / 1024 * 1.15
    mib_max = nice_max(mib_max)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(t):
        return LEFT + pw * t / t_max

    def y(mib):
        return TOP + ph * (1 - mib / mib_max)

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{LEFT}" y="22" font-size="14">Server RSS during the soak '
         f'(fresh visitors + idle connections)</text>']
    for i in range(6):
        mib = mib_max * i / 5
        s.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y(mib):.1f}" y2="{y(mib):.1f}" stroke="#ddd"/>')
        s.append(f'<text x="{LEFT - 6}" y="{y(mib) + 4:.1f}" text-anchor="end">{mib:.0f}</text>')
    for i in range(6):
        t = t_max * i / 5
        s.append(f'<text x="{x(t):.1f}" y="{TOP + ph + 18}" text-anchor="middle">{t:.0f}</text>')
    s.append(f'<text x="{LEFT + pw / 2}" y="{H - 10}" text-anchor="middle">seconds</text>')
    s.append(f'<text x="16" y="{TOP + ph / 2}" transform="rotate(-90 16 {TOP + ph / 2})" '
             f'text-anchor="middle">RSS (MiB)</text>')
    s.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    for k, r in enumerate(rs):
        c = COLOURS[k % len(COLOURS)]
        pts = " ".join(f"{x(row[0]):.1f},{y(row[1] / 1024):.1f}" for row in r["samples"]["rows"])
        s.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1.8"/>')
        base = r["rss_kib"]["baseline"] / 1024
        bound = base * r["rss_kib"]["max_growth"]
        s.append(f'<line x1="{x(r["rss_kib"]["baseline_at_s"]):.1f}" x2="{LEFT + pw}" '
                 f'y1="{y(bound):.1f}" y2="{y(bound):.1f}" stroke="{c}" stroke-dasharray="4 3"/>')
        if r.get("midway"):
            mx = x(r["midway"]["at_s"])
            s.append(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="{c}" '
                     f'stroke-dasharray="2 2"/>')
            s.append(f'<text x="{mx + 4:.1f}" y="{TOP + 14}" fill="{c}">restart</text>')
        ly = TOP + 10 + k * 52
        s.append(f'<line x1="{LEFT + pw + 12}" x2="{LEFT + pw + 32}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/>')
        s.append(f'<text x="{LEFT + pw + 38}" y="{ly + 4}">{html.escape(r["label"][:24])}</text>')
        s.append(f'<text x="{LEFT + pw + 38}" y="{ly + 19}" fill="#555">{r["visits"]:,} visits, '
                 f'{r["idle"]["held"]:,} idle</text>')
        s.append(f'<text x="{LEFT + pw + 38}" y="{ly + 34}" fill="#555">end/1 min: '
                 f'{r["rss_kib"]["growth"]}x</text>')
    s.append(f'<text x="{LEFT + pw + 12}" y="{TOP + ph}" fill="#555">dashed: 1.1x bound</text>')
    s.append("</svg>")
    print("\n".join(s))


def floor(paths, actioncable=None):
    """Three panels against N: last-receiver p50, server CPU per delivery (user + kernel; the
    user part dashed), RSS per idle connection. Series: every `series` tag of the pair rows
    (bench/floor-scaling.sh), the floor, and Rails ActionCable from a cable-bench baseline."""
    import math
    series = {}
    for v in json_lines(paths):
        if "error" in v or not v.get("last_p50_ms"):
            continue
        name = "floor (C, epoll)" if v["name"].startswith("floor") else v.get("series", v["name"])
        cpu = (v.get("user_us_per_delivery") or 0) + (v.get("sys_us_per_delivery") or 0)
        series.setdefault(name, {}).setdefault(v["n"], []).append(
            (v["last_p50_ms"], cpu, v.get("user_us_per_delivery"), v["rss_per_conn_kib"]))
    for v in json_lines([actioncable] if actioncable else []):
        if "adapter=redis puma_workers=0" not in v.get("label", "") or v["connect"]["ready"] != v["n"]:
            continue
        b = v["broadcast"]
        cpu = b["server_cpu_ms_per_round"] * 1000 / v["n"]
        series.setdefault("Rails ActionCable 6.1 (node tool)", {}).setdefault(v["n"], []).append(
            (b["last_receiver_ms"]["p50"], cpu, None, v["idle"]["rss_per_conn_kb"]))

    def median(xs):
        xs = sorted(x for x in xs if x is not None)
        return xs[len(xs) // 2] if xs else None

    points = {name: sorted((n, [median([r[i] for r in rows]) for i in range(4)])
                           for n, rows in by_n.items()) for name, by_n in series.items()}
    n_max = nice_max(max(n for pts in points.values() for n, _ in pts))
    panels = [("last receiver p50 (ms, log)", 0, True), ("server CPU per delivery (µs, log)", 1, True),
              ("RSS per idle connection (KiB)", 3, False)]
    pw, ph, gap, top = 250, 260, 70, TOP + 24
    width, height = LEFT + 3 * pw + 2 * gap + 30, top + ph + 70 + 22 * len(points)
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{LEFT}" y="22" font-size="14">Broadcast to N BenchmarkChannel subscribers '
         f'(pair.py, same load tool, this 2-core box)</text>']
    colours = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(points)}
    for k, (title, idx, log) in enumerate(panels):
        x0 = LEFT + k * (pw + gap)
        vals = [v[i] for pts in points.values() for _, v in pts
                for i in ((idx, 2) if idx == 1 else (idx,)) if v[i]]
        if log:
            lo, hi = 10 ** math.floor(math.log10(min(vals))), 10 ** math.ceil(math.log10(max(vals)))
        else:
            lo, hi = 0, nice_max(max(vals) * 1.1)

        def y(v, lo=lo, hi=hi, log=log):
            f = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) if log else (v - lo) / (hi - lo)
            return top + ph * (1 - f)

        def x(n, x0=x0):
            return x0 + pw * n / n_max

        s.append(f'<text x="{x0}" y="{top - 8}">{html.escape(title)}</text>')
        s.append(f'<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
        ticks = [lo * 10 ** i for i in range(int(round(math.log10(hi / lo))) + 1)] if log else [hi * i / 5 for i in range(6)]
        for t in ticks:
            s.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/>')
            s.append(f'<text x="{x0 - 5}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
        for i in range(5):
            n = n_max * i / 4
            s.append(f'<text x="{x(n):.1f}" y="{top + ph + 16}" text-anchor="middle">{n / 1000:g}k</text>')
        s.append(f'<text x="{x0 + pw / 2}" y="{top + ph + 32}" text-anchor="middle">connections</text>')
        for name, pts in points.items():
            c = colours[name]
            xy = [(x(n), y(v[idx])) for n, v in pts if v[idx]]
            if len(xy) > 1:
                s.append(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in xy)}" fill="none" '
                         f'stroke="{c}" stroke-width="1.8"/>')
            for a, b in xy:
                s.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{c}"/>')
            if idx == 1:
                uxy = [(x(n), y(v[2])) for n, v in pts if v[2]]
                if len(uxy) > 1:
                    s.append(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in uxy)}" '
                             f'fill="none" stroke="{c}" stroke-dasharray="4 3"/>')
    ly = top + ph + 52
    for i, name in enumerate(points):
        c = colours[name]
        s.append(f'<line x1="{LEFT}" x2="{LEFT + 24}" y1="{ly + 22 * i}" y2="{ly + 22 * i}" stroke="{c}" stroke-width="2"/>')
        s.append(f'<text x="{LEFT + 30}" y="{ly + 22 * i + 4}">{html.escape(name)}</text>')
    s.append(f'<text x="{LEFT + pw + gap}" y="{ly}" fill="#555">CPU panel: solid user + kernel, '
             f'dashed user only</text>')
    s.append("</svg>")
    print("\n".join(s))


def pairs(paths, rev=None):
    """(floor row, ferrocable row) of every pair.py run in the files: a floor line and the
    ferrocable line after it (bench/floor-scaling.sh writes them in that order)."""
    floor_row = None
    for v in json_lines(paths):
        if v.get("name", "").startswith("floor"):
            floor_row = v
        elif floor_row is not None and "error" not in v and "error" not in floor_row:
            if rev is None or v.get("rev") == rev:
                yield floor_row, v
            floor_row = None


def floor_table(paths, rev=None, pool=None):
    """A Markdown table per series and N: medians over the runs of each pair's ratios (a run
    here varies by +-15 %, and both servers of a pair share the machine's state). `pool`, a
    regular expression, is removed from series names first, so sets of runs of one series
    taken at different times count as one (e.g. `--pool ', set [0-9]+'`)."""
    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    groups = {}
    for fl, fe in pairs(paths, rev):
        name = fe.get("series", fe["name"])
        if pool:
            name = re.sub(pool, "", name)
        groups.setdefault((name, fe["n"]), []).append((fl, fe))
    print("| series | N | runs | last p50 / floor | user+kernel / floor | user µs (floor) "
          "| kernel µs (floor) | KiB RSS / conn | connect / floor | missing |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, n), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        def m(f):
            return median([f(fl, fe) for fl, fe in rows])

        def cpu(r):
            return r["user_us_per_delivery"] + r["sys_us_per_delivery"]

        print(f"| {name} | {n:,} | {len(rows)} "
              f"| {m(lambda fl, fe: fe['last_p50_ms'] / fl['last_p50_ms']):.2f}x "
              f"| {m(lambda fl, fe: cpu(fe) / cpu(fl)):.2f}x "
              f"| {m(lambda fl, fe: fe['user_us_per_delivery']):.2f} ({m(lambda fl, fe: fl['user_us_per_delivery']):.2f}) "
              f"| {m(lambda fl, fe: fe['sys_us_per_delivery']):.1f} ({m(lambda fl, fe: fl['sys_us_per_delivery']):.1f}) "
              f"| {m(lambda fl, fe: fe['rss_per_conn_kib']):.2f} "
              f"| {m(lambda fl, fe: fe['connect_per_s'] / fl['connect_per_s']):.2f}x "
              f"| {sum(fe['missing'] for _, fe in rows)} |")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "soak":
        soak(sys.argv[2:])
    elif len(sys.argv) >= 3 and sys.argv[1] == "floor":
        args = sys.argv[2:]
        ac = None
        if "--actioncable" in args:
            i = args.index("--actioncable")
            ac = args[i + 1]
            del args[i:i + 2]
        floor(args, ac)
    elif len(sys.argv) >= 3 and sys.argv[1] == "floor-table":
        args = sys.argv[2:]
        rev = None
        if "--rev" in args:
            i = args.index("--rev")
            rev = args[i + 1]
            del args[i:i + 2]
        pool = None
        if "--pool" in args:
            i = args.index("--pool")
            pool = args[i + 1]
            del args[i:i + 2]
        floor_table(args, rev, pool)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
