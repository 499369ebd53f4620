# shellcheck shell=bash
# A throwaway Debian machine with a real systemd as PID 1, booted with systemd-nspawn.
#
# Works on a host whose own PID 1 is not systemd (CI runners, containers): nspawn is
# started detached in a cgroup subtree of its own, the rootfs is an overlay over a cached
# image, and commands run inside through nsenter into the container's PID 1 namespaces.
# Sourced by tests/e2e/run; every function dies (returns non-zero) with a message.

E2E_CACHE=${GATEHOUSE_E2E_CACHE:-/var/cache/gatehouse-e2e}
E2E_WORK=${GATEHOUSE_E2E_WORK:-/var/tmp/gatehouse-e2e}
E2E_SUITE=${GATEHOUSE_E2E_SUITE:-bookworm}
# several runs may share a host (parallel worktrees) if each has its own WORK and MACHINE
E2E_MACHINE=${GATEHOUSE_E2E_MACHINE:-gatehouse-e2e}
# what the guest needs: systemd as init, dbus for systemctl, curl for the client loops,
# man-db because systemd-analyze verify checks that Documentation=man:gatehouse(8) exists,
# lintian (the guest release's own), python3 for the many-connection and WebSocket clients,
# gunicorn and uvicorn for the shipped Python app examples (the guest has no network), and
# procps (priority important, on any real Debian host) for their units' /bin/kill
E2E_GUEST_PKGS=systemd,systemd-sysv,dbus,curl,man-db,lintian,python3,gunicorn,uvicorn,procps
E2E_IMAGE_VERSION=2        # bump to force a rebuild of cached images after a layout change
# One directory per package set: runs of branches with different sets share the host's
# cache without rebuilding (or deleting) each other's image.
E2E_IMAGE=$E2E_CACHE/$E2E_SUITE-$(printf '%s' "$E2E_IMAGE_VERSION $E2E_GUEST_PKGS" | sha256sum | cut -c1-12)
E2E_ROOT=$E2E_WORK/root
E2E_CGROUP=$E2E_MACHINE
GUEST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf 'e2e: %s\n' "$*" >&2; }

host_missing_pkgs() {
    local -a pk=()
    command -v systemd-nspawn >/dev/null || pk+=(systemd-container)
    command -v mmdebstrap >/dev/null || pk+=(mmdebstrap)
    command -v eatmydata >/dev/null || pk+=(eatmydata)
    [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || pk+=(debian-archive-keyring)
    command -v gpgv >/dev/null || pk+=(gpgv)
    command -v nsenter >/dev/null || pk+=(util-linux)
    command -v dpkg-deb >/dev/null || pk+=(dpkg)
    echo "${pk[*]:-}"
}

host_deps() {
    local pk; pk=$(host_missing_pkgs)
    [ -z "$pk" ] && return 0
    log "installing host packages: $pk"
    export DEBIAN_FRONTEND=noninteractive
    mkdir -p "$E2E_WORK"
    # shellcheck disable=SC2086
    { apt-get update -q && apt-get install -y -q --no-install-recommends $pk; } >"$E2E_WORK/apt-host.log" 2>&1 \
        || { tail -20 "$E2E_WORK/apt-host.log" >&2; log "apt-get install $pk failed"; return 1; }
}

host_mirror() {
    # the host's own Debian mirror (the only network we may reach); deb822 first
    if [ -n "${GATEHOUSE_E2E_MIRROR:-}" ]; then echo "$GATEHOUSE_E2E_MIRROR"; return; fi
    local u
    u=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')
    [ -z "$u" ] && u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | sed -E 's/\[[^]]*\]//' | awk '$1=="deb" && $2 !~ /security/ {print $2; exit}')
    [ -n "$u" ] || { log "no Debian mirror in /etc/apt/sources*; set GATEHOUSE_E2E_MIRROR"; return 1; }
    echo "$u"
}

image_key() { echo "v=$E2E_IMAGE_VERSION suite=$E2E_SUITE pkgs=$E2E_GUEST_PKGS mirror=$1"; }

