#!/usr/bin/env bash
# Side-by-side fan-out benchmark: ferrocable and Rails ActionCable, same load tool
# (../shared/peers/loadtool/cable-bench.js), same BenchmarkChannel, same machine, one run.
#
#   bench/cable-core.sh                 # N = 1000 10000 19000, 10 rounds each
#   NS="1000" ROUNDS=5 bench/cable-core.sh
#
# Writes JSON lines to target/bench/cable-core.jsonl and prints a markdown table
# (bench/summarize.py) for docs/benchmarks.md. Loopback only; every run is bounded by the
# tool's --max-seconds and timeout(1).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
NS="${NS:-1000 10000 19000}"
ROUNDS="${ROUNDS:-10}"
SERVERS="${SERVERS:-ferrocable actioncable}"
PORT="${PORT:-8081}"
OUT="${OUT:-$ROOT/target/bench/cable-core.jsonl}"
SHARED="${SHARED:-$ROOT/../shared}"
PEERS="$ROOT/target/peers"
mkdir -p "$(dirname "$OUT")" "$PEERS"

# The shared folder may be read-only: work on copies.
[ -d "$PEERS/loadtool" ] || cp -r "$SHARED/peers/loadtool" "$PEERS/"
[ -d "$PEERS/actioncable" ] || cp -r "$SHARED/peers/actioncable" "$PEERS/"
(cd "$PEERS/loadtool" && [ -d node_modules ] || npm install --no-audit --no-fund >/dev/null)
cargo build --release --locked --bin ferrocable >&2 || exit 1
BIN="$ROOT/target/release/ferrocable"

run_ferrocable() {
  local n=$1
  "$BIN" serve --bind "127.0.0.1:$PORT" --bench-channel --disable-forgery-protection \
    >"$ROOT/target/bench/ferrocable-n$n.log" 2>&1 &
  local pid=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
  timeout 330 node "$PEERS/loadtool/cable-bench.js" --url "ws://127.0.0.1:$PORT/cable" --n "$n" \
    --rounds "$ROUNDS" --server-pid "$pid" --max-seconds 300 \
    --label "ferrocable $(git rev-parse --short HEAD) n=$n" 2>"$ROOT/target/bench/ferrocable-bench-n$n.log" | tee -a "$OUT"
  kill -TERM "$pid"; wait "$pid"
}

for server in $SERVERS; do
  case $server in
    ferrocable) for n in $NS; do run_ferrocable "$n"; done ;;
    actioncable)
      bash "$PEERS/actioncable/setup.sh" >/dev/null || { echo "actioncable setup failed" >&2; exit 1; }
      (cd "$PEERS/actioncable" && OUT="$OUT" NS="$NS" ROUNDS="$ROUNDS" ./bench.sh) ;;
  esac
done
python3 "$ROOT/bench/summarize.py" "$OUT"
