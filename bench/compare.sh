#!/usr/bin/env bash
# Side-by-side benchmark of ferrocable and Rails ActionCable with the same Rust load tool;
# writes the ratio table into docs/benchmarks.md (see bench/compare.py).
#   bench/compare.sh                      # N = 10000 19000, 10 rounds
#   NS="1000" ROUNDS=3 bench/compare.sh   # quick
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/compare.py "$@"
