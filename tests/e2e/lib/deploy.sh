# shellcheck shell=bash
# SC2015: `cmd && ok ... || fail ...` is intended (ok always succeeds).
# SC2317: the small check functions are called through wait_until.
# shellcheck disable=SC2015,SC2317
# `gatehouse deploy` under a real systemd with Debian's gunicorn: the shipped templates
# (units/examples/shop@.socket, shop@.service) and gatehouse-deploy.toml, releases in
# /srv/shop/VERSION. Sourced by tests/e2e/run after apps.sh (uses its helpers).

# The latency a deploy may add to a request, over the slowest request of the same client
# loop without a deploy: the new release's gunicorn starts on the same 2 cores meanwhile.
DEPLOY_MARGIN_MS=250

# deploy_release VERSION BODY [BROKEN]: /srv/shop/VERSION, answering BODY on every path;
# BROKEN: its code raises at import, so gunicorn (--preload) fails to start.
deploy_release() {
    G mkdir -p "/srv/shop/$1/shop"
    G touch "/srv/shop/$1/shop/__init__.py"
    {
        [ -n "${3:-}" ] && printf 'raise RuntimeError("shop %s is broken on purpose")\n' "$1"
        cat <<EOF2
def application(environ, start_response):
    body = b"$2\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
EOF2
    } | put_config "/srv/shop/$1/shop/wsgi.py"
    G chmod -R a+rX /srv/shop
}

# gdeploy VERSION: `gatehouse deploy shop VERSION`, its output in $DEPLOY_OUT, its status
# returned, its wall time in $DEPLOY_SECS.
gdeploy() {
    local t0 rc=0
    t0=$(date +%s.%N)
    DEPLOY_OUT=$(G gatehouse deploy shop "$1" 2>&1) || rc=$?
    DEPLOY_SECS=$(echo "$(date +%s.%N) $t0" | awk '{printf "%.1f", $1 - $2}')
    return $rc
}

step_app_deploy() {
    G test -x /usr/bin/gunicorn || { fail "/usr/bin/gunicorn missing in the guest image"; return 1; }
    copy_in "$E2E_DIR/guest/deploy-client" /root || { fail "copy deploy-client into the guest"; return 1; }
    deploy_release v1 "shop v1"
    deploy_release v2 "shop v2"
    deploy_release v3 "shop v3" broken
    apps_setup_upstream_group || return 1
    local u
    for u in 'shop@.socket' 'shop@.service' 'api@.socket' 'api@.service'; do
        copy_in "$REPO/units/examples/$u" /etc/systemd/system
    done
    put_config /etc/gatehouse/gatehouse.toml <"$REPO/units/examples/gatehouse-deploy.toml"
    G gatehouse check >/dev/null 2>&1 && ok "gatehouse check on gatehouse-deploy.toml" || fail "gatehouse check rejects gatehouse-deploy.toml"
    G systemctl daemon-reload
    G systemctl restart gatehouse.service || { fail "gatehouse did not start on gatehouse-deploy.toml"; return 1; }
    local out rc=0
    out=$(G systemd-analyze verify shop@v1.socket shop@v1.service api@v1.socket api@v1.service 2>&1) || rc=$?
    [ $rc = 0 ] && [ -z "$out" ] && ok "systemd-analyze verify shop@v1 and api@v1 (gunicorn, uvicorn templates): clean" \
        || fail "systemd-analyze verify shop@/api@ units (rc=$rc): $out"
    expect_eq "never deployed: 503" 503 "$(http_get -o /dev/null -w '%{http_code}' http://127.0.0.1/)"

    if gdeploy v1; then ok "gatehouse deploy shop v1: exit 0 in ${DEPLOY_SECS}s"; else fail "gatehouse deploy shop v1: $DEPLOY_OUT"; return 1; fi
    expect_eq "shop v1 serves" "shop v1" "$(http_get http://127.0.0.1/)"
    expect_eq "shop@v1.socket enabled" enabled "$(G systemctl is-enabled shop@v1.socket 2>&1)"

    # The app's normal latency: the same client loop, no deploy.
    G rm -f /root/base.* /root/dep.* /root/dep.stop
    G /root/deploy-client run http://127.0.0.1/ /root/base 2 3 /root/dep.stop
    # v1 -> v2, v3 (broken), -> v1 under the loop; bounded at 120 s.
    G /root/deploy-client run http://127.0.0.1/ /root/dep 2 120 /root/dep.stop &
    local client=$!
    sleep 1
    if gdeploy v2; then ok "gatehouse deploy shop v2 under the loop: exit 0 in ${DEPLOY_SECS}s"; else fail "gatehouse deploy shop v2: $DEPLOY_OUT"; fi
    printf '%s\n' "$DEPLOY_OUT" | sed 's/^/      /'
    sleep 1
    if gdeploy v3; then
        fail "gatehouse deploy shop v3 (broken) exited 0"
    else
        ok "gatehouse deploy shop v3 (fails at start-up): exit $? in ${DEPLOY_SECS}s"
    fi
    printf '%s\n' "$DEPLOY_OUT" | tail -n 12 | sed 's/^/      /'
    case $DEPLOY_OUT in *'shop v3 is broken on purpose'*) ok "its output has the app's error from the journal" ;; *) fail "no app error in: $DEPLOY_OUT" ;; esac
    expect_eq "v2 still serves after the failed deploy" "shop v2" "$(http_get http://127.0.0.1/)"
    expect_eq "shop@v3.socket stopped" inactive "$(state shop@v3.socket)"
    expect_eq "shop@v3.service stopped" inactive "$(state shop@v3.service)"
    sleep 1
    if gdeploy v1; then ok "rollback: gatehouse deploy shop v1: exit 0 in ${DEPLOY_SECS}s"; else fail "gatehouse deploy shop v1 (rollback): $DEPLOY_OUT"; fi
    sleep 1
    G touch /root/dep.stop
    wait "$client" || true
    deploy_judge
    deploy_after_checks
    deploy_cleanup
}

