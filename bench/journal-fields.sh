#!/usr/bin/env bash
# What each field of an access-log journal entry costs journald (issue 23). In the e2e machine
# (tests/e2e/lib/machine.sh: Debian with systemd as PID 1 in systemd-nspawn), a small sender
# (bench/journal-send.c, built statically on the host) writes COUNT native-protocol datagrams
# to /run/systemd/journal/socket as gatehouse does (64 per sendmmsg, blocking: as fast as
# journald takes them), each one variant of gatehouse's access entry (crates/kit/src/log/access.rs).
#
# Contexts: `unit`, the sender started by `systemd-run` as a service with gatehouse.service's
# LogRateLimitIntervalSec=1s / LogRateLimitBurst=1000000 (journald attaches the unit's
# metadata, as for gatehouse); `bare`, the sender entered from the host with nsenter, in no
# unit of the guest (journald adds only the process's own fields). Variants (FIELDS of
# journal-send): all (gatehouse's entry today), all but some, down to MESSAGE alone; profile
# `real` (varied paths, clients, durations; a third proxied) or `wrk` (bench/deployed.sh's
# static row: one path, one client). journald configs: `fwd`, Debian's as shipped
# (ForwardToSyslog=yes, the compile-time default: journald hands every entry with a MESSAGE
# to /run/systemd/journal/syslog even when no syslog daemon listens, as on a default
# Debian 12); `nofwd`, a journald.conf.d drop-in with ForwardToSyslog=no; `notice`, one with
# MaxLevelSyslog=notice.
#
# Per run: journald's CPU per entry (utime + stime from /proc/PID/stat, journald pinned to
# $SERVER_CPU, read once it has drained the socket), entries/s (the sender's rate, which
# blocking sends hold to journald's), and the count of the sender's entries in the journal
# (_PID=) against those sent; journald's "Suppressed" lines are counted over the whole run.
# The journal is rotated and its archives vacuumed before each run, so every run starts on a
# fresh file. $BENCH_REPS repetitions, the order reversed every other one; medians.
#
# Usage (root): bench/journal-fields.sh
# Environment: JF_COUNT (entries per run, 50000), JF_MAX_SECONDS (per run, 30), JF_RUNS
# (space-separated CONFIG/CONTEXT:FIELDS:PROFILE, default below), BENCH_REPS (3), SERVER_CPU (0,
# journald), CLIENT_CPU (1, the sender); GATEHOUSE_E2E_MACHINE / GATEHOUSE_E2E_WORK (defaults
# gatehouse-jf and /var/tmp/gatehouse-jf), GATEHOUSE_E2E_SUITE (the host's Debian release).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (systemd-nspawn)" >&2; exit 1; }
case ${1:-} in -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
JF_COUNT=${JF_COUNT:-50000}
JF_MAX_SECONDS=${JF_MAX_SECONDS:-30}
ALL_FIELDS="PRIORITY SYSLOG_IDENTIFIER TARGET MESSAGE HTTP_METHOD HTTP_PATH HTTP_STATUS UPSTREAM HTTP_HOST HTTP_DURATION_US REMOTE_ADDR"
default_runs() {
    local f
    echo "fwd/unit:all:real fwd/unit:all:wrk fwd/unit:all-VIA:real"
    echo "fwd/unit:all-PRIORITY-SYSLOG_IDENTIFIER-TARGET:real fwd/unit:MESSAGE,HTTP_STATUS:real fwd/unit:MESSAGE:real"
    for f in $ALL_FIELDS; do echo "fwd/unit:all-$f:real"; done
    echo "fwd/bare:all:real fwd/bare:all-PRIORITY-SYSLOG_IDENTIFIER-TARGET:real"
    echo "fwd/bare:MESSAGE,HTTP_STATUS:real fwd/bare:MESSAGE:real"
    echo "nofwd/unit:all:real nofwd/unit:all:wrk nofwd/unit:all-PRIORITY-SYSLOG_IDENTIFIER-TARGET:real"
    echo "nofwd/unit:MESSAGE,HTTP_STATUS:real nofwd/unit:MESSAGE:real"
    for f in $ALL_FIELDS; do echo "nofwd/unit:all-$f:real"; done
}
read -r -a RUNS <<<"$(echo ${JF_RUNS:-$(default_runs)})"
export GATEHOUSE_E2E_MACHINE=${GATEHOUSE_E2E_MACHINE:-gatehouse-jf}
export GATEHOUSE_E2E_WORK=${GATEHOUSE_E2E_WORK:-/var/tmp/gatehouse-jf}
. /etc/os-release
export GATEHOUSE_E2E_SUITE=${GATEHOUSE_E2E_SUITE:-$VERSION_CODENAME}
. bench/lib.sh
. tests/e2e/lib/machine.sh
. bench/guest.sh
command -v gcc >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || {
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev >/dev/null
}
guest_boot
gcc -O2 -static -Wall -o "$E2E_WORK/journal-send" bench/journal-send.c
copy_in "$E2E_WORK/journal-send" /usr/local/bin

