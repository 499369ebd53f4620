#!/usr/bin/env bash
# Static files, gatehouse vs nginx, side by side in one run (issue 3 / issue 6).
# Server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; gatehouse and nginx alternate per
# repetition; medians of $BENCH_REPS runs of $BENCH_DURATION each. Both write an access log.
# Usage: bench/static.sh [path/to/gatehouse]   (default: builds target/release/gatehouse)
# CONNS=N runs every scenario at N connections instead of its own count (issue 23 asks for
# every row at 10 and at 64: run it once with each). RATE=N offers N requests/s with h2load
# instead of wrk's closed loop, so that p50 and p99 compare at equal load (bench/lib.sh);
# it skips the new-connection row, which h2load cannot pace.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

need_tools
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
head -c $((1024 * 1024)) /dev/urandom >"$ROOT/1m.bin"

GH_PORT=18081
NGX_PORT=18082
# Both servers run for the whole benchmark, pinned to the same CPU; only the one under
# load uses it. Runs alternate per scenario and repetition (gatehouse, nginx, gatehouse,
# ...), so a burst of background load hits both alike.
start_static_pair "$ROOT" $GH_PORT $NGX_PORT
declare -A R
R[gatehouse,idle]=$(rss_kib $GH_PID)
R[nginx,idle]=$(rss_kib $NGX_PID)

# name | path | connections | extra wrk args
SCENARIOS=(
    "1 KiB static, keep-alive|/1k.bin|50|"
    "1 MiB static, keep-alive|/1m.bin|10|"
    "404, keep-alive|/missing|50|"
    "1 KiB static, new connection per request|/1k.bin|50|close"
)
# h2load cannot pace a new connection per request.
[ -z "${RATE:-}" ] || mapfile -t SCENARIOS < <(printf '%s\n' "${SCENARIOS[@]}" | grep -v '|close$')

FAIL=0
for i in "${!SCENARIOS[@]}"; do
    IFS='|' read -r name path conns extra <<<"${SCENARIOS[$i]}"
    conns=${CONNS:-$conns}
    for rep in $(seq "$BENCH_REPS"); do
        for server in gatehouse nginx; do
            if [ $server = gatehouse ]; then port=$GH_PORT; else port=$NGX_PORT; fi
            # wrk honours "Connection: close" only with the space after the colon.
            if [ "$extra" = close ]; then
                read -r rps p50 p99 err non2xx _ < <(run_wrk "http://127.0.0.1:$port$path" "$conns" -H "Connection: close")
            else
                read -r rps p50 p99 err non2xx _ < <(run_wrk "http://127.0.0.1:$port$path" "$conns")
            fi
            if [ "$err" != 0 ] || { [ "$path" != /missing ] && [ "$non2xx" != 0 ]; }; then
                echo "ERROR: $server '$name': $err socket errors, $non2xx non-2xx" >&2
                FAIL=1
            fi
            R[$server,$i,rps]+="$rps "
            R[$server,$i,p50]+="$p50 "
            R[$server,$i,p99]+="$p99 "
        done
    done
done
R[gatehouse,rss]=$(peak_rss_kib $GH_PID)
R[nginx,rss]=$(peak_rss_kib $NGX_PID)

med() { tr ' ' '\n' <<<"${R[$1]}" | grep -v '^$' | median; }
echo
echo "| scenario | gatehouse req/s | nginx req/s | ratio | gatehouse p50 / p99 ms | nginx p50 / p99 ms |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for i in "${!SCENARIOS[@]}"; do
    IFS='|' read -r name _ conns _ <<<"${SCENARIOS[$i]}"
    name="$name, ${CONNS:-$conns} conns"
    g=$(med "gatehouse,$i,rps"); n=$(med "nginx,$i,rps")
    printf '| %s | %.0f | %.0f | %.2f | %.2f / %.2f | %.2f / %.2f |\n' "$name" "$g" "$n" \
        "$(awk -v a="$g" -v b="$n" 'BEGIN {print (b>0)?a/b:0}')" \
        "$(med "gatehouse,$i,p50")" "$(med "gatehouse,$i,p99")" "$(med "nginx,$i,p50")" "$(med "nginx,$i,p99")"
done
printf '| idle RSS (KiB) | %.0f | %.0f | | | |\n' "$(med gatehouse,idle)" "$(med nginx,idle)"
printf '| peak RSS under load (KiB, nginx = master + worker) | %.0f | %.0f | | | |\n' "$(med gatehouse,rss)" "$(med nginx,rss)"
echo
echo "medians of $BENCH_REPS alternating runs of $BENCH_DURATION; server on CPU $SERVER_CPU, ${RATE:+h2load at $RATE req/s instead of }wrk -t1 on CPU $CLIENT_CPU; $(nproc) CPUs, $(uname -r)"
exit $FAIL
