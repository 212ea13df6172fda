"""Start the API (gunicorn, as `make serve` does) on loopback for a benchmark; stop it after."""
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


@contextlib.contextmanager
def api_server(extra_env: dict | None = None, workers: int | None = None):
    """Yield ``(base_url, api_key)`` of a gunicorn API on a fresh database: the embedded servers in a
    temp dir unless ``DATABASE_URL`` / ``REDIS_URL`` are set in the environment."""
    with tempfile.TemporaryDirectory(prefix="bench-") as var_dir, \
            embedded_services(var_dir, {**os.environ, "VAR_DIR": var_dir, **(extra_env or {})}) as env:
        if workers:
            env["WEB_CONCURRENCY"] = str(workers)
        port = free_port()
        key = prepare(env, port)
        log = open(Path(var_dir) / "gunicorn.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "config.wsgi"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{base}/healthz", timeout=2)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(open(Path(var_dir) / "gunicorn.log").read()) from None
                    time.sleep(0.3)
            yield base, key
        finally:
            proc.terminate()
            proc.wait(timeout=30)
