#!/usr/bin/env bash
# AnyCable's avalanche test against one node: N clients connect and subscribe all at once
# (`ferrocable-bench avalanche`: no concurrency bound, one worker process per PER_WORKER); all
# must connect; connect-time percentiles and the server's counters are reported.
#
#   bench/avalanche.sh                    # N=19500 (the 20,000-descriptor cap leaves room for
#                                         # the server's own files), release build
#   N=5000 SOURCE_IPS=0 bench/avalanche.sh
#
# Env: N [19500], PER_WORKER [19500], SOURCE_IPS [8] (client sockets spread over
# 127.0.0.1..8), PORT [4500], OUT [target/bench/avalanche.jsonl]. Loopback only.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N="${N:-19500}"; PER_WORKER="${PER_WORKER:-19500}"; SOURCE_IPS="${SOURCE_IPS:-8}"; PORT="${PORT:-4500}"
OUT="${OUT:-$ROOT/target/bench/avalanche.jsonl}"
WORK="$ROOT/target/bench/avalanche"
rm -rf "$WORK"; mkdir -p "$(dirname "$OUT")" "$WORK"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --locked --bin ferrocable --bin ferrocable-bench >&2 || exit 1
"$ROOT/target/release/ferrocable" serve --bind "127.0.0.1:$PORT" --bench-channel \
  --disable-forgery-protection --session-store memory --data-dir "$WORK/data" \
  >"$WORK/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT
ok=""
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && { ok=1; break; }; sleep 0.1; done
[ -n "$ok" ] || { echo "avalanche.sh: the server did not answer /health; see $WORK/server.log" >&2; exit 1; }
timeout 900 "$ROOT/target/release/ferrocable-bench" avalanche --addrs "127.0.0.1:$PORT" --n "$N" \
  --per-worker "$PER_WORKER" --source-ips "$SOURCE_IPS" --server-pids "$server" \
  --label "avalanche $(git rev-parse --short HEAD) n=$N source_ips=$SOURCE_IPS" | tee -a "$OUT"
status=${PIPESTATUS[0]}
curl -sf "http://127.0.0.1:$PORT/metrics" | grep -E '^ferrocable_(connections|connections_opened_total|refused_upgrades_total|disconnects_total)' >&2
exit "$status"