# Builds the base rootfs once; later runs reuse it (about 1 minute saved per run).
image_ensure() {
    local mirror key; mirror=$(host_mirror) || return 1; key=$(image_key "$mirror")
    if [ -f "$E2E_IMAGE/.e2e-image-ok" ] && [ "$(cat "$E2E_IMAGE.key" 2>/dev/null)" = "$key" ]; then
        log "rootfs cached at $E2E_IMAGE"
        return 0
    fi
    mkdir -p "$E2E_CACHE/debs"
    local tmp=$E2E_CACHE/.build.$$ t0=$SECONDS
    rm -rf "$tmp"
    log "building rootfs with mmdebstrap ($E2E_SUITE, $E2E_GUEST_PKGS) from $mirror"
    # eatmydata: no fsync during the bootstrap; sync-in/out keeps downloaded .debs for rebuilds
    if ! mmdebstrap --variant=minbase --include="$E2E_GUEST_PKGS" \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
            --skip=essential/unlink \
            --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
            --setup-hook="sync-in $E2E_CACHE/debs /var/cache/apt/archives/" \
            --customize-hook="sync-out /var/cache/apt/archives $E2E_CACHE/debs" \
            "$E2E_SUITE" "$tmp" "deb $mirror $E2E_SUITE main" >"$E2E_CACHE/mmdebstrap.log" 2>&1; then
        tail -20 "$E2E_CACHE/mmdebstrap.log" >&2; rm -rf "$tmp"
        log "mmdebstrap failed (log: $E2E_CACHE/mmdebstrap.log)"; return 1
    fi
    echo "$E2E_MACHINE" >"$tmp/etc/hostname"
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    # an empty machine-id makes systemd run first-boot logic on every boot
    [ -s "$tmp/etc/machine-id" ] || systemd-machine-id-setup --root="$tmp" >/dev/null 2>&1
    touch "$tmp/.e2e-image-ok"
    rm -rf "$E2E_IMAGE"; mv "$tmp" "$E2E_IMAGE"; echo "$key" >"$E2E_IMAGE.key"
    log "rootfs built in $((SECONDS - t0))s"
}

nspawn_pid() {
    local p; p=$(cat "$E2E_WORK/nspawn.pid" 2>/dev/null) || return 1
    [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = systemd-nspawn ] || return 1
    echo "$p"
}

leader_pid() {   # host pid of the guest's PID 1 (systemd), a child of nspawn
    local p c; p=$(nspawn_pid) || return 1
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do
        [ "$(cat /proc/"$c"/comm 2>/dev/null)" = systemd ] && { echo "$c"; return 0; }
    done
    return 1
}

