#!/usr/bin/env bash
# Runs the server with the demo app on embedded defaults (SQLite sessions in ./data).
# Installs the demo's pinned browser packages first. Extra arguments go to `ferrocable serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1; then
  echo "run.sh: npm is needed for the demo's browser packages (Debian package npm)" >&2
  exit 2
fi
if [ ! -f apps/demo/node_modules/.package-lock.json ] || [ apps/demo/package-lock.json -nt apps/demo/node_modules/.package-lock.json ]; then
  npm ci --prefix apps/demo --no-audit --no-fund
fi
exec cargo run --release --locked --bin ferrocable -- serve "$@"
