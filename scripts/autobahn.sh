#!/usr/bin/env bash
# RFC 6455 conformance: Autobahn|Testsuite's cases (sections 1-7, 9, 10), run by kosoku 0.1.0
# (PyPI, installed by exact version into target/autobahn-venv) against the real binary's
# test-only `/_echo` endpoint (served with --bench-channel). Strict: every case must be OK.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE_DIR="${PROFILE_DIR:-target/debug}"
VENV=target/autobahn-venv
if ! "$VENV/bin/python" -c 'import kosoku' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q kosoku==0.1.0
fi
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
"$VENV/bin/python" scripts/autobahn.py "ws://127.0.0.1:$PORT/_echo" "$@"