journald_pid() { G systemctl show -p MainPID --value systemd-journald.service; }
# journald as Debian ships it (fwd: ForwardToSyslog=yes, its compile-time default, though
# no syslog daemon listens), with ForwardToSyslog=no (nofwd), or with MaxLevelSyslog=notice
# (notice: info entries, the access log's, are not forwarded); pinned to $SERVER_CPU.
# zz-: drop-ins apply in file-name order, and Debian 13 turns forwarding on in syslog.conf.
journald_config() { # fwd|nofwd|notice
    G mkdir -p /etc/systemd/journald.conf.d
    case $1 in
        fwd) G rm -f /etc/systemd/journald.conf.d/zz-bench.conf ;;
        nofwd) printf '[Journal]\nForwardToSyslog=no\n' | G sh -c 'cat >/etc/systemd/journald.conf.d/zz-bench.conf' ;;
        notice) printf '[Journal]\nMaxLevelSyslog=notice\n' | G sh -c 'cat >/etc/systemd/journald.conf.d/zz-bench.conf' ;;
        *) echo "unknown journald config $1" >&2; exit 2 ;;
    esac
    G systemctl restart systemd-journald.service
    G taskset -pc "$SERVER_CPU" "$(journald_pid)" >/dev/null
}
storage=volatile
G test -d /var/log/journal && storage=persistent
suppressed() { G journalctl -q -u systemd-journald -o cat | grep -c Suppressed || true; }
suppressed_before=$(suppressed)

# journald's ticks once they stop moving (it has drained the socket), within 15 s.
settled_ticks() { # pid
    local t prev=-1 deadline=$((SECONDS + 15))
    while t=$(guest_ticks "$1"); [ "$t" != "$prev" ] && [ $SECONDS -lt $deadline ]; do
        prev=$t
        sleep 0.3
    done
    echo "$t"
}

# One run: prints "sent seconds bytes ticks logged stored_fields".
run_one() { # context fields profile tag
    local jpid j0 j1 out pid sent secs bytes logged stored
    G journalctl -q --rotate --vacuum-size=1 >/dev/null 2>&1
    jpid=$(journald_pid)
    j0=$(settled_ticks "$jpid")
    local send=(/usr/local/bin/journal-send "$2" "$3" "$JF_COUNT" "$JF_MAX_SECONDS")
    case $1 in
        unit) out=$(G systemd-run -q --wait --pipe --unit="jf-$4" -p CPUAffinity="$CLIENT_CPU" \
            -p LogRateLimitIntervalSec=1s -p LogRateLimitBurst=1000000 \
            -p RuntimeMaxSec=$((JF_MAX_SECONDS + 30)) "${send[@]}") ;;
        bare) out=$(G timeout $((JF_MAX_SECONDS + 30)) taskset -c "$CLIENT_CPU" "${send[@]}") ;;
    esac
    j1=$(settled_ticks "$jpid")
    read -r pid sent secs bytes <<<"$out"
    logged=$(G journalctl -q "_PID=$pid" -o json --output-fields=_PID | wc -l)
    stored=$(G journalctl -q "_PID=$pid" -n 1 -o export | grep -v '^__' | grep -c '^[A-Z_][A-Z0-9_]*=' || true)
    echo "$sent $secs $bytes $((j1 - j0)) $logged $stored"
}

declare -A R
order=("${RUNS[@]}")
config=
for rep in $(seq "$BENCH_REPS"); do
    for run in "${order[@]}"; do
        IFS=: read -r ctx fields profile <<<"${run#*/}"
        [ "${run%%/*}" = "$config" ] || { config=${run%%/*}; journald_config "$config"; }
        tag=$(printf '%s-%s-%s-%s-%s' "$config" "$ctx" "$fields" "$profile" "$rep" | tr ',_' '.-' | tr 'A-Z' 'a-z')
        read -r sent secs bytes ticks logged stored < <(run_one "$ctx" "$fields" "$profile" "$tag")
        us=$(per_req "$ticks" "$sent")
        rate=$(awk -v n="$sent" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0) ? n / s : 0 }')
        R[$run,us]+="$us " R[$run,rate]+="$rate " R[$run,logged]+="$logged/$sent "
        R[$run,bytes]=$((bytes / sent)) R[$run,stored]=$stored
        echo "rep $rep $run: $sent sent in ${secs}s ($rate/s), journald $us µs/entry, logged $logged, $stored fields stored" >&2
    done
    # alternate the order: drift over the run (other jobs, journal growth) cancels out
    mapfile -t order < <(printf '%s\n' "${order[@]}" | tac)
done
suppressed=$(( $(suppressed) - suppressed_before ))

med() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
range() { tr ' ' '\n' <<<"${R[$1]}" | grep . | sort -g | sed -n '1p;$p' | paste -sd- ; }
logged() { # run -> "complete (logged of sent)" or LOST
    local pair l=0 n=0 ok=1
    for pair in ${R[$1,logged]}; do
        l=$((l + ${pair%/*})) n=$((n + ${pair#*/}))
        [ "${pair%/*}" = "${pair#*/}" ] || ok=0
    done
    if [ $ok = 1 ]; then echo "all ($l of $l)"; else echo "**LOST** ($l of $n)"; fi
}
echo
echo "| journald | context | fields sent | profile | bytes/entry | fields stored | journald µs/entry (median, range) | entries/s | in journal |"
echo "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"
for run in "${RUNS[@]}"; do
    IFS=: read -r ctx fields profile <<<"${run#*/}"
    printf '| %s | %s | %s | %s | %s | %s | %s (%s) | %.0f | %s |\n' "${run%%/*}" "$ctx" "${fields//,/, }" "$profile" \
        "${R[$run,bytes]}" "${R[$run,stored]}" "$(med "$run,us")" "$(range "$run,us")" \
        "$(med "$run,rate")" "$(logged "$run")"
done
echo
echo "guest: $(G systemctl --version | head -1), journal $storage, kernel $(uname -r); journald on CPU $SERVER_CPU," \
    "sender on CPU $CLIENT_CPU; $JF_COUNT entries per run, medians of $BENCH_REPS runs in alternating order;" \
    "journald reported $suppressed \"Suppressed\" lines during the runs"
