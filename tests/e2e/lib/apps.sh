# shellcheck shell=bash
# SC2015: `cmd && ok ... || fail ...` is intended (ok always succeeds).
# SC2317: the small check functions are called through wait_until.
# shellcheck disable=SC2015,SC2317
# The apps behind gatehouse, each socket-activated and proven through gatehouse:
#  - hello: the Rust example on gatehouse-kit (examples/hello), its binary built on the host;
#  - app1/app2: the shipped Python examples (units/examples) under Debian's gunicorn and
#    uvicorn, installed in the guest image.
# Sourced by tests/e2e/run after steps.sh (uses its helpers: G, ok, fail, expect_eq, ...).

# The group that may connect to app sockets, and gatehouse in it (as units/examples/README.md).
apps_setup_upstream_group() {
    # Restored by apps_cleanup: later steps expect gatehouse.service as they left it.
    APPS_GATEHOUSE_WAS=$(state gatehouse.service)
    G mkdir -p /etc/sysusers.d
    put_config /etc/sysusers.d/gatehouse-upstream.conf <"$REPO/units/examples/gatehouse-upstream.sysusers.conf"
    local out
    out=$(G systemd-sysusers /etc/sysusers.d/gatehouse-upstream.conf 2>&1) || { fail "systemd-sysusers: $out"; return 1; }
    G mkdir -p /etc/systemd/system/gatehouse.service.d
    put_config /etc/systemd/system/gatehouse.service.d/upstream.conf <"$REPO/units/examples/gatehouse.service.d-upstream.conf"
}

# apps_cleanup UNIT...: back to the packaged gatehouse for the steps that follow.
apps_cleanup() {
    local u
    for u in "$@"; do
        G systemctl disable --now "$u.socket" >/dev/null 2>&1
        G systemctl stop "$u.service" >/dev/null 2>&1
        G rm -f "/etc/systemd/system/$u.socket" "/etc/systemd/system/$u.service"
        G rm -rf "/etc/systemd/system/$u.service.d"
    done
    G rm -f /etc/systemd/system/gatehouse.service.d/upstream.conf /etc/sysusers.d/gatehouse-upstream.conf
    restore_default_config
    G systemctl daemon-reload
    if [ "${APPS_GATEHOUSE_WAS:-}" = active ]; then
        G systemctl restart gatehouse || fail "gatehouse did not restart on the packaged config"
    else
        G systemctl stop gatehouse.service 2>/dev/null
    fi
}

# The service stopped, so that the next request starts gatehouse, which starts the app.
apps_stop_gatehouse() {
    G systemctl daemon-reload
    G systemctl stop gatehouse.service 2>/dev/null
    expect_eq "gatehouse.service stopped before the first request" inactive "$(state gatehouse.service)"
}

# journal_fields UNIT FILTER...: the newest matching entry's fields, one line.
journal_fields() {
    local unit=$1; shift
    G journalctl -u "$unit" "$@" -o json -n 1 --no-pager \
        | grep -o '"\(HTTP_[A-Z_]*\|REMOTE_ADDR\|SYSLOG_IDENTIFIER\|MESSAGE\)":"[^"]*"' | tr '\n' ' '
}

# A hello drop-in: `hello_dropin NAME CONTENT` (daemon-reload by the caller).
hello_dropin() {
    G mkdir -p /etc/systemd/system/hello.service.d
    printf '%s\n' "$2" | put_config "/etc/systemd/system/hello.service.d/$1.conf"
}

