#!/usr/bin/env bash
# Static files as deployed against the same binary run bare (issue 21), in one machine.
#
# Boots the e2e machine (tests/e2e/lib/machine.sh: Debian with systemd as PID 1 in
# systemd-nspawn), installs each .deb in turn and serves /usr/share/gatehouse/www/index.html
# and a copy of it four directories deep (the walk that replaces openat2 costs a little
# per directory) two ways, alternating: by the packaged gatehouse.service (its hardening as shipped, plus a
# drop-in with CPUAffinity=0 and the access log off), and by the same /usr/bin/gatehouse
# started from a shell outside any unit (taskset -c 0, access log off, the same config on
# another port). The same command loads both: wrk -t1 -c$CONNS from inside the machine (the
# host's wrk copied in) on CPU 1. Prints req/s and the server's CPU µs per request
# (/proc/PID/stat over the run), medians of $BENCH_REPS runs of $BENCH_DURATION.
#
# Usage (root): bench/packaged-static.sh LABEL=path/to/gatehouse.deb [LABEL=other.deb ...]
# Environment: GATEHOUSE_E2E_SUITE (bookworm), GATEHOUSE_E2E_MACHINE / GATEHOUSE_E2E_WORK
# (defaults gatehouse-bench and /var/tmp/gatehouse-bench, so an e2e run may go on beside
# it); UNIT_DROPIN=FILE adds FILE as a further drop-in for gatehouse.service (to measure a
# unit variant), GUEST_SETUP='shell command' runs in the guest first (e.g. to create a user).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (systemd-nspawn)" >&2; exit 1; }
[ $# -ge 1 ] || { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }

CONNS=${CONNS:-64}
export GATEHOUSE_E2E_MACHINE=${GATEHOUSE_E2E_MACHINE:-gatehouse-bench}
export GATEHOUSE_E2E_WORK=${GATEHOUSE_E2E_WORK:-/var/tmp/gatehouse-bench}
. bench/lib.sh
. tests/e2e/lib/machine.sh
. bench/guest.sh
need_tools
guest_boot
BENCH_LOG=$E2E_WORK/wrk.log
: >"$BENCH_LOG"

guest_wrk_install

CONFIG='[[listener]]
name = "http"
bind = ["127.0.0.1:8090"]

[[site]]
hosts = ["*"]

[[site.route]]
path = "/"
static = { root = "/usr/share/gatehouse/www" }'

declare -A R
declare -a ROWS=()
for arg in "$@"; do
    label=${arg%%=*} deb=$(readlink -f "${arg#*=}")
    guest_install_deb "$deb"
    printf '%s\n' "$CONFIG" | G sh -c 'cat >/etc/gatehouse/gatehouse.toml'
    G mkdir -p /etc/systemd/system/gatehouse.service.d
    printf '[Service]\nCPUAffinity=%s\nEnvironment=RUST_LOG=info,gatehouse::access=off\n' "$SERVER_CPU" \
        | G sh -c 'cat >/etc/systemd/system/gatehouse.service.d/bench.conf'
    G rm -f /etc/systemd/system/gatehouse.service.d/variant.conf
    [ -n "${UNIT_DROPIN:-}" ] && copy_in "$UNIT_DROPIN" /root \
        && G cp "/root/$(basename "$UNIT_DROPIN")" /etc/systemd/system/gatehouse.service.d/variant.conf
    [ -n "${GUEST_SETUP:-}" ] && G sh -c "$GUEST_SETUP"
    G systemctl daemon-reload
    G systemctl restart gatehouse.service
    G sh -c 'mkdir -p /usr/share/gatehouse/www/a/b/c/d && cp /usr/share/gatehouse/www/index.html /usr/share/gatehouse/www/a/b/c/d/'
    G curl -sf -o /dev/null http://127.0.0.1/index.html || { echo "$label: the service does not serve" >&2; exit 1; }
    unit_pid=$(G systemctl show -p MainPID --value gatehouse.service)
    bare_pid=$(G sh -c 'RUST_LOG=info,gatehouse::access=off taskset -c "$1" /usr/bin/gatehouse serve \
        --config /etc/gatehouse/gatehouse.toml --log-target stderr >/root/bare.log 2>&1 & echo $!' sh "$SERVER_CPU")
    until G curl -sf -o /dev/null http://127.0.0.1:8090/index.html; do sleep 0.1; done
    for url in /index.html /a/b/c/d/index.html; do
        for rep in $(seq "$BENCH_REPS"); do
            for how in packaged bare; do
                if [ $how = packaged ]; then pid=$unit_pid port=80; else pid=$bare_pid port=8090; fi
                t0=$(guest_ticks "$pid")
                read -r rps n _ < <(guest_wrk "$CONNS" "http://127.0.0.1:$port$url")
                t1=$(guest_ticks "$pid")
                [ "$rps" != ERROR ] && [ -n "$n" ] || { echo "$label $how: wrk failed (log: $BENCH_LOG)" >&2; exit 1; }
                us=$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$HZ" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
                R[$label,$url,$how,rps]+="$rps "
                R[$label,$url,$how,us]+="$us "
                echo "rep $rep $label $url $how: $rps req/s, $us µs CPU/request" >&2
            done
        done
    done
    # grep -c, not -q: with pipefail an early exit of grep would fail the pipeline.
    if [ "$(G journalctl -u gatehouse.service -o cat --no-pager | grep -c 'openat2 is not permitted')" != 0 ]; then
        path="openat walk"
    else
        path="not reported (openat2, or a build before issue 21)"
    fi
    G bash -c "kill $bare_pid"
    ROWS+=("$label|/index.html|$path" "$label|/a/b/c/d/index.html|$path")
done

med() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
echo
echo "| build | URL | packaged req/s | bare req/s | packaged CPU µs/req | bare CPU µs/req | packaged / bare CPU | packaged service resolves paths by |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"
for row in "${ROWS[@]}"; do
    IFS='|' read -r label url path <<<"$row"
    p=$(med "$label,$url,packaged,us") b=$(med "$label,$url,bare,us")
    printf '| %s | %s | %.0f | %.0f | %.1f | %.1f | %.2f× | %s |\n' "$label" "$url" "$(med "$label,$url,packaged,rps")" \
        "$(med "$label,$url,bare,rps")" "$p" "$b" "$(awk -v p="$p" -v b="$b" 'BEGIN {print p / b}')" "$path"
done
echo
echo "guest: $(G systemctl --version | head -1), kernel $(uname -r); wrk -t1 -c$CONNS inside the guest on CPU $CLIENT_CPU," \
    "server on CPU $SERVER_CPU, access log off; medians of $BENCH_REPS alternating runs of $BENCH_DURATION${UNIT_DROPIN:+; unit drop-in $UNIT_DROPIN}"
