"""Slow clients against the API's HTTP server: gunicorn+gthread, granian WSGI, uvicorn ASGI, granian ASGI.

For each server, started on the project's app on loopback with 2 processes (as ``make web``
runs by default), prints:

1. ``idle``: p50 / p99 latency (ms) of a plain request with no slow client: ``GET /healthz``,
   ``GET /v1/models`` with a key and a one-sentence ``POST /v1/embeddings`` (sequential, one
   keep-alive connection: the per-request cost of the server plus the app);
2. ``held``: with ``--slow`` (200) connections of each kind held open, p50 / p99 (ms) of
   ``GET /healthz`` and of a normal ``POST /v1/embeddings`` (one sentence), each on a fresh
   connection, and how many did not answer within ``--timeout`` (5 s). The kinds:

   * slow bodies: ``POST /v1/embeddings`` with a valid key and ``Content-Length: 100``, then 1
     byte of body, then nothing (with a key the view reads the body; without, it answers 401
     unread);
   * slow headers: a request line and header bytes sent one byte per second;
   * idle keep-alive: one complete ``GET /healthz`` answered, then the connection left open.

Usage (without ``DATABASE_URL`` / ``REDIS_URL`` it starts the embedded PostgreSQL / Valkey in
a temp dir, as ``make serve`` does)::

    .venv/bin/python -m bench.slow_clients [--slow 200] [--samples 200] [--servers gunicorn,granian-wsgi,uvicorn,granian]

Figures only: nothing here asserts a speed (tests/security/test_slow_clients.py holds the bound).
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The servers compared, each with 2 processes as `make web` runs by default. "granian" is what
# `make web` runs (granian serving config.asgi, config/web.py builds its command line); the others
# are the alternatives measured against it: gunicorn with the gthread settings the project used
# before (2 x 16 threads), granian's WSGI interface (2 x 16 blocking threads), and uvicorn with
# the same ASGI application as "granian" (Django's ASGI handler behind config.asgi.RequestGate).
GUNICORN_GTHREAD = ["-m", "gunicorn", "--workers", "2", "--threads", "16", "--worker-class", "gthread",
                    "--keep-alive", "5", "--timeout", "120", "config.wsgi:application"]
UVICORN_ASGI = ["-m", "uvicorn", "--workers", "2", "--timeout-keep-alive", "5", "--no-access-log",
                "config.asgi:application"]


def server_command(name: str, host: str, port: int, env: dict) -> tuple[list[str], dict]:
    """``(argv, env)`` that serve the project's app on ``host:port``; ``granian`` is the web
    role's server exactly as ``make web`` runs it."""
    if name == "granian":
        from bench._server import web_server

        return web_server(env, host, port)
    argv, env = [sys.executable, *_other_server(name, host, port)], {**env, "WEB_THREADS": "16"}
    if name == "uvicorn":
        from config.web import server_env

        env.update(server_env(env))  # the ASGI application's settings, as for granian
    return argv, env


def _other_server(name: str, host: str, port: int) -> list[str]:
    if name == "gunicorn":
        return [*GUNICORN_GTHREAD, "--bind", f"{host}:{port}"]
    if name == "uvicorn":
        return [*UVICORN_ASGI, "--host", host, "--port", str(port)]
    if name == "granian-wsgi":
        return ["-m", "granian", "--interface", "wsgi", "--workers", "2", "--blocking-threads", "16", "--http", "1",
                "--no-ws", "--host", host, "--port", str(port), "config.wsgi:application"]
    raise ValueError(name)


# --- slow clients ------------------------------------------------------------------------------------

class SlowClients:
    """Hold ``count`` connections of each slow kind against ``host:port`` until `close`.

    Slow bodies send their headers and 1 of 100 announced body bytes at once; slow headers get
    one more header byte each second from a background thread; idle keep-alives complete one
    ``GET /healthz`` first. Sockets a server closes are counted in ``closed`` (not reopened).
    """

    def __init__(self, host: str, port: int, count: int = 200, path: str = "/v1/embeddings", key: str = ""):
        self.host, self.port, self.count, self.path = host, port, count, path
        self.auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self.sockets: dict[str, list[socket.socket]] = {"slow_body": [], "slow_headers": [], "keep_alive": []}
        self.closed = 0
        self._stop = threading.Event()
        self._drip: threading.Thread | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=5)
        return sock

    def open(self) -> "SlowClients":
        """Open every connection (idle keep-alives first: each needs one answer); returns self."""
        for _ in range(self.count):
            sock = self._connect()
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            try:
                sock.recv(65536)
            except OSError:  # no answer: the server is already stuck; hold it anyway
                pass
            self.sockets["keep_alive"].append(sock)
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"{self.auth}Content-Length: 100\r\n\r\n").encode()
        for _ in range(self.count):
            sock = self._connect()
            sock.sendall(head + b"{")
            self.sockets["slow_body"].append(sock)
        for _ in range(self.count):
            sock = self._connect()
            sock.sendall(b"G")
            self.sockets["slow_headers"].append(sock)
        self._drip = threading.Thread(target=self._drip_headers, name="slow-headers", daemon=True)
        self._drip.start()
        return self

    def _drip_headers(self) -> None:
        rest = f"ET /healthz HTTP/1.1\r\nHost: {self.host}\r\nX-Slow: " + "a" * 4000
        for char in rest:
            if self._stop.wait(1.0):
                return
            for sock in list(self.sockets["slow_headers"]):
                try:
                    sock.send(char.encode())
                except OSError:
                    self.sockets["slow_headers"].remove(sock)
                    self.closed += 1

    def still_open(self) -> dict[str, int]:
        """Connections of each kind the server has not closed (a closed one reads EOF or fails)."""
        counts = {}
        for kind, socks in self.sockets.items():
            alive = 0
            for sock in socks:
                try:
                    sock.settimeout(0)
                    data = sock.recv(65536, socket.MSG_PEEK)
                    alive += data != b""
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
                finally:
                    sock.settimeout(5)
            counts[kind] = alive
        return counts

    def close(self) -> None:
        self._stop.set()
        if self._drip:
            self._drip.join(2)
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
            socks.clear()

    def __enter__(self) -> "SlowClients":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


