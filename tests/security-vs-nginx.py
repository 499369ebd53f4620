#!/usr/bin/python3
"""The issue 24 findings side by side: one or more gatehouse binaries and nginx 1.22, each on
loopback with an equivalent configuration, given the same hostile requests. Prints markdown
tables (the closing note's before/after/nginx columns).

    tests/security-vs-nginx.py before=/path/to/old/gatehouse after=target/debug/gatehouse

Needs nginx (nginx-light), gunicorn, hypercorn (python3-hypercorn, which brings python3-h2)
and nghttp (nghttp2-client). Every server it starts is stopped when it ends; nothing runs
longer than a few seconds per finding.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

ENVIRON_APP = '''
def application(environ, start_response):
    keys = ["RAW_URI", "PATH_INFO", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO",
            "HTTP_X_FORWARDED_SSL", "HTTP_X_REAL_IP"]
    body = "".join("%s=%r\\n" % (k, environ.get(k)) for k in keys).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

FILES_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = {"/h2c/index.html": b"index\\n", "/h2c/private/secret.txt": b"SECRET\\n"}.get(scope["path"], b"nope\\n")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
'''

PATHS = [
    "/admin/x", "/%61dmin/x", "/admin%2fx", "/admin%2Fx", "//admin/x", "/./admin/x",
    "/x/%2e%2e/admin/x", "/x/%2E%2E/admin/x", "/foo/../admin/x", "/foo/..%2fadmin/x",
    "/admin%5cx", "/admin;p=1/x", "/x/..;/admin/x", "/x/%c0%ae%c0%ae/admin/x",
    "/admin%00/x", "/../admin/x", "/%2e%2e/admin/x", "/a%zz",
]

procs = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, **kw):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_port(port, limit=15):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def raw(port, data, timeout=5):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out


def status_of(reply):
    m = re.match(rb"HTTP/1\.[01] (\d+)", reply)
    return m.group(1).decode() if m else "no answer"


def get(port, target, host="a", extra=""):
    return raw(port, f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode("latin-1"))


def env_value(reply, key):
    m = re.search(rb"^" + key.encode() + rb"=(.*)$", reply, re.M)
    return m.group(1).decode() if m else None


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Server:
    """A gatehouse or an nginx with the scenario's configuration."""

    def __init__(self, name, kind, binary, work, app_sock, h2c_port, www, listing, extra_server=""):
        self.name, self.kind = name, kind
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.admin_port = free_port(), free_port()
        # nginx speaks HTTP/2 without TLS only on a port of its own (prior knowledge).
        self.h2_port = self.port if kind == "gatehouse" else free_port()
        self.log = os.path.join(self.dir, "log")
        if kind == "gatehouse":
            cfg = os.path.join(self.dir, "g.toml")
            with open(cfg, "w") as f:
                f.write(f"""[server]
{extra_server}
[[listener]]
name = "http"
bind = ["127.0.0.1:{self.port}"]
[[listener]]
name = "admin"
bind = ["127.0.0.1:{self.admin_port}"]
role = "admin"
[[site]]
hosts = ["*"]
[[site.route]]
path = "/admin/"
respond = {{ status = 403, body = "denied" }}
[[site.route]]
path = "/"
proxy = {{ upstreams = ["unix:{app_sock}"] }}
[[site.route]]
path = "/h2c/private/"
respond = {{ status = 403, body = "denied" }}
[[site.route]]
path = "/h2c/"
proxy = {{ upstreams = ["http://127.0.0.1:{h2c_port}"] }}
[[site]]
hosts = ["static"]
[[site.route]]
path = "/admin/"
respond = {{ status = 403, body = "denied" }}
[[site.route]]
path = "/"
static = {{ root = "{www}" }}
[[site]]
hosts = ["listing"]
[[site.route]]
path = "/"
static = {{ root = "{listing}", list_directories = true }}
""")
            self.proc = start([binary, "serve", "--config", cfg, "--log-target", "stderr"],
                              stderr=open(self.log, "wb"), stdout=subprocess.DEVNULL)
            self.pid = self.proc.pid
        else:
            cfg = os.path.join(self.dir, "nginx.conf")
            with open(cfg, "w") as f:
                f.write(f"""worker_processes 1;
daemon off;
user root;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log info;
events {{ worker_connections {extra_server or 1024}; }}
http {{
    access_log {self.log};
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    keepalive_timeout 2s;
    send_timeout 2s;
    proxy_http_version 1.1;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    server {{
        listen 127.0.0.1:{self.port};
        listen 127.0.0.1:{self.h2_port} http2;
        server_name a;
        location /admin/ {{ return 403 "denied"; }}
        location /h2c/private/ {{ return 403 "denied"; }}
        location /h2c/ {{ proxy_pass http://127.0.0.1:{h2c_port}; }}
        location / {{ proxy_pass http://unix:{app_sock}:; }}
    }}
    server {{
        listen 127.0.0.1:{self.port};
        listen 127.0.0.1:{self.h2_port} http2;
        server_name static;
        location /admin/ {{ return 403 "denied"; }}
        location / {{ root {www}; }}
    }}
    server {{
        listen 127.0.0.1:{self.port};
        listen 127.0.0.1:{self.h2_port} http2;
        server_name listing;
        location / {{ root {listing}; autoindex on; }}
    }}
    server {{
        listen 127.0.0.1:{self.admin_port};
        location = /healthz {{ return 200 "ok\\n"; }}
    }}
}}
""")
            self.proc = start(["nginx", "-c", cfg, "-p", self.dir], stderr=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL)
        wait_port(self.port)
        wait_port(self.h2_port)
        wait_port(self.admin_port)
        if kind == "nginx":
            time.sleep(0.3)
            kids = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
            self.pid = int(kids[0])

    def close(self):
        stop(self.proc)


