#!/usr/bin/env bash
# Broadcast smoke run for CI: 2,000 connections, 5 rounds, through the real binary and the
# Rust load generator. Fails on connection errors, missing or duplicate messages; timings are
# printed, never judged here (the benchmark documents them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-server.sh
"$PROFILE_DIR/ferrocable-bench" broadcast --addr "127.0.0.1:$PORT" --n 2000 --rounds 5 \
  --server-pid "$SERVER" --label "ci smoke" --round-timeout-ms 20000
echo "bench smoke: 2000 connections, 5 rounds, nothing missing"