# --- measuring ---------------------------------------------------------------------------------------

def timed_request(host: str, port: int, method: str, path: str, *, body: bytes | None = None,
                  headers: dict | None = None, timeout: float = 5.0,
                  conn: http.client.HTTPConnection | None = None) -> tuple[int, float]:
    """One request; returns ``(status, seconds)``, status 0 when it failed or timed out. A fresh
    connection unless ``conn`` is given."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(host, port, timeout=timeout)
    started = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    except OSError:
        return 0, time.perf_counter() - started
    finally:
        if own:
            conn.close()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt_ms(samples: list[float]) -> str:
    """``p50 … p99 …`` in ms; a sample of ``inf`` (no answer in time) shows as ``timeout``."""
    if not samples:
        return "p50      -  p99      -"
    shown = [f"{value * 1000:7.2f}" if value != float("inf") else "timeout"
             for value in (statistics.median_low(samples), percentile(samples, 0.99))]
    return f"p50 {shown[0]}  p99 {shown[1]}"


def measure(host: str, port: int, key: str, args) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    body = json.dumps({"model": "all-MiniLM-L6-v2", "input": "a normal request"}).encode()
    post_headers = {**auth, "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
    for _ in range(20):  # warm both processes' paths
        timed_request(host, port, "GET", "/v1/models", headers=auth)
        timed_request(host, port, "POST", "/v1/embeddings", body=body, headers=post_headers)
    idle = {"/healthz": [], "/v1/models": [], "POST /v1/embeddings": []}
    for _ in range(args.samples):
        for name, method, path, data, headers in (("/healthz", "GET", "/healthz", None, {}),
                                                  ("/v1/models", "GET", "/v1/models", None, auth),
                                                  ("POST /v1/embeddings", "POST", "/v1/embeddings", body, post_headers)):
            status, seconds = timed_request(host, port, method, path, body=data, headers=headers, conn=conn)
            if status == 200:
                idle[name].append(seconds)
    conn.close()
    print(f"  idle  GET /healthz      {fmt_ms(idle['/healthz'])} ms   (keep-alive, {args.samples} sequential)")
    print(f"  idle  GET /v1/models    {fmt_ms(idle['/v1/models'])} ms")
    print(f"  idle  POST /v1/embeddings {fmt_ms(idle['POST /v1/embeddings'])} ms")
    with SlowClients(host, port, args.slow, key=key) as slow:
        time.sleep(2)  # let the server take them all in
        held = {"/healthz": [], "POST /v1/embeddings": []}
        failed = {name: 0 for name in held}
        deadline = time.monotonic() + args.held_seconds
        while time.monotonic() < deadline:
            for name, (method, path, data, headers) in {
                    "/healthz": ("GET", "/healthz", None, {}),
                    "POST /v1/embeddings": ("POST", "/v1/embeddings", body, post_headers)}.items():
                status, seconds = timed_request(host, port, method, path, body=data, headers=headers,
                                                timeout=args.timeout)
                held[name].append(seconds if status == 200 else float("inf"))
                failed[name] += status != 200
        open_counts = slow.still_open()
    print(f"  held  GET /healthz      {fmt_ms(held['/healthz'])} ms   failed/timed out "
          f"{failed['/healthz']} of {len(held['/healthz'])}")
    print(f"  held  POST /v1/embeddings {fmt_ms(held['POST /v1/embeddings'])} ms   failed/timed out "
          f"{failed['POST /v1/embeddings']} of {len(held['POST /v1/embeddings'])}")
    print(f"  slow connections still open at the end: {open_counts}")


@contextlib.contextmanager
def running(name: str, env: dict, log_dir: Path):
    """Start server ``name`` on a free port; yield ``(host, port)`` once /healthz answers."""
    from bench._server import free_port

    host, port = "127.0.0.1", free_port()
    log_path = log_dir / f"{name}.log"
    with open(log_path, "w") as log:
        argv, env = server_command(name, host, port, env)
        proc = subprocess.Popen(argv, cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while timed_request(host, port, "GET", "/healthz", timeout=2)[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield host, port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def main() -> None:
    from bench._server import embedded_services, manage

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=200, help="connections of each slow kind (200)")
    parser.add_argument("--samples", type=int, default=200, help="idle sequential requests per path (200)")
    parser.add_argument("--held-seconds", type=float, default=10.0, help="probe time with slow clients held (10)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds before a probe counts as failed (5)")
    parser.add_argument("--servers", default="gunicorn,granian-wsgi,uvicorn,granian")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as var_dir, \
            embedded_services(var_dir, {**os.environ, "VAR_DIR": var_dir}) as env:
        env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        manage("migrate", "--noinput", "-v0", env=env)
        manage("register_models", env=env)
        key = manage("create_api_key", "--org", "bench", "--project", "bench", env=env).strip()
        print(f"{args.slow} slow-body + {args.slow} slow-header + {args.slow} idle keep-alive connections; "
              f"2 server processes each; cores: {os.cpu_count()}")
        for name in args.servers.split(","):
            print(f"{name}:")
            with running(name, env, Path(var_dir)) as (host, port):
                measure(host, port, key, args)


if __name__ == "__main__":
    main()
