#!/usr/bin/env bash
# How often the server's threads are switched out during broadcast rounds, and (PLACEMENT=1)
# how often the busiest worker shares its core with a running load-tool thread. Why: on this
# 2-core box a runtime worker woken by a timer between broadcasts was preempted ~10x as often
# during the next fan-out, which no CPU-per-delivery figure shows (docs/benchmarks.md, "What
# the pings cost a single node").
#
#   bench/preemptions.sh target/release/ferrocable
#   FERROCABLE_PING_INTERVAL_MS=600000 bench/preemptions.sh target/release/ferrocable  # no pings
#   PLACEMENT=1 bench/preemptions.sh /tmp/old/ferrocable   # samples every 2 ms (costs CPU)
#
# Env: N [10000], ROUNDS [30], PORT [a free one, as bench/server_cpu.py picks]. One `ferrocable serve --bench-channel` on loopback,
# `ferrocable-bench broadcast` against it; counts are read from /proc after the connect phase
# and after the tool exits, so connecting is not counted. Prints the rounds' median last
# receiver and, per server thread that switched more than 50 times, its voluntary and
# involuntary switches and CPU ticks.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:?usage: bench/preemptions.sh FERROCABLE_BINARY}
N=${N:-10000}; ROUNDS=${ROUNDS:-30}
PORT=${PORT:-$(python3 -c 'import sys; sys.path.insert(0, "bench"); import server_cpu; print(server_cpu.free_port())')}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d)
python3 -c 'import sys; sys.path.insert(0, "bench"); import server_cpu; server_cpu.settle(limit=12000)'
"$BIN" serve --bind "127.0.0.1:$PORT" --bench-channel --disable-forgery-protection \
  --session-store memory --data-dir "$work/data" >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
python3 -c "import sys; sys.path.insert(0, 'bench'); import server_cpu; sys.exit(0 if server_cpu.wait_port($PORT) else 1)"
target/release/ferrocable-bench broadcast --addr "127.0.0.1:$PORT" --n "$N" --rounds "$ROUNDS" \
  --concurrency 500 >"$work/result.json" &
tool=$!
snap() { for t in /proc/$server/task/*; do
  echo "$(basename "$t") $(awk '/voluntary_ctxt/{printf "%s ", $2}' "$t/status") $(awk '{print $14+$15}' "$t/stat")"
done; }
# The connect phase is over when the server holds N sockets; the tool then idles 2 s.
until [ "$(ls /proc/$server/fd | wc -l)" -ge "$N" ]; do
  kill -0 $tool 2>/dev/null || { echo "the load tool ended early" >&2; exit 1; }
  sleep 0.2
done
sleep 1
snap >"$work/before"
if [ -n "${PLACEMENT:-}" ]; then
  python3 - "$server" "$tool" <<'PY'
import collections, os, sys, time
server, tool = sys.argv[1], sys.argv[2]
def tasks(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            f = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
            out[t] = (f[0], int(f[36]))  # state, CPU
        except OSError:
            pass
    return out
samples = []
while os.path.exists(f"/proc/{tool}"):
    try:
        samples.append((tasks(server), tasks(tool)))
    except OSError:
        break
    time.sleep(0.002)
running_counts = collections.Counter(t for s, _ in samples for t, v in s.items() if v[0] == "R")
if not running_counts:
    sys.exit("no sample caught a server thread running")
busiest = running_counts.most_common(1)[0][0]
running = [(s[busiest][1], b) for s, b in samples if busiest in s and s[busiest][0] == "R"]
shared = sum(1 for cpu, b in running if any(v == ("R", cpu) for v in b.values()))
print(f"busiest worker running in {len(running)} samples; a running load-tool thread on its core in {shared}"
      f" ({100 * shared / max(1, len(running)):.0f} %)")
PY
fi
wait $tool
snap >"$work/after"
python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
d = json.load(open(f"{work}/result.json"))
rounds = [r["last_ms"] for r in d["broadcast"]["per_round"]]
print(f"median last receiver {statistics.median(rounds):.1f} ms over {len(rounds)} rounds, missing {d['broadcast']['missing_total']}")
before = {l.split()[0]: list(map(int, l.split()[1:])) for l in open(f"{work}/before")}
for line in open(f"{work}/after"):
    tid, *now = line.split()
    if tid in before:
        vol, invol, ticks = (int(a) - b for a, b in zip(now, before[tid]))
        if vol + invol > 50:
            print(f"thread {tid}: voluntary {vol}, involuntary {invol}, CPU ticks {ticks}")
PY
