#!/usr/bin/env bash
# As deployed (issue 23): the packaged gatehouse.service, its access log in the journal as
# shipped, against Debian's nginx package with its default access_log to a file, both started
# by systemd in the e2e machine (tests/e2e/lib/machine.sh: Debian with systemd as PID 1 in
# systemd-nspawn). Each server's unit gets one drop-in, CPUAffinity=$SERVER_CPU (and nginx
# `worker_processes 1`, so both use one core); wrk runs inside the guest on $CLIENT_CPU.
#
# Rows: the static welcome page, a 1 MiB file, a proxied GET to an upstream on a unix socket (a
# separate nginx returning 20 bytes, in a transient unit on $CLIENT_CPU; both proxies keep
# upstream connections alive), and a proxied 1 MiB upload, which both proxies buffer to a
# temporary file first (the upstream reads it whole before answering, as bench/proxy.sh's).
# ROWS_ONLY=REGEX picks rows by name. Each at every connection count in $CONNS, alternating the
# two servers, $BENCH_REPS runs of $BENCH_DURATION. LOG_MODES (default "all file off")
# prices the journal: gatehouse with `server.access_log = "all"` to the journal (shipped),
# with `access_log_file = "/var/log/gatehouse/access.log"` (a buffered file, like nginx's),
# and with `access_log = "off"`.
#
# Per run: req/s, p99, the server's CPU per request and journald's on top (/proc/PID/stat
# over the run), and the log's completeness: entries in the journal (gatehouse,
# _SYSTEMD_UNIT + TARGET=gatehouse::access) or lines in its access file or nginx's, against
# the requests wrk completed. A request wrk had in flight when it stopped is answered and
# logged but not counted by wrk, so a complete log holds between n and n + connections
# entries; anything below n is a lost entry, and journald's "Suppressed" lines are counted.
#
# Usage (root): bench/deployed.sh [path/to/gatehouse.deb]   (default: the newest in target/debian)
# Environment: CONNS ("10 64"), LOG_MODES ("all file off"), BENCH_REPS, BENCH_DURATION, SERVER_CPU,
# CLIENT_CPU (bench/lib.sh); GATEHOUSE_E2E_MACHINE / GATEHOUSE_E2E_WORK (defaults
# gatehouse-deployed and /var/tmp/gatehouse-deployed). The guest is the host's Debian
# release: nginx's .debs are the host's (apt-get download), the guest has no network.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (systemd-nspawn)" >&2; exit 1; }
case ${1:-} in -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
CONNS=${CONNS:-10 64}
LOG_MODES=${LOG_MODES:-all file off}
export GATEHOUSE_E2E_MACHINE=${GATEHOUSE_E2E_MACHINE:-gatehouse-deployed}
export GATEHOUSE_E2E_WORK=${GATEHOUSE_E2E_WORK:-/var/tmp/gatehouse-deployed}
. /etc/os-release
export GATEHOUSE_E2E_SUITE=$VERSION_CODENAME
. bench/lib.sh
. tests/e2e/lib/machine.sh
. bench/guest.sh
DEB=$(guest_deb_arg "${1:-}")
need_tools
guest_boot
mkdir -p "$E2E_WORK/debs"
BENCH_LOG=$E2E_WORK/wrk.log
: >"$BENCH_LOG"
(cd "$E2E_WORK/debs" && rm -f ./*.deb && apt-get download -q nginx nginx-common >/dev/null 2>&1) \
    || { echo "apt-get download nginx nginx-common failed" >&2; exit 1; }
guest_wrk_install

dropin() { # unit file-content
    G mkdir -p "/etc/systemd/system/$1.d"
    printf '%s\n' "$2" | G sh -c "cat >/etc/systemd/system/$1.d/bench.conf"
}
put() { G sh -c "cat >$1"; } # guest-path <content

# The upstream: 20 bytes from an nginx on a unix socket, on the client's core.
G mkdir -p /var/lib/bench-upstream
put /var/lib/bench-upstream/nginx.conf <<NGINX
worker_processes 1;
pid /run/bench-upstream.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen unix:/run/bench-upstream.sock;
$(upload_locations /api/upload /var/lib/bench-upstream)
        location / { return 200 "hello from upstream\n"; }
    }
}
NGINX
G mkdir -p /var/lib/bench-upstream/api
G touch /var/lib/bench-upstream/api/upload
put /root/post1m.lua <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA

# nginx as Debian ships it (its nginx.conf and access_log), serving the same files.
for deb in "$E2E_WORK"/debs/*.deb; do copy_in "$deb" /root; done
# iproute2 (a dependency for its postinst's ip(8) use) is not in the minimal guest.
G sh -c 'dpkg -i --force-depends /root/nginx*.deb' >"$E2E_WORK/apt.log" 2>&1 \
    || { tail "$E2E_WORK/apt.log" >&2; exit 1; }
G sed -i 's/^worker_processes .*/worker_processes 1;/' /etc/nginx/nginx.conf
put /etc/nginx/sites-enabled/default <<'NGINX'
upstream app { server unix:/run/bench-upstream.sock; keepalive 64; }
server {
    listen 8080 default_server;
    root /usr/share/gatehouse/www;
    client_max_body_size 10m;
    location /api/ { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
}
NGINX
dropin nginx.service "[Service]
CPUAffinity=$SERVER_CPU"

guest_install_deb "$DEB"
# A large file, which both send with sendfile(2) (Debian's nginx.conf has `sendfile on`).
G sh -c 'head -c 1048576 /dev/urandom >/usr/share/gatehouse/www/bench-1m.bin'
gatehouse_config() { # all|file|off
    local file=
    [ "$1" = file ] && file='access_log_file = "/var/log/gatehouse/access.log"'
    put /etc/gatehouse/gatehouse.toml <<TOML
[server]
access_log = "${1/file/all}"
$file

[[listener]]
name = "http"

[[site]]
hosts = ["*"]

[[site.route]]
path = "/api/"
proxy = { upstreams = ["unix:/run/bench-upstream.sock"], strip_prefix = false }

[[site.route]]
path = "/"
static = { root = "/usr/share/gatehouse/www" }
TOML
}
dropin gatehouse.service "[Service]
CPUAffinity=$SERVER_CPU"
G systemctl daemon-reload
G systemd-run -q --unit=bench-upstream -p CPUAffinity="$CLIENT_CPU" -p UMask=0000 \
    nginx -c /var/lib/bench-upstream/nginx.conf -g 'daemon off;'
G systemctl restart nginx.service

journald_pid() { G systemctl show -p MainPID --value systemd-journald.service; }
# gatehouse's access entries in the journal: the newest one's cursor, and how many follow a
# cursor (all of them for an empty one). journald has them within ~200 ms (log::access).
ACCESS=(_SYSTEMD_UNIT=gatehouse.service TARGET=gatehouse::access)
journal_cursor() { G journalctl -q -n 1 -o export "${ACCESS[@]}" | sed -n 's/^__CURSOR=//p'; }
journal_entries_after() { G journalctl -q ${1:+--after-cursor="$1"} -o cat "${ACCESS[@]}" | wc -l; }
file_lines() { G sh -c "cat $1 2>/dev/null | wc -l"; }
server_pids() { # gatehouse|nginx
    local main; main=$(G systemctl show -p MainPID --value "$1.service")
    echo "$main" $(G pgrep -P "$main" || true)
}

declare -A R
# name|path|more wrk arguments
ROWS=("static|/index.html|" "static-1m|/bench-1m.bin|" "proxy|/api/hello|" "upload-1m|/api/upload|-s /root/post1m.lua")
if [ -n "${ROWS_ONLY:-}" ]; then
    mapfile -t ROWS < <(printf '%s\n' "${ROWS[@]}" | grep -E -- "^[^|]*($ROWS_ONLY)")
fi
SERVERS=()
for mode in $LOG_MODES; do SERVERS+=("gatehouse-$mode"); done
SERVERS+=(nginx)
suppressed_before=$(G journalctl -q -u systemd-journald -o cat | grep -c Suppressed || true)
for conns in $CONNS; do
    for rep in $(seq "$BENCH_REPS"); do
        for server in "${SERVERS[@]}"; do
            if [ "$server" = nginx ]; then
                port=8080
            else
                port=80
                gatehouse_config "${server#gatehouse-}"
                # a fresh process per mode: the config, and no state from the last run
                G systemctl restart gatehouse.service
            fi
            for row in "${ROWS[@]}"; do
                IFS='|' read -r name path wrk_args <<<"$row"
                url=http://127.0.0.1:$port$path
                G curl -sf -o /dev/null "$url" || { echo "$server does not serve $url" >&2; exit 1; }
                sleep 0.5
                pids=$(server_pids "${server%%-*}") jpid=$(journald_pid)
                case $server in
                    nginx) l0=$(file_lines /var/log/nginx/access.log) ;;
                    gatehouse-file) l0=$(file_lines /var/log/gatehouse/access.log) ;;
                    *) l0=0 cursor=$(journal_cursor) ;;
                esac
                s0=$(guest_ticks $pids) j0=$(guest_ticks "$jpid")
                # shellcheck disable=SC2086
                read -r rps n p99 < <(guest_wrk "$conns" "$url" $wrk_args)
                s1=$(guest_ticks $pids) j1=$(guest_ticks "$jpid")
                [ "$rps" != ERROR ] && [ -n "$n" ] || { echo "$server $url: wrk failed (log: $BENCH_LOG)" >&2; exit 1; }
                sleep 1
                case $server in
                    nginx) l1=$(file_lines /var/log/nginx/access.log) ;;
                    gatehouse-file) l1=$(file_lines /var/log/gatehouse/access.log) ;;
                    *) l1=$(journal_entries_after "$cursor") ;;
                esac
                own=$(per_req $((s1 - s0)) "$n") jd=$(per_req $((j1 - j0)) "$n")
                key=$name,$conns,$server
                R[$key,rps]+="$rps " R[$key,p99]+="$p99 " R[$key,own]+="$own " R[$key,jd]+="$jd "
                R[$key,logged]+="$((l1 - l0))/$n "
                echo "c$conns rep $rep $server $name: $rps req/s, p99 $p99 ms, $own µs + journald $jd µs CPU/request, logged $((l1 - l0)) of $n" >&2
            done
        done
    done