cgroup_root() {  # where our cgroup subtree lives (unified hierarchy, or the v2 part of hybrid)
    if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then echo /sys/fs/cgroup
    elif [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then echo /sys/fs/cgroup/unified
    fi
}

# Runs CMD inside the guest in all namespaces of its PID 1, with a clean environment.
G() {
    nsenter -t "$E2E_LEADER" -a -- /usr/bin/env -i PATH="$GUEST_PATH" HOME=/root LANG=C.UTF-8 \
        TERM=dumb SYSTEMD_PAGER=cat PAGER=cat SYSTEMD_COLORS=0 DEBIAN_FRONTEND=noninteractive "$@"
}

# copy_in HOSTFILE GUESTDIR: through a tar stream, so it also works for guest tmpfs paths
copy_in() {
    tar -C "$(dirname "$1")" -cf - "$(basename "$1")" | G tar --no-same-owner -C "$2" -xf -
}

machine_boot() {
    machine_stop
    rm -rf "$E2E_WORK/upper" "$E2E_WORK/ovl" "$E2E_WORK/rootcopy"
    mkdir -p "$E2E_WORK/upper" "$E2E_WORK/ovl" "$E2E_ROOT"
    # overlay: every run starts from the pristine cached image. Where overlayfs cannot
    # stack (e.g. /var/tmp itself on overlayfs in a container), use a copy instead.
    if ! mount -t overlay gatehouse-e2e -o "lowerdir=$E2E_IMAGE,upperdir=$E2E_WORK/upper,workdir=$E2E_WORK/ovl" "$E2E_ROOT" 2>/dev/null; then
        log "overlayfs mount failed, copying the rootfs instead"
        cp -a --reflink=auto "$E2E_IMAGE" "$E2E_WORK/rootcopy" && mount --bind "$E2E_WORK/rootcopy" "$E2E_ROOT" \
            || { log "cannot prepare the guest root"; return 1; }
    fi
    local -a args=(-D "$E2E_ROOT" -M "$E2E_MACHINE" --register=no -b --console=read-only --private-network)
    local cg setup='' unified=1
    cg=$(cgroup_root)
    [ -z "$cg" ] && unified=0
    if [ "$(cat /proc/1/comm)" != systemd ] && [ -n "$cg" ]; then
        # no host systemd to ask for a scope: give nspawn its own cgroup subtree
        args+=(--keep-unit)
        mkdir -p "$cg/$E2E_CGROUP"
        setup="echo \$\$ > $cg/$E2E_CGROUP/cgroup.procs || exit 97;"
    fi
    rm -f "$E2E_WORK/nspawn.pid"
    # setsid -f: fully detached; the shell writes its pid, then execs nspawn under that pid.
    # Inherited fds above 2 are closed so the detached nspawn holds no pipe of ours open.
    E2E_SETUP=$setup E2E_PIDFILE=$E2E_WORK/nspawn.pid SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=$unified TERM=dumb \
        setsid -f /bin/bash -c 'for f in /proc/$$/fd/*; do f=${f##*/}; [ "$f" -gt 2 ] && eval "exec $f>&-"; done
            eval "$E2E_SETUP"; echo $$ > "$E2E_PIDFILE"; exec systemd-nspawn "$@"' \
        e2e-nspawn "${args[@]}" </dev/null >"$E2E_WORK/console.log" 2>&1
    local deadline=$((SECONDS + ${GATEHOUSE_E2E_BOOT_TIMEOUT:-90})) state=
    while :; do
        sleep 0.2
        if [ -s "$E2E_WORK/nspawn.pid" ] && ! nspawn_pid >/dev/null; then
            tail -30 "$E2E_WORK/console.log" >&2; log "systemd-nspawn exited during boot"; return 1
        fi
        if E2E_LEADER=$(leader_pid); then
            state=$(nsenter -t "$E2E_LEADER" -a -- /bin/systemctl is-system-running 2>/dev/null || true)
            case $state in running|degraded) break ;; esac
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -30 "$E2E_WORK/console.log" >&2; log "boot timeout (last state '${state:-none}')"; return 1
        fi
    done
    export E2E_LEADER
    [ "$state" = degraded ] && { log "guest is degraded:"; G systemctl --failed --no-legend >&2 || true; }
    return 0
}

machine_stop() {
    local p cg
    if p=$(nspawn_pid); then
        kill -TERM "$p" 2>/dev/null || true        # nspawn turns SIGTERM into a guest halt
        for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$p" 2>/dev/null || true
    fi
    cg=$(cgroup_root)
    if [ -n "$cg" ] && [ -d "$cg/$E2E_CGROUP" ]; then
        # only processes in our own subtree: leftovers of a crashed run
        local pids; pids=$(find "$cg/$E2E_CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
        sleep 0.3
        find "$cg/$E2E_CGROUP" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    fi
    if mountpoint -q "$E2E_ROOT" 2>/dev/null; then umount "$E2E_ROOT" 2>/dev/null || umount -l "$E2E_ROOT"; fi
    # the guest's writes: not needed once it is down (the next boot starts afresh)
    mountpoint -q "$E2E_ROOT" 2>/dev/null || rm -rf "$E2E_WORK/upper" "$E2E_WORK/ovl" "$E2E_WORK/rootcopy"
    rm -f "$E2E_WORK/nspawn.pid"
    return 0
}
