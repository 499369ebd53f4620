#!/usr/bin/env bash
# Slow clients in front of a sync worker (issue 17), gatehouse vs nginx side by side.
#
# The upstream is what the proxy must protect: a Django app under gunicorn with ONE sync
# worker on a unix socket (Debian's gunicorn and python3-django). N slow clients keep it busy
# if the proxy passes them through: uploaders sending a 1 MiB body at ~20 KB/s, or readers
# of an 8 MiB response reading ~20 KB/s through a 4 KiB receive buffer. Meanwhile a fast
# client asks for /fast (a 4-byte answer) $PROBES times in a row, each with a
# $PROBE_TIMEOUT s limit: the table gives the median and worst time to an answer and how many
# got none. Four proxies, one at a time: gatehouse and nginx with their defaults (both
# buffer), and both with buffering off (gatehouse `buffer_requests = false,
# buffer_responses = false`, nginx `proxy_request_buffering off; proxy_buffering off`), which
# is what gatehouse did before issue 17.
#
# Then slowhttptest (200 connections for $SHT_SECONDS s: slow 1 MiB bodies, -B; slow reads
# of the 8 MiB response, -X), as the issue reported it: the seconds its probe found the
# service unavailable.
#
# Every client is bounded in time (slow clients stop after the probes, and after 120 s in
# any case); slowhttptest runs for $SHT_SECONDS s.
#
# Usage: bench/slow-clients.sh [path/to/gatehouse] [N ...]   (default N: 1 10 50)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need_tools
# Debian's python3, the one gunicorn runs (a python3 earlier in PATH may lack Django).
missing=()
command -v gunicorn >/dev/null || missing+=(gunicorn)
/usr/bin/python3 -c 'import django' 2>/dev/null || missing+=(python3-django)
command -v slowhttptest >/dev/null || missing+=(slowhttptest)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

