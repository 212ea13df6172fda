"""The web role's HTTP server: granian serving Django's ASGI application (``config.asgi``).

Why this server: a slow client (a body sent a byte at a time, headers a byte a second, an idle
keep-alive connection) must not hold a Python thread. granian reads requests in Rust (tokio,
hyper); `config.asgi` reads the whole body as a coroutine before it hands the request to one of
the process's threads (and bounds the body per route and the requests in threads per process).
gunicorn's gthread workers and granian's WSGI interface both hold a thread for as long as a
body takes to arrive. Measured: ``bench/slow_clients.py``.

Environment (defaults in brackets):

* ``HOST`` [127.0.0.1], ``PORT`` [8000];
* ``WEB_CONCURRENCY`` [2]: server processes;
* ``WEB_THREADS`` [32]: requests in Django at once per process (each runs in one of the process's
  threads once its body has arrived; concurrent requests of one process share forward passes
  through its micro-batcher, so a process needs enough of them for a batch to form, and a request
  sent to the workers holds its thread while it waits); more wait. The server does not spread
  connections evenly over its processes: at 32 clients on 2 processes, 16 per process made the
  busier one's requests wait for a thread (p99 ~1.5x that of 32 per process, bench/vs_infinity.py);
* ``WEB_GRACEFUL_TIMEOUT`` [8]: seconds a stopping process may finish its requests before it is
  killed (so a stop ends within 10 s; a granian process that had served requests was seen, now
  and then, never to act on its SIGTERM, and would otherwise be waited for);
* ``WEB_HEADER_TIMEOUT`` [10]: seconds a client has to send its request headers;
* ``WEB_MAX_HEADER_BYTES`` [65536]: hyper's read buffer for request line plus headers; headers
  past it (give or take one read) get 431, a request line over 65,534 bytes 414, both with an
  empty body from hyper, before Python sees them;
* ``EMBEDDINGS_TORCH_THREADS``: torch threads per process [cores / processes].

No control socket, no pid file: two instances on one host (other ports) share nothing but the
database, Redis, the metrics directory and the server's log configuration (the same file for all).
Database connections: one per thread of the pool (`config.asgi`) and one for the process's metering
thread (`metering.services`), kept for ``CONN_MAX_AGE`` seconds [60] and checked before reuse; at
most ``WEB_CONCURRENCY`` x (``WEB_THREADS`` + 5) per host. (A
psycopg_pool pool under Django's ASGI handler saved as much, but with it a stopping granian process
that had served requests ignored its SIGTERM in 3 of 3 tries.)
"""
from __future__ import annotations

import os
import sys
import threading



def _env_int(name: str, default: int, environ: dict | None = None) -> int:
    return int((os.environ if environ is None else environ).get(name) or default)


def server_env(environ: dict | None = None) -> dict[str, str]:
    """Variables the server's processes need beyond ``environ`` (default ``os.environ``):
    ``EMBEDDINGS_TORCH_THREADS`` (cores / processes, so inline encodes of the processes do not
    oversubscribe the CPU)."""
    environ = os.environ if environ is None else environ
    workers = int(environ.get("WEB_CONCURRENCY") or 2)
    extra = {}
    if not environ.get("EMBEDDINGS_TORCH_THREADS"):
        extra["EMBEDDINGS_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return extra


def granian_argv(host: str | None = None, port: int | str | None = None, environ: dict | None = None) -> list[str]:
    """The server's command line (interpreter first), from ``environ`` (default ``os.environ``; see
    the module)."""
    environ = os.environ if environ is None else environ
    host = host or environ.get("HOST", "127.0.0.1")
    port = port or environ.get("PORT", "8000")
    return [
        sys.executable, "-m", "granian", "config.asgi:application",
        "--interface", "asginl",  # ASGI without lifespan: Django has none
        "--host", str(host), "--port", str(port),
        "--workers", str(_env_int("WEB_CONCURRENCY", 2, environ)),
        "--http", "1", "--no-ws",
        "--respawn-failed-workers",
        "--workers-kill-timeout", str(_env_int("WEB_GRACEFUL_TIMEOUT", 8, environ)),
        "--http1-header-read-timeout", str(_env_int("WEB_HEADER_TIMEOUT", 10, environ) * 1000),
        "--http1-buffer-size", str(max(8192, _env_int("WEB_MAX_HEADER_BYTES", 65536, environ))),
        # The access log is the application's (config.asgi: one line per request with its id).
        "--log-level", "info", "--no-access-log", *log_config_args(environ),
    ]


def log_config_args(environ: dict | None = None) -> list[str]:
    """``--log-config FILE`` for JSON logs (``LOG_FORMAT``, `config.logs`): the server's own lines
    (start, workers) through the platform's handler; the file (``VAR_DIR/granian-logging.json``,
    the same content for every instance) is written atomically. Nothing for text logs."""
    from config.logs import granian_logging_config, log_format

    environ = os.environ if environ is None else environ
    if log_format(environ) != "json":
        return []
    import json
    from pathlib import Path

    var_dir = Path(environ.get("VAR_DIR") or Path(__file__).resolve().parent.parent / "var")
    var_dir.mkdir(parents=True, exist_ok=True)
    target = var_dir / "granian-logging.json"
    partial = target.with_name(f"{target.name}.{os.getpid()}")
    partial.write_text(json.dumps(granian_logging_config()))
    os.replace(partial, target)
    return ["--log-config", str(target)]


def warm_up() -> None:
    """Load the active models' tokenizers (and weights where this process encodes) before the
    server takes requests: no cold first request. Runs in a thread of its own (servers import
    the application inside their event loop, where Django refuses database calls) and closes
    that thread's database connection."""
    def run():
        from django.db import connections

        from embeddings.services import warm_up as warm_models

        try:
            warm_models()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name="warm-up")
    thread.start()
    thread.join()
