#!/usr/bin/env bash
# Broadcast smoke run for CI: 2,000 connections, 5 rounds, through the real binary and the
# Rust load generator. Fails on connection errors, missing or duplicate messages; timings are
# printed, never judged here (the benchmark documents them).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE_DIR="${PROFILE_DIR:-target/debug}"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATA=$(mktemp -d)
"$PROFILE_DIR/ferrocable" serve --bind "127.0.0.1:$PORT" --bench-channel --disable-forgery-protection \
  --session-store memory --data-dir "$DATA" >"$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
"$PROFILE_DIR/ferrocable-bench" broadcast --addr "127.0.0.1:$PORT" --n 2000 --rounds 5 \
  --server-pid "$SERVER" --label "ci smoke" --round-timeout-ms 20000
echo "bench smoke: 2000 connections, 5 rounds, nothing missing"
