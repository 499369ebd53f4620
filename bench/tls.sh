#!/usr/bin/env bash
# TLS, gatehouse vs nginx, side by side in one run (issue 7). Mirrors bench/static.sh:
# server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; gatehouse and nginx alternate per
# repetition; medians of $BENCH_REPS runs of $BENCH_DURATION each. Same certificate
# (ECDSA P-256, made here with openssl), same 1 KiB file, both write an access log.
# wrk speaks HTTP/1.1 over TLS (OpenSSL client; TLS 1.3 negotiated by both servers).
# Usage: bench/tls.sh [path/to/gatehouse]   (default: builds target/release/gatehouse)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

need_tools
command -v openssl >/dev/null || { echo "openssl (the CLI) is needed to make the test certificate" >&2; exit 1; }
GH=${1:-}
if [ -z "$GH" ]; then
    cargo build --release --locked -q -p gatehouse
    GH=target/release/gatehouse
fi

WORK=$(mktemp -d /tmp/gatehouse-bench.XXXXXX)
BENCH_LOG=$WORK/wrk.log
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
ROOT=$WORK/www
mkdir -p "$ROOT"
head -c 1024 /dev/urandom >"$ROOT/1k.bin"

# One throwaway self-signed certificate for both servers (wrk does not verify).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

GH_PORT=18443
NGX_PORT=18444
cat >"$WORK/gatehouse.toml" <<TOML
[server]
max_connections = 100000
[[listener]]
name = "https"
bind = ["127.0.0.1:$GH_PORT"]
tls = { cert = "$WORK/cert.pem", key = "$WORK/key.pem" }
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
static = { root = "$ROOT" }
TOML
write_nginx_conf <<NGINX
    # Like gatehouse: TLS 1.2 and 1.3 only; otherwise nginx defaults. wrk speaks HTTP/1.1,
    # so h2 is not configured (nginx < 1.25 has no "http2 on;").
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen 127.0.0.1:$NGX_PORT ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        root $ROOT;
    }
NGINX

start_gatehouse() {
    taskset -c "$SERVER_CPU" "$GH" serve --config "$WORK/gatehouse.toml" --log-target stderr 2>"$WORK/gatehouse.log" &
    SERVER_PID=$!
    wait_port $GH_PORT
}
start_nginx() {
    taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK/nginx" &
    SERVER_PID=$!
    wait_port $NGX_PORT
}
stop_server() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; }

# name | path | connections | "close" = a new connection (and full handshake) per request.
# Spelled out below with a space: wrk ignores "-H Connection:close" (it then keeps the
# connection alive), which would silently measure keep-alive twice.
SCENARIOS=(
    "1 KiB static over TLS, keep-alive|/1k.bin|50|"
    "1 KiB static, new TLS connection per request|/1k.bin|50|close"
)

declare -A R
FAIL=0
for rep in $(seq "$BENCH_REPS"); do
    for server in gatehouse nginx; do
        if [ $server = gatehouse ]; then start_gatehouse; port=$GH_PORT; else start_nginx; port=$NGX_PORT; fi
        idle=$(awk '/^VmRSS:/ {print $2}' /proc/$SERVER_PID/status)
        for i in "${!SCENARIOS[@]}"; do
            IFS='|' read -r name path conns mode <<<"${SCENARIOS[$i]}"
            extra=()
            [ "$mode" = close ] && extra=(-H "Connection: close")
            read -r rps p50 p99 err non2xx _ < <(run_wrk "https://localhost:$port$path" "$conns" "${extra[@]}")
            if [ "$err" != 0 ] || [ "$non2xx" != 0 ]; then
                echo "ERROR: $server '$name': $err socket errors, $non2xx non-2xx" >&2
                FAIL=1
            fi
            R[$server,$i,rps]+="$rps "
            R[$server,$i,p50]+="$p50 "
            R[$server,$i,p99]+="$p99 "
        done
        R[$server,rss]+="$(peak_rss_kib "$SERVER_PID") "
        R[$server,idle]+="$idle "
        stop_server
    done
done

med() { tr ' ' '\n' <<<"${R[$1]}" | grep -v '^$' | median; }
echo
echo "| scenario | gatehouse req/s | nginx req/s | ratio | gatehouse p50 / p99 ms | nginx p50 / p99 ms |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for i in "${!SCENARIOS[@]}"; do
    IFS='|' read -r name _ <<<"${SCENARIOS[$i]}"
    g=$(med "gatehouse,$i,rps"); n=$(med "nginx,$i,rps")
    printf '| %s | %.0f | %.0f | %.2f | %.2f / %.2f | %.2f / %.2f |\n' "$name" "$g" "$n" \
        "$(awk -v a="$g" -v b="$n" 'BEGIN {print (b>0)?a/b:0}')" \
        "$(med "gatehouse,$i,p50")" "$(med "gatehouse,$i,p99")" "$(med "nginx,$i,p50")" "$(med "nginx,$i,p99")"
done
printf '| idle RSS (KiB) | %.0f | %.0f | | | |\n' "$(med gatehouse,idle)" "$(med nginx,idle)"
printf '| peak RSS under load (KiB, nginx = master + worker) | %.0f | %.0f | | | |\n' "$(med gatehouse,rss)" "$(med nginx,rss)"
echo
echo "medians of $BENCH_REPS alternating runs of $BENCH_DURATION; server on CPU $SERVER_CPU, wrk -t1 on CPU $CLIENT_CPU; $(nproc) CPUs, $(uname -r); ECDSA P-256 certificate; gatehouse: rustls 0.23 (ring), nginx: $(nginx -v 2>&1 | sed 's/.*: //') with $(openssl version | cut -d' ' -f1-2)"
exit $FAIL
