#!/usr/bin/env bash
# Writes packaging/link-order.txt: the functions a serving gatehouse executes, hottest
# first, for the linker's --symbol-ordering-file (build.rs passes it on release builds).
#
# Why: the kernel maps a binary's code in 64 KiB fault-around windows, so a process that
# touches 1.1 MB of functions scattered over 7 MB of .text keeps ~4 MiB of it resident.
# Laid out together, the same functions cost ~1.5 MiB, and the request path shares cache
# lines and TLB entries instead of spreading over the whole binary.
#
# Usage: packaging/link-order.sh [path/to/release/gatehouse]
# Needs valgrind, curl, openssl, python3. Re-run it after a toolchain or Cargo.lock update:
# symbol names carry hashes of both, and names the binary no longer has are ignored, which
# only costs locality (bench/static.sh's idle RSS row shows it). Takes about 20 seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
GH=${1:-target/release/gatehouse}
[ -x "$GH" ] || cargo build --release --locked -p gatehouse
for tool in valgrind curl openssl python3; do
    command -v $tool >/dev/null || { echo "link-order: $tool missing" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/gatehouse-link-order.XXXXXX)
JOURNAL=/run/systemd/journal/socket
MADE_JOURNAL= # what this run created under /run, removed again on exit
cleanup() {
    kill $(jobs -p) 2>/dev/null
    wait 2>/dev/null
    rm -rf "$WORK"
    if [ -n "$MADE_JOURNAL" ]; then
        rm -f $JOURNAL
        [ "$MADE_JOURNAL" != dir ] || rmdir "$(dirname $JOURNAL)"
    fi
}
trap cleanup EXIT
mkdir -p "$WORK/www/dir"
head -c 1024 /dev/urandom >"$WORK/www/1k.bin"
head -c $((1024 * 1024)) /dev/urandom >"$WORK/www/1m.bin"
echo '<h1>hello</h1>' >"$WORK/www/index.html"
gzip -k "$WORK/www/index.html"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

# Two configurations. "core" is what the package runs: a static site and a unix-socket
# admin listener, with systemd's notify socket and watchdog (stand-ins below); its
# functions go first, so a small site's idle process touches one compact block. "full"
# adds TLS, a proxy route (one process is its own upstream: /app/ goes to the back
# listener), HTTP/2 and a TCP admin listener; the functions only it runs follow.
cat >"$WORK/core.toml" <<TOML
[server]
max_connections = 10000
shutdown_timeout = "30s"
status_interval = "1s"
[[listener]]
name = "front"
bind = ["127.0.0.1:28601"]
[[listener]]
name = "admin"
bind = ["unix:$WORK/admin.sock"]
role = "admin"
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
static = { root = "$WORK/www" }
TOML
cat >"$WORK/full.toml" <<TOML
[[listener]]
name = "front"
bind = ["127.0.0.1:28601"]
[[listener]]
name = "tls"
bind = ["127.0.0.1:28602"]
tls = { cert = "$WORK/cert.pem", key = "$WORK/key.pem" }
[[listener]]
name = "back"
bind = ["127.0.0.1:28603"]
[[listener]]
name = "admin"
bind = ["127.0.0.1:28604"]
role = "admin"
[[site]]
hosts = ["*"]
listeners = ["front", "tls"]
[[site.route]]
path = "/"
static = { root = "$WORK/www", precompressed = ["gzip"] }
[[site.route]]
path = "/app/"
proxy = { upstreams = ["http://127.0.0.1:28603"] }
[[site]]
hosts = ["*"]
listeners = ["back"]
[[site.route]]
path = "/"
static = { root = "$WORK/www" }
TOML

core_workload() {
    local u=http://127.0.0.1:28601
    for _ in 1 2 3; do
        curl -s $u/1k.bin $u/1m.bin $u/missing $u/ $u/dir/
        curl -s -r 0-99 $u/1k.bin
        curl -s -I $u/1k.bin
        curl -s -H 'If-None-Match: "x"' $u/1k.bin
        curl -s -H 'Connection: close' $u/1k.bin
        curl -s --http1.0 $u/1k.bin
        curl -s --unix-socket "$WORK/admin.sock" http://admin/healthz http://admin/status
    done
}

