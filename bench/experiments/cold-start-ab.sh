#!/usr/bin/env bash
# Socket-activated cold start, variants alternating (issue 23): each variant is a binary,
# a config and an environment; every round starts each once under systemd-socket-activate
# (bench/cold-start.sh's method) and measures connect → response with curl, and the CPU
# the process used from the connection to the response (all its threads' schedstat run
# time). On this 2-vCPU VM the two track each other: a start is CPU-bound, so less work
# is a faster start. Alternating rows tell variants apart where separate runs cannot.
#
# Usage: bench/experiments/cold-start-ab.sh 'name|binary|extra config lines|ENV=x ...' ...
#   e.g. bench/experiments/cold-start-ab.sh 'shipped|target/release/gatehouse||' \
#            'one-worker|target/release/gatehouse|[server]\nworkers = 1|' \
#            'one-arena|target/release/gatehouse||GLIBC_TUNABLES=glibc.malloc.arena_max=1'
# Environment: ROUNDS (14).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -gt 0 ] || { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
command -v systemd-socket-activate >/dev/null || { apt-get update -q >/dev/null; apt-get install -y -q systemd >/dev/null; }
WORK=$(mktemp -d /tmp/gatehouse-cold-ab.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
head -c 1024 /dev/urandom >"$WORK/1k.bin"
PORT=18097

cpu_ns() { # pid: run time of all its threads so far
    local total=0 run _ f
    for f in /proc/"$1"/task/*/schedstat; do
        read -r run _ <"$f" && total=$((total + run))
    done
    echo $total
}

once() { # binary config env...
    local bin=$1 cfg=$2 sa t c0 c1
    shift 2
    env "$@" systemd-socket-activate -l 127.0.0.1:$PORT --fdname=http "$bin" serve --config "$cfg" \
        --log-target stderr 2>/dev/null &
    sa=$!
    sleep 0.25 # systemd-socket-activate listens (and has not started gatehouse yet)
    c0=$(cpu_ns $sa)
    t=$(curl -s -o /dev/null -w '%{time_total}' --max-time 5 http://127.0.0.1:$PORT/1k.bin)
    c1=$(cpu_ns $sa)
    kill $sa 2>/dev/null
    wait $sa 2>/dev/null || true
    echo "$t $(((c1 - c0) / 1000))"
}

for i in $(seq $#); do
    IFS='|' read -r name bin extra envs <<<"${!i}"
    printf '%b\n' "$extra" >"$WORK/$i.toml"
    cat >>"$WORK/$i.toml" <<TOML
[[listener]]
name = "http"
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
static = { root = "$WORK" }
TOML
done
for _ in $(seq "${ROUNDS:-14}"); do
    for i in $(seq $#); do
        IFS='|' read -r name bin extra envs <<<"${!i}"
        # shellcheck disable=SC2086 # envs is a list of NAME=value words
        echo "$name $(once "$bin" "$WORK/$i.toml" X=1 $envs)"
    done
done | python3 -c '
import statistics, sys
rows = {}
for line in sys.stdin:
    name, t, cpu = line.split()
    rows.setdefault(name, ([], []))
    rows[name][0].append(float(t) * 1000)
    rows[name][1].append(int(cpu) / 1000)
print("| variant | connect → response, median (best–worst) ms | CPU from connect, median ms | runs |")
print("| --- | ---: | ---: | ---: |")
for name, (t, c) in rows.items():
    print(f"| {name} | {statistics.median(t):.2f} ({min(t):.2f}–{max(t):.2f}) | {statistics.median(c):.2f} | {len(t)} |")
'
