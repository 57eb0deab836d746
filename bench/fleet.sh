#!/usr/bin/env bash
# Many nodes on one box: K ferrocable processes (ports BASE..BASE+K-1) sharing broadcasts
# through Redis pub/sub, loaded by `ferrocable-bench fleet` with worker processes, so the run
# passes the 20,000-descriptor cap every process has here.
#
#   bench/fleet.sh                                  # 11 nodes, 200,000 connections, 5 rounds
#   NODES=2 N=20000 ROUNDS=3 bench/fleet.sh         # smaller
#
# Env: NODES [11], N [200000], PER_WORKER [18200], ROUNDS [5], HOLD [10] (idle seconds),
#      BASE [4301], SOURCE_IPS [0] (spread clients over 127.0.0.1..K), REDIS_URL [redis://127.0.0.1:6379/0], OUT [target/bench/fleet.jsonl],
#      BIN (another build's ferrocable binary, to alternate builds; this checkout's release build
#      otherwise) and LABEL [the commit] for the result's label.
#   BIN=/tmp/base/ferrocable LABEL=base SOURCE_IPS=16 bench/fleet.sh   # the same tool, another server
# Loopback only; the tool bounds every phase and timeout(1) bounds the whole run.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
NODES="${NODES:-11}"; N="${N:-200000}"; PER_WORKER="${PER_WORKER:-18200}"
ROUNDS="${ROUNDS:-5}"; HOLD="${HOLD:-10}"; BASE="${BASE:-4301}"; SOURCE_IPS="${SOURCE_IPS:-0}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
OUT="${OUT:-$ROOT/target/bench/fleet.jsonl}"
mkdir -p "$(dirname "$OUT")" "$ROOT/target/bench/fleet"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --locked --bin ferrocable --bin ferrocable-bench >&2 || exit 1
BIN="${BIN:-$ROOT/target/release/ferrocable}"; LABEL="${LABEL:-$(git rev-parse --short HEAD)}"

prefix="fleet:$(date +%s):"
pids=(); addrs=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
for i in $(seq 0 $((NODES - 1))); do
  port=$((BASE + i))
  FERROCABLE_PUBSUB_PREFIX="$prefix" "$BIN" serve \
    --bind "127.0.0.1:$port" --bench-channel --disable-forgery-protection \
    --session-store memory --data-dir "$ROOT/target/bench/fleet/data" --pubsub "$REDIS_URL" \
    >"$ROOT/target/bench/fleet/node-$port.log" 2>&1 &
  pids+=("$!"); addrs+=("127.0.0.1:$port")
done
for a in "${addrs[@]}"; do
  ok=""
  for _ in $(seq 100); do curl -sf "http://$a/health" >/dev/null && { ok=1; break; }; sleep 0.1; done
  [ -n "$ok" ] || { echo "node $a did not answer /health (port taken?); see target/bench/fleet/" >&2; exit 1; }
done
IFS=,; addr_list="${addrs[*]}"; pid_list="${pids[*]}"; unset IFS
timeout 1800 "$ROOT/target/release/ferrocable-bench" fleet --addrs "$addr_list" --n "$N" \
  --per-worker "$PER_WORKER" --rounds "$ROUNDS" --hold-secs "$HOLD" --concurrency 200 \
  --source-ips "$SOURCE_IPS" \
  --server-pids "$pid_list" --label "fleet $LABEL nodes=$NODES n=$N" | tee -a "$OUT"
