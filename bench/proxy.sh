#!/usr/bin/env bash
# Reverse proxy, gatehouse vs nginx, side by side in one run (issue 4).
#
# Both proxies forward to the same upstream: a separate nginx returning a fixed 20-byte
# response (or a 1 MiB file for /big) on a unix socket and, for the /tcp/ row, a loopback
# TCP port (fast, and shared, so it is never what one proxy has and the other lacks). nginx
# proxies with upstream keepalive (`keepalive 64`, HTTP/1.1), as gatehouse pools its
# upstream connections. Both write an access log. Both buffer request and response bodies
# by default (issue 17); under /nobuf/ both stream (gatehouse `buffer_requests = false,
# buffer_responses = false`, nginx `proxy_request_buffering off; proxy_buffering off`), so
# the cost of buffering for fast clients is the difference between the paired rows.
# bench/slow-clients.sh measures what buffering is for.
#
# The proxy under test runs on CPU $SERVER_CPU; wrk and the upstream share CPU $CLIENT_CPU.
# gatehouse and nginx alternate per repetition; medians of $BENCH_REPS runs of
# $BENCH_DURATION each (every load run is bounded by wrk -d; every wait by a deadline).
#
# Usage: bench/proxy.sh [path/to/gatehouse]   (default: builds target/release/gatehouse)
#        BENCH_ONLY='POST' bench/proxy.sh …     runs only the scenarios whose name matches
#        RATE=20000 bench/proxy.sh …            offers that fixed load with h2load instead of
#                                               wrk's closed loop: latencies at equal load
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-50}
. bench/lib.sh
need_tools

GH=${1:-}
if [ -z "$GH" ]; then
    cargo build --release --locked -q -p gatehouse
    GH=target/release/gatehouse
fi