# The loop's verdict: no failure, latency within the margin, one switch point each way.
deploy_judge() {
    local r; r=$(G /root/deploy-client report /root/dep 2 /root/base 2) || { fail "deploy-client report: $r"; return 1; }
    printf '%s\n' "$r" | sed 's/^/      /'
    local n failed max base
    n=$(sed -n 's/^requests=\([0-9]*\).*/\1/p' <<<"$r")
    failed=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$r")
    max=$(sed -n 's/^requests=.* max_ms=\([0-9.]*\).*/\1/p' <<<"$r")
    base=$(sed -n 's/.* baseline_max_ms=\([0-9.]*\).*/\1/p' <<<"$r")
    [ "${n:-0}" -gt 100 ] && [ "$failed" = 0 ] && ok "client loop: $n requests, 0 failed" || fail "client loop: $n requests, $failed failed"
    if awk -v m="$max" -v b="$base" -v d="$DEPLOY_MARGIN_MS" 'BEGIN {exit !(m <= b + d)}'; then
        ok "slowest request ${max} ms <= normal ${base} ms + ${DEPLOY_MARGIN_MS} ms"
    else
        fail "slowest request ${max} ms > normal ${base} ms + ${DEPLOY_MARGIN_MS} ms"
    fi
    local k
    for k in 0 1; do
        expect_eq "client $k saw v1, then v2, then v1, one switch each" "shop_v1>shop_v2>shop_v1" \
            "$(sed -n "s/^client$k=//p" <<<"$r")"
    done
}

deploy_after_checks() {
    local st; st=$(G gatehouse status 2>&1)
    printf '%s\n' "$st" | grep '^app\|last deploy' | sed 's/^/      /'
    case $st in *'app shop: live v1'*'last deploy'*'v2 -> v1: ok'*) ok "gatehouse status: shop live v1, last deploy v2 -> v1 ok" ;; *) fail "gatehouse status: $st" ;; esac
    expect_eq "shop@v2.socket stopped" inactive "$(state shop@v2.socket)"
    expect_eq "shop@v2.socket disabled" disabled "$(G systemctl is-enabled shop@v2.socket 2>&1)"
    local m; m=$(G curl -sS --unix-socket /run/gatehouse/admin.sock http://localhost/metrics)
    grep -q '^gatehouse_app_instance_live{app="shop",instance="v1"} 1' <<<"$m" && grep -q '^gatehouse_app_instance_requests_total{app="shop",instance="v2"} [1-9]' <<<"$m" \
        && ok "metrics per instance: live v1, requests counted on v2" || fail "metrics: $(grep app_instance <<<"$m")"
    G test -s /var/lib/gatehouse/apps/shop.json && ok "live instance persisted in /var/lib/gatehouse/apps/shop.json" || fail "no /var/lib/gatehouse/apps/shop.json"
    G systemctl restart gatehouse.service
    expect_eq "after a restart of gatehouse, v1 still serves" "shop v1" "$(http_get http://127.0.0.1/)"
    G systemctl reload gatehouse.service || fail "systemctl reload gatehouse"
    expect_eq "after a reload, v1 still serves" "shop v1" "$(http_get http://127.0.0.1/)"
}

deploy_cleanup() {
    local v
    for v in v1 v2 v3; do
        G systemctl disable --now "shop@$v.socket" >/dev/null 2>&1
        G systemctl stop "shop@$v.service" >/dev/null 2>&1
    done
    G rm -f /etc/systemd/system/shop@.s* /etc/systemd/system/api@.s*
    G rm -rf /srv/shop /var/lib/gatehouse/apps
    apps_cleanup
}
