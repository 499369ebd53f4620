#!/usr/bin/env bash
# The shipped unit against one drop-in, alternating (issue 23): boots the e2e machine,
# installs the .deb, runs $PRE in the guest, then $ROUNDS times measures $RUNS on-demand
# starts (`bench/cold-start-deployed.sh`'s method) of the shipped unit and of the unit with
# $DROPIN, and prints the median, best and worst of each row, and the variant's exposure.
# Alternating rows within one boot tell two variants apart where separate runs cannot.
#
# Usage (root): DROPIN='DynamicUser=no\nUser=gatehouse' PRE='useradd -r -M gatehouse' \
#     bench/experiments/unit-variant-ab.sh [path/to/gatehouse.deb]
# Environment: ROUNDS (4), RUNS (7), DROPIN ("\n"-separated [Service] lines), PRE.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "needs root (systemd-nspawn)" >&2; exit 1; }
[ -n "${DROPIN:-}" ] || { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
export GATEHOUSE_E2E_MACHINE=${GATEHOUSE_E2E_MACHINE:-gatehouse-ab}
export GATEHOUSE_E2E_WORK=${GATEHOUSE_E2E_WORK:-/var/tmp/gatehouse-ab}
. tests/e2e/lib/machine.sh
. bench/guest.sh
DEB=$(guest_deb_arg "${1:-}")
guest_boot
guest_install_deb "$DEB"
G sh -c "${PRE:-true}"
G mkdir -p /etc/systemd/system/gatehouse.service.d
cold_once() {
    G systemctl stop gatehouse.service 2>/dev/null
    G curl -sS -o /dev/null -m 10 -w '%{http_code} %{time_starttransfer}\n' http://127.0.0.1/
}
for _ in $(seq "${ROUNDS:-4}"); do
    for variant in shipped drop-in; do
        if [ $variant = drop-in ]; then
            printf '[Service]\n%b\n' "$DROPIN" | G sh -c 'cat >/etc/systemd/system/gatehouse.service.d/variant.conf'
        else
            G rm -f /etc/systemd/system/gatehouse.service.d/variant.conf
        fi
        G systemctl daemon-reload
        G systemctl reset-failed gatehouse.service gatehouse.socket 2>/dev/null || true
        cold_once >/dev/null
        samples=()
        for _ in $(seq "${RUNS:-7}"); do
            out=$(cold_once)
            case $out in 200\ *) samples+=("${out#200 }") ;; *) echo "$variant: $out" >&2; exit 1 ;; esac
            G systemctl reset-failed gatehouse.service 2>/dev/null || true
        done
        printf '%s\n' "${samples[@]}" | sort -g | awk -v v=$variant '{a[NR] = $1 * 1000}
            END {printf "%-8s median %.0f ms, best %.0f, worst %.0f\n", v, a[int((NR + 1) / 2)], a[1], a[NR]}'
    done
done
(G systemd-analyze security gatehouse.service 2>/dev/null || true) | grep -i 'overall exposure'