done
suppressed=$(( $(G journalctl -q -u systemd-journald -o cat | grep -c Suppressed || true) - suppressed_before ))

med() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
# Entries logged against requests completed, over all runs: "complete" when every run logged
# at least n and at most n + connections.
completeness() { # key conns
    local logged=0 done=0 ok=1 pair l n
    for pair in ${R[$1,logged]}; do
        l=${pair%/*} n=${pair#*/}
        logged=$((logged + l)) done=$((done + n))
        { [ "$l" -ge "$n" ] && [ "$l" -le $((n + $2)) ]; } || ok=0
    done
    if [ $ok = 1 ]; then echo "complete ($logged for $done)"; else echo "**LOST** ($logged for $done)"; fi
}
echo
echo "| row | conns | server | req/s | vs nginx | p99 ms | server CPU µs/req | journald µs/req | total µs/req | log |"
echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
for row in "${ROWS[@]}"; do
    name=${row%%|*}
    for conns in $CONNS; do
        base=$(med "$name,$conns,nginx,rps")
        for server in "${SERVERS[@]}"; do
            key=$name,$conns,$server
            own=$(med "$key,own") jd=$(med "$key,jd") rps=$(med "$key,rps")
            log=$(completeness "$key" "$conns")
            [ "$server" = gatehouse-off ] && log="off"
            printf '| %s | %s | %s | %.0f | %.2f× | %s | %s | %s | %.1f | %s |\n' "$name" "$conns" "$server" "$rps" \
                "$(awk -v a="$rps" -v b="$base" 'BEGIN {print a / b}')" "$(med "$key,p99")" "$own" "$jd" \
                "$(awk -v a="$own" -v b="$jd" 'BEGIN {print a + b}')" "$log"
        done
    done
done
echo
echo "guest: $(G systemctl --version | head -1), $(G nginx -v 2>&1), kernel $(uname -r); wrk -t1 inside the guest on CPU $CLIENT_CPU," \
    "servers on CPU $SERVER_CPU; medians of $BENCH_REPS alternating runs of $BENCH_DURATION;" \
    "journald reported $suppressed \"Suppressed\" lines during the runs"
