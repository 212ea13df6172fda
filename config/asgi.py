"""ASGI entry point: the web role's application (``config.asgi:application``, served by
granian, see `config.web`).

Django's WSGI handler run on a fixed pool of threads, behind `RequestGate`, which runs before
Django sees a request:

* a body longer than its route allows (`config.middleware.body_limit`, bytes, from
  ``Content-Length``) is answered 413 at once, unread (the envelope under ``/v1``), and a ``/v1``
  body in a content coding 415 (`config.middleware.content_coding_refused`);
* every body is read here, whole, before the request may take a thread: up to that limit (413
  past it, for a chunked body too; 400 ``invalid_body`` for a body the server could not read whole:
  a malformed chunked encoding), in memory up to ``SPOOL_MEMORY_BYTES`` and spooled to disk
  past it, as Django spools bodies; Django then reads it from there (``wsgi.input``) with its
  ``Content-Length`` set (a chunked body has none, and Django REST framework reads such a body as
  empty). A slow client therefore holds no thread;
* at most ``WEB_THREADS`` requests per process are in Django at once (more wait, their bodies
  read). ``/healthz``, ``/readyz`` and ``/metrics`` skip that gate and have threads of their own
  (`UNGATED_THREADS`), so a busy process still answers its probes and its scrapes;
* the request's log context (`config.logs.RequestLogContext`) is opened here, so every line
  written while it is served carries its id, and the access line (logger ``config.access``, one
  per request, 413s included) is written here with it: the HTTP server's own access log cannot
  carry the request id.

Why threads that live as long as the process, not Django's ASGI handler: that handler runs each
request in a thread of its own, made for it, so no database connection outlives its request. On
this pool each thread keeps its connection (``CONN_MAX_AGE``, checked before reuse): no connection
set up and no PostgreSQL backend started per request, ~6 ms of a small request's latency and a
quarter more small requests per second on 2 cores (``bench/vs_infinity.py``).

The pool (`config.wsgi_pool.WSGIPool`) hands a request to a thread and back once.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_wsgi_application = get_wsgi_application()

from config.errors import error_body  # noqa: E402  (after Django is set up)
from config.logs import RequestLogContext, log_context_end, log_context_start, log_context_var  # noqa: E402
from config.middleware import (API_PREFIX, body_limit, body_too_large_message, content_coding_refused,  # noqa: E402
                               new_request_id)
from config.wsgi_pool import WSGIPool  # noqa: E402

access_logger = logging.getLogger("config.access")

# A chunked body is kept in memory up to this many bytes, on disk past it (Django's
# FILE_UPLOAD_MAX_MEMORY_SIZE default), so concurrent large chunked uploads cannot exhaust memory.
SPOOL_MEMORY_BYTES = 2_621_440
# Probes answered whatever the load (they take no slot of the gate).
UNGATED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Threads of the pool beyond the gate's slots: the ungated paths' own.
UNGATED_THREADS = 4
# The access line's text (the HTTP server's former format): no query string (``?api_key=`` would be
# written), no header; the request's ids are fields of the line (JSON) from its log context.
ACCESS_LOG_FORMAT = '%s "%s %s HTTP/%s" %d %.1fms'


def access_log(scope, status: int, started: float) -> None:
    """Write the access line of the request ``scope`` (answered ``status``; ``started``: its
    ``time.perf_counter()`` at arrival) with the fields ``client``, ``method``, ``path``, ``status``
    and ``duration_ms``; 0 is a request that ended before an answer (the client went away)."""
    client = (scope.get("client") or ("-",))[0]
    duration_ms = (time.perf_counter() - started) * 1000
    access_logger.info(ACCESS_LOG_FORMAT, client, scope["method"], scope["path"], scope.get("http_version", "1.1"),
                       status, duration_ms, extra={"client": client, "method": scope["method"], "path": scope["path"],
                                                   "status": status, "duration_ms": round(duration_ms, 2)})


async def _too_large(scope, send, limit: int, length: int | None) -> None:
    """Answer 413 and close the connection (the body is left unread)."""
    await _refuse(scope, send, 413, body_too_large_message(length, limit), "request_too_large")


async def _unreadable(scope, send) -> None:
    """Answer 400 and close the connection: the body ended before its end (a chunked encoding that
    breaks HTTP/1.1's rules: a size that is no hex number, a chunk shorter than its size; or the
    client went away, and the answer goes nowhere)."""
    await _refuse(scope, send, 400, "The request body could not be read whole: its chunked transfer encoding "
                  "is malformed, or the connection closed before its end.", "invalid_body")


async def _refuse(scope, send, status: int, message: str, code: str) -> None:
    """Answer ``status`` with ``message`` (the envelope with ``code`` under ``/v1``, plain text
    elsewhere), a new request id, and close the connection (what is left of the body is not read)."""
    if scope["path"].startswith(API_PREFIX):
        body = json.dumps(error_body(message, code=code)).encode()
        content_type = b"application/json"
    else:
        body, content_type = message.encode(), b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), (b"x-request-id", new_request_id().encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestGate:
    """ASGI application: body limits per route, bodies read whole before `WSGIPool` runs ``app``
    (a WSGI application) on one of ``threads`` + `UNGATED_THREADS` threads, at most ``threads``
    requests in it at once outside the ungated paths (see the module docstring)."""

    def __init__(self, app, threads: int):
        self.pool = WSGIPool(app, threads + UNGATED_THREADS)
        self.threads = threads
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":  # no websockets (granian runs with --no-ws), no lifespan (asginl)
            return None
        started, status = time.perf_counter(), 0
        context = RequestLogContext()
        token = log_context_start(context)

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if not context.request_id:  # answered before Django (413): the id it was given
                    context.request_id = next((v.decode() for n, v in message.get("headers", ())
                                               if n == b"x-request-id"), "")
            await send(message)

        try:
            return await self._gated(scope, receive, observed_send, ((log_context_var, context),))
        finally:
            access_log(scope, status, started)
            log_context_end(token)

    async def _gated(self, scope, receive, send, context: tuple):
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.threads)
        limit = body_limit(scope["path"])
        length, coding, chunked = None, b"", False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.strip().isdigit():
                length = int(value)
            elif name == b"content-encoding":  # lines of a repeated header joined, as WSGI joins them
                coding = b", ".join((coding, value)) if coding else value
            elif name == b"transfer-encoding":
                chunked = True
        if length is not None and length > limit:
            return await _too_large(scope, send, limit, length)
        if coding and (length or chunked) and scope["path"].startswith(API_PREFIX):
            refused = content_coding_refused(coding.decode("latin-1"))
            if refused:  # before the body is read (up to 200 MB on /v1/files)
                return await _refuse(scope, send, 415, refused, "unsupported_content_encoding")
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        size = 0
        while True:  # the whole body, before any thread is taken
            message = await receive()
            if message["type"] == "http.disconnect":
                # granian's word for a body it could not read whole (a malformed chunked encoding) as
                # for a client gone: answered either way (to a client gone, the answer goes nowhere).
                spool.close()
                return await _unreadable(scope, send)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                spool.close()
                return await _too_large(scope, send, limit, None)
            spool.write(chunk)
            if not message.get("more_body"):
                break
        spool.seek(0)
        headers = [(n, v) for n, v in scope["headers"] if n not in (b"transfer-encoding", b"content-length")]
        scope = {**scope, "headers": [*headers, (b"content-length", str(size).encode())]}
        if scope["path"] in UNGATED_PATHS:
            return await self.pool(scope, spool, send, context)
        try:
            await self._slots.acquire()
        except BaseException:
            spool.close()
            raise
        try:
            return await self.pool(scope, spool, send, context)
        finally:
            self._slots.release()


WEB_THREADS = int(os.environ.get("WEB_THREADS") or 32)
application = RequestGate(django_wsgi_application, threads=WEB_THREADS)

from config.web import warm_up  # noqa: E402

warm_up()