# --- HTTP/2 clients (python3-h2) ---------------------------------------------------------

def h2_feed(s, c, data):
    """Events for `data`, acknowledging what needs it; none once the connection is over."""
    try:
        events = c.receive_data(data)
    except h2.exceptions.ProtocolError:
        # python-h2 refuses frames after a GOAWAY (the PING hyper sends with it) and loses
        # the GOAWAY's event with them.
        return [h2.events.ConnectionTerminated()]
    out = c.data_to_send()
    if out:
        try:
            s.sendall(out)
        except OSError:
            pass
    return events


def h2_conn(port, window=None):
    s = socket.create_connection(("127.0.0.1", port))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    if window is not None:
        c.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def h2_request(c, path, host):
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                         (":authority", host)], end_stream=True)
    return sid


def h2_idle_close(port, cap=15.0):
    """Seconds from the end of one response until the server sends GOAWAY / closes."""
    s, c = h2_conn(port)
    h2_request(c, "/admin/x", "a")
    s.sendall(c.data_to_send())
    s.settimeout(0.2)
    start = None
    goaway = None
    end = time.time() + cap + 5
    while time.time() < end:
        try:
            data = s.recv(65536)
        except socket.timeout:
            if start and time.time() - start > cap:
                break
            continue
        if not data:
            return f"GOAWAY after {goaway:.1f} s, closed after {time.time() - start:.1f} s" if goaway is not None else f"closed after {time.time() - start:.1f} s"
        for e in h2_feed(s, c, data):  # PINGs answered
            if isinstance(e, h2.events.StreamEnded) and start is None:
                start = time.time()
            if isinstance(e, h2.events.ConnectionTerminated) and goaway is None:
                goaway = time.time() - (start or time.time())
    return f"still open after {cap:.0f} s (pings answered)"


def h2_zero_window(server, streams=100, watch=8.0):
    """Open `streams` requests for a 1 MiB file with a zero window; sample the server's fds."""
    base = fds(server.pid)
    s, c = h2_conn(server.h2_port, window=0)
    for _ in range(streams):
        h2_request(c, "/big", "static")
    s.sendall(c.data_to_send())
    s.setblocking(False)
    samples = {}
    start = time.time()
    closed_at = None
    while time.time() - start < watch:
        try:
            data = s.recv(65536)
            if not data and closed_at is None:
                closed_at = time.time() - start
            elif data:
                h2_feed(s, c, data)
        except (BlockingIOError, ConnectionResetError, BrokenPipeError):
            pass
        for t in (1.0, 4.0, watch - 0.2):
            if t not in samples and time.time() - start >= t:
                samples[t] = fds(server.pid) - base
        time.sleep(0.02)
    s.close()
    held = ", ".join(f"+{v} at {t:.0f} s" for t, v in sorted(samples.items()))
    closed = f"closed after {closed_at:.1f} s" if closed_at else f"open after {watch:.0f} s"
    return f"files {held}; {closed}"


def admin_while_full(server, n):
    """`n` idle HTTP/2 clients, then /healthz on the admin listener."""
    idle = []
    for _ in range(n):
        s, c = h2_conn(server.h2_port)
        idle.append(s)
    time.sleep(0.5)
    answers = []
    for _ in range(2):
        start = time.time()
        reply = raw(server.admin_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=3)
        took = time.time() - start
        st = status_of(reply)
        answers.append(f"{st} in {took:.2f} s" if st != "no answer" else "no answer within 3 s")
    for s in idle:
        s.close()
    return "; then ".join(answers)