step_hello() {
    [ -f "${HELLO_BIN:-}" ] || { fail "no hello binary (HELLO_BIN=${HELLO_BIN:-})"; return 1; }
    copy_in "$HELLO_BIN" /usr/local/bin && G chmod 755 /usr/local/bin/hello || { fail "copy hello into the guest"; return 1; }
    apps_setup_upstream_group || return 1
    copy_in "$REPO/examples/hello/hello.socket" /etc/systemd/system
    copy_in "$REPO/examples/hello/hello.service" /etc/systemd/system
    put_config /etc/gatehouse/gatehouse.toml <"$REPO/examples/hello/gatehouse-hello.toml"
    apps_stop_gatehouse
    local out rc=0
    out=$(G systemd-analyze verify hello.socket hello.service 2>&1) || rc=$?
    [ $rc = 0 ] && [ -z "$out" ] && ok "systemd-analyze verify hello.socket hello.service: clean" \
        || fail "systemd-analyze verify hello units (rc=$rc): $out"
    G systemctl enable --now hello.socket >/dev/null 2>&1 || fail "systemctl enable --now hello.socket"
    expect_eq "hello.socket active" active "$(state hello.socket)"
    expect_eq "hello.service not started yet" inactive "$(state hello.service)"

    local body pid1
    local took
    body=$(http_get -w '\n%{time_total}' http://127.0.0.1/) || { fail "first request through gatehouse failed"; return 1; }
    took=${body##*$'\n'} body=${body%%$'\n'*}
    case $body in 'hello from pid '*) ok "first request through gatehouse started gatehouse and hello: '$body' in ${took}s" ;; *) fail "unexpected body: ${body:0:120}" ;; esac
    expect_eq "hello.service started on demand" active "$(state hello.service)"
    expect_eq "Type" notify "$(prop hello.service Type)"
    local st; st=$(prop hello.service StatusText)
    case $st in *'requests served'*) ok "StatusText = '$st'" ;; *) fail "StatusText = '$st'" ;; esac
    pid1=$(prop hello.service MainPID)
    local uid; uid=$(G awk '/^Uid:/ {print $2}' "/proc/$pid1/status")
    if [ "$uid" -ge 61184 ] && [ "$uid" -le 65519 ]; then ok "hello runs as dynamic user $uid"; else fail "hello uid $uid"; fi
    local exposure
    exposure=$(G systemd-analyze security --no-pager hello.service 2>&1 | sed -n 's/.*Overall exposure level for hello.service: \([0-9.]*\).*/\1/p')
    if [ -n "$exposure" ] && awk -v l="$exposure" 'BEGIN {exit !(l <= 1.5)}'; then ok "systemd-analyze security hello.service: exposure $exposure"; else fail "hello.service exposure '$exposure' > 1.5"; fi
    expect_eq "RLIMIT_NOFILE soft = hard (raised with prlimit64 under ~@resources)" \
        "$(G awk '/^Max open files/ {print $5}' "/proc/$pid1/limits")" "$(G awk '/^Max open files/ {print $4}' "/proc/$pid1/limits")"

    # The access log as fields: the request above, found by its journal fields.
    in_journal() { G journalctl -u hello HTTP_STATUS=200 HTTP_PATH=/ -o json --no-pager | grep -q '"HTTP_METHOD":"GET"'; }
    if wait_until 10 in_journal; then
        ok "journalctl -u hello HTTP_STATUS=200: $(journal_fields hello HTTP_STATUS=200)"
    else
        fail "no entry for journalctl -u hello HTTP_STATUS=200"
        G journalctl -u hello -n 10 -o json --no-pager | sed 's/^/      /'
    fi
    expect_eq "REMOTE_ADDR of a request through gatehouse's unix connection" unix \
        "$(G journalctl -u hello HTTP_STATUS=200 -o json -n 1 --no-pager | sed -n 's/.*"REMOTE_ADDR":"\([^"]*\)".*/\1/p')"

    # Idle exit, and the next request starts it again.
    hello_dropin e2e "$(printf '[Service]\nExecStart=\nExecStart=/usr/local/bin/hello --idle-exit-after 2s')"
    G systemctl daemon-reload
    G systemctl restart hello.service
    http_get -o /dev/null http://127.0.0.1/ || fail "request after the restart failed"
    stopped() { [ "$(state hello.service)" = inactive ]; }
    if wait_until 10 stopped; then ok "hello stopped by itself after --idle-exit-after 2s"; else fail "hello still $(state hello.service) 10 s after the last request"; fi
    expect_eq "clean exit (Result)" success "$(prop hello.service Result)"
    expect_eq "hello.socket still listening" active "$(state hello.socket)"
    body=$(http_get http://127.0.0.1/) || fail "request after the idle exit failed"
    case $body in 'hello from pid '*) ok "the next request started it again: '$body'" ;; *) fail "after idle exit: ${body:0:120}" ;; esac
    # The reason is a field of the "stopping" entry, as in gatehouse's journal.
    G journalctl -u hello --no-pager -o cat REASON='no connection for 2s' | grep -qx stopping \
        && ok "journalctl -u hello REASON='no connection for 2s': stopping" || fail "no idle stop in the journal"

    # The watchdog: SIGSTOP, killed within WatchdogSec, started again.
    hello_dropin e2e "$(printf '[Service]\nWatchdogSec=3s')"
    G systemctl daemon-reload
    G systemctl restart hello.service
    local pid nr t0
    pid=$(prop hello.service MainPID); nr=$(prop hello.service NRestarts)
    expect_eq "WatchdogUSec from the drop-in" 3s "$(prop hello.service WatchdogUSec)"
    G bash -c "kill -STOP $pid" || { fail "kill -STOP $pid"; return 1; }
    t0=$SECONDS
    restarted() {
        local p; p=$(prop hello.service MainPID)
        [ "$p" != 0 ] && [ "$p" != "$pid" ] && [ "$(prop hello.service NRestarts)" -gt "$nr" ] && [ "$(state hello.service)" = active ]
    }
    if wait_until 20 restarted; then
        ok "SIGSTOPped hello killed and restarted after $((SECONDS - t0))s: MainPID $pid -> $(prop hello.service MainPID)"
        [ $((SECONDS - t0)) -le 10 ] || fail "took more than WatchdogSec=3s + 7s"
    else
        fail "not restarted within 20 s (MainPID $(prop hello.service MainPID), NRestarts $(prop hello.service NRestarts))"
    fi
    G journalctl -u hello --no-pager -n 40 | grep -q 'Watchdog timeout' && ok "journal: 'Watchdog timeout'" || fail "no 'Watchdog timeout' in the journal"
    case $(http_get http://127.0.0.1/) in 'hello from pid '*) ok "serving again through gatehouse" ;; *) fail "not serving after the watchdog restart" ;; esac

    apps_cleanup hello
    G rm -f /usr/local/bin/hello
}

# The shipped Python examples (units/examples/app1.*, app2.*, gatehouse-apps.toml) with
# Debian's gunicorn and uvicorn, apps written here: a WSGI and an ASGI hello-world.
step_python_apps() {
    local bin
    for bin in gunicorn uvicorn; do
        G test -x "/usr/bin/$bin" || { fail "/usr/bin/$bin missing in the guest image (E2E_GUEST_PKGS)"; return 1; }
    done
    G mkdir -p /srv/app1/app1 /srv/app2/app2
    G touch /srv/app1/app1/__init__.py /srv/app2/app2/__init__.py
    put_config /srv/app1/app1/wsgi.py <<'EOF'
def application(environ, start_response):
    body = "app1 {} {} for {}\n".format(
        environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("HTTP_X_FORWARDED_FOR", "-")
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
EOF
    put_config /srv/app2/app2/main.py <<'EOF'
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    client = scope["client"][0] if scope.get("client") else "-"
    body = "app2 {} for {}\n".format(scope["path"], client).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
EOF
    G chmod -R a+rX /srv/app1 /srv/app2
    apps_setup_upstream_group || return 1
    local u
    for u in app1.socket app1.service app2.socket app2.service; do
        copy_in "$REPO/units/examples/$u" /etc/systemd/system
    done
    put_config /etc/gatehouse/gatehouse.toml <"$REPO/units/examples/gatehouse-apps.toml"
    G gatehouse check --config /etc/gatehouse/gatehouse.toml >/dev/null 2>&1 && ok "gatehouse check on gatehouse-apps.toml" || fail "gatehouse check rejects gatehouse-apps.toml"
    apps_stop_gatehouse
    local out rc=0
    out=$(G systemd-analyze verify app1.socket app1.service app2.socket app2.service 2>&1) || rc=$?
    [ $rc = 0 ] && [ -z "$out" ] && ok "systemd-analyze verify app1/app2 units: clean" \
        || fail "systemd-analyze verify app units (rc=$rc): $out"
    G systemctl enable --now app1.socket app2.socket >/dev/null 2>&1 || fail "systemctl enable --now app1.socket app2.socket"
    expect_eq "app1.service not started yet" inactive "$(state app1.service)"

    local body took
    body=$(http_get -w '\n%{time_total}' http://127.0.0.1/hello) || { fail "first request through gatehouse to app1 failed"; G journalctl -u app1 -u gatehouse -n 20 --no-pager | sed 's/^/      /'; return 1; }
    took=${body##*$'\n'} body=${body%%$'\n'*}
    ok "first request (gatehouse and gunicorn started by it) took ${took}s"
    expect_eq "gunicorn answers through gatehouse (X-Forwarded-For set)" "app1 GET /hello for 127.0.0.1" "$body"
    expect_eq "app1.service started by that request" active "$(state app1.service)"
    expect_eq "app1 Type=notify (gunicorn sent READY=1)" notify "$(prop app1.service Type)"
    body=$(http_get http://127.0.0.1/api/items) || fail "request to app2 failed"
    expect_eq "uvicorn answers /api/items as /items, client from X-Forwarded-For" "app2 /items for 127.0.0.1" "$body"
    logged() { G journalctl -u "$1" --no-pager -o cat | grep -q "$2"; }
    wait_until 10 logged app1 '"GET /hello HTTP/1.1" 200' && ok "journalctl -u app1 shows gunicorn's access line" \
        || fail "no 'GET /hello' in journalctl -u app1"
    wait_until 10 logged app2 '"GET /items HTTP/1.1" 200' && ok "journalctl -u app2 shows uvicorn's access line" \
        || fail "no 'GET /items' in journalctl -u app2"
    in_gatehouse_journal() { G journalctl -u gatehouse UPSTREAM=unix:/run/app1/gunicorn.sock HTTP_STATUS=200 -o json --no-pager | grep -q '"HTTP_PATH":"/hello"'; }
    wait_until 10 in_gatehouse_journal && ok "journalctl -u gatehouse UPSTREAM=unix:/run/app1/gunicorn.sock has it" \
        || fail "gatehouse's entry with UPSTREAM=unix:/run/app1/gunicorn.sock missing"

    # ExecReload=: gunicorn's HUP replaces its workers; the arbiter stays.
    local arbiter; arbiter=$(prop app1.service MainPID)
    G systemctl reload app1 && ok "systemctl reload app1 (HUP: new workers)" || fail "systemctl reload app1"
    expect_eq "same arbiter after the reload" "$arbiter" "$(prop app1.service MainPID)"
    expect_eq "still answering after the reload" "app1 GET / for 127.0.0.1" "$(http_get http://127.0.0.1/)"

    # A deploy: two restarts of app1 under a client loop, not one request failed.
    local pid; pid=$(prop app1.service MainPID)
    load_start apps 10 http://127.0.0.1/
    sleep 2; G systemctl restart app1 || fail "systemctl restart app1 (1)"
    sleep 3; G systemctl restart app1 || fail "systemctl restart app1 (2)"
    load_finish apps
    local now; now=$(prop app1.service MainPID)
    if [ "$now" != "$pid" ] && [ "$now" != 0 ]; then ok "app1 restarted: MainPID $pid -> $now"; else fail "app1 MainPID did not change ($pid -> $now)"; fi

    apps_cleanup app1 app2
    G rm -rf /srv/app1 /srv/app2
}
