#!/usr/bin/env bash
# ferrocable against this machine's floor (../shared/peers/floor, the C epoll server) at several
# N, with pair.py: the same Rust load tool, each server's user and kernel CPU sampled during the
# broadcast phase. One JSON line per server and N is appended to OUT, tagged with `n`,
# `series` and the commit; bench/plot.py floor OUT draws them.
#   NS="2000 5000 10000 19000" SERIES="ferrocable" bench/floor-scaling.sh
#   REPEAT=7 NS="10000 19000" bench/floor-scaling.sh   # one run here is +-15 %: take medians
#   bench/plot.py floor-table OUT                      # medians of each pair's ratios
#   FERROCABLE_PING_INTERVAL_MS=600000 SERIES="ferrocable, pings off" NS="10000 19000" bench/floor-scaling.sh
#   SETTLE=1 REPEAT=4 NS=10000 bench/floor-scaling.sh   # each run starts with TIME_WAIT drained
# (ferrocable pings every connection every 3 s as Rails does; the floor never pings, so the
# second form measures the fan-out alone.)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/bench/floor-scaling-$(date +%F).jsonl}
NS=${NS:-"2000 5000 10000 19000"}
ROUNDS=${ROUNDS:-10}
SERIES=${SERIES:-ferrocable}
REPEAT=${REPEAT:-1}
[ -f target/peers/floor/pair.py ] || { mkdir -p target/peers && cp -r ../shared/peers/floor target/peers/; }
cargo build --release --bins >/dev/null
REV=$(git rev-parse --short HEAD)
for n in $NS; do for _ in $(seq "$REPEAT"); do
  # SETTLE=1: start each run with TIME_WAIT drained (bench/server_cpu.py::settle).
  [ -z "${SETTLE:-}" ] || python3 -c 'import sys; sys.path.insert(0, "bench"); import server_cpu; server_cpu.settle()'
  { python3 target/peers/floor/pair.py --n "$n" --rounds "$ROUNDS" || true; } | tee /dev/stderr | grep '^{' |
    N="$n" S="$SERIES" R="$REV" python3 -c '
import json, os, sys
for line in sys.stdin:
    v = json.loads(line); v.update(n=int(os.environ["N"]), series=os.environ["S"], rev=os.environ["R"])
    print(json.dumps(v))' >> "$OUT"
done; done
echo "appended to $OUT" >&2