WORK=$(mktemp -d /tmp/gatehouse-bench-proxy.XXXXXX)
# nginx workers run as an unprivileged user and must reach the upstream socket in here.
chmod 755 "$WORK"
BENCH_LOG=$WORK/wrk.log
cleanup() {
    [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null
    [ -n "${UP_PID:-}" ] && kill "$UP_PID" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

GH_PORT=${GH_PORT:-$(free_port)}
NGX_PORT=${NGX_PORT:-$(free_port)}
UP_SOCK=$WORK/upstream.sock
UP_PORT=${UP_PORT:-$(free_port)}

nginx_common() { # dir
    cat <<NGINX
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
NGINX
}
temp_paths() { # dir
    echo "client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1; uwsgi_temp_path $1; scgi_temp_path $1;"
}

mkdir -p "$WORK/up" "$WORK/nginx"
head -c 1048576 /dev/zero | tr '\0' x >"$WORK/up/big"
: >"$WORK/up/upload"
{
    nginx_common "$WORK/up"
    cat <<NGINX
http {
    access_log off;
    keepalive_requests 1000000;
    client_max_body_size 10m;
    client_body_buffer_size 128k;
    $(temp_paths "$WORK/up")
    server {
        listen unix:$UP_SOCK;
        listen 127.0.0.1:$UP_PORT;
        location = /big { root $WORK/up; }
$(upload_locations /upload "$WORK/up")
        location / { return 200 "hello from upstream\n"; }
    }
}
NGINX
} >"$WORK/upstream.conf"

# The proxy: bench/nginx-proxy.conf with the paths of this run filled in.
sed -e "s|@DIR@|$WORK/nginx|g" -e "s|@PORT@|$NGX_PORT|g" -e "s|@UPSTREAM_SOCK@|$UP_SOCK|g" \
    -e "s|@UPSTREAM_PORT@|$UP_PORT|g" \
    bench/nginx-proxy.conf >"$WORK/nginx.conf"

cat >"$WORK/gatehouse.toml" <<TOML
[server]
max_connections = 100000
[[listener]]
name = "http"
bind = ["127.0.0.1:$GH_PORT"]
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
proxy = { upstreams = ["unix:$UP_SOCK"], max_body = "10MiB" }
[[site.route]]
path = "/tcp/"
proxy = { upstreams = ["http://127.0.0.1:$UP_PORT"], max_body = "10MiB" }
[[site.route]]
path = "/nobuf/"
proxy = { upstreams = ["unix:$UP_SOCK"], max_body = "10MiB", strip_prefix = true, buffer_requests = false, buffer_responses = false }
TOML

cat >"$WORK/post64k.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
sed 's/65536/1048576/' "$WORK/post64k.lua" >"$WORK/post1m.lua"
# the same bodies for h2load (RATE=N, see bench/lib.sh)
head -c 65536 /dev/zero | tr '\0' x >"$WORK/post64k.body"
head -c 1048576 /dev/zero | tr '\0' x >"$WORK/post1m.body"

wait_sock() { # path
    local deadline=$((SECONDS + 10))
    until [ -S "$1" ]; do
        [ $SECONDS -lt $deadline ] || { echo "no socket $1" >&2; return 1; }
        sleep 0.05
    done
}

taskset -c "$CLIENT_CPU" nginx -c "$WORK/upstream.conf" -p "$WORK/up" &
UP_PID=$!
wait_sock "$UP_SOCK"
chmod 666 "$UP_SOCK"

# The port answering must be ours: a server that failed to start (port taken) is fatal.
check_started() { # name
    kill -0 "$SERVER_PID" 2>/dev/null || {
        echo "$1 exited at start:" >&2
        tail -n 5 "$WORK/gatehouse.log" "$WORK/nginx/error.log" >&2 2>/dev/null || true
        exit 1
    }
}
start_gatehouse() {
    taskset -c "$SERVER_CPU" "$GH" serve --config "$WORK/gatehouse.toml" --log-target stderr 2>"$WORK/gatehouse.log" &
    SERVER_PID=$!
    wait_port "$GH_PORT"
    sleep 0.2
    check_started gatehouse
}
start_nginx() {
    taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK/nginx" &
    SERVER_PID=$!
    wait_port "$NGX_PORT"
    sleep 0.2
    check_started nginx
}
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || echo "server $SERVER_PID had already exited" >&2
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# name | path | extra wrk args
SCENARIOS=(
    "GET, 20 B response|/small|"
    "GET, 20 B response, unbuffered|/nobuf/small|"
    "GET, TCP upstream, 20 B response|/tcp/small|"
    "POST 64 KiB body, 20 B response|/upload|-s $WORK/post64k.lua"
    "POST 64 KiB body, unbuffered|/nobuf/upload|-s $WORK/post64k.lua"
    "POST 1 MiB body (to disk), 20 B response|/upload|-s $WORK/post1m.lua"
    "POST 1 MiB body, unbuffered|/nobuf/upload|-s $WORK/post1m.lua"
    "GET, 1 MiB response|/big|"
    "GET, 1 MiB response, unbuffered|/nobuf/big|"
)

# BENCH_ONLY=REGEX: only the scenarios whose name matches.
if [ -n "${BENCH_ONLY:-}" ]; then
    mapfile -t SCENARIOS < <(printf '%s\n' "${SCENARIOS[@]}" | grep -E -- "^[^|]*($BENCH_ONLY)")
fi

declare -A R
FAIL=0
for s in "${SCENARIOS[@]}"; do
    IFS='|' read -r name path extra <<<"$s"
    for rep in $(seq "$BENCH_REPS"); do
        for server in gatehouse nginx; do
            if [ $server = gatehouse ]; then start_gatehouse; port=$GH_PORT; else start_nginx; port=$NGX_PORT; fi
            R[$server,idle]+="$(rss_kib "$SERVER_PID") "
            read -r u0 s0 < <(cpu_ticks "$SERVER_PID")
            # shellcheck disable=SC2086
            read -r rps p50 p99 err non2xx n < <(run_wrk "http://127.0.0.1:$port$path" "$CONNS" $extra)
            read -r u1 s1 < <(cpu_ticks "$SERVER_PID")
            R[$name,$server,peak]+="$(peak_rss_kib "$SERVER_PID") "
            stop_server
            # Proxy CPU per request: unlike req/s, not skewed by other load on the machine.
            user=$(per_req $((u1 - u0)) "$n")
            sys=$(per_req $((s1 - s0)) "$n")
            us=$(per_req $((u1 - u0 + s1 - s0)) "$n")
            if [ "$err" != 0 ] || [ "${non2xx:-0}" != 0 ]; then
                echo "$server / $name: $err socket errors, ${non2xx:-0} non-2xx" >&2
                tail -n 3 "$WORK/nginx/error.log" "$WORK/up/error.log" >&2 2>/dev/null || true
                FAIL=1
            fi
            R[$name,$server,rps]+="$rps "
            R[$name,$server,p50]+="$p50 "
            R[$name,$server,p99]+="$p99 "
            R[$name,$server,us]+="$us "
            R[$name,$server,user]+="$user "
            R[$name,$server,sys]+="$sys "
            echo "rep $rep $server $name: $rps req/s, p99 $p99 ms, $us µs CPU/request ($user user + $sys sys)" >&2
        done
    done
done

med() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
echo
echo "| scenario | gatehouse req/s | nginx req/s | ratio | gatehouse p50 / p99 ms | nginx p50 / p99 ms | gatehouse CPU µs/req (user + sys) | nginx CPU µs/req (user + sys) | peak RSS KiB, gatehouse / nginx |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for s in "${SCENARIOS[@]}"; do
    IFS='|' read -r name _ _ <<<"$s"
    g=$(med "$name,gatehouse,rps")
    n=$(med "$name,nginx,rps")
    ratio=$(awk -v g="$g" -v n="$n" 'BEGIN { printf "%.2f", (n > 0) ? g / n : 0 }')
    printf "| %s | %.0f | %.0f | %s× | %.2f / %.2f | %.2f / %.2f | %.1f (%.1f + %.1f) | %.1f (%.1f + %.1f) | %.0f / %.0f |\n" "$name" "$g" "$n" "$ratio" \
        "$(med "$name,gatehouse,p50")" "$(med "$name,gatehouse,p99")" \
        "$(med "$name,nginx,p50")" "$(med "$name,nginx,p99")" \
        "$(med "$name,gatehouse,us")" "$(med "$name,gatehouse,user")" "$(med "$name,gatehouse,sys")" \
        "$(med "$name,nginx,us")" "$(med "$name,nginx,user")" "$(med "$name,nginx,sys")" \
        "$(med "$name,gatehouse,peak")" "$(med "$name,nginx,peak")"
done
printf "| idle RSS (KiB, nginx = master + worker) | %.0f | %.0f | | | | | | |\n" "$(med gatehouse,idle)" "$(med nginx,idle)"
echo
echo "$BENCH_REPS alternating runs of $BENCH_DURATION each, $CONNS connections, medians;${RATE:+ h2load offering $RATE req/s instead of wrk;}" \
    "proxy on CPU $SERVER_CPU, wrk + upstream nginx on CPU $CLIENT_CPU; $(nginx -v 2>&1 | sed 's/.*: //'), $("$GH" --version)"
exit $FAIL