full_workload() {
    local u=http://127.0.0.1:28601
    core_workload
    for _ in 1 2 3; do
        curl -s -H 'Accept-Encoding: gzip' $u/ $u/app/1k.bin $u/app/missing
        curl -s --data-binary @"$WORK/www/1m.bin" $u/app/1k.bin
        curl -s --http2-prior-knowledge $u/1k.bin
        curl -s -k https://localhost:28602/1k.bin --resolve localhost:28602:127.0.0.1
        curl -s http://127.0.0.1:28604/metrics http://127.0.0.1:28604/healthz
    done
}

profile() { # config, log target, taskset args...
    local name=$1 target=$2; shift 2
    "$@" valgrind --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no \
        --callgrind-out-file="$WORK/$name.$target.$#.cg" "$GH" serve --config "$WORK/$name.toml" \
        --log-target "$target" 2>"$WORK/$name.log" &
    local pid=$! deadline=$((SECONDS + 60))
    until curl -s -o /dev/null http://127.0.0.1:28601/1k.bin; do
        kill -0 $pid 2>/dev/null && [ $SECONDS -lt $deadline ] || { cat "$WORK/$name.log" >&2; exit 1; }
        sleep 0.2
    done
    ${name}_workload >/dev/null 2>&1 || true
    kill -HUP $pid && sleep 1 && { ${name}_workload >/dev/null 2>&1 || true; }
    kill -TERM $pid && wait $pid || true
}
# A datagram socket at $1 that takes and drops what is sent to it, for as long as the
# file exists (at most 10 minutes): systemd's journal and notify sockets, stood in for.
stand_in() {
    python3 - "$1" <<'PY' &
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(0.5)
deadline = time.time() + 600
while time.time() < deadline and os.path.exists(sys.argv[1]):
    try:
        s.recv(1 << 20)
    except socket.timeout:
        pass
PY
    for _ in $(seq 50); do [ -S "$1" ] && break; sleep 0.1; done
}
# Under systemd the log goes to the journal. Without one here, a stand-in takes the
# datagrams for the run (and only then is anything created under /run).
if [ ! -S $JOURNAL ]; then
    if [ -d "$(dirname $JOURNAL)" ]; then MADE_JOURNAL=socket; else MADE_JOURNAL=dir; fi
    mkdir -p "$(dirname $JOURNAL)"
    stand_in $JOURNAL
fi
# READY/STATUS go to the notify socket; the watchdog pings every 0.5 s.
stand_in "$WORK/notify.sock"
export NOTIFY_SOCKET=$WORK/notify.sock WATCHDOG_USEC=1000000
# A single-threaded runtime (one CPU) and the work-stealing one run different scheduler code.
for config in core full; do
    for target in stderr journald; do
        profile $config $target taskset -c 0
        profile $config $target env
    done
done

# Self cost per function of our binary, summed over the runs of each configuration;
# core's functions hottest first, then full's other functions hottest first.
# Written aside and moved into place: a failed run leaves the committed list as it was.
python3 - "$WORK" "$(basename "$GH")" >"$WORK/link-order.txt" <<'PY'
import collections, glob, re, sys
work, binary = sys.argv[1], sys.argv[2]

def costs(config):
    cost = collections.Counter()
    for path in glob.glob(f"{work}/{config}.*.cg"):
        ours, fn, call_cost = False, None, False
        for line in open(path):
            if call_cost:
                # the line after calls= is the call's inclusive cost, not the caller's own
                call_cost = False
                continue
            if line.startswith("ob="):
                ours = line[3:].strip().endswith("/" + binary)
            elif line.startswith("fn="):
                # valgrind marks a second symbol of one name with 'N; the linker sees one name
                fn = re.sub(r"'\d+$", "", line[3:].strip()) if ours else None
                if fn is not None and (fn.startswith("0x") or " " in fn):
                    fn = None
                if fn is not None:
                    cost[fn] += 0
            elif line.startswith("calls="):
                call_cost = True
            elif fn is not None and line[:1].isdigit():
                cost[fn] += int(line.split()[1])
    return cost

core = costs("core")
for name, _ in core.most_common():
    print(name)
for name, _ in costs("full").most_common():
    if name not in core:
        print(name)
PY
[ -s "$WORK/link-order.txt" ] || { echo "link-order: no functions recorded" >&2; exit 1; }
mv "$WORK/link-order.txt" packaging/link-order.txt
echo "link-order: $(wc -l <packaging/link-order.txt) functions in packaging/link-order.txt" >&2
