# shellcheck shell=bash
# SC2015: `cmd && ok ... || fail ...` is intended (ok always succeeds).
# SC2317: the small check functions are called through wait_until.
# SC2034: STEP_SKIP and SECURITY_LEVEL are read by tests/e2e/run.
# shellcheck disable=SC2015,SC2317,SC2034
# The end-to-end steps, run in order by tests/e2e/run inside the booted guest.
# Each step_* function prints what it checks; a failed check records a message in
# STEP_ERR (the step then counts as failed) and, where later checks of the same step
# would be meaningless, returns early.

STEP_ERR=
ok()   { printf '    ok: %s\n' "$*"; }
fail() { STEP_ERR+="${STEP_ERR:+; }$*"; printf '    FAIL: %s\n' "$*"; return 1; }
expect_eq() {  # DESC EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then ok "$1 = '$3'"; else fail "$1: expected '$2', got '$3'"; fi
}
prop() { G systemctl show -p "$2" --value "$1"; }          # prop UNIT PROPERTY
state() { G systemctl is-active "$1" || true; }
wait_until() {  # TIMEOUT_S CMD...: poll until CMD (often a local function) succeeds
    local end=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $end ] && return 1
        sleep 0.2
    done
}
http_get() { G curl -sS -m 10 "$@"; }                        # body on stdout
put_config() { G sh -c 'cat >"$1"' put "$1"; }              # put_config GUESTPATH <CONTENT

# A small valid configuration answering BODY on every path; IDLE = idle_exit_after.
site_config() {
    cat <<EOF
[server]
idle_exit_after = "${2:-0s}"
shutdown_timeout = "30s"

[[listener]]
name = "http"
bind = ["127.0.0.1:8080"]

[[site]]
hosts = ["*"]

[[site.route]]
path = "/"
respond = { status = 200, body = "$1\n", content_type = "text/plain; charset=utf-8" }
EOF
}

# Client loop inside the guest, in the background: load_start NAME SECONDS [URL]
load_start() {
    G rm -f "/root/$1" "/root/$1.log"
    G /root/load "$2" "/root/$1" "${3:-http://127.0.0.1/}" &
    LOAD_PID=$!
}
# load_finish NAME: waits for the loop, checks zero failures (and some successes)
load_finish() {
    wait "$LOAD_PID" || true
    local r; r=$(G cat "/root/$1" 2>/dev/null) || { fail "client loop $1 left no result"; return 1; }
    local okn=${r% *} failed=${r#* }
    if [ "$failed" = 0 ] && [ "$okn" -gt 0 ]; then
        ok "client loop: $okn requests, 0 failed"
    else
        fail "client loop: $okn ok, $failed FAILED requests"
        G head -20 "/root/$1.log" | sed 's/^/      /'
    fi
}

restore_default_config() {
    G cp /root/gatehouse.toml.orig /etc/gatehouse/gatehouse.toml
}

# ---------------------------------------------------------------------------------

step_install() {
    G mkdir -p /root/debs
    copy_in "$DEB" /root/debs || { fail "copy the .deb into the guest"; return 1; }
    for f in load conns wsecho; do
        copy_in "$E2E_DIR/guest/$f" /root || { fail "copy guest/$f into the guest"; return 1; }
    done
    if ! G apt-get install -y -q "/root/debs/$(basename "$DEB")" >"$E2E_WORK/apt-install.log" 2>&1; then
        tail -20 "$E2E_WORK/apt-install.log" | sed 's/^/      /'
        fail "apt install ./$(basename "$DEB") failed"; return 1
    fi
    ok "apt install ./$(basename "$DEB")"
    G cp /etc/gatehouse/gatehouse.toml /root/gatehouse.toml.orig
    expect_eq "gatehouse.socket enabled" enabled "$(G systemctl is-enabled gatehouse.socket || true)"
    expect_eq "gatehouse.socket active" active "$(state gatehouse.socket)"
    expect_eq "gatehouse.service not started by the install" inactive "$(state gatehouse.service)"
    expect_eq "gatehouse.service is static (socket-activated only)" static "$(G systemctl is-enabled gatehouse.service || true)"
    expect_eq "units shipped in /usr/lib/systemd/system" "4 0" \
        "$(G dpkg-query -L gatehouse | grep -c '^/usr/lib/systemd/system/gatehouse') $(G dpkg-query -L gatehouse | grep -c '^/lib/' || true)"
    local listen want='[::]:80 (Stream)'
    listen=$(prop gatehouse.socket Listen)
    # without IPv6 in the kernel, systemd binds a bare port to 0.0.0.0 instead
    G test -e /proc/net/if_inet6 || want='0.0.0.0:80 (Stream)'
    case $listen in *"$want"*) ok "socket listens on $listen" ;; *) fail "socket Listen = '$listen', expected $want" ;; esac
}

step_verify() {
    # the template has no ListenStream= by design: verify an instance with the example drop-in
    G mkdir -p /etc/systemd/system/gatehouse@site2.socket.d
    G cp /usr/share/doc/gatehouse/examples/gatehouse@.socket.d-listen.conf /etc/systemd/system/gatehouse@site2.socket.d/listen.conf
    site_config site2 | put_config /etc/gatehouse/site2.toml
    G systemctl daemon-reload
    local out rc=0
    out=$(G systemd-analyze verify gatehouse.socket gatehouse.service gatehouse@site2.socket gatehouse@site2.service 2>&1) || rc=$?
    [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/      /'
    if [ $rc = 0 ] && [ -z "$out" ]; then
        ok "systemd-analyze verify gatehouse.socket gatehouse.service gatehouse@site2.socket gatehouse@site2.service: clean"
    else
        fail "systemd-analyze verify (rc=$rc) reported problems"
    fi
    expect_eq "unit files unchanged on disk" "" "$(G systemd-delta --no-pager --type=overridden,extended 2>/dev/null | grep 'gatehouse\.\(socket\|service\)' || true)"
}

step_first_request() {
    local body
    body=$(http_get http://127.0.0.1/) || { fail "first request failed"; return 1; }
    case $body in *'Welcome to gatehouse'*) ok "first request answered with the welcome page" ;; *) fail "unexpected body: ${body:0:120}" ;; esac
    expect_eq "gatehouse.service started on demand" active "$(state gatehouse.service)"
    expect_eq "Type" notify "$(prop gatehouse.service Type)"
    expect_eq "NRestarts" 0 "$(prop gatehouse.service NRestarts)"
    local st; st=$(prop gatehouse.service StatusText)
    if [ -n "$st" ]; then ok "StatusText = '$st'"; else fail "StatusText is empty"; fi
    G systemctl show -p Type,NRestarts,StatusText gatehouse.service | sed 's/^/      /'
    # the same request over IPv6: ListenStream=80 is a dual-stack [::]:80
    if G test -e /proc/net/if_inet6; then
        body=$(http_get -g 'http://[::1]/') && ok "IPv6 [::1]:80 answers too" || fail "request to [::1]:80 failed"
    fi
}