# --- the findings ------------------------------------------------------------------------

def main():
    labels = []
    for arg in sys.argv[1:]:
        name, _, path = arg.partition("=")
        labels.append((name, os.path.abspath(path)))
    if not labels:
        raise SystemExit(__doc__)
    work = tempfile.mkdtemp(prefix="gh-vs-nginx-")
    www = os.path.join(work, "www")
    os.makedirs(os.path.join(www, "admin"))
    with open(os.path.join(www, "admin", "x"), "w") as f:
        f.write("SECRET\n")
    with open(os.path.join(www, "big"), "wb") as f:
        f.write(b"x" * (1 << 20))
    listing = os.path.join(work, "listing")
    os.makedirs(listing)
    for name in ["javascript:alert(document.domain)", "evil\u202egpj.exe"]:
        open(os.path.join(listing, name), "w").close()
    with open(os.path.join(work, "environ_app.py"), "w") as f:
        f.write(ENVIRON_APP)
    with open(os.path.join(work, "files_app.py"), "w") as f:
        f.write(FILES_APP)
    app_sock = os.path.join(work, "app.sock")
    start(["gunicorn", "--workers", "1", "--chdir", work, "--bind", f"unix:{app_sock}",
           "environ_app:application"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    h2c_port = free_port()
    start(["hypercorn", "--bind", f"127.0.0.1:{h2c_port}", "files_app:app"], cwd=work,
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(app_sock):
        time.sleep(0.05)
    wait_port(h2c_port)

    def servers(extra_gatehouse="", extra_nginx=""):
        out = []
        for name, binary in labels:
            out.append(Server(name, "gatehouse", binary, work, app_sock, h2c_port, www, listing,
                              accepted(binary, extra_gatehouse)))
        out.append(Server("nginx", "nginx", None, work, app_sock, h2c_port, www, listing, extra_nginx))
        return out

    def accepted(binary, extra):
        """The lines of `extra` this binary knows (an older one lacks the new keys)."""
        keep = []
        for line in extra.splitlines():
            cfg = os.path.join(work, "probe.toml")
            with open(cfg, "w") as f:
                f.write(f"[server]\n{line}\n[[listener]]\nname = \"h\"\nbind = [\"127.0.0.1:1\"]\n"
                        "[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\nrespond = {}\n")
            if subprocess.run([binary, "check", "--config", cfg], capture_output=True).returncode == 0:
                keep.append(line)
        return "\n".join(keep)

    def table(title, rows, srvs):
        print(f"\n### {title}\n")
        print("| request | " + " | ".join(s.name for s in srvs) + " |")
        print("| --- |" + " --- |" * len(srvs))
        for label, fn in rows:
            cells = [fn(s).replace("|", "\\|") for s in srvs]
            print(f"| {label} | " + " | ".join(cells) + " |")

    try:
        srvs = servers()

        def path_cell(target):
            def fn(s):
                r = get(s.port, target)
                reached = env_value(r, "RAW_URI")
                return f"{status_of(r)}" + (f", app got `{reached[1:-1]}`" if reached else "")
            return fn

        table("1. Routes and the path the app sees (deny route /admin/, proxy to gunicorn)",
              [(f"`{t}`", path_cell(t)) for t in PATHS], srvs)

        def static_cell(target):
            def fn(s):
                r = get(s.port, target, host="static")
                return status_of(r) + (" **SECRET served**" if b"SECRET" in r else "")
            return fn

        table("1. Same, deny route /admin/ before a static root",
              [(f"`{t}`", static_cell(t)) for t in ["/%61dmin/x", "/admin%2fx", "/x/%2e%2e/admin/x", "//admin/x"]], srvs)

        def header_cell(sent, key):
            def fn(s):
                r = get(s.port, "/h", extra=sent)
                return f"{status_of(r)}: `{env_value(r, key)}`"
            return fn

        underscores = "X_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Proto: https\r\n"

        table("2. What gunicorn's app reads (WSGI environ) behind each proxy",
              [("`X_Forwarded_For: 6.6.6.6` + `X_Forwarded_Proto: https` → HTTP_X_FORWARDED_FOR",
                header_cell(underscores, "HTTP_X_FORWARDED_FOR")),
               ("same → HTTP_X_FORWARDED_PROTO", header_cell(underscores, "HTTP_X_FORWARDED_PROTO")),
               ("`X-Forwarded-Ssl: on` → HTTP_X_FORWARDED_SSL", header_cell("X-Forwarded-Ssl: on\r\n", "HTTP_X_FORWARDED_SSL")),
               ("`X-Real-IP: 6.6.6.6` → HTTP_X_REAL_IP", header_cell("X-Real-IP: 6.6.6.6\r\n", "HTTP_X_REAL_IP"))], srvs)

        def h2c(s):
            out = subprocess.run(["timeout", "10", "nghttp", "-u", "-v",
                                  f"http://127.0.0.1:{s.port}/h2c/index.html",
                                  f"http://127.0.0.1:{s.port}/h2c/private/secret.txt",
                                  "-H", ":authority: a", "-H", "x-forwarded-for: 6.6.6.6"],
                                 capture_output=True, text=True).stdout
            upgraded = "101" if "HTTP Upgrade response" in out and "101" in out else "no upgrade"
            secret = "**SECRET fetched**" if "SECRET" in out else "secret not fetched"
            return f"{upgraded}; {secret}"

        table("3. `nghttp -u /h2c/index.html /h2c/private/secret.txt` (hypercorn accepts h2c; "
              "/h2c/private/ denied)", [("h2c upgrade", h2c)], srvs)

        def listing_cell(s):
            html = get(s.port, "/", host="listing").decode("utf-8", "replace")
            m = re.search(r'href="([^"]*javascript[^"]*)"', html)
            rtl = "U+202E raw" if "\u202e" in html else "no raw U+202E"
            return f"`{m.group(1) if m else '?'}`, {rtl}"

        table("5. Directory listing with a file named `javascript:alert(document.domain)`",
              [("href", listing_cell)], srvs)

        hostile = "/LOG\u009bb\u2028c\u202eEND"

        def log_cell(s):
            get(s.port, hostile.encode("utf-8").decode("latin-1"))
            time.sleep(0.5)
            m = re.search(rb"/LOG[^ ]*END", open(s.log, "rb").read())
            return f"`{repr(m.group(0))[2:-1] if m else '?'}`"

        table("6. The log line for `GET /LOG<U+009B>b<U+2028>c<U+202E>END` (Python repr of the logged bytes)",
              [("path as logged", log_cell)], srvs)

        for s in srvs:
            s.close()

        srvs = servers('header_read_timeout = "2s"\nsend_timeout = "2s"')
        table("4. HTTP/2: idle connection (gatehouse header_read_timeout 2s, nginx keepalive_timeout 2s)",
              [("one request, then idle", lambda s: h2_idle_close(s.h2_port))], srvs)
        table("4. HTTP/2 zero window, 100 streams of a 1 MiB file (send_timeout 2s where there is one)",
              [("open files held", lambda s: h2_zero_window(s))], srvs)
        for s in srvs:
            s.close()

        srvs = servers("max_connections = 4", "7")
        table("4. /healthz on the admin listener with 4 idle HTTP/2 clients on the public one "
              "(gatehouse max_connections 4; nginx worker_connections 7, 3 of them its listeners)",
              [("/healthz twice", lambda s: admin_while_full(s, 4))], srvs)
        for s in srvs:
            s.close()

        print("\n### 7. `upstreams = [\"http://user:s3cretpass@127.0.0.1:18001\"]`\n")
        cfg = os.path.join(work, "creds.toml")
        with open(cfg, "w") as f:
            f.write("[[listener]]\nname = \"http\"\nbind = [\"127.0.0.1:8080\"]\n[[site]]\nhosts = [\"*\"]\n"
                    "[[site.route]]\npath = \"/\"\nproxy = { upstreams = [\"http://user:s3cretpass@127.0.0.1:18001\"] }\n")
        for name, binary in labels:
            r = subprocess.run([binary, "check", "--config", cfg], capture_output=True, text=True)
            print(f"- {name}: `gatehouse check` exit {r.returncode}: `{(r.stdout + r.stderr).strip().splitlines()[0]}`")
        ncfg = os.path.join(work, "creds-nginx.conf")
        with open(ncfg, "w") as f:
            f.write(f"pid {work}/n.pid; error_log stderr; events {{}} http {{ server {{ listen 127.0.0.1:1; "
                    "location / { proxy_pass http://user:s3cretpass@127.0.0.1:18001; } } }\n")
        r = subprocess.run(["nginx", "-t", "-c", ncfg, "-p", work], capture_output=True, text=True)
        print(f"- nginx: `nginx -t` exit {r.returncode}: `{(r.stdout + r.stderr).strip().splitlines()[0]}`")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
