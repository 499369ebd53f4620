#!/usr/bin/env bash
# Memory per idle keep-alive connection, gatehouse vs nginx: N clients each fetch a 1 KiB
# file over HTTP/1.1 and keep their connection open; the RSS growth (nginx: master +
# worker) divided by N. What a server with many idle browsers or a C10k load costs.
# Usage: bench/idle-conns.sh [path/to/gatehouse] [connections, default 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

need_tools
GH=${1:-}
N=${2:-1000}
if [ -z "$GH" ]; then
    cargo build --release --locked -q -p gatehouse
    GH=target/release/gatehouse
fi
ulimit -n $((N + 256))

WORK=$(mktemp -d /tmp/gatehouse-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
mkdir -p "$WORK/www"
head -c 1024 /dev/urandom >"$WORK/www/1k.bin"
GH_PORT=18091
NGX_PORT=18092
NGINX_CONF_EDIT="s/worker_connections 4096/worker_connections $((N + 256))/" \
    start_static_pair "$WORK/www" $GH_PORT $NGX_PORT

# Opens N connections, one request each, all answered, then holds them; prints the RSS
# growth per connection in bytes.
per_connection() { # port pid
    local before after deadline
    before=$(rss_kib "$2")
    rm -f "$WORK/ready" "$WORK/stop"
    python3 - "$1" "$N" "$WORK" <<'PY' &
import os, socket, sys, time
port, n, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /1k.bin HTTP/1.1\r\nHost: bench\r\n\r\n")
    held.append(s)
for s in held:
    s.settimeout(10)
    got = b""
    while b"\r\n\r\n" not in got or len(got) < 1024:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed early")
        got += chunk
open(work + "/ready", "w").close()
deadline = time.time() + 30
while not os.path.exists(work + "/stop") and time.time() < deadline:
    time.sleep(0.05)
PY
    local client=$!
    deadline=$((SECONDS + 60))
    until [ -e "$WORK/ready" ]; do
        kill -0 $client 2>/dev/null && [ $SECONDS -lt $deadline ] || { echo "clients failed" >&2; exit 1; }
        sleep 0.1
    done
    sleep 0.5
    after=$(rss_kib "$2")
    touch "$WORK/stop"
    wait $client
    awk -v a="$after" -v b="$before" -v n="$N" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }'
}

g=$(per_connection $GH_PORT $GH_PID)
n=$(per_connection $NGX_PORT $NGX_PID)
echo "| server | RSS per idle keep-alive connection (bytes, $N connections) |"
echo "| --- | ---: |"
echo "| gatehouse | $g |"
echo "| nginx (master + worker) | $n |"
