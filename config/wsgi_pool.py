"""`WSGIPool`: a WSGI application served to an ASGI server from a fixed pool of threads, for
requests whose body has been read whole (`config.asgi` reads it).

Why not a2wsgi's ``WSGIMiddleware`` (whose ``build_environ`` this uses): that middleware hands
every message between its thread and the event loop with a wait for the other side (the body
read, the response's start, each part, its end), five or more thread wake-ups per request on a
request path whose own work is a few ms; here a request is one hand-off to a thread and one back.
``bench/latency.py`` times the served path (``GET /healthz``: the server, the pool and Django's
middleware alone).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from a2wsgi.wsgi import build_environ


class WSGIPool:
    """A WSGI application (``app``) run on ``threads`` threads that live as long as the process,
    for requests whose body has been read whole (see the module docstring for why not a2wsgi's
    ``WSGIMiddleware``).

    ``await pool(scope, body, send, context=((var, value), ...))``: ``body`` is an open binary file
    at offset 0 holding the whole body (``wsgi.input``; the pool closes it once the application
    returns, or when the call ends before a thread ran it); the response goes to the ASGI
    ``send``. The application runs in one of the threads, in that thread's own context (as under
    any WSGI server: what Django keeps per thread in context variables, its caches' clients for
    one, lasts from request to request) with the variables of ``context`` set for the call (the
    request's log context), and so does the reading of its response: up to `BUFFER_BYTES` (or to
    its end) in that same call, then in parts of up to `BUFFER_BYTES` (bytes), a hand-off each,
    the next part read only once the last is sent (a large download is never held in memory
    whole; its later parts, and its close, may be read in other threads of the pool: only files
    stream). The iterable is closed once, in a thread (PEP 3333), whatever happens: the client
    gone, or the call cancelled while a thread runs the application (closed once that thread is
    done with it). An exception the application raises before its response starts propagates
    (granian answers 500); Django answers its own errors."""

    # Response bytes read from the application per hand-off. Django's responses but files are
    # one part, so they are answered with one hand-off whatever their size.
    BUFFER_BYTES = 1_048_576

    def __init__(self, app, threads: int):
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="WSGI")

    async def __call__(self, scope, body, send, context: tuple = ()) -> None:
        loop = asyncio.get_running_loop()
        pending = reading = rest = None  # the pool call last made; the rest it reads; the rest to read

        def in_thread(function, *args):
            nonlocal pending
            pending = self.executor.submit(_with_context, context, function, *args)
            return asyncio.wrap_future(pending, loop=loop)

        try:
            status, headers, parts, rest = await in_thread(self._start, scope, body)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            while rest is not None:
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                reading, rest = rest, None  # the call owns it now: it closes it if it fails
                parts, rest = await in_thread(self._read, reading)
                reading = None
            await send({"type": "http.response.body", "body": b"".join(parts)})
        finally:
            if pending is None or pending.cancelled():  # the application never ran
                body.close()
                if reading is not None:
                    self.executor.submit(_close, reading[1])
            elif not pending.done():  # cancelled while a thread runs the call: close after it
                pending.add_done_callback(self._close_the_rest)
            elif rest is not None:  # the client went away mid-response
                self.executor.submit(_close, rest[1])

    def _close_the_rest(self, done) -> None:
        """Done-callback of a pool call whose caller was cancelled: close what it left open, in a
        pool thread (the callback may run in the event loop's)."""
        if not done.cancelled() and done.exception() is None and done.result()[-1] is not None:
            try:
                self.executor.submit(_close, done.result()[-1][1])
            except RuntimeError:  # the pool is shutting down: here, then
                _close(done.result()[-1][1])

    def _start(self, scope, body):
        """In a pool thread: run the application; its status, headers, first parts and the rest
        (``(iterator, iterable)``, or None when read to its end and closed)."""
        response = []

        def start_response(status, headers, exc_info=None):
            # PEP 3333: a second call must carry exc_info; it replaces the first (nothing is sent
            # before the application returns).
            if response and not exc_info:
                raise RuntimeError("start_response called twice without exc_info")
            response[:] = [int(status.split(" ", 1)[0]),
                           [(name.strip().lower().encode("latin1"), value.strip().encode("latin1"))
                            for name, value in headers]]
            return written.append

        written: list[bytes] = []
        try:
            iterable = self.app(build_environ(scope, body), start_response)
        finally:
            body.close()  # here, not by the caller: its await may end (cancelled) before this thread
        try:
            iterator = iter(iterable)
        except BaseException:
            _close(iterable)
            raise
        parts, rest = self._read((iterator, iterable), written)
        return response[0], response[1], parts, rest

    def _read(self, rest, parts: list[bytes] | None = None):
        """In a pool thread: the next parts of a response, up to `BUFFER_BYTES`, and the rest (None
        once the iterable is read to its end, or fails, and is closed)."""
        iterator, iterable = rest
        parts = [] if parts is None else parts
        size = sum(map(len, parts))
        try:
            for part in iterator:
                parts.append(part)
                size += len(part)
                if size >= self.BUFFER_BYTES:
                    return parts, rest
        except BaseException:
            _close(iterable)
            raise
        _close(iterable)
        return parts, None


def _with_context(context: tuple, function, *args):
    """``function(*args)`` with each ``(variable, value)`` of ``context`` set, then reset."""
    tokens = [(variable, variable.set(value)) for variable, value in context]
    try:
        return function(*args)
    finally:
        for variable, token in reversed(tokens):
            variable.reset(token)


def _close(iterable) -> None:
    close = getattr(iterable, "close", None)
    if close is not None:
        close()
