# shellcheck shell=bash
# shellcheck disable=SC2015,SC2317,SC2034
# Steps for the failures a real host hits (issue 22): a broken configuration under socket
# activation, the cost of a cold start, WebSocket tunnels and idle exit, thousands of
# clients against the file-descriptor limit, journald's rate limit, `dpkg --root`, the
# admin's own sockets on removal, and the move of the units to /usr/lib. Sourced after
# steps.sh, whose helpers (G, ok, fail, expect_eq, prop, state, http_get, ...) they use.

# HTTP status of one request, "000" when refused or timed out.
http_code() { G curl -s -o /dev/null -m 5 -w '%{http_code}' "${1:-http://127.0.0.1/}" || true; }

# A typo in the file under socket activation: 503 meanwhile, never a loop that fails the
# socket, and the site back after the fix with a restart or by itself.
step_config_typo() {
    local nr codes refused=0 c i cursor
    nr=$(prop gatehouse.service NRestarts)
    cursor=$(G journalctl -u gatehouse -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
    { echo 'bogus_key = 1'; G cat /root/gatehouse.toml.orig; } | put_config /etc/gatehouse/gatehouse.toml
    G systemctl restart gatehouse && ok "systemctl restart with bogus_key = 1 in the file" \
        || fail "systemctl restart failed"
    codes=''
    for i in $(seq 30); do
        c=$(http_code)
        [ "$c" = 000 ] && refused=$((refused + 1))
        codes+="$c "
    done
    expect_eq "30 requests during the broken config: 503 each" "$(printf '503 %.0s' $(seq 30))" "$codes"
    expect_eq "requests refused or timed out" 0 "$refused"
    expect_eq "socket still active" active "$(state gatehouse.socket)"
    expect_eq "socket Result" success "$(prop gatehouse.socket Result)"
    expect_eq "service running (standby)" active "$(state gatehouse.service)"
    expect_eq "no restart loop (NRestarts)" "$nr" "$(prop gatehouse.service NRestarts)"
    local st; st=$(prop gatehouse.service StatusText)
    case $st in *'CONFIGURATION INVALID'*bogus_key*) ok "StatusText: '${st:0:110}...'" ;;
        *) fail "StatusText does not say what is wrong: '$st'" ;; esac
    G journalctl -u gatehouse --no-pager -o cat ${cursor:+--after-cursor="$cursor"} | grep -q 'gatehouse.toml:1:1.*bogus_key' \
        && ok "journal: gatehouse.toml:1:1 ... bogus_key" || fail "the journal lacks the file:line:col error"
    # An idle exit meanwhile, then the next connection: standby again, still no loop.
    G systemctl stop gatehouse.service 2>/dev/null
    expect_eq "first request after a stop, still broken" 503 "$(http_code)"
    expect_eq "socket still active after that start" active "$(state gatehouse.socket)"

    restore_default_config
    G systemctl restart gatehouse || fail "systemctl restart after the fix failed"
    expect_eq "after the fix and the usual restart" 200 "$(http_code)"

    # Fixed without a restart: standby notices the file within a second.
    { echo 'bogus_key = 1'; G cat /root/gatehouse.toml.orig; } | put_config /etc/gatehouse/gatehouse.toml
    G systemctl restart gatehouse
    expect_eq "broken again" 503 "$(http_code)"
    restore_default_config
    serving() { [ "$(http_code)" = 200 ]; }
    if wait_until 5 serving; then ok "fixing the file alone brings the site back"; else fail "still $(http_code) 5 s after the fix"; fi
    expect_eq "socket never failed (Result)" success "$(prop gatehouse.socket Result)"
}