step_journal() {
    # The packaged site serves files, so the probe is an existing one; the cursor makes
    # sure the entry found is this request's, not an earlier one.
    local probe=/index.html cursor
    cursor=$(G journalctl -u gatehouse -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
    http_get -o /dev/null "http://127.0.0.1$probe" || { fail "probe request failed"; return 1; }
    new_entries() { G journalctl -u gatehouse HTTP_STATUS=200 -o json --no-pager ${cursor:+--after-cursor="$cursor"}; }
    in_journal() { new_entries | grep -q "\"HTTP_PATH\":\"$probe\""; }
    if wait_until 10 in_journal; then
        ok "journalctl -u gatehouse HTTP_STATUS=200 -o json has HTTP_PATH=$probe"
        new_entries | grep "\"HTTP_PATH\":\"$probe\"" | head -1 \
            | grep -o '"\(HTTP_[A-Z_]*\|REMOTE_ADDR\|SYSLOG_IDENTIFIER\)":"[^"]*"' | tr '\n' ' ' | sed 's/^/      /; s/$/\n/'
    else
        fail "no journal entry with HTTP_STATUS=200 and HTTP_PATH=$probe"
        G journalctl -u gatehouse -n 5 -o json --no-pager | sed 's/^/      /'
    fi
}

step_reload() {
    local pid; pid=$(prop gatehouse.service MainPID)
    site_config reloaded-v2 | put_config /etc/gatehouse/gatehouse.toml
    if G systemctl reload gatehouse; then ok "systemctl reload with a new config"; else fail "systemctl reload failed"; fi
    expect_eq "new config served right after reload returned" reloaded-v2 "$(http_get http://127.0.0.1/)"
    # 1. a syntax error: `gatehouse reload` refuses before signalling the server
    { echo 'bogus_key = 1'; site_config broken-v3; } | put_config /etc/gatehouse/gatehouse.toml
    local out rc=0
    out=$(G systemctl reload gatehouse 2>&1) || rc=$?
    if [ $rc != 0 ]; then ok "reload of a config with an unknown key fails (rc=$rc)"; else fail "reload of a broken config succeeded"; fi
    G journalctl -u gatehouse --no-pager -n 30 -o cat | grep -q 'bogus_key' \
        && ok "the journal shows the error" || fail "the error is not in the journal"
    # 2. valid syntax the running server must refuse: its socket's listener removed
    site_config refused-v4 | sed 's/^name = "http"/name = "other"/' | put_config /etc/gatehouse/gatehouse.toml
    rc=0; G systemctl reload gatehouse >/dev/null 2>&1 || rc=$?
    if [ $rc != 0 ]; then ok "reload refused by the running server fails too (rc=$rc)"; else fail "reload dropping the 'http' listener succeeded"; fi
    expect_eq "old config still served" reloaded-v2 "$(http_get http://127.0.0.1/)"
    expect_eq "same process (no restart)" "$pid" "$(prop gatehouse.service MainPID)"
    expect_eq "service still active" active "$(state gatehouse.service)"
    local st; st=$(prop gatehouse.service StatusText)
    case $st in *[Ff][Aa][Ii][Ll]*) ok "StatusText reports it: '${st:0:100}...'" ;; *) fail "StatusText does not mention the failed reload: '$st'" ;; esac
    restore_default_config
    G systemctl reload gatehouse && ok "reload back to the packaged config" || fail "reload of the packaged config failed"
}

# Type=notify-reload drop-in (units/examples/notify-reload.conf): systemd >= 253 only.
step_notify_reload() {
    if [ "${GUEST_SYSTEMD:-0}" -lt 253 ]; then
        STEP_SKIP="guest systemd $GUEST_SYSTEMD < 253 has no Type=notify-reload (GATEHOUSE_E2E_SUITE=trixie tests it)"
        return 0
    fi
    G mkdir -p /etc/systemd/system/gatehouse.service.d
    G cp /usr/share/doc/gatehouse/examples/notify-reload.conf /etc/systemd/system/gatehouse.service.d/
    G systemctl daemon-reload
    G systemctl restart gatehouse
    expect_eq "Type with the drop-in" notify-reload "$(prop gatehouse.service Type)"
    expect_eq "ExecReload cleared" "" "$(prop gatehouse.service ExecReload)"
    local pid; pid=$(prop gatehouse.service MainPID)
    site_config notify-reload-v5 | put_config /etc/gatehouse/gatehouse.toml
    G systemctl reload gatehouse && ok "systemctl reload (systemd sends SIGHUP itself)" || fail "systemctl reload failed"
    expect_eq "new config served right after reload returned" notify-reload-v5 "$(http_get http://127.0.0.1/)"
    { echo 'bogus_key = 1'; site_config broken-v6; } | put_config /etc/gatehouse/gatehouse.toml
    local rc=0; G systemctl reload gatehouse >/dev/null 2>&1 || rc=$?
    # documented trade-off: systemd cannot learn that the reload was refused
    ok "reload of a broken config: systemctl rc=$rc (not a failure with notify-reload)"
    expect_eq "old config still served" notify-reload-v5 "$(http_get http://127.0.0.1/)"
    expect_eq "same process" "$pid" "$(prop gatehouse.service MainPID)"
    local st; st=$(prop gatehouse.service StatusText)
    case $st in *[Ff][Aa][Ii][Ll]*) ok "StatusText reports the refusal" ;; *) fail "StatusText does not mention the refused reload: '$st'" ;; esac
    G rm -f /etc/systemd/system/gatehouse.service.d/notify-reload.conf
    restore_default_config
    G systemctl daemon-reload
    G systemctl restart gatehouse
}

step_restart_under_load() {
    local pid; pid=$(prop gatehouse.service MainPID)
    load_start restart 10
    sleep 2; G systemctl restart gatehouse || fail "systemctl restart (1) failed"
    sleep 3; G systemctl restart gatehouse || fail "systemctl restart (2) failed"
    load_finish restart
    local now; now=$(prop gatehouse.service MainPID)
    if [ "$now" != "$pid" ] && [ "$now" != 0 ]; then ok "restarted: MainPID $pid -> $now"; else fail "MainPID did not change ($pid -> $now)"; fi
}

