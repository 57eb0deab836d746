#!/usr/bin/env bash
# RFC 6455 conformance: Autobahn|Testsuite's cases (sections 1-7, 9, 10), run by kosoku 0.1.0
# (PyPI, installed by exact version into target/autobahn-venv) against the real binary's
# test-only `/_echo` endpoint (served with --bench-channel). Strict: every case OK (or
# INFORMATIONAL, the only verdict of 7.1.6 and 7.13.x); NON-STRICT fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/autobahn-venv
if ! "$VENV/bin/python" -c 'import kosoku' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q kosoku==0.1.0
fi
. scripts/bench-server.sh
"$VENV/bin/python" scripts/autobahn.py "ws://127.0.0.1:$PORT/_echo" "$@"
