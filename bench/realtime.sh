#!/usr/bin/env bash
# Figures for AnyCable's real-time surface, release build:
# - presence join-to-seen latency across two nodes sharing a bus (BUS=redis and BUS=nats);
# - server-sent-events readers held by one node, server RSS per reader (SSE_N).
#
#   bench/realtime.sh                     # ROUNDS=200, SSE_N=10000
#   ROUNDS=50 SSE_N=1000 bench/realtime.sh
#
# Env: ROUNDS [200], SSE_N [10000], BASE [4600], REDIS_URL [redis://127.0.0.1:6379/0],
#      NATS_URL [nats://127.0.0.1:4222], OUT [target/bench/realtime.jsonl]. Loopback only.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS="${ROUNDS:-200}"; SSE_N="${SSE_N:-10000}"; BASE="${BASE:-4600}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"; NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
OUT="${OUT:-$ROOT/target/bench/realtime.jsonl}"
WORK="$ROOT/target/bench/realtime"
rm -rf "$WORK"; mkdir -p "$(dirname "$OUT")" "$WORK"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --locked --bin ferrocable --bin ferrocable-bench >&2 || exit 1
BIN="$ROOT/target/release/ferrocable"; BENCH="$ROOT/target/release/ferrocable-bench"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null; pids=(); }
trap cleanup EXIT
node() { # port, extra args...
  local port=$1; shift
  ANYCABLE_PUBLIC_STREAMS=true ANYCABLE_SSE=true "$BIN" serve --bind "127.0.0.1:$port" \
    --disable-forgery-protection --session-store memory --data-dir "$WORK/data-$port" "$@" \
    >"$WORK/node-$port.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0; sleep 0.1; done
  echo "realtime.sh: node on $port did not start; see $WORK" >&2; exit 1
}
for bus in redis nats; do
  url=$REDIS_URL; [ "$bus" = nats ] && url=$NATS_URL
  export FERROCABLE_PUBSUB_PREFIX="realtime:$(date +%s%N):"
  node "$BASE" --pubsub "$url"; node "$((BASE + 1))" --pubsub "$url"
  timeout 300 "$BENCH" presence --a "127.0.0.1:$BASE" --b "127.0.0.1:$((BASE + 1))" --rounds "$ROUNDS" \
    --label "presence $bus $(git rev-parse --short HEAD)" | tee -a "$OUT"
  cleanup
done
node "$BASE"
timeout 600 "$BENCH" sse --addr "127.0.0.1:$BASE" --n "$SSE_N" --server-pid "${pids[0]}" \
  --label "sse $(git rev-parse --short HEAD) n=$SSE_N" | tee -a "$OUT"