step_watchdog() {
    G mkdir -p /etc/systemd/system/gatehouse.service.d
    printf '[Service]\nWatchdogSec=3s\n' | put_config /etc/systemd/system/gatehouse.service.d/e2e-watchdog.conf
    G systemctl daemon-reload
    G systemctl restart gatehouse
    local pid nr t0 dt
    pid=$(prop gatehouse.service MainPID); nr=$(prop gatehouse.service NRestarts)
    expect_eq "WatchdogUSec from the drop-in" 3s "$(prop gatehouse.service WatchdogUSec)"
    # bash's builtin kill: the minimal guest has no procps
    G bash -c "kill -STOP $pid" || { fail "kill -STOP $pid failed"; return 1; }
    t0=$SECONDS
    ok "kill -STOP $pid (NRestarts=$nr)"
    restarted() {
        local p n; p=$(prop gatehouse.service MainPID); n=$(prop gatehouse.service NRestarts)
        [ "$p" != 0 ] && [ "$p" != "$pid" ] && [ "$n" -gt "$nr" ] && [ "$(state gatehouse.service)" = active ]
    }
    if wait_until 20 restarted; then
        dt=$((SECONDS - t0))
        ok "killed and restarted after ${dt}s: MainPID $(prop gatehouse.service MainPID), NRestarts $(prop gatehouse.service NRestarts)"
        [ "$dt" -le 10 ] || fail "restart took ${dt}s, more than WatchdogSec=3s + 7s margin"
    else
        fail "not restarted within 20s (MainPID $(prop gatehouse.service MainPID), NRestarts $(prop gatehouse.service NRestarts))"
    fi
    G journalctl -u gatehouse --no-pager -n 40 | grep -q 'Watchdog timeout' && ok "journal: 'Watchdog timeout'" || fail "no 'Watchdog timeout' in the journal"
    case $(http_get http://127.0.0.1/) in *'Welcome to gatehouse'*) ok "serving again" ;; *) fail "not serving after the watchdog restart" ;; esac
    G rm -f /etc/systemd/system/gatehouse.service.d/e2e-watchdog.conf
    G systemctl daemon-reload
    G systemctl restart gatehouse
}

step_idle_exit() {
    site_config idle-body 2s | put_config /etc/gatehouse/gatehouse.toml
    G systemctl restart gatehouse
    local nr; nr=$(prop gatehouse.service NRestarts)
    expect_eq "served" idle-body "$(http_get http://127.0.0.1/)"
    stopped() { [ "$(state gatehouse.service)" = inactive ]; }
    if wait_until 10 stopped; then
        ok "service stopped by itself after idle_exit_after=2s"
    else
        fail "service still $(state gatehouse.service) 10s after the last request"
    fi
    expect_eq "clean exit (Result)" success "$(prop gatehouse.service Result)"
    expect_eq "socket still listening" active "$(state gatehouse.socket)"
    expect_eq "next request starts it again" idle-body "$(http_get http://127.0.0.1/)"
    expect_eq "service active again" active "$(state gatehouse.service)"
    # requests spaced around the idle timeout: some land while the server is exiting
    # Requests spaced around the idle timeout: some land while the server is exiting,
    # and the many on-demand starts must stay under the unit's start rate limit.
    local failed=0 starts0 starts1
    starts0=$(G journalctl -u gatehouse --no-pager -o cat | grep -c 'Started gatehouse.service' || true)
    for _ in 1 2 3 4 5 6 7 8; do
        sleep "2.$((RANDOM % 10))"
        [ "$(http_get http://127.0.0.1/ 2>&1)" = idle-body ] || failed=$((failed + 1))
    done
    starts1=$(G journalctl -u gatehouse --no-pager -o cat | grep -c 'Started gatehouse.service' || true)
    expect_eq "failed requests around idle exits (8 sent, $((starts1 - starts0)) on-demand starts)" 0 "$failed"
    expect_eq "socket not failed by the start rate limit" active "$(state gatehouse.socket)"
    expect_eq "no restart counted (idle exit is not a failure)" "$nr" "$(prop gatehouse.service NRestarts)"
    restore_default_config
    G systemctl restart gatehouse
}

# Static files through the hardened unit: openat2, streaming reads and ReadOnlyPaths=.
step_static() {
    G mkdir -p /var/www/site
    echo "from /var/www" | put_config /var/www/site/hello.txt
    # larger than the 128 KiB read-at-once limit: the streaming path
    G sh -c 'head -c 1048576 /dev/urandom >/var/www/site/big.bin'
    G chmod -R a+rX /var/www
    cat <<'EOF' | put_config /etc/gatehouse/gatehouse.toml
[[listener]]
name = "http"
bind = ["127.0.0.1:8080"]

[[site]]
hosts = ["*"]

[[site.route]]
path = "/"
static = { root = "/usr/share/gatehouse/www" }

[[site.route]]
path = "/var/"
static = { root = "/var/www/site" }
EOF
    G systemctl reload gatehouse || { fail "reload with static routes failed"; return 1; }
    case $(http_get http://127.0.0.1/) in *'serving static files'*) ok "/ -> /usr/share/gatehouse/www/index.html" ;; *) fail "/ did not serve the packaged index.html" ;; esac
    expect_eq "/var/hello.txt from /var/www/site" "from /var/www" "$(http_get http://127.0.0.1/var/hello.txt)"
    expect_eq "1 MiB file streamed intact" "$(G sha256sum /var/www/site/big.bin | cut -d' ' -f1)" \
        "$(http_get http://127.0.0.1/var/big.bin | sha256sum | cut -d' ' -f1)"
    expect_eq "path traversal refused" 400 "$(G curl -s -o /dev/null -w '%{http_code}' --path-as-is 'http://127.0.0.1/var/../../etc/passwd')"
    expect_eq "missing file" 404 "$(G curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/var/nope.txt)"
    restore_default_config
    G systemctl reload gatehouse || fail "reload back to the packaged config failed"
    G rm -rf /var/www
}

# CPU per request of a static file: the packaged service against the same /usr/bin/gatehouse
# run outside the unit, in this machine, on the same file with the same bounded load (curl,
# one connection), access log off in both; alternating runs, medians; within 1.3x. Under the
# unit's seccomp filter (RestrictSUIDSGID=, implied by DynamicUser=) openat2 is blocked and
# paths take the component-by-component walk (issue 21: the fallback before it cost 3.5x).
# Each directory level costs the walk one openat more: bench/packaged-static.sh measures a
# deep path too.
step_static_cpu() {
    local n=10000 url=/index.html rep how pid port r us okn unit_pid bare_pid unit bare
    copy_in "$E2E_DIR/guest/cpu-per-request" /root || { fail "copy cpu-per-request into the guest"; return 1; }
    G mkdir -p /etc/systemd/system/gatehouse.service.d
    # The packaged site without its admin listener, whose socket the bare server would need.
    printf '[[listener]]\nname = "http"\nbind = ["127.0.0.1:8090"]\n\n[[site]]\nhosts = ["*"]\n\n[[site.route]]\npath = "/"\nstatic = { root = "/usr/share/gatehouse/www" }\n' \
        | put_config /etc/gatehouse/gatehouse.toml
    printf '[Service]\nEnvironment=RUST_LOG=info,gatehouse::access=off\n' | put_config /etc/systemd/system/gatehouse.service.d/e2e-cpu.conf
    G systemctl daemon-reload
    G systemctl restart gatehouse
    http_get -o /dev/null http://127.0.0.1/index.html || { fail "the service does not serve the static config"; return 1; }
    unit_pid=$(prop gatehouse.service MainPID)
    # The same binary and config from a shell: no unit, no sandbox, the config's own bind.
    bare_pid=$(G sh -c 'RUST_LOG=info,gatehouse::access=off /usr/bin/gatehouse serve \
        --config /etc/gatehouse/gatehouse.toml --log-target stderr >/root/bare.log 2>&1 & echo $!')
    bare_up() { G curl -sf -o /dev/null http://127.0.0.1:8090/index.html; }
    wait_until 10 bare_up || fail "the bare server did not start: $(G cat /root/bare.log)"
    local -a runs_unit=() runs_bare=()
    for rep in 1 2 3; do
        for how in unit bare; do
            if [ $how = unit ]; then pid=$unit_pid port=80; else pid=$bare_pid port=8090; fi
            r=$(G /root/cpu-per-request "$pid" "http://127.0.0.1:$port$url" $n)
            read -r us okn <<<"$r"
            [ "$okn" = $n ] || fail "$how: $okn of $n requests answered 200"
            if [ $how = unit ]; then runs_unit+=("$us"); else runs_bare+=("$us"); fi
        done
    done
    unit=$(printf '%s\n' "${runs_unit[@]}" | sort -g | sed -n 2p)
    bare=$(printf '%s\n' "${runs_bare[@]}" | sort -g | sed -n 2p)
    r=$(awk -v u="$unit" -v b="$bare" 'BEGIN {printf "%.2f", u / b}')
    local detail="$url: packaged $unit µs CPU/request, bare $bare µs (runs ${runs_unit[*]} / ${runs_bare[*]})"
    if awk -v r="$r" 'BEGIN {exit !(r <= 1.3)}'; then ok "$detail: ${r}x <= 1.3"; else fail "$detail: ${r}x > 1.3"; fi
    # grep -c, not -q: an early exit of grep would fail the pipeline under pipefail.
    if [ "$(G journalctl -u gatehouse.service -o cat --no-pager | grep -c 'openat2 is not permitted')" != 0 ]; then
        ok "the service resolves paths one component at a time (its journal: openat2 is not permitted)"
    else
        ok "the service resolves paths with openat2"
    fi
    G bash -c "kill $bare_pid"
    G rm -f /etc/systemd/system/gatehouse.service.d/e2e-cpu.conf /root/bare.log
    restore_default_config
    G systemctl daemon-reload
    G systemctl restart gatehouse || fail "gatehouse did not restart with the packaged config"
}

# A stop drains open responses for up to shutdown_timeout, past the unit's TimeoutStopSec
# (gatehouse sends EXTEND_TIMEOUT_USEC). 100 MB at 10 MB/s: far more than the loopback
# socket buffers hold, so the server must stay alive for most of the ~10 s.
step_drain() {
    G mkdir -p /var/www/site /etc/systemd/system/gatehouse.service.d
    G sh -c 'head -c 100000000 /dev/zero >/var/www/site/big.bin && chmod -R a+rX /var/www'
    { printf '[server]\nshutdown_timeout = "20s"\n'; site_config unused | sed '1,3d'
      printf '[[listener]]\nname = "admin"\nbind = ["unix:/run/gatehouse/admin.sock"]\nrole = "admin"\n'; } \
        | sed 's|^respond = .*|static = { root = "/var/www/site" }|' | put_config /etc/gatehouse/gatehouse.toml
    printf '[Service]\nTimeoutStopSec=4s\n' | put_config /etc/systemd/system/gatehouse.service.d/e2e-stop.conf
    G systemctl daemon-reload
    G systemctl restart gatehouse
    G rm -f /root/dl.out
    G sh -c 'curl -sS -o /dev/null --limit-rate 10M -w "%{http_code} %{size_download}" http://127.0.0.1/big.bin >/root/dl.out 2>&1' &
    local dl=$! t0 dt
    sleep 1
    t0=$SECONDS
    G systemctl stop gatehouse.service 2>/dev/null &
    local stop=$!
    sleep 1.5
    # the admin listener stays open while draining, so health checks see the stop
    expect_eq "/healthz while draining" 503 "$(G curl -s -o /dev/null -w '%{http_code}' --unix-socket /run/gatehouse/admin.sock http://localhost/healthz)"
    wait "$stop" || fail "systemctl stop failed"
    dt=$((SECONDS - t0))
    wait "$dl" || true
    expect_eq "download in flight at stop completed" "200 100000000" "$(G cat /root/dl.out)"
    if [ "$dt" -gt 4 ]; then ok "stop waited ${dt}s for it, past TimeoutStopSec=4s"; else fail "stop took only ${dt}s: the response cannot have been drained"; fi
    expect_eq "clean stop (Result)" success "$(prop gatehouse.service Result)"
    G rm -rf /var/www /etc/systemd/system/gatehouse.service.d/e2e-stop.conf
    restore_default_config
    G systemctl daemon-reload
}

# Proxy buffering under the shipped hardening (issue 17): bodies beyond buffer_memory go to
# unnamed temporary files in the default temp_dir, /var/tmp, which PrivateTmp= makes
# private and ProtectSystem=strict leaves writable. The upstream is what buffering is for:
# Debian's gunicorn with ONE sync worker (a transient unit), which answers a fast request at
# once while slow clients upload to and download from gatehouse.
step_proxy_buffering() {
    # Restored at the end: later steps expect gatehouse.service as they left it.
    local was; was=$(state gatehouse.service)
    G mkdir -p /var/www/up
    G sh -c 'head -c 20000000 /dev/urandom >/var/www/up/big.bin'
    put_config /var/www/up/e2eapp.py <<'APP'
def application(environ, start_response):
    path = environ['PATH_INFO']
    if path == '/upload':
        body = environ['wsgi.input'].read()
        out = ('%d %s' % (len(body), environ.get('CONTENT_LENGTH'))).encode()
    elif path == '/big.bin':
        out = open('/var/www/up/big.bin', 'rb').read()
    else:
        out = b'fast'
    start_response('200 OK', [('Content-Length', str(len(out)))])
    return [out]
APP
    G chmod -R a+rX /var/www
    G systemd-run -q --unit=e2e-upstream -p DynamicUser=yes /usr/bin/gunicorn --workers 1 \
        --worker-class sync --bind 127.0.0.1:8081 --chdir /var/www/up e2eapp:application
    { site_config unused | sed '1,3d'
      printf '[[listener]]\nname = "admin"\nbind = ["unix:/run/gatehouse/admin.sock"]\nrole = "admin"\n'; } \
        | sed 's|^respond = .*|proxy = { upstreams = ["http://127.0.0.1:8081"], max_body = "10MiB" }|' \
        | put_config /etc/gatehouse/gatehouse.toml
    G systemctl restart gatehouse
    metric() { G curl -s --unix-socket /run/gatehouse/admin.sock http://localhost/metrics | awk -v s="$1" '$1 == s {print $2}'; }
    fast() { G curl -sS -o /dev/null -m 10 -w '%{http_code} %{time_total}' http://127.0.0.1/fast; }
    quick() { # WHAT "STATUS SECONDS": 200 in under 1 s
        case $2 in "200 0."*) ok "$1: answered in ${2#* }s" ;; *) fail "$1: '$2' (the worker was held)" ;; esac
    }
    wait_until 10 http_get -o /dev/null http://127.0.0.1:8081/fast || { fail "gunicorn did not start"; return 1; }

    # A 1 MB chunked upload at 300 KB/s: read whole (into /var/tmp) before gunicorn is involved.
    G sh -c 'head -c 1000000 /dev/zero | curl -sS --limit-rate 300k -H "Transfer-Encoding: chunked" --data-binary @- http://127.0.0.1/upload >/root/up.out 2>&1' &
    local up=$! pid spilled
    sleep 1.5
    quick "GET /fast to the one sync worker during the slow upload" "$(fast)"
    wait "$up" || true
    expect_eq "gunicorn got the whole body with a Content-Length" "1000000 1000000" "$(G cat /root/up.out)"
    spilled=$(metric 'gatehouse_proxy_spilled_bytes_total{direction="request"}')
    expect_eq "request bytes spilled to the temp file" 1000000 "${spilled%.*}"

    # A slow client reading 20 MB: gunicorn is done at once, the rest waits in a file with no name.
    G rm -f /root/big.out
    G sh -c 'curl -sS --limit-rate 4M -o /root/big.out -w "%{http_code} %{size_download}" http://127.0.0.1/big.bin >/root/big.code 2>&1' &
    local dl=$!
    sleep 1.5
    quick "GET /fast to the one sync worker during the slow download" "$(fast)"
    pid=$(prop gatehouse.service MainPID)
    local in_file; in_file=$(metric gatehouse_proxy_temp_file_bytes)
    if [ "${in_file%.*}" -gt 0 ]; then ok "mid-download: ${in_file%.*} bytes in the temp file"; else fail "nothing in a temp file mid-download"; fi
    expect_eq "the service's /var/tmp lists no file" "" "$(G nsenter -t "$pid" -m ls -A /var/tmp)"
    G nsenter -t "$pid" -m sh -c "ls -l /proc/$pid/fd | grep -q '/var/tmp/#[0-9]* (deleted)'" \
        && ok "the open temp file is /var/tmp/#INODE (deleted): O_TMPFILE" || fail "no O_TMPFILE file open in /var/tmp"
    wait "$dl" || true
    expect_eq "slow download complete" "200 20000000" "$(G cat /root/big.code)"
    G cmp -s /root/big.out /var/www/up/big.bin && ok "byte-exact" || fail "the download differs from the file"
    expect_eq "temp files closed with their response" 0 "$(metric gatehouse_proxy_temp_file_bytes)"

    G systemctl stop e2e-upstream
    G rm -rf /var/www /root/big.out /root/big.code /root/up.out
    restore_default_config
    if [ "$was" = active ]; then G systemctl restart gatehouse; else G systemctl stop gatehouse.service; fi
}

# The admin listener of the packaged config: a root-only unix socket in /run/gatehouse.
step_admin() {
    http_get -o /dev/null http://127.0.0.1/ || true
    local pid out sock
    pid=$(prop gatehouse.service MainPID)
    out=$(G gatehouse status 2>&1) || fail "gatehouse status failed: $out"
    case $out in *"(pid $pid)"*) ok "gatehouse status: $(head -1 <<<"$out")" ;; *) fail "gatehouse status did not report pid $pid: $out" ;; esac
    G curl -sS --unix-socket /run/gatehouse/admin.sock http://localhost/metrics | grep -q '^gatehouse_http_requests_total{' \
        && ok "/metrics has gatehouse_http_requests_total" || fail "/metrics lacks gatehouse_http_requests_total"
    expect_eq "/healthz" ok "$(G curl -sS --unix-socket /run/gatehouse/admin.sock http://localhost/healthz)"
    sock=$(G stat -c '%A %u' /run/gatehouse/admin.sock)
    expect_eq "socket mode and owner" "srwx------ $(G stat -c %u "/proc/$pid")" "$sock"
    G setpriv --reuid=65534 --regid=65534 --clear-groups curl -s -o /dev/null --unix-socket /run/gatehouse/admin.sock http://localhost/healthz \
        && fail "an unprivileged user reached the admin socket" || ok "unprivileged users cannot connect"
    # On the public listener /metrics is just a path of the site: no such file.
    expect_eq "admin paths do not exist on the public listener" 404 "$(G curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/metrics)"
}

# TLS the way units/examples/tls/ documents it: the certificate and a root-only key handed
# to the dynamic user as systemd credentials, port 443 as its own socket unit.
step_tls() {
    local work rc=0
    work=$(mktemp -d)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1 \
        || { rm -rf "$work"; fail "openssl could not make a test certificate"; return 1; }
    G mkdir -p /etc/ssl/e2e
    copy_in "$work/cert.pem" /etc/ssl/e2e && copy_in "$work/key.pem" /etc/ssl/e2e
    rm -rf "$work"
    G chmod 0600 /etc/ssl/e2e/key.pem
    copy_in "$REPO/units/examples/tls/gatehouse-https.socket" /etc/systemd/system
    G mkdir -p /etc/systemd/system/gatehouse.service.d
    sed 's|/etc/letsencrypt/live/example.com/fullchain.pem|/etc/ssl/e2e/cert.pem|; s|/etc/letsencrypt/live/example.com/privkey.pem|/etc/ssl/e2e/key.pem|' \
        "$REPO/units/examples/tls/gatehouse.service.d-tls.conf" | put_config /etc/systemd/system/gatehouse.service.d/tls.conf
    { G cat /root/gatehouse.toml.orig | sed '/^\[\[site\]\]/,$d'
      printf '[[listener]]\nname = "https"\ntls = "auto"\n\n[[site]]\nhosts = ["*"]\nhsts = "max-age=300"\n'
      printf '[[site.route]]\npath = "/"\nstatic = { root = "/usr/share/gatehouse/www" }\n'; } \
        | put_config /etc/gatehouse/gatehouse.toml
    G systemctl daemon-reload
    G systemctl enable --now gatehouse-https.socket >/dev/null 2>&1 || fail "gatehouse-https.socket did not start"
    G systemctl restart gatehouse || fail "gatehouse did not start with the TLS drop-in"
    local body proto hsts
    body=$(G curl -sS -m 10 --cacert /etc/ssl/e2e/cert.pem https://localhost/ 2>&1) || rc=1
    case $body in *'Welcome to gatehouse'*) ok "https://localhost/ answered over TLS (credentials from LoadCredential=)" ;;
        *) fail "no page over TLS: ${body:0:160}" ;; esac
    proto=$(G curl -sS -m 10 -o /dev/null -w '%{http_version}' --http2 --cacert /etc/ssl/e2e/cert.pem https://localhost/ 2>&1)
    expect_eq "HTTP/2 negotiated by ALPN" 2 "$proto"
    hsts=$(G curl -sS -m 10 -D - -o /dev/null --cacert /etc/ssl/e2e/cert.pem https://localhost/ | tr -d '\r' | sed -n 's/^strict-transport-security: //Ip')
    expect_eq "HSTS over TLS" "max-age=300" "$hsts"
    local pid uid
    pid=$(prop gatehouse.service MainPID)
    uid=$(G stat -c %u "/proc/$pid")
    G setpriv --reuid="$uid" --regid="$uid" --clear-groups cat /etc/ssl/e2e/key.pem >/dev/null 2>&1 \
        && fail "the service user can read the key file itself" || ok "the service user cannot read /etc/ssl/e2e/key.pem; it gets a credential copy"
    # Back to the packaged setup for the steps that follow.
    G systemctl disable --now gatehouse-https.socket >/dev/null 2>&1
    G rm -f /etc/systemd/system/gatehouse-https.socket /etc/systemd/system/gatehouse.service.d/tls.conf
    G rm -rf /etc/ssl/e2e
    restore_default_config
    G systemctl daemon-reload
    G systemctl restart gatehouse || fail "gatehouse did not restart without TLS"
    return $rc
}

# Automatic HTTPS under the hardened unit (DynamicUser, StateDirectory, seccomp): a real
# ACME CA (pebble, Let's Encrypt's test server, with pebble-challtestsrv answering
# 127.0.0.1 for every name) in the guest validates e2e.test over HTTP-01 on port 80.
step_acme() {
    local bin work rc=0
    for bin in pebble pebble-challtestsrv; do
        command -v "$bin" >/dev/null || { STEP_SKIP="$bin is not installed on the host (apt-get install pebble)"; return 0; }
    done
    work=$(mktemp -d)
    # pebble's own HTTPS: a test CA and a localhost leaf, made here.
    printf '[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n[leaf]\nbasicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/ext.cnf"
    if ! { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=e2e-ca \
              -keyout "$work/ca.key" -out "$work/ca.pem" -addext basicConstraints=critical,CA:TRUE \
              -addext keyUsage=critical,keyCertSign \
           && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
              -keyout "$work/key.pem" -out "$work/leaf.csr" \
           && openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
              -CAcreateserial -days 2 -extfile "$work/ext.cnf" -extensions leaf -out "$work/cert.pem"; } >/dev/null 2>&1; then
        rm -rf "$work"; fail "openssl could not make pebble's certificate"; return 1
    fi
    G mkdir -p /etc/pebble
    copy_in "$(command -v pebble)" /usr/local/bin && copy_in "$(command -v pebble-challtestsrv)" /usr/local/bin
    copy_in "$work/cert.pem" /etc/pebble && copy_in "$work/key.pem" /etc/pebble
    copy_in "$work/ca.pem" /etc/gatehouse && G mv /etc/gatehouse/ca.pem /etc/gatehouse/acme-ca.pem
    rm -rf "$work"
    printf '{"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000", "certificate": "/etc/pebble/cert.pem", "privateKey": "/etc/pebble/key.pem", "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": false}}\n' \
        | put_config /etc/pebble/pebble.json
    G systemd-run -q --unit=e2e-acme-dns /usr/local/bin/pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" \
        -dns01 127.0.0.1:8053 -http01 "" -https01 "" -tlsalpn01 "" -management 127.0.0.1:8055
    G systemd-run -q --unit=e2e-acme-ca -E PEBBLE_VA_NOSLEEP=1 -E PEBBLE_WFE_NONCEREJECT=0 \
        /usr/local/bin/pebble -config /etc/pebble/pebble.json -dnsserver 127.0.0.1:8053
    ca_up() { G curl -sk -m 2 -o /dev/null https://127.0.0.1:14000/dir; }
    wait_until 10 ca_up || { fail "pebble did not start in the guest"; rc=1; }

    copy_in "$REPO/units/examples/tls/gatehouse-https.socket" /etc/systemd/system
    G mkdir -p /etc/systemd/system/gatehouse.service.d
    put_config /etc/systemd/system/gatehouse.service.d/acme.conf <"$REPO/units/examples/tls/gatehouse.service.d-acme.conf"
    sed -e 's|^email = .*|email = "hostmaster@e2e.test"\ndirectory = "https://127.0.0.1:14000/dir"\nca_roots = "/etc/gatehouse/acme-ca.pem"|' \
        -e 's|"example.com", "www.example.com"|"e2e.test"|' -e 's|/var/www/example.com|/usr/share/gatehouse/www|' \
        "$REPO/units/examples/tls/gatehouse-acme.toml" | put_config /etc/gatehouse/gatehouse.toml
    G systemctl daemon-reload
    # A socket unit refuses to start while its service runs ("already active").
    G systemctl stop gatehouse 2>/dev/null
    local out
    out=$(G systemctl enable --now gatehouse-https.socket 2>&1) || fail "gatehouse-https.socket did not start: $out"
    G systemctl restart gatehouse || fail "gatehouse did not start with tls = \"acme\""
    issued() { G journalctl -u gatehouse --no-pager -o cat | grep -q 'ACME certificate for e2e.test installed'; }
    if wait_until 30 issued; then ok "certificate for e2e.test issued over HTTP-01 by the hardened service"
    else fail "no certificate within 30 s: $(G journalctl -u gatehouse --no-pager -o cat | grep -i acme | tail -3 | tr '\n' ' ')"; rc=1; fi
    G sh -c 'curl -sk -m 5 https://127.0.0.1:15000/roots/0 >/root/pebble-root.pem'
    local body state
    body=$(G curl -sS -m 10 --cacert /root/pebble-root.pem --resolve e2e.test:443:127.0.0.1 https://e2e.test/ 2>&1) || rc=1
    case $body in *'Welcome to gatehouse'*) ok "https://e2e.test/ verifies against the CA's root" ;;
        *) fail "no page over the ACME certificate: ${body:0:160}" ;; esac
    expect_eq "plain HTTP redirects now" 308 "$(G curl -s -o /dev/null -w '%{http_code}' --resolve e2e.test:80:127.0.0.1 http://e2e.test/)"
    state=$(G sh -c 'stat -c "%a %U %n" /var/lib/private/gatehouse/acme /var/lib/private/gatehouse/acme/*/*' 2>&1)
    if ! grep -qv '^700 \|^600 ' <<<"$state" && grep -q 'e2e.test.pem' <<<"$state" && grep -q 'account.json' <<<"$state"; then
        ok "state in /var/lib/private/gatehouse/acme, owner-only: $(tr '\n' ' ' <<<"$state" | cut -c1-200)"
    else fail "state files: $state"; rc=1; fi
    # A restart serves the stored certificate: no second order at the CA.
    G systemctl restart gatehouse || fail "restart failed"
    body=$(G curl -sS -m 10 --cacert /root/pebble-root.pem --resolve e2e.test:443:127.0.0.1 https://e2e.test/ 2>&1) || rc=1
    case $body in *'Welcome to gatehouse'*) ok "after a restart the stored certificate is served" ;; *) fail "after restart: ${body:0:160}" ;; esac
    expect_eq "orders at the CA after the restart" 1 "$(G journalctl -u e2e-acme-ca --no-pager -o cat | grep -c 'Added order')"

    # Back to the packaged setup for the steps that follow.
    G systemctl stop e2e-acme-ca e2e-acme-dns >/dev/null 2>&1 || true
    G systemctl disable --now gatehouse-https.socket >/dev/null 2>&1
    G rm -f /etc/systemd/system/gatehouse-https.socket /etc/systemd/system/gatehouse.service.d/acme.conf \
        /etc/gatehouse/acme-ca.pem /root/pebble-root.pem
    G rm -rf /etc/pebble /usr/local/bin/pebble /usr/local/bin/pebble-challtestsrv
    restore_default_config
    G systemctl daemon-reload
    G systemctl restart gatehouse || fail "gatehouse did not restart without ACME"
    return $rc
}

step_hardening() {
    http_get -o /dev/null http://127.0.0.1/ || true
    local pid status uid
    pid=$(prop gatehouse.service MainPID)
    [ "$pid" != 0 ] || { fail "service not running"; return 1; }
    status=$(G cat "/proc/$pid/status")
    uid=$(awk '/^Uid:/ {print $2}' <<<"$status")
    if [ "$uid" -ge 61184 ] && [ "$uid" -le 65519 ]; then ok "runs as dynamic user uid $uid"; else fail "uid $uid is not in the DynamicUser range 61184-65519"; fi
    expect_eq "CapEff" 0000000000000000 "$(awk '/^CapEff:/ {print $2}' <<<"$status")"
    expect_eq "CapBnd" 0000000000000000 "$(awk '/^CapBnd:/ {print $2}' <<<"$status")"
    expect_eq "NoNewPrivs" 1 "$(awk '/^NoNewPrivs:/ {print $2}' <<<"$status")"
    expect_eq "Seccomp (filter mode)" 2 "$(awk '/^Seccomp:/ {print $2}' <<<"$status")"
    # Write probes in the service's own mount namespace, as its uid/gid.
    local gid; gid=$(awk '/^Gid:/ {print $2}' <<<"$status")
    as_service() { G nsenter -t "$pid" -m -S "$uid" -G "$gid" -- sh -c "$1" 2>/dev/null; }
    local d writable=0
    for d in /etc /etc/gatehouse /usr /var/lib /var/log /var/cache /root /home /srv /opt /usr/share/gatehouse/www; do
        if as_service "touch '$d/.e2e-probe'"; then
            writable=1; fail "could write to $d"; as_service "rm -f '$d/.e2e-probe'"
        fi
    done
    [ $writable = 0 ] && ok "cannot write to /etc /usr /var/lib /var/log /var/cache /root /home /srv /opt or the docroot"
    for d in /var/lib/gatehouse /run/gatehouse /tmp; do
        if as_service "touch '$d/.e2e-probe' && rm '$d/.e2e-probe'"; then ok "can write to its own $d"; else fail "cannot write to $d"; fi
    done
    if as_service "ls /home/ /root/ >/dev/null && test -n \"\$(ls -A /home)\""; then fail "/home is visible"; else ok "/home is empty or inaccessible"; fi
}

step_security() {
    local out level
    out=$(G systemd-analyze security --no-pager gatehouse.service 2>&1) || true
    printf '%s\n' "$out" | grep -v '^✓' | sed 's/^/      /'
    level=$(grep -o 'Overall exposure level for gatehouse.service: [0-9.]*' <<<"$out" | awk '{print $NF}')
    SECURITY_LEVEL=$level
    if [ -z "$level" ]; then fail "no exposure level in the output"
    elif awk -v l="$level" 'BEGIN {exit !(l <= 1.5)}'; then ok "exposure $level <= 1.5"
    else fail "exposure $level > 1.5"; fi
}

# Repacks DEB with a higher version: an upgrade that needs no second cargo build.
make_upgrade_deb() {
    local dir=$E2E_WORK/upgrade ver
    rm -rf "$dir"; mkdir -p "$dir"
    dpkg-deb -R "$DEB" "$dir/pkg"
    ver=$(awk '/^Version:/ {print $2}' "$dir/pkg/DEBIAN/control")
    UPGRADE_VERSION=$ver+e2e1
    sed -i "s/^Version: .*/Version: $UPGRADE_VERSION/" "$dir/pkg/DEBIAN/control"
    UPGRADE_DEB=$dir/gatehouse_${UPGRADE_VERSION}_$(dpkg-deb -f "$DEB" Architecture).deb
    dpkg-deb --root-owner-group -b "$dir/pkg" "$UPGRADE_DEB" >/dev/null
}

step_templates() {
    G systemctl start gatehouse@site2.socket || { fail "start gatehouse@site2.socket"; return 1; }
    expect_eq "site2 on the port of its listen.conf drop-in (8081)" site2 "$(http_get http://127.0.0.1:8081/)"
    expect_eq "gatehouse@site2.service started on demand" active "$(state gatehouse@site2.service)"
    expect_eq "its own runtime directory" yes "$(G test -d /run/gatehouse-site2 && echo yes)"
    G systemctl reload gatehouse@site2.service && ok "systemctl reload gatehouse@site2" || fail "reload of gatehouse@site2 failed"
    expect_eq "main site unaffected" active "$(state gatehouse.socket)"
}

step_upgrade() {
    make_upgrade_deb || { fail "could not repack an upgrade .deb"; return 1; }
    copy_in "$UPGRADE_DEB" /root/debs || { fail "copy the upgrade .deb into the guest"; return 1; }
    http_get -o /dev/null http://127.0.0.1/ || true
    local pid site_pid sock_t
    pid=$(prop gatehouse.service MainPID); site_pid=$(prop gatehouse@site2.service MainPID)
    sock_t=$(prop gatehouse.socket ActiveEnterTimestampMonotonic)
    load_start upgrade 12
    sleep 2
    if G apt-get install -y -q "/root/debs/$(basename "$UPGRADE_DEB")" >"$E2E_WORK/apt-upgrade.log" 2>&1; then
        ok "apt install ./$(basename "$UPGRADE_DEB") (upgrade from $(dpkg-deb -f "$DEB" Version))"
    else
        tail -20 "$E2E_WORK/apt-upgrade.log" | sed 's/^/      /'; fail "upgrade failed"
    fi
    load_finish upgrade
    expect_eq "installed version" "$UPGRADE_VERSION" "$(G dpkg-query -W -f '${Version}' gatehouse)"
    expect_eq "socket never restarted (same ActiveEnterTimestamp)" "$sock_t" "$(prop gatehouse.socket ActiveEnterTimestampMonotonic)"
    local now; now=$(prop gatehouse.service MainPID)
    if [ "$now" != "$pid" ] && [ "$now" != 0 ]; then ok "running server restarted on the new binary: MainPID $pid -> $now"; else fail "server not restarted (MainPID $pid -> $now)"; fi
    now=$(prop gatehouse@site2.service MainPID)
    if [ "$now" != "$site_pid" ] && [ "$now" != 0 ]; then ok "gatehouse@site2 restarted too: $site_pid -> $now"; else fail "gatehouse@site2 not restarted ($site_pid -> $now)"; fi
    expect_eq "conffile untouched by the upgrade" "" "$(G cmp /etc/gatehouse/gatehouse.toml /root/gatehouse.toml.orig 2>&1)"
}

step_remove_purge() {
    G apt-get remove -y -q gatehouse >"$E2E_WORK/apt-remove.log" 2>&1 || { fail "apt-get remove failed"; return 1; }
    ok "apt-get remove gatehouse"
    expect_eq "socket stopped" inactive "$(state gatehouse.socket)"
    expect_eq "service stopped" inactive "$(state gatehouse.service)"
    expect_eq "template instance stopped" inactive "$(state gatehouse@site2.socket)"
    G curl -sS -m 5 -o /dev/null http://127.0.0.1/ 2>/dev/null && fail "port 80 still answers after remove" || ok "port 80 closed"
    expect_eq "remove keeps the config" yes "$(G test -f /etc/gatehouse/gatehouse.toml && echo yes)"
    G apt-get purge -y -q gatehouse >"$E2E_WORK/apt-purge.log" 2>&1 || { fail "apt-get purge failed"; return 1; }
    ok "apt-get purge gatehouse"
    expect_eq "package gone" "" "$(G dpkg-query -W -f '${db:Status-Status}' gatehouse 2>/dev/null | grep -v not-installed || true)"
    # site2.toml and the site2 drop-in are the admin's files: purge must leave them alone
    expect_eq "purge keeps the admin's own site config" yes "$(G test -f /etc/gatehouse/site2.toml && echo yes)"
    expect_eq "purge removes the packaged conffile" no "$(G test -e /etc/gatehouse/gatehouse.toml && echo yes || echo no)"
    G rm -rf /etc/gatehouse/site2.toml /etc/systemd/system/gatehouse@site2.socket.d
    G rmdir /etc/gatehouse
    local left
    left=$(G sh -c 'ls -d /etc/gatehouse /var/lib/gatehouse /var/lib/private/gatehouse /run/gatehouse \
        /var/log/gatehouse /var/log/private/gatehouse \
        /etc/systemd/system/sockets.target.wants/gatehouse.socket /etc/systemd/system/gatehouse.socket \
        /var/lib/systemd/deb-systemd-helper-enabled/gatehouse.socket.dsh-also \
        /var/lib/systemd/deb-systemd-helper-masked/gatehouse.socket /usr/bin/gatehouse 2>/dev/null' || true)
    expect_eq "nothing left behind" "" "${left//$'\n'/ }"
    expect_eq "systemd forgot the units" "not-found" "$(prop gatehouse.socket LoadState)"
}
