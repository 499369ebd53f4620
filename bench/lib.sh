# Shared by the bench scripts: tools, server start/stop, wrk runs, RSS, medians, the table.
# Every load run is bounded by wrk's -d; every wait loop by a deadline.

BENCH_DURATION=${BENCH_DURATION:-5s}
BENCH_REPS=${BENCH_REPS:-3}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

need_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v python3 >/dev/null || missing+=(python3) # idle-conns.sh's clients
    [ -z "${RATE:-}" ] || command -v h2load >/dev/null || missing+=(nghttp2-client)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}" >&2
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
    # The distro's nginx service must not hold ports or CPU during the run.
    systemctl stop nginx 2>/dev/null || true
}

# A port nothing listens on (the machine may run other benchmarks and test servers).
free_port() {
    local p
    for p in $(shuf -i 20000-60000 -n 100); do
        if ! (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    echo "no free port" >&2
    return 1
}

wait_port() { # port
    local deadline=$((SECONDS + 10))
    until (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "nothing listens on $1" >&2; return 1; }
        sleep 0.05
    done
}

# Sum of VmHWM (peak RSS, KiB) over a process and its children (nginx master + worker).
peak_rss_kib() { # pid
    local total=0 p
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        local v
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# Sum of VmRSS (current RSS, KiB) over a process and its children.
rss_kib() { # pid
    local total=0 p v
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# wrk on the client core; prints "req_per_sec p50_ms p99_ms errors non2xx requests".
# With RATE=N (requests per second over all connections) h2load offers that fixed load
# instead (run_h2load), so both servers are measured at the same load and their latency
# percentiles compare: wrk's closed loop drives its own core harder against the faster
# server and counts its own queueing in that server's latency.
run_wrk() { # url connections [extra wrk args...]
    [ -z "${RATE:-}" ] || { run_h2load "$@"; return; }
    local url=$1 conns=$2; shift 2
    local out
    out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$conns" -d"$BENCH_DURATION" --latency "$@" "$url" 2>&1)
    echo "$out" >>"$BENCH_LOG"
    awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        /Requests\/sec/ {rps=$2}
        /^ +50%/ {p50=ms($2)}
        /^ +99%/ {p99=ms($2)}
        /Socket errors/ {gsub(",",""); err+=$4+$6+$8+$10}
        /Non-2xx or 3xx/ {non2xx=$NF}
        / requests in / {n=$1}
        END {printf "%s %s %s %d %d %d\n", rps, p50, p99, err, non2xx, n}
    ' <<<"$out"
}

# run_wrk's fixed-rate twin: h2load (HTTP/1.1, one connection per client, --rps each) on
# the client core, percentiles from its per-request log. wrk's `-s X.lua` becomes `-d X.body`
# (the caller writes the body there). Same output as run_wrk; "errors" counts failed and
# errored requests.
run_h2load() { # url connections [extra wrk args...]
    local url=$1 conns=$2; shift 2
    local args=() out rps
    while [ $# -gt 0 ]; do
        case $1 in
            -s) args+=(-d "${2%.lua}.body" -H "Content-Type: application/octet-stream"); shift 2 ;;
            -H) args+=(-H "$2"); shift 2 ;;
            *) echo "run_h2load: cannot translate wrk argument $1" >&2; return 1 ;;
        esac
    done
    rps=$(( (RATE + conns - 1) / conns ))
    rm -f "$WORK/h2load.log"
    out=$(taskset -c "$CLIENT_CPU" h2load --h1 -c"$conns" --rps="$rps" -D "$BENCH_DURATION" \
        --log-file="$WORK/h2load.log" "${args[@]}" "$url" 2>&1)
    echo "$out" >>"$BENCH_LOG"
    # log lines: start (µs since the epoch), status (-1: the stream failed), duration (µs).
    # h2load's "failed" count includes every non-2xx answer, so errors are its "errored"
    # and "timeout" counts; a server that refused every connection leaves those at 0 and an
    # empty log, counted as an error here.
    sort -n -k3 "$WORK/h2load.log" 2>/dev/null | awk -v summary="$out" '
        function pct(p) { return d[int((NR - 1) * p) + 1] / 1000 }
        { d[NR] = $3; if ($2 !~ /^[23]/ && $2 != -1) non2xx++ }
        END {
            n = split(summary, line, "\n")
            for (i = 1; i <= n; i++) {
                if (line[i] ~ /^finished in/) { split(line[i], f, " "); rps = f[4] }
                if (line[i] ~ /^requests:/) { split(line[i], q, " "); err = q[12] + q[14] }
            }
            if (NR == 0) err++
            printf "%s %.3f %.3f %d %d %d\n", rps, pct(0.5), pct(0.99), err, non2xx, NR
        }'
}

# Writes $WORK/nginx.conf: one worker, private paths under $WORK/nginx, an access log, and
# the http-level lines given on stdin (server blocks and the like).
write_nginx_conf() {
    mkdir -p "$WORK/nginx"
    {
        cat <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    include /etc/nginx/mime.types;
    access_log $WORK/nginx/access.log;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
NGINX
        cat
        echo "}"
    } >"$WORK/nginx.conf"
}

# CPU time (clock ticks) used so far by a process and its children (nginx master + worker),
# as "user system": the split shows how much of a request's cost is the kernel's socket work,
# which no server can avoid, and how much is the server's own code.
# nginx locations for an upstream that reads an upload whole before it answers, as an app
# does. "return" alone answers at once and discards the body as it comes; a proxy that sees
# the answer early may stop sending (nginx does, then reconnects: at 64 connections it
# forwarded ~45 % of each 1 MiB body). mirror_request_body reads the body first; the static
# handler then refuses the POST (405), answered as 200. ROOT/PATH must exist.
upload_locations() { # path root
    cat <<NGINX
        location $1 {
            root $2;
            client_max_body_size 10m;
            client_body_buffer_size 2m;
            mirror /sink;
            mirror_request_body on;
            error_page 405 =200 @ok;
        }
        location = /sink { internal; return 204; }
        location @ok { return 200 "hello from upstream\n"; }
NGINX
}

cpu_ticks() { # pid
    local user=0 sys=0 p u s
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
        user=$((user + u))
        sys=$((sys + s))
    done
    echo "$user $sys"
}
HZ=$(getconf CLK_TCK)
per_req() { # ticks requests -> µs per request
    awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { printf "%.2f", (n > 0) ? t * 1e6 / hz / n : 0 }'
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# A plain static site on both servers, serving $1: $WORK/gatehouse.toml (on port $2) and
# $WORK/nginx.conf (on port $3); then both started on $SERVER_CPU, their pids in GH_PID and
# NGX_PID once both answer.
start_static_pair() { # root gatehouse_port nginx_port
    cat >"$WORK/gatehouse.toml" <<TOML
[server]
max_connections = 100000
[[listener]]
name = "http"
bind = ["127.0.0.1:$2"]
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
static = { root = "$1" }
TOML
    write_nginx_conf <<NGINX
    server { listen 127.0.0.1:$3; root $1; }
NGINX
    # extra nginx.conf edits, e.g. more worker_connections
    [ -z "${NGINX_CONF_EDIT:-}" ] || sed -i "$NGINX_CONF_EDIT" "$WORK/nginx.conf"
    taskset -c "$SERVER_CPU" "$GH" serve --config "$WORK/gatehouse.toml" --log-target stderr 2>"$WORK/gatehouse.log" &
    GH_PID=$!
    taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK/nginx" &
    NGX_PID=$!
    wait_port "$2"
    wait_port "$3"
    sleep 0.5
}
