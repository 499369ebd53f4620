#!/usr/bin/env bash
# On-demand start as deployed (issue 23): what each of the unit's sandboxing options adds to
# the first request after the service stopped (an idle exit costs the same).
#
# Boots the e2e machine (Debian with systemd as PID 1 in systemd-nspawn), installs the .deb,
# and for the shipped unit and for each variant (a drop-in that turns options off) measures
# `curl -w %{time_starttransfer}` of `GET /` right after `systemctl stop gatehouse.service`:
# median and worst of $RUNS, and `systemd-analyze security`'s exposure of that variant.
# The shipped unit is measured again at the end: the spread between its two rows is the
# noise floor. For reference, "socket-activate" is the same binary and config started by
# systemd-socket-activate (no unit, no sandbox) inside the same machine.
#
# Usage (root): bench/cold-start-deployed.sh [path/to/gatehouse.deb]   (default: newest in target/debian)
# Environment: RUNS (9), ONLY (an extended regex: only the variants whose name matches, and
# the shipped unit), GATEHOUSE_E2E_SUITE (bookworm), GATEHOUSE_E2E_MACHINE / _WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (systemd-nspawn)" >&2; exit 1; }
case ${1:-} in -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
RUNS=${RUNS:-9}
export GATEHOUSE_E2E_MACHINE=${GATEHOUSE_E2E_MACHINE:-gatehouse-cold}
export GATEHOUSE_E2E_WORK=${GATEHOUSE_E2E_WORK:-/var/tmp/gatehouse-cold}
. tests/e2e/lib/machine.sh
. bench/guest.sh
DEB=$(guest_deb_arg "${1:-}")
guest_boot
guest_install_deb "$DEB"

NO_MOUNTS='DynamicUser=no\nProtectSystem=no\nProtectHome=no\nPrivateTmp=no\nPrivateDevices=no\nPrivateUsers=no\nPrivateIPC=no\nPrivateMounts=no\nProtectHostname=no\nProtectClock=no\nProtectKernelTunables=no\nProtectKernelModules=no\nProtectKernelLogs=no\nProtectControlGroups=no\nProtectProc=default\nProcSubset=all\nReadOnlyPaths=\nStateDirectory=\nLogsDirectory='
NO_SECCOMP='SystemCallFilter=\nSystemCallArchitectures=\nMemoryDenyWriteExecute=no\nRestrictNamespaces=no\nRestrictRealtime=no\nRestrictSUIDSGID=no\nRestrictAddressFamilies=\nLockPersonality=no\nNoNewPrivileges=no'
# name | drop-in [Service] lines ("\n"-separated)
VARIANTS=(
    "shipped|"
    "PrivateUsers=no|PrivateUsers=no"
    "PrivateTmp=no|PrivateTmp=no"
    "PrivateDevices=no|PrivateDevices=no\nDevicePolicy=auto"
    "ProtectHome=read-only|ProtectHome=read-only"
    "ProtectSystem=full|ProtectSystem=full"
    "PrivateIPC=no, PrivateMounts=no|PrivateIPC=no\nPrivateMounts=no"
    "ProtectProc=default, ProcSubset=all|ProtectProc=default\nProcSubset=all"
    "ProtectKernel*=no, ProtectControlGroups=no|ProtectKernelTunables=no\nProtectKernelModules=no\nProtectKernelLogs=no\nProtectControlGroups=no"
    "ProtectKernelTunables=no|ProtectKernelTunables=no"
    "ProtectKernelModules=no|ProtectKernelModules=no"
    "ProtectKernelLogs=no|ProtectKernelLogs=no"
    "ProtectControlGroups=no|ProtectControlGroups=no"
    "ProtectKernelTunables=no, ProtectControlGroups=no|ProtectKernelTunables=no\nProtectControlGroups=no"
    "ProtectHostname=no, ProtectClock=no|ProtectHostname=no\nProtectClock=no"
    "no ReadOnlyPaths=, LogsDirectory=, StateDirectory=|ReadOnlyPaths=\nLogsDirectory=\nStateDirectory="
    "SystemCallFilter= (none)|SystemCallFilter=\nMemoryDenyWriteExecute=no"
    # Groups: no single option stands out, so what do the mount namespace and the seccomp
    # filters cost as a whole? Without a mount namespace DynamicUser= goes too (it implies
    # one): those rows run as root.
    "no mount namespace (every file-system option off, DynamicUser=no)|$NO_MOUNTS"
    "no seccomp filters (SystemCallFilter=, Restrict*=, LockPersonality=, ...)|$NO_SECCOMP"
    "neither (no sandbox at all)|$NO_MOUNTS\n$NO_SECCOMP"
    "shipped (again)|"
)

