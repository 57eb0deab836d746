#!/usr/bin/env bash
# Runs the whole test suite: formatting and lints, Rust unit and integration tests, the fuzz
# targets' build, and the end-to-end tests that drive the real binary with the real npm
# clients. Installs what it can (npm packages by exact version); names what it cannot.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOG_DIR="$ROOT/target/test-logs"
mkdir -p "$LOG_DIR"

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 ($2)"); }
need cargo "the Rust toolchain"
need node "Node.js 20 (Debian package nodejs)"
need npm "npm (Debian package npm)"
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: cannot run, missing: ${missing[*]}" >&2
  exit 2
fi

# Services the tests talk to, started the way a user would (the commands this machine
# image uses), installed from Debian when missing and possible.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 50); do port_open "$1" && return 0; sleep 0.2; done; return 1; }
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq >/dev/null 2>&1; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}
unavailable=()
ensure_service() { # name port start-command install-package
  local name=$1 port=$2 start=$3 pkg=$4
  port_open "$port" && return 0
  if ! command -v "${start%% *}" >/dev/null 2>&1; then
    echo "test.sh: $name is not installed; installing Debian package $pkg"
    apt_install "$pkg" || true
  fi
  if command -v "${start%% *}" >/dev/null 2>&1; then
    echo "test.sh: starting $name"
    bash -c "$start" >/dev/null 2>&1 || true
  fi
  wait_port "$port" || unavailable+=("$name on 127.0.0.1:$port")
}
ensure_service Redis 6379 'mkdir -p /var/lib/redis /var/log/redis && redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log' redis-server
ensure_service PostgreSQL 5432 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -1) main start' postgresql
ensure_service Memcached 11211 'memcached -d -u memcache -l 127.0.0.1 -p 11211 -m 64' memcached
# Headless Chromium for the browser tests, from Debian (never a tool's own download).
if [ ! -x /usr/bin/chromium ]; then
  echo "test.sh: installing Debian's chromium for the browser tests"
  apt_install chromium || true
  [ -x /usr/bin/chromium ] || unavailable+=("Debian package chromium (/usr/bin/chromium)")
fi
if [ ${#unavailable[@]} -gt 0 ]; then
  echo "test.sh: could not bring up: ${unavailable[*]}" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

failed_steps=()
step() {
  local name=$1; shift
  echo "==> $name"
  if ! "$@" 2>&1 | tee "$LOG_DIR/$name.log"; then
    failed_steps+=("$name")
  fi
}

step fmt cargo fmt --all --check
step clippy cargo clippy --all-targets --locked -- -D warnings
step cargo-test cargo test --workspace --locked
# An app built with no backend features: it compiles, lints clean, and names the feature a
# configured backend needs.
step features bash -c "cargo clippy --locked -p ferrocable -p ferrocable-server -p ferrocable-session --no-default-features --all-targets -- -D warnings && cargo test --locked -p ferrocable --no-default-features --test without_backends"
step docs env RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --workspace
step fuzz-build cargo build --manifest-path fuzz/Cargo.toml
step build-bin cargo build --locked --bin ferrocable --bin ferrocable-bench --examples
step bench-smoke scripts/bench-smoke.sh
# RFC 6455: Autobahn's cases (kosoku 0.1.0 from PyPI) against the binary's own WebSocket layer.
step autobahn scripts/autobahn.sh
step npm-install bash -c "cd tests/js && npm ci --no-audit --no-fund && cd ../e2e && npm ci --no-audit --no-fund && cd ../../apps/demo && npm ci --no-audit --no-fund && cd ../../crates/ferrocable && npm ci --no-audit --no-fund"
step js-test bash -c "cd tests/js && FERROCABLE_BIN='$ROOT/target/debug/ferrocable' npm test"
step browser-test bash -c "cd tests/e2e && FERROCABLE_BIN='$ROOT/target/debug/ferrocable' npm test"

# One closing line over every runner: cargo's "test result" lines and node's "# pass/# fail".
passed=0; failed=0
while read -r p f; do passed=$((passed + p)); failed=$((failed + f)); done < <(
  grep -hE '^test result: ' "$LOG_DIR/cargo-test.log" 2>/dev/null |
    sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/')
js_pass=$(grep -hE '^# pass ' "$LOG_DIR/js-test.log" "$LOG_DIR/browser-test.log" "$LOG_DIR/autobahn.log" 2>/dev/null | awk '{s+=$3} END {print s+0}')
js_fail=$(grep -hE '^# fail ' "$LOG_DIR/js-test.log" "$LOG_DIR/browser-test.log" "$LOG_DIR/autobahn.log" 2>/dev/null | awk '{s+=$3} END {print s+0}')
passed=$((passed + js_pass)); failed=$((failed + js_fail))

if [ ${#failed_steps[@]} -gt 0 ]; then
  echo "test.sh: failed steps: ${failed_steps[*]} (logs in $LOG_DIR)" >&2
  [ "$failed" -eq 0 ] && failed=1
fi
echo "${passed} passed, ${failed} failed"
[ ${#failed_steps[@]} -eq 0 ] && [ "$failed" -eq 0 ]
