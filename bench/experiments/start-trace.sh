#!/usr/bin/env bash
# Where one on-demand start of the packaged service goes (issue 23): boots the e2e machine,
# installs the .deb and, for each of $RUNS starts, traces the guest's PID 1 from the host
# (strace -ttt -T -p): when it forks the service, how long its write of the child into the
# unit's cgroup.procs takes, and when READY=1 arrives; with curl's time to the first byte.
# An experiment, not a benchmark: strace slows PID 1, so compare rows of one run only.
#
# Usage (root): bench/experiments/start-trace.sh [path/to/gatehouse.deb]
# Environment: RUNS (3), DROPIN ("\n"-separated [Service] lines for a drop-in).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "needs root (systemd-nspawn)" >&2; exit 1; }
command -v strace >/dev/null || { apt-get update -q >/dev/null; apt-get install -y -q strace >/dev/null; }
export GATEHOUSE_E2E_MACHINE=${GATEHOUSE_E2E_MACHINE:-gatehouse-trace}
export GATEHOUSE_E2E_WORK=${GATEHOUSE_E2E_WORK:-/var/tmp/gatehouse-trace}
. tests/e2e/lib/machine.sh
. bench/guest.sh
DEB=$(guest_deb_arg "${1:-}")
guest_boot
guest_install_deb "$DEB"
if [ -n "${DROPIN:-}" ]; then
    G mkdir -p /etc/systemd/system/gatehouse.service.d
    printf '[Service]\n%b\n' "$DROPIN" | G sh -c 'cat >/etc/systemd/system/gatehouse.service.d/variant.conf'
    G systemctl daemon-reload
fi
G curl -s -o /dev/null http://127.0.0.1/ # a first start: page cache, the dynamic user
TRACE=$E2E_WORK/pid1.trace
for _ in $(seq "${RUNS:-3}"); do
    G systemctl stop gatehouse.service 2>/dev/null
    G systemctl reset-failed gatehouse.service 2>/dev/null || true
    strace -q -p "$(leader_pid)" -ttt -T -o "$TRACE" &
    tracer=$!
    sleep 0.5
    ttfb=$(G curl -sS -o /dev/null -m 10 -w '%{time_starttransfer}' http://127.0.0.1/)
    sleep 0.3
    kill "$tracer"
    wait "$tracer" 2>/dev/null || true
    # The service's clone, PID 1's write of its pid into cgroup.procs (none when systemd
    # clones straight into the cgroup), READY=1.
    awk -v ttfb="$ttfb" '
        /clone3?\(/ && !fork { fork = $1 }
        fork && !cg && /write\([0-9]+, "[0-9]+\\n", [0-9]+\)/ { cg = $1; took = substr($NF, 2) + 0 }
        /READY=1/ && !ready { ready = $1 }
        END {
            move = cg ? sprintf("fork -> cgroup.procs write %.1f ms, the write took %.1f ms", (cg - fork) * 1000, took * 1000) \
                      : "no write to cgroup.procs"
            printf "curl %.1f ms | %s | fork -> READY=1 %.1f ms\n", ttfb * 1000, move, (ready - fork) * 1000
        }' "$TRACE"
done
echo "guest: $(G systemctl --version | head -1); host cgroup2: $(awk '$3 == "cgroup2" {print $2, $4}' /proc/mounts | head -1)"
