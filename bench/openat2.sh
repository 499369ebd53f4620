#!/usr/bin/env bash
# Static files with openat2 and with it blocked (issue 21), against nginx, in one run.
#
# Each gatehouse binary runs twice: as it is, and under bench/no-openat2, a seccomp filter
# that fails openat2 with ENOSYS as systemd's RestrictSUIDSGID= (and DynamicUser=) does, so
# its static files take the path a packaged service takes. Scenarios: a 1 KiB file at the
# root and one four directories deep (the component-by-component walk's cost grows with
# depth). Every server runs for the whole benchmark on CPU $SERVER_CPU; runs alternate per
# repetition; wrk -t1 on CPU $CLIENT_CPU; medians of $BENCH_REPS runs of $BENCH_DURATION.
# The figure that matters is CPU µs per request (/proc/PID/stat over the run): unlike
# req/s it does not move with other load on a shared machine. Both servers write an
# access log.
#
# Usage: bench/openat2.sh [path/to/gatehouse] [LABEL=path/to/other-gatehouse ...]
#   (default: builds target/release/gatehouse; extra binaries, e.g. before=/tmp/old, are
#   measured the same way in the same run)
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-64}
. bench/lib.sh
need_tools

GH=${1:-}
if [ -z "$GH" ]; then
    cargo build --release --locked -q -p gatehouse
    GH=target/release/gatehouse
fi
declare -a LABELS=(gatehouse) BINS=("$GH")
for extra in "${@:2}"; do
    LABELS+=("${extra%%=*}"); BINS+=("${extra#*=}")
done

WORK=$(mktemp -d /tmp/gatehouse-bench-openat2.XXXXXX)
BENCH_LOG=$WORK/wrk.log
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
ROOT=$WORK/www
mkdir -p "$ROOT/a/b/c/d"
head -c 1024 /dev/urandom >"$ROOT/1k.bin"
cp "$ROOT/1k.bin" "$ROOT/a/b/c/d/1k.bin"

# One server per variant, each on its own port: "LABEL" and "LABEL, openat2 blocked" per
# binary, then nginx.
declare -a VARIANTS=() PORTS=() PIDS=()
port=18090
start_variant() { # name port command...
    local name=$1 p=$2; shift 2
    sed "s/^bind = .*/bind = [\"127.0.0.1:$p\"]/" "$WORK/gatehouse.toml" >"$WORK/gatehouse-$p.toml"
    taskset -c "$SERVER_CPU" "$@" serve --config "$WORK/gatehouse-$p.toml" --log-target stderr 2>"$WORK/gatehouse-$p.log" &
    PIDS+=($!); VARIANTS+=("$name"); PORTS+=("$p")
    wait_port "$p"
}
GH=${BINS[0]}
start_static_pair "$ROOT" $port $((port + 1))
VARIANTS+=("${LABELS[0]}" nginx); PORTS+=($port $((port + 1))); PIDS+=("$GH_PID" "$NGX_PID")
port=$((port + 2))
start_variant "${LABELS[0]}, openat2 blocked" $port bench/no-openat2 "${BINS[0]}"
for i in "${!BINS[@]}"; do
    [ "$i" = 0 ] && continue
    port=$((port + 1)); start_variant "${LABELS[$i]}" $port "${BINS[$i]}"
    port=$((port + 1)); start_variant "${LABELS[$i]}, openat2 blocked" $port bench/no-openat2 "${BINS[$i]}"
done
sleep 0.5

# name | path
SCENARIOS=(
    "1 KiB static|/1k.bin"
    "1 KiB static, 4 directories deep|/a/b/c/d/1k.bin"
)

declare -A R
FAIL=0
for s in "${!SCENARIOS[@]}"; do
    IFS='|' read -r name path <<<"${SCENARIOS[$s]}"
    for rep in $(seq "$BENCH_REPS"); do
        for v in "${!VARIANTS[@]}"; do
            read -r u0 s0 < <(cpu_ticks "${PIDS[$v]}")
            read -r rps p50 p99 err non2xx n < <(run_wrk "http://127.0.0.1:${PORTS[$v]}$path" "$CONNS")
            read -r u1 s1 < <(cpu_ticks "${PIDS[$v]}")
            us=$(per_req $((u1 - u0 + s1 - s0)) "$n")
            if [ "$err" != 0 ] || [ "${non2xx:-0}" != 0 ]; then
                echo "ERROR: ${VARIANTS[$v]} / $name: $err socket errors, ${non2xx:-0} non-2xx" >&2
                FAIL=1
            fi
            R[$s,$v,rps]+="$rps "
            R[$s,$v,us]+="$us "
            echo "rep $rep ${VARIANTS[$v]} / $name: $rps req/s, $us µs CPU/request" >&2
        done
    done
done

# Proof that the blocked variant took the fallback: it says so once in its log (binaries
# from before issue 21 do not).
for v in "${!VARIANTS[@]}"; do
    case ${VARIANTS[$v]} in "${LABELS[0]}, openat2 blocked")
        grep -q 'openat2 is not permitted here' "$WORK/gatehouse-${PORTS[$v]}.log" \
            || { echo "ERROR: ${VARIANTS[$v]} did not report openat2 as blocked" >&2; FAIL=1; } ;;
    esac
done

med() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
nginx_index=1
echo
echo "| scenario | server | req/s | CPU µs/request | CPU vs nginx |"
echo "| --- | --- | ---: | ---: | ---: |"
for s in "${!SCENARIOS[@]}"; do
    IFS='|' read -r name _ <<<"${SCENARIOS[$s]}"
    ngx=$(med "$s,$nginx_index,us")
    for v in "${!VARIANTS[@]}"; do
        us=$(med "$s,$v,us")
        printf '| %s | %s | %.0f | %.1f | %.2f× |\n' "$name" "${VARIANTS[$v]}" "$(med "$s,$v,rps")" "$us" \
            "$(awk -v a="$us" -v b="$ngx" 'BEGIN {print (b > 0) ? a / b : 0}')"
    done
done
echo
echo "medians of $BENCH_REPS alternating runs of $BENCH_DURATION, wrk -t1 -c$CONNS on CPU $CLIENT_CPU," \
    "servers on CPU $SERVER_CPU; $(nproc) CPUs, $(uname -r)"
exit $FAIL
