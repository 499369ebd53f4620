#!/usr/bin/env bash
# Instructions per request under callgrind: the method of bench/RESULTS.md's instruction
# counts, as a script. The binary runs under `valgrind --tool=callgrind --instr-atstart=no`;
# counting is switched on only while the load runs (wrk -t1 -c4 -d5s for HTTP/1.1, h2load
# -n 20000 -c4 for HTTP/2 prior knowledge), then the total is divided by the requests served.
#
#   bench/callgrind.sh path/to/gatehouse [h1|h2] [/proxy/x|/1k.txt|/nope]
#   BODY=65536 bench/callgrind.sh …    POSTs a body of that many bytes instead of a GET
#
# /proxy/x goes to an nginx returning 20 bytes on a unix socket; /1k.txt is a 1 KiB static file
# (follow_symlinks = "always": valgrind does not know openat2); /nope a static 404.
set -euo pipefail
BIN=$(realpath "$1")
PROTO=${2:-h1}
URLPATH=${3:-/proxy/x}
for tool in valgrind callgrind_control callgrind_annotate nginx wrk h2load; do
    command -v "$tool" >/dev/null || { echo "needs $tool (valgrind, nginx-light, wrk, nghttp2-client)" >&2; exit 1; }
done

W=$(mktemp -d /tmp/gatehouse-callgrind.XXXXXX)
cleanup() {
    [ -n "${GH:-}" ] && kill -9 "$GH" 2>/dev/null
    [ -n "${UP:-}" ] && kill "$UP" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
mkdir "$W/www"
head -c 1024 /dev/zero | tr '\0' x >"$W/www/1k.txt"
cat >"$W/up.conf" <<NGINX
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err; user root;
events {} http { access_log off; server { listen unix:$W/up.sock; location / { return 200 "01234567890123456789"; } } }
NGINX
nginx -c "$W/up.conf" -p "$W" &
UP=$!
# A port nothing listens on (other benchmarks and test servers may share the machine).
for PORT in $(shuf -i 20000-60000 -n 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null || break
done
cat >"$W/g.toml" <<TOML
[[listener]]
name = "http"
bind = ["127.0.0.1:$PORT"]
[[site]]
hosts = ["*"]
[[site.route]]
path = "/proxy/"
proxy = { upstreams = ["unix:$W/up.sock"] }
[[site.route]]
path = "/"
static = { root = "$W/www", follow_symlinks = "always" }
TOML
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$W/cg.out" \
    "$BIN" serve --config "$W/g.toml" --log-target stderr 2>"$W/gatehouse.log" &
GH=$!
deadline=$((SECONDS + 30))
until (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "gatehouse did not start" >&2; exit 1; }
    sleep 0.2
done
kill -0 "$GH" 2>/dev/null || { echo "gatehouse exited: $(cat "$W/gatehouse.log")" >&2; exit 1; }
curl -sS -o /dev/null --retry 5 --retry-connrefused "http://127.0.0.1:$PORT$URLPATH"
sleep 0.5
# With BODY, the same request as a POST of that many bytes (nginx's `return` discards it).
h2body=() wrkbody=()
if [ -n "${BODY:-}" ]; then
    head -c "$BODY" /dev/zero | tr '\0' x >"$W/body"
    printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\n' "$BODY" >"$W/post.lua"
    h2body=(-d "$W/body") wrkbody=(-s "$W/post.lua")
fi
callgrind_control -i on "$GH" >/dev/null
if [ "$PROTO" = h2 ]; then
    timeout 120 h2load -n 20000 -c 4 -m 1 "${h2body[@]}" "http://127.0.0.1:$PORT$URLPATH" >"$W/load.txt"
    REQS=$(awk '/^requests:/ {print $2}' "$W/load.txt")
else
    wrk -t1 -c4 -d5s "${wrkbody[@]}" "http://127.0.0.1:$PORT$URLPATH" >"$W/load.txt"
    REQS=$(awk '/requests in/ {print $1}' "$W/load.txt")
fi
callgrind_control -i off "$GH" >/dev/null
callgrind_control -d "$GH" >/dev/null
sleep 1
IR=$(callgrind_annotate "$W/cg.out.1" | awk '/PROGRAM TOTALS/ && !seen {gsub(",", "", $1); print $1; seen = 1}')
echo "$PROTO ${BODY:+POST $BODY B }$URLPATH: $REQS requests, $((IR / REQS)) instructions per request"