GH=${1:-}
[ $# -gt 0 ] && shift
COUNTS=("${@:-1 10 50}")
read -r -a COUNTS <<<"${COUNTS[*]}"
if [ -z "$GH" ]; then
    cargo build --release --locked -q -p gatehouse
    GH=target/release/gatehouse
fi
PROBES=${PROBES:-5}
PROBE_TIMEOUT=${PROBE_TIMEOUT:-3}
SHT_SECONDS=${SHT_SECONDS:-20}
ulimit -n 4096

WORK=$(mktemp -d /tmp/gatehouse-bench-slow.XXXXXX)
chmod 755 "$WORK"
cleanup() {
    [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null
    [ -n "${APP_PID:-}" ] && kill "$APP_PID" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(free_port)
APP_SOCK=$WORK/app.sock

mkdir -p "$WORK/app" "$WORK/nginx" "$WORK/tmp"
cat >"$WORK/app/djapp.py" <<'PY'
# A one-file Django project: what a sync worker typically runs.
from django.conf import settings

settings.configure(DEBUG=False, SECRET_KEY="bench", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
                   MIDDLEWARE=[], DATA_UPLOAD_MAX_MEMORY_SIZE=16 << 20)

from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path


def fast(request):
    return HttpResponse(b"fast")


def upload(request):
    return HttpResponse(str(len(request.body)).encode())


def big(request, n):
    return HttpResponse(b"x" * n, content_type="application/octet-stream")


urlpatterns = [path("fast", fast), path("upload", upload), path("big/<int:n>", big)]
application = get_wsgi_application()
PY
gunicorn --workers 1 --worker-class sync --bind "unix:$APP_SOCK" --chdir "$WORK/app" \
    djapp:application 2>"$WORK/gunicorn.log" &
APP_PID=$!
deadline=$((SECONDS + 20))
until [ -S "$APP_SOCK" ]; do
    [ $SECONDS -lt $deadline ] || { echo "gunicorn did not start" >&2; cat "$WORK/gunicorn.log" >&2; exit 1; }
    sleep 0.1
done
chmod 666 "$APP_SOCK"

cat >"$WORK/gatehouse.toml" <<TOML
[[listener]]
name = "http"
bind = ["127.0.0.1:$PORT"]
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
proxy = { upstreams = ["unix:$APP_SOCK"], temp_dir = "$WORK/tmp" }
[[site.route]]
path = "/nobuf/"
proxy = { upstreams = ["unix:$APP_SOCK"], strip_prefix = true, buffer_requests = false, buffer_responses = false }
TOML
# nginx as packaged, plus the upstream; its buffering defaults stay (on).
write_nginx_conf <<NGINX
    upstream app { server unix:$APP_SOCK; }
    server {
        listen 127.0.0.1:$PORT;
        location / { proxy_pass http://app; }
        location /nobuf/ {
            proxy_pass http://app/;
            proxy_request_buffering off;
            proxy_buffering off;
        }
    }
NGINX

start_proxy() { # gatehouse|nginx
    if [ "$1" = gatehouse ]; then
        "$GH" serve --config "$WORK/gatehouse.toml" --log-target stderr 2>"$WORK/gatehouse.log" &
    else
        nginx -c "$WORK/nginx.conf" -p "$WORK/nginx" &
    fi
    PROXY_PID=$!
    wait_port "$PORT"
    sleep 0.3
}
stop_proxy() {
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=
    # Nothing of the last round left queued at the worker: /fast answers at once again.
    local deadline=$((SECONDS + 60))
    until curl -s -m 2 -o /dev/null --unix-socket "$APP_SOCK" http://app/fast; do
        [ $SECONDS -lt $deadline ] || { echo "the app does not recover" >&2; exit 1; }
        sleep 0.5
    done
}

# Slow clients plus the fast probes; prints "median_ms worst_ms unanswered".
cat >"$WORK/clients.py" <<'PY'
import socket, statistics, sys, threading, time

port, prefix, mode, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
probes, probe_timeout = int(sys.argv[5]), float(sys.argv[6])
stop = threading.Event()
deadline = time.time() + 120


def slow_client():
    s = socket.socket()
    try:
        if mode == "read":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        if mode == "upload":
            s.sendall(b"POST %supload HTTP/1.1\r\nHost: bench\r\nContent-Length: 1048576\r\n"
                      b"Content-Type: application/octet-stream\r\n\r\n" % prefix.encode())
            while not stop.is_set() and time.time() < deadline:
                s.sendall(b"u" * 1024)
                time.sleep(0.05)
        else:
            s.sendall(b"GET %sbig/8388608 HTTP/1.1\r\nHost: bench\r\n\r\n" % prefix.encode())
            s.settimeout(0.5)
            while not stop.is_set() and time.time() < deadline:
                try:
                    s.recv(1024)
                except socket.timeout:
                    pass
                time.sleep(0.05)
    except OSError:
        pass
    finally:
        s.close()


threads = [threading.Thread(target=slow_client) for _ in range(n)]
for t in threads:
    t.start()
time.sleep(1)
times, unanswered = [], 0
for _ in range(probes):
    t0 = time.time()
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=probe_timeout)
        c.settimeout(max(0.01, probe_timeout - (time.time() - t0)))
        c.sendall(b"GET %sfast HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % prefix.encode())
        got = b""
        while True:
            chunk = c.recv(4096)
            if not chunk:
                break
            got += chunk
        c.close()
        if got.startswith(b"HTTP/1.1 200") and b"fast" in got:
            times.append((time.time() - t0) * 1000)
        else:
            unanswered += 1
    except OSError:
        unanswered += 1
    time.sleep(0.2)
stop.set()
for t in threads:
    t.join()
if times:
    print("%.1f %.1f %d" % (statistics.median(times), max(times), unanswered))
else:
    print("- - %d" % unanswered)
PY

declare -A R
PROXIES=("gatehouse|gatehouse|/" "gatehouse, buffering off|gatehouse|/nobuf/" "nginx|nginx|/" "nginx, buffering off|nginx|/nobuf/")
for p in "${PROXIES[@]}"; do
    IFS='|' read -r label server prefix <<<"$p"
    start_proxy "$server"
    for mode in upload read; do
        for n in "${COUNTS[@]}"; do
            r=$(python3 "$WORK/clients.py" "$PORT" "$prefix" "$mode" "$n" "$PROBES" "$PROBE_TIMEOUT")
            R[$label,$mode,$n]=$r
            echo "$label, $n slow ${mode}s: $r (median ms, worst ms, unanswered of $PROBES)" >&2
        done
    done
    stop_proxy
done

# slowhttptest: the seconds (of $SHT_SECONDS) its probe found the service unavailable.
sht() { # prefix mode
    rm -f "$WORK"/sht*
    if [ "$2" = body ]; then
        timeout $((SHT_SECONDS + 30)) slowhttptest -c 200 -B -i 10 -r 100 -s 1048576 -t POST -x 10 -p 3 \
            -l "$SHT_SECONDS" -g -o "$WORK/sht" -u "http://127.0.0.1:$PORT${1}upload" >/dev/null 2>&1 || true
    else
        timeout $((SHT_SECONDS + 30)) slowhttptest -c 200 -X -r 100 -w 512 -y 1024 -n 5 -z 32 -k 3 -p 3 \
            -l "$SHT_SECONDS" -g -o "$WORK/sht" -u "http://127.0.0.1:$PORT${1}big/5242880" >/dev/null 2>&1 || true
    fi
    # CSV: seconds,closed,pending,connected,service available (0/1)
    awk -F, 'NR > 1 && $5 != "" { n++; if ($5 == 0) down++ } END { printf "%d/%d", down, n }' "$WORK"/sht*.csv 2>/dev/null || echo "-"
}
for p in "${PROXIES[@]}"; do
    IFS='|' read -r label server prefix <<<"$p"
    start_proxy "$server"
    R[$label,sht,body]=$(sht "$prefix" body)
    stop_proxy
    start_proxy "$server"
    R[$label,sht,read]=$(sht "$prefix" read)
    stop_proxy
    echo "$label: slowhttptest unavailable s: body ${R[$label,sht,body]}, read ${R[$label,sht,read]}" >&2
done

echo
echo "Time to answer GET /fast (median / worst ms; unanswered within ${PROBE_TIMEOUT} s of $PROBES) while N slow clients are active:"
echo
printf "| proxy |"
for mode in upload read; do for n in "${COUNTS[@]}"; do printf " %s slow %s |" "$n" "$([ $mode = upload ] && echo uploads || echo readers)"; done; done
echo " slowhttptest -B, s unavailable | slowhttptest -X, s unavailable |"
printf "| --- |"
for _ in upload read; do for _ in "${COUNTS[@]}"; do printf " ---: |"; done; done
echo " ---: | ---: |"
for p in "${PROXIES[@]}"; do
    IFS='|' read -r label _ _ <<<"$p"
    printf "| %s |" "$label"
    for mode in upload read; do
        for n in "${COUNTS[@]}"; do
            read -r med worst none <<<"${R[$label,$mode,$n]}"
            printf " %s / %s (%s) |" "$med" "$worst" "$none"
        done
    done
    echo " ${R[$label,sht,body]} | ${R[$label,sht,read]} |"
done
echo
echo "gunicorn $(gunicorn --version 2>&1 | awk '{print $NF}' | tr -d ')'), 1 sync worker, Django $(/usr/bin/python3 -c 'import django; print(django.get_version())');" \
    "$(nginx -v 2>&1 | sed 's/.*: //'); $("$GH" --version); slowhttptest 200 connections for ${SHT_SECONDS} s"
