#!/usr/bin/env python3
"""Plots benchmark results as SVG, with no dependency beyond Python 3.

    bench/plot.py soak docs/bench/soak-*.jsonl > docs/bench/soak.svg

`soak`: server RSS (MiB) against time for every `ferrocable-bench soak` line in the files,
one line per run, with the baseline sample (after the first minute) and the 1.1x bound of
each run marked, and the midway event (a Redis restart) as a vertical rule.
"""

import html
import json
import sys

W, H = 760, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 200, 40, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def runs(paths, scenario):
    out = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                v = json.loads(line)
                if v.get("scenario") == scenario:
                    out.append(v)
    return out


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


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("soak",):
        sys.exit(__doc__)
    soak(sys.argv[2:])


if __name__ == "__main__":
    main()
