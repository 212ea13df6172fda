"""Start the API (the web role's server, as `make serve` runs it) on loopback for a benchmark; stop it after."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manage(*args: str, env: dict) -> str:
    """Run ``manage.py`` with ``env``; returns stdout (stderr passes through)."""
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True,
                          stdout=subprocess.PIPE, text=True).stdout


def web_server(env: dict, host: str, port: int) -> tuple[list[str], dict]:
    """``(argv, env)`` of the web role's HTTP server on ``host:port`` as ``make web`` runs it
    (`config.web`), for ``env``."""
    sys.path.insert(0, str(ROOT))
    from config.web import granian_argv, server_env

    env = {**env, "HOST": host, "PORT": str(port)}
    env.update(server_env(env))
    return granian_argv(host, port, env), env


def web_process(env: dict, port: int, log_path: str | Path) -> subprocess.Popen:
    """Start the web role's HTTP server (`web_server`) on ``127.0.0.1:port``, its output to ``log_path``."""
    argv, env = web_server(env, "127.0.0.1", port)
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


@contextlib.contextmanager
def embedded_services(var_dir: str | Path, env: dict):
    """Start the embedded PostgreSQL/Valkey under ``var_dir`` for the URLs ``env`` lacks (as
    ``make serve`` does) and put their URLs in ``env``; stop them on exit."""
    sys.path.insert(0, str(ROOT))
    from config.embedded import EmbeddedServers

    servers = EmbeddedServers(Path(var_dir), environ=env)
    env.update(servers.start())
    try:
        yield env
    finally:
        servers.stop()


def prepare(env: dict, port: int) -> str:
    """Point ``env`` at ``127.0.0.1:port``, migrate its database, register the default model and
    create a project key; returns the key's plaintext."""
    env.update(HOST="127.0.0.1", PORT=str(port))
    manage("migrate", "--noinput", "-v0", env=env)
    manage("register_models", env=env)
    return manage("create_api_key", "--org", "bench", "--project", "bench", env=env).strip()


def wait_up(base: str, proc: subprocess.Popen, log: Path, path: str = "/healthz", timeout: float = 120) -> None:
    """Block until ``base + path`` answers 2xx; raises ``RuntimeError`` with the server's log (``log``)
    when ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{base}{path}", timeout=5)
            return
        except Exception:  # noqa: BLE001 - not up (or not ready) yet
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(Path(log).read_text()[-3000:]) from None
            time.sleep(0.3)


class RunningAPI(tuple):
    """``(base_url, api_key)``, plus ``var_dir`` (the embedded servers' directory) and ``log``
    (the web server's output file)."""

    def __new__(cls, base: str, key: str, var_dir: str, log: Path):
        running = super().__new__(cls, (base, key))
        running.var_dir, running.log = var_dir, log
        return running


@contextlib.contextmanager
def api_server(extra_env: dict | None = None, workers: int | None = None):
    """Yield a `RunningAPI` (unpacks as ``(base_url, api_key)``) of the API on a fresh database:
    the embedded servers in a temp dir unless ``DATABASE_URL`` / ``REDIS_URL`` are set."""
    with tempfile.TemporaryDirectory(prefix="bench-") as var_dir, \
            embedded_services(var_dir, {**os.environ, "VAR_DIR": var_dir, **(extra_env or {})}) as env:
        if workers:
            env["WEB_CONCURRENCY"] = str(workers)
        port = free_port()
        key = prepare(env, port)
        log = Path(var_dir) / "web.log"
        proc = web_process(env, port, log)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_up(base, proc, log)
            yield RunningAPI(base, key, var_dir, log)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
