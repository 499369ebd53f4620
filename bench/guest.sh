# shellcheck shell=bash
# Shared by the bench scripts that run the packaged server inside the e2e machine (sourced
# after tests/e2e/lib/machine.sh; the wrk functions also need bench/lib.sh).

# The .deb named by the first argument, else the newest in target/debian; exits if none.
guest_deb_arg() { # [path]
    local deb
    deb=$(readlink -f "${1:-$(ls -t target/debian/gatehouse_*.deb 2>/dev/null | head -1)}")
    [ -f "$deb" ] || { echo "no .deb: build one with cargo deb, or pass its path" >&2; exit 2; }
    echo "$deb"
}

# Boots the e2e machine (halted when the script exits).
guest_boot() {
    host_deps
    mkdir -p "$E2E_WORK"
    image_ensure
    trap machine_stop EXIT
    machine_boot || { echo "the machine did not boot" >&2; exit 1; }
}

# dpkg -i, not apt: apt skips a .deb whose version is already installed.
guest_install_deb() { # path
    copy_in "$1" /root
    G dpkg -i "/root/$(basename "$1")" >"$E2E_WORK/apt.log" 2>&1 || { tail "$E2E_WORK/apt.log" >&2; exit 1; }
}

# The host's wrk, and the one library it needs beyond the base system, copied in.
guest_wrk_install() {
    local luajit
    luajit=$(ldd "$(command -v wrk)" | awk '/libluajit/ {print $1, $3}')
    G mkdir -p /usr/local/lib/wrk
    copy_in "$(command -v wrk)" /usr/local/bin
    copy_in "$(readlink -f "${luajit#* }")" /usr/local/lib/wrk
    G ln -sf "$(basename "$(readlink -f "${luajit#* }")")" "/usr/local/lib/wrk/${luajit%% *}"
}

# wrk -t1 inside the guest on $CLIENT_CPU; its output goes to $BENCH_LOG.
# Prints "req/s requests p99_ms", or "ERROR" when a request failed.
guest_wrk() { # connections url [more wrk arguments]
    G env LD_LIBRARY_PATH=/usr/local/lib/wrk taskset -c "$CLIENT_CPU" wrk -t1 -c"$1" \
        -d"$BENCH_DURATION" --latency "${@:3}" "$2" | tee -a "$BENCH_LOG" \
        | awk 'function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
               /Requests\/sec/ {r=$2} / requests in / {n=$1} /^ +99%/ {p99=ms($2)}
               /Non-2xx|Socket errors/ {bad=1}
               END {if (bad) print "ERROR"; else print r, n, p99}'
}

# utime + stime of a guest process and its children, in clock ticks.
guest_ticks() { # pid...
    local p total=0 t
    for p in "$@"; do
        t=$(G awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}