cold_once() {
    G systemctl stop gatehouse.service 2>/dev/null # (its warning: the socket can start it again)
    G curl -sS -o /dev/null -m 10 -w '%{http_code} %{time_starttransfer}\n' http://127.0.0.1/
}
stats() { # seconds... on stdin -> "median worst" in ms
    sort -g | awk '{a[NR]=$1*1000} END {printf "%.0f %.0f\n", a[int((NR+1)/2)], a[NR]}'
}

G mkdir -p /etc/systemd/system/gatehouse.service.d
echo "| unit variant | median ms | worst ms | exposure |"
echo "| --- | ---: | ---: | ---: |"
for v in "${VARIANTS[@]}"; do
    name=${v%%|*} lines=${v#*|}
    [ -z "${ONLY:-}" ] || [ -z "$lines" ] || grep -Eq -- "${ONLY:-}" <<<"$name" || continue
    if [ -n "$lines" ]; then
        printf '[Service]\n%b\n' "$lines" | G sh -c 'cat >/etc/systemd/system/gatehouse.service.d/variant.conf'
    else
        G rm -f /etc/systemd/system/gatehouse.service.d/variant.conf
    fi
    G systemctl daemon-reload
    G systemctl reset-failed gatehouse.service gatehouse.socket 2>/dev/null || true
    cold_once >/dev/null # a first start after the change (page cache, the new namespace setup)
    samples=()
    for _ in $(seq "$RUNS"); do
        out=$(cold_once)
        case $out in 200\ *) samples+=("${out#200 }") ;; *) echo "$name: $out" >&2; exit 1 ;; esac
        # systemd's default start limit is 5 starts per 10 s
        G systemctl reset-failed gatehouse.service 2>/dev/null || true
    done
    # (systemd-analyze security exits non-zero above its threshold: the text still says it)
    exposure=$( (G systemd-analyze security gatehouse.service 2>/dev/null || true) \
        | sed -n 's/.*Overall exposure level for gatehouse.service: \([0-9.]*\).*/\1/p')
    read -r med worst < <(printf '%s\n' "${samples[@]}" | stats)
    echo "| $name | $med | $worst | ${exposure:-?} |"
done
G rm -f /etc/systemd/system/gatehouse.service.d/variant.conf
G systemctl daemon-reload
G systemctl stop gatehouse.socket gatehouse.service

# No unit: the same binary and welcome page under systemd-socket-activate, on another port
# (without the packaged config's admin socket, whose directory is the unit's).
G sh -c 'cat >/root/sa.toml' <<'TOML'
[[listener]]
name = "http"
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
static = { root = "/usr/share/gatehouse/www" }
TOML
samples=()
for _ in $(seq "$RUNS"); do
    G sh -c 'systemd-socket-activate -l 127.0.0.1:8091 --fdname=http /usr/bin/gatehouse serve \
        --config /root/sa.toml --log-target stderr >/dev/null 2>&1 & echo $! >/root/sa.pid'
    # listening (state 0A) on port 8091 (1F9B), found without connecting (that would start it)
    for _ in $(seq 100); do G grep -q ':1F9B 00000000:0000 0A' /proc/net/tcp && break; sleep 0.05; done
    out=$(G curl -sS -o /dev/null -m 10 -w '%{http_code} %{time_starttransfer}\n' http://127.0.0.1:8091/)
    G sh -c 'kill $(cat /root/sa.pid)' 2>/dev/null || true
    sleep 0.2
    case $out in 200\ *) samples+=("${out#200 }") ;; *) echo "socket-activate: $out" >&2; exit 1 ;; esac
done
read -r med worst < <(printf '%s\n' "${samples[@]}" | stats)
echo "| socket-activate (no unit, no sandbox) | $med | $worst | |"
echo
echo "guest: $(G systemctl --version | head -1), kernel $(uname -r); $RUNS on-demand starts per row after one warm-up"
# Every start moves the new process into its cgroup: PID1's write to cgroup.procs took
# 9.5-19 ms on this VM, 0.06 ms once the hierarchy had the kernel's `favordynmods` option.
echo "host cgroup2: $(awk '$3 == "cgroup2" {print $2, $4}' /proc/mounts | head -1)"
