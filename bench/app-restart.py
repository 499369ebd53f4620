#!/usr/bin/env python3
"""How long an app server that binds its own socket refuses connections across a plain
restart (SIGTERM, wait for the exit, start again: what `systemctl restart` does without
socket activation). This is the window `retry_connect_for` must outlast (issue 25, item 4).

Measured for the app servers the README documents: gunicorn with sync and with gthread
workers (a one-file Django app) and uvicorn (a one-file FastAPI app), each with and without
an idle keep-alive connection open (as a proxy's pool holds one). A probe connects every
5 ms from the SIGTERM on; a run's window is from the first failed probe to the first 200 of
the new process. Every wait is bounded.

Usage: bench/app-restart.py [RUNS]   (default 5; needs gunicorn, python3-django, uvicorn,
python3-fastapi)
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

DJANGO_APP = '''
import django
from django.conf import settings
settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="x" * 50)
django.setup()
from django.http import HttpResponse
from django.urls import path
urlpatterns = [path("", lambda request: HttpResponse("hello from django\\n"))]
from django.core.wsgi import get_wsgi_application
application = get_wsgi_application()
'''

FASTAPI_APP = '''
from fastapi import FastAPI
app = FastAPI()
@app.get("/")
async def root():
    return {"hello": "world"}
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(app_dir, port):
    bind = f"127.0.0.1:{port}"
    gunicorn = ["gunicorn", "--chdir", app_dir, "-b", bind, "-w", "2"]
    return {
        "gunicorn sync": gunicorn + ["djapp"],
        "gunicorn gthread": gunicorn + ["-k", "gthread", "--threads", "4", "djapp"],
        "uvicorn": ["uvicorn", "--app-dir", app_dir, "--host", "127.0.0.1",
                    "--port", str(port), "fastapp:app"],
    }


def get(port):
    """'ok' for a 200, else what went wrong."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError as e:
        return type(e).__name__
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        return "ok" if s.recv(100).startswith(b"HTTP/1.1 200") else "bad"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()


def wait_ok(port, limit=30):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if get(port) == "ok":
            return time.monotonic()
        time.sleep(0.005)
    raise SystemExit(f"no 200 on port {port} within {limit} s")


def restart_once(cmd, proc, port, idle_conn):
    keep = None
    if idle_conn:
        keep = socket.create_connection(("127.0.0.1", port), timeout=5)
        keep.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        keep.recv(1000)
    first_failure = []
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            if get(port) != "ok" and not first_failure:
                first_failure.append(time.monotonic())
            time.sleep(0.005)

    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        proc.wait(timeout=60)
    finally:
        exited = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answered = wait_ok(port)
    stop.set()
    prober.join()
    if keep:
        keep.close()
    window = answered - (first_failure[0] if first_failure else answered)
    return proc, (exited - sent, answered - exited, window)


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    app_dir = tempfile.mkdtemp(prefix="gatehouse-app-restart.")
    with open(os.path.join(app_dir, "djapp.py"), "w") as f:
        f.write(DJANGO_APP)
    with open(os.path.join(app_dir, "fastapp.py"), "w") as f:
        f.write(FASTAPI_APP)
    print("| app server | idle keep-alive connection | exit after SIGTERM, s | start to first 200, s "
          "| refused window, s (min / median / max) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for idle_conn in (False, True):
        port = free_port()
        for name, cmd in commands(app_dir, port).items():
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_ok(port)
                rows = []
                for _ in range(runs):
                    time.sleep(1)
                    proc, row = restart_once(cmd, proc, port, idle_conn)
                    rows.append(row)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            med = lambda i: sorted(r[i] for r in rows)[len(rows) // 2]
            w = sorted(r[2] for r in rows)
            print(f"| {name} | {'yes' if idle_conn else 'no'} | {med(0):.2f} | {med(1):.2f} "
                  f"| {w[0]:.2f} / {w[len(w) // 2]:.2f} / {w[-1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
