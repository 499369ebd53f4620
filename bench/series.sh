#!/usr/bin/env bash
# The issue-23 series in one go, for a quiet machine: bench/static.sh and bench/proxy.sh at
# 64 and at 10 connections, socket-activated cold start, and the packaged service as
# deployed (bench/deployed.sh, bench/cold-start-deployed.sh). Each script's output goes to
# OUTDIR/NAME.txt; OUTDIR/progress.txt has the times and the load. Every step is bounded.
# Usage (root): bench/series.sh path/to/gatehouse path/to/gatehouse.deb OUTDIR
set -u
cd "$(dirname "$0")/.."
[ $# = 3 ] || { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
BIN=$1 DEB=$2 OUT=$3
mkdir -p "$OUT"
log() { echo "$(date -u +%H:%M:%S) $* (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/progress.txt"; }
log start
for c in 64 10; do
    log "static CONNS=$c"
    CONNS=$c BENCH_REPS=3 BENCH_DURATION=5s timeout 900 bench/static.sh "$BIN" >"$OUT/static-$c.txt" 2>&1
    log "proxy CONNS=$c"
    CONNS=$c BENCH_REPS=3 BENCH_DURATION=5s timeout 1200 bench/proxy.sh "$BIN" >"$OUT/proxy-$c.txt" 2>&1
done
log cold-start
timeout 300 bench/cold-start.sh "$BIN" 20 >"$OUT/cold-start.txt" 2>&1
log deployed
BENCH_REPS=3 BENCH_DURATION=5s timeout 1500 bench/deployed.sh "$DEB" >"$OUT/deployed.txt" 2>&1
log cold-start-deployed
ONLY='mount namespace|seccomp|neither' RUNS=9 timeout 900 \
    bench/cold-start-deployed.sh "$DEB" >"$OUT/cold-start-deployed.txt" 2>&1
log done
