#!/usr/bin/env bash
# Soak: does one node hold a flat line? `ferrocable-bench soak` against a release build of
# `ferrocable serve`: fresh visitors (new session, reflexes, leave) for DURATION seconds beside
# IDLE held connections; RSS sampled every 5 s, end compared with the first minute (<= 1.1x).
#
#   bench/soak.sh                          # CONFIG=memory: memory sessions, broker and pubsub
#   CONFIG=sqlite bench/soak.sh            # the embedded default (SQLite sessions)
#   CONFIG=redis bench/soak.sh             # sessions, broker and pubsub on a private Redis
#                                          # (port REDIS_PORT), restarted half-way through
#   DURATION=60 IDLE=1000 bench/soak.sh    # short
#
# Env: CONFIG [memory], DURATION [600], BASELINE [60], IDLE [10000], VISITORS [20], REFLEXES [10], PORT [4400],
#      REDIS_PORT [6391], OUT [target/bench/soak.jsonl]. Plot: bench/plot.py soak OUT > file.svg
# Loopback only; timeout(1) bounds the run.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CONFIG="${CONFIG:-memory}"; DURATION="${DURATION:-600}"; IDLE="${IDLE:-10000}"
VISITORS="${VISITORS:-20}"; REFLEXES="${REFLEXES:-10}"; PORT="${PORT:-4400}"
REDIS_PORT="${REDIS_PORT:-6391}"; BASELINE="${BASELINE:-60}"
OUT="${OUT:-$ROOT/target/bench/soak.jsonl}"
WORK="$ROOT/target/bench/soak-$CONFIG"
rm -rf "$WORK"; mkdir -p "$(dirname "$OUT")" "$WORK"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --locked --bin ferrocable --bin ferrocable-bench >&2 || exit 1

redis_pid=""
start_redis() {
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$WORK" --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" || return 1
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null
  [ -f "$WORK/redis.pid" ] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null
}
trap cleanup EXIT

args=(serve --bind "127.0.0.1:$PORT" --bench-channel --disable-forgery-protection --data-dir "$WORK/data")
midway=()
case "$CONFIG" in
  memory) args+=(--session-store memory) ;;
  sqlite) args+=(--session-store sqlite) ;;
  redis)
    start_redis || { echo "soak.sh: could not start redis-server on $REDIS_PORT" >&2; exit 1; }
    r="redis://127.0.0.1:$REDIS_PORT"
    args+=(--session-store "$r/0" --broker "$r/1" --pubsub "$r/2")
    # Half-way: the Redis goes away (nothing kept) and comes back on the same port.
    cat >"$WORK/restart-redis.sh" <<RESTART
redis-cli -p $REDIS_PORT shutdown nosave
for _ in \$(seq 100); do redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 || break; sleep 0.1; done
redis-server --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no --dir "$WORK" \\
  --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log"
for _ in \$(seq 100); do redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 && exit 0; sleep 0.1; done
exit 1
RESTART
    midway=(--midway "sh $WORK/restart-redis.sh")
    ;;
  *) echo "soak.sh: CONFIG is memory, sqlite or redis" >&2; exit 2 ;;
esac
"$ROOT/target/release/ferrocable" "${args[@]}" >"$WORK/server.log" 2>&1 &
server=$!; pids+=("$server")
ok=""
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && { ok=1; break; }; sleep 0.1; done
[ -n "$ok" ] || { echo "soak.sh: the server did not answer /health; see $WORK/server.log" >&2; exit 1; }
timeout $((DURATION + 600)) "$ROOT/target/release/ferrocable-bench" soak --addr "127.0.0.1:$PORT" \
  --duration "$DURATION" --idle "$IDLE" --visitors "$VISITORS" --reflexes "$REFLEXES" \
  --baseline-secs "$BASELINE" --server-pid "$server" "${midway[@]}" \
  --label "soak $CONFIG $(git rev-parse --short HEAD)" | tee -a "$OUT"