# Time to first byte of the first request after `systemctl stop gatehouse.service` (an idle
# exit costs the same), median of 5, as shipped and with the ExecStartPre= check the unit
# used to have: the cost that check added to every on-demand start.
cold_median_ms() {
    local i out samples=()
    for i in 1 2 3 4 5; do
        G systemctl stop gatehouse.service 2>/dev/null
        out=$(G curl -sS -o /dev/null -m 10 -w '%{http_code} %{time_starttransfer}' http://127.0.0.1/ 2>&1)
        case $out in "200 "*) samples+=("${out#200 }") ;; *) echo "cold start failed: $out" >&2 ;; esac
    done
    [ ${#samples[@]} = 5 ] || return 1
    printf '%s\n' "${samples[@]}" | sort -n | sed -n 3p | awk '{printf "%d", $1 * 1000}'
}

step_cold_start() {
    local shipped with_check
    # Ten on-demand starts in a few seconds: clear the start rate limit's count first.
    G systemctl reset-failed gatehouse.service gatehouse.socket 2>/dev/null || true
    shipped=$(cold_median_ms) || fail "a first request after a stop failed (as shipped)"
    G mkdir -p /etc/systemd/system/gatehouse.service.d
    printf '[Service]\nExecStartPre=/usr/bin/gatehouse check --fd-names http --config /etc/gatehouse/gatehouse.toml\n' \
        | put_config /etc/systemd/system/gatehouse.service.d/e2e-check.conf
    G systemctl daemon-reload
    with_check=$(cold_median_ms) || fail "a first request after a stop failed (with the check)"
    G rm -f /etc/systemd/system/gatehouse.service.d/e2e-check.conf
    G systemctl daemon-reload
    ok "first request after a stop: median ${shipped} ms as shipped, ${with_check} ms with the former ExecStartPre= check (5 each)"
    COLD_START="${shipped}/${with_check} ms"
    [ "${shipped:-0}" -gt 0 ] && [ "$shipped" -lt 2000 ] || fail "cold start median '${shipped}' ms"
    G systemctl start gatehouse.service
}

# A proxied WebSocket tunnel open past idle_exit_after is a connection: no idle exit.
step_websocket() {
    G systemd-run -q --unit=e2e-ws-echo /usr/bin/python3 /root/wsecho serve 9001
    { printf '[server]\nidle_exit_after = "2s"\n\n[[listener]]\nname = "http"\n\n[[site]]\nhosts = ["*"]\n'
      printf '[[site.route]]\npath = "/"\nproxy = { upstreams = ["http://127.0.0.1:9001"] }\n'; } \
        | put_config /etc/gatehouse/gatehouse.toml
    G systemctl restart gatehouse
    local pid out rc=0
    pid=$(prop gatehouse.service MainPID)
    out=$(G timeout 20 /root/wsecho client 80 6 2>&1) || rc=$?
    if [ $rc = 0 ]; then ok "a tunnel idle for 6 s with idle_exit_after = 2s still echoes"; else fail "websocket: $out"; fi
    expect_eq "same server process throughout" "$pid" "$(prop gatehouse.service MainPID)"
    stopped() { [ "$(state gatehouse.service)" = inactive ]; }
    if wait_until 10 stopped; then ok "idle exit once the tunnel closed"; else fail "no idle exit after the tunnel closed"; fi
    G systemctl stop e2e-ws-echo 2>/dev/null || true
    restore_default_config
    G systemctl start gatehouse.service
}

# Several thousand keep-alive clients at once against the packaged unit and config.
step_fd_limit() {
    http_get -o /dev/null http://127.0.0.1/ || true
    local pid soft hard out n first both
    pid=$(prop gatehouse.service MainPID)
    read -r soft hard < <(G awk '/^Max open files/ {print $4, $5}' "/proc/$pid/limits")
    expect_eq "LimitNOFILE" 524288 "$(prop gatehouse.service LimitNOFILE)"
    expect_eq "soft RLIMIT_NOFILE raised to the hard limit" "$hard $hard" "$soft $hard"
    out=$(G timeout 90 /root/conns 4000 60 2>&1) || true
    read -r n first both <<<"$out"
    if [ "${both:-}" = 4000 ] && [ "${first:-}" = 4000 ]; then
        ok "4000 concurrent keep-alive clients: 4000 answered, twice each"
    else
        fail "4000 concurrent keep-alive clients: $out (clients, first answers, second answers)"
    fi
    G journalctl -u gatehouse --no-pager -n 200 -o cat | grep -q 'accept failed' \
        && fail "accept() failed meanwhile (EMFILE?)" || ok "no accept() failure in the journal"
}

# journald's per-unit rate limit, made tiny for the guest: a sustained rate far above it
# loses no access entry.
step_journal_ratelimit() {
    G mkdir -p /etc/systemd/journald.conf.d
    printf '[Journal]\nRateLimitIntervalSec=30s\nRateLimitBurst=100\n' | put_config /etc/systemd/journald.conf.d/e2e-ratelimit.conf
    G systemctl restart systemd-journald
    expect_eq "LogRateLimitBurst of the unit" 1000000 "$(prop gatehouse.service LogRateLimitBurst)"
    http_get -o /dev/null http://127.0.0.1/ || true
    local marker=rl$RANDOM cursor t0 dt count suppressed
    cursor=$(G journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
    t0=$(date +%s%N)
    # 3000 requests on one keep-alive connection (curl's URL globbing)
    G curl -s -o /dev/null "http://127.0.0.1/$marker/[1-3000]"
    dt=$(( ($(date +%s%N) - t0) / 1000000 ))
    counted() {
        count=$(G journalctl -u gatehouse -o json --no-pager --after-cursor="$cursor" | grep -c "\"HTTP_PATH\":\"/$marker/" || true)
        [ "$count" = 3000 ]
    }
    wait_until 20 counted || true
    ok "3000 requests in ${dt} ms (journald allows 100 per 30 s here)"
    expect_eq "access entries in the journal" 3000 "$count"
    suppressed=$(G journalctl --no-pager -o cat --after-cursor="$cursor" | grep 'Suppressed' | grep -c gatehouse || true)
    expect_eq "journald 'Suppressed ... gatehouse' messages" 0 "$suppressed"
    G rm -f /etc/systemd/journald.conf.d/e2e-ratelimit.conf
    G systemctl restart systemd-journald
}

# server.access_log_file under the shipped unit: LogsDirectory= gives the dynamic user
# /var/log/gatehouse; a reload reopens the file (what logrotate's postrotate asks for).
step_access_log_file() {
    local conf=/etc/gatehouse/gatehouse.toml log=/var/log/gatehouse/access.log marker=alf$RANDOM lines pid
    G cp "$conf" /root/gatehouse.toml.before-alf
    G sed -i "s|^\\[server\\]\$|[server]\\naccess_log_file = \"$log\"|" "$conf"
    G systemctl restart gatehouse.service
    G curl -s -o /dev/null "http://127.0.0.1/$marker/[1-500]"
    file_has() { [ "$(G sh -c "grep -c \" /$2/[0-9]* \" $1" 2>/dev/null)" = "$3" ]; }
    wait_until 10 file_has "$log" "$marker" 500 || true
    expect_eq "access lines in $log" 500 "$(G sh -c "grep -c ' /$marker/' $log" || true)"
    expect_eq "none of them in the journal" 0 \
        "$(G journalctl -u gatehouse -o cat --no-pager | grep -c " /$marker/" || true)"
    pid=$(prop gatehouse.service MainPID)
    expect_eq "the log's owner is the dynamic user" "$(G stat -c %u "/proc/$pid")" "$(G stat -c %u "$log")"
    # logrotate: move it away, reload, and the next lines start a new file
    G mv "$log" "$log.1"
    G systemctl reload gatehouse.service
    G curl -s -o /dev/null "http://127.0.0.1/$marker-after/[1-10]"
    wait_until 10 file_has "$log" "$marker-after" 10 || true
    lines=$(G sh -c "grep -c ' /$marker-after/' $log" || true)
    expect_eq "after the reload, lines in a new $log" 10 "$lines"
    expect_eq "the rotated file got none of them" 0 "$(G sh -c "grep -c ' /$marker-after/' $log.1" || true)"
    G cp /root/gatehouse.toml.before-alf "$conf"
    G systemctl restart gatehouse.service
}

# `dpkg --root` with chrootless scripts (DPKG_ROOT set): the running system's units and
# state are none of its business.
step_dpkg_root() {
    local alt=/srv/e2e-root deb sock_t
    deb="/root/debs/$(basename "$DEB")"
    G systemctl stop gatehouse.socket gatehouse.service 2>/dev/null
    G sh -c 'touch /var/lib/private/gatehouse/e2e-marker'
    G rm -rf "$alt"
    G mkdir -p "$alt/var/lib/dpkg/info" "$alt/var/lib/dpkg/updates" "$alt/var/log"
    G touch "$alt/var/lib/dpkg/status"
    if G dpkg --root="$alt" --force-script-chrootless --force-depends -i "$deb" >"$E2E_WORK/dpkg-root.log" 2>&1; then
        ok "dpkg --root=$alt --force-script-chrootless -i"
    else
        tail -10 "$E2E_WORK/dpkg-root.log" | sed 's/^/      /'; fail "dpkg --root install failed"
    fi
    expect_eq "enabled inside the root" yes "$(G test -L "$alt/etc/systemd/system/sockets.target.wants/gatehouse.socket" && echo yes)"
    expect_eq "the running system's socket left alone (still stopped)" inactive "$(state gatehouse.socket)"
    G dpkg --root="$alt" --force-script-chrootless --force-depends --purge gatehouse >>"$E2E_WORK/dpkg-root.log" 2>&1 \
        || fail "dpkg --root purge failed"
    expect_eq "the running system's state kept" yes "$(G test -f /var/lib/private/gatehouse/e2e-marker && echo yes)"
    expect_eq "the running system's config kept" yes "$(G test -f /etc/gatehouse/gatehouse.toml && echo yes)"
    expect_eq "the running system's socket still enabled" enabled "$(G systemctl is-enabled gatehouse.socket || true)"
    expect_eq "purged inside the root" no "$(G test -e "$alt/etc/gatehouse" && echo yes || echo no)"
    G rm -rf "$alt" /var/lib/private/gatehouse/e2e-marker
    G systemctl start gatehouse.socket
    expect_eq "serving again" 200 "$(http_code)"
}

# Removal with the admin's own sockets enabled: the documented gatehouse-https.socket and a
# template instance. Nothing may keep a port open or leave a dangling link.
step_remove_sockets() {
    copy_in "$REPO/units/examples/tls/gatehouse-https.socket" /etc/systemd/system
    G systemctl daemon-reload
    G systemctl stop gatehouse.service 2>/dev/null
    G systemctl enable --now gatehouse-https.socket >/dev/null 2>&1 || fail "gatehouse-https.socket did not start"
    G systemctl enable gatehouse@site2.socket >/dev/null 2>&1 || fail "enable gatehouse@site2.socket"
    G systemctl start gatehouse@site2.socket
    expect_eq "port 443 listening before" active "$(state gatehouse-https.socket)"
    local out
    out=$(G apt-get remove -y -q gatehouse 2>&1) || { fail "apt-get remove failed"; printf '%s\n' "$out" | tail -5; return 1; }
    grep -q 'gatehouse: disabled' <<<"$out" && ok "apt says: $(grep -o 'gatehouse: disabled.*' <<<"$out")" \
        || fail "apt output does not name the disabled sockets"
    expect_eq "gatehouse-https.socket stopped" inactive "$(state gatehouse-https.socket)"
    expect_eq "gatehouse-https.socket disabled" disabled "$(G systemctl is-enabled gatehouse-https.socket 2>/dev/null || true)"
    expect_eq "gatehouse@site2.socket stopped" inactive "$(state gatehouse@site2.socket)"
    G curl -sk -m 3 -o /dev/null https://127.0.0.1/ 2>/dev/null && fail "port 443 still open" || ok "port 443 closed"
    G curl -s -m 3 -o /dev/null http://127.0.0.1:8081/ 2>/dev/null && fail "port 8081 still open" || ok "port 8081 closed"
    # (gatehouse.socket's own link stays, masked, as deb-systemd-helper keeps it for a reinstall)
    expect_eq "dangling links of the admin's sockets" "" \
        "$(G find /etc/systemd/system -xtype l \( -name 'gatehouse@*' -o -name 'gatehouse-*' \) | tr '\n' ' ')"
    G rm -f /etc/systemd/system/gatehouse-https.socket
    G systemctl daemon-reload
}

# Units moved from /lib/systemd/system to /usr/lib/systemd/system: an upgrade from a
# package with the old paths (this one repacked) must keep them, on a merged-/usr system
# where both paths are the same file.
step_usr_move() {
    local dir=$E2E_WORK/oldlayout old_deb ver
    rm -rf "$dir"; mkdir -p "$dir"
    dpkg-deb -R "$DEB" "$dir/pkg"
    mkdir -p "$dir/pkg/lib/systemd"
    mv "$dir/pkg/usr/lib/systemd/system" "$dir/pkg/lib/systemd/system"
    rmdir "$dir/pkg/usr/lib/systemd" 2>/dev/null || true
    ver=$(awk '/^Version:/ {print $2}' "$dir/pkg/DEBIAN/control")
    sed -i "s/^Version: .*/Version: ${ver%-*}~old-1/" "$dir/pkg/DEBIAN/control"
    [ -f "$dir/pkg/DEBIAN/md5sums" ] && sed -i 's| usr/lib/systemd/system/| lib/systemd/system/|' "$dir/pkg/DEBIAN/md5sums"
    old_deb=$dir/gatehouse_old.deb
    dpkg-deb --root-owner-group -b "$dir/pkg" "$old_deb" >/dev/null
    copy_in "$old_deb" /root/debs
    G apt-get install -y -q /root/debs/gatehouse_old.deb >"$E2E_WORK/apt-old.log" 2>&1 || { fail "installing the /lib layout failed"; return 1; }
    expect_eq "old layout installed: socket active" active "$(state gatehouse.socket)"
    G apt-get install -y -q "/root/debs/$(basename "$DEB")" >"$E2E_WORK/apt-move.log" 2>&1 || { fail "upgrade to /usr/lib failed"; return 1; }
    ok "upgraded from units in /lib to /usr/lib"
    local f missing=''
    for f in gatehouse.socket gatehouse.service gatehouse@.socket gatehouse@.service; do
        G test -f "/usr/lib/systemd/system/$f" || missing+="$f "
    done
    expect_eq "unit files present after the move" "" "$missing"
    expect_eq "dpkg owns the new paths" gatehouse "$(G dpkg -S /usr/lib/systemd/system/gatehouse.service 2>/dev/null | cut -d: -f1)"
    G systemctl daemon-reload
    expect_eq "gatehouse.service loads" loaded "$(prop gatehouse.service LoadState)"
    expect_eq "socket active" active "$(state gatehouse.socket)"
    expect_eq "serving" 200 "$(http_code)"
    G apt-get purge -y -q gatehouse >/dev/null 2>&1 || fail "purge failed"
    G rm -f /root/debs/gatehouse_old.deb
}
