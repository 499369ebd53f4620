#!/usr/bin/env bash
# Socket-activated cold start: the first request's connect → response time when the
# process starts on that request's path (systemd-socket-activate execs gatehouse on the
# first connection). Prints median and worst of N runs.
# Usage: bench/cold-start.sh [path/to/gatehouse] [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
GH=${1:-target/release/gatehouse}
RUNS=${2:-20}
command -v systemd-socket-activate >/dev/null || { apt-get update -q >/dev/null; apt-get install -y -q systemd >/dev/null; }
[ -x "$GH" ] || cargo build --release --locked -q -p gatehouse
WORK=$(mktemp -d /tmp/gatehouse-cold.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/www"
head -c 1024 /dev/urandom >"$WORK/www/1k.bin"
cat >"$WORK/g.toml" <<TOML
[[listener]]
name = "http"
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
static = { root = "$WORK/www" }
TOML
PORT=18095
times=()
for _ in $(seq "$RUNS"); do
    systemd-socket-activate -l 127.0.0.1:$PORT --fdname=http "$GH" serve --config "$WORK/g.toml" --log-target stderr 2>/dev/null &
    sa=$!
    # Wait until systemd-socket-activate listens (it has not started gatehouse yet).
    for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.01; done
    # That probe connection itself started gatehouse: restart the pair for a clean run.
    kill "$sa" 2>/dev/null; wait "$sa" 2>/dev/null || true
    systemd-socket-activate -l 127.0.0.1:$PORT --fdname=http "$GH" serve --config "$WORK/g.toml" --log-target stderr 2>/dev/null &
    sa=$!
    sleep 0.2
    t=$(curl -s -o /dev/null -w '%{time_total}' --max-time 5 http://127.0.0.1:$PORT/1k.bin)
    times+=("$t")
    kill "$sa" 2>/dev/null; wait "$sa" 2>/dev/null || true
done
printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1*1000} END {printf "cold start, connect to response: median %.2f ms, worst %.2f ms over %d runs\n", a[int((NR+1)/2)], a[NR], NR}'
