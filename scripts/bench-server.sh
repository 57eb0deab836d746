# Sourced by scripts that need the real binary serving `--bench-channel` on a free loopback
# port with embedded defaults: sets PORT, SERVER (its pid) and DATA, stops it on exit.
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
