"""`config.wsgi_pool.WSGIPool`: a WSGI application's response reaches the ASGI ``send`` whole, in
one part when it is (Django's responses but files), in parts of `WSGIPool.BUFFER_BYTES` when it
streams; its iterable is closed whatever happens; the application sees the body, the request's
headers and the caller's context variables. The live server's side: tests/security (bodies,
slow clients) and tests/batches/test_batch_live.py (a 2,000-line output file downloaded)."""
from __future__ import annotations

import asyncio
import contextvars
import io
import threading

import pytest

from config.wsgi_pool import WSGIPool

request_id = contextvars.ContextVar("request_id", default="")


def run_loop(coroutine_function):
    """``asyncio.run(coroutine_function())`` in a thread of its own (the suite's browser tests
    leave an event loop running in the main thread); its result, or its exception raised here."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as runner:
        return runner.submit(lambda: asyncio.run(coroutine_function())).result()


def scope(path: str = "/v1/embeddings", body: bytes = b"") -> dict:
    return {"type": "http", "method": "POST", "path": path, "query_string": b"a=1", "http_version": "1.1",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"x-thing", b"yes")], "client": ("10.0.0.1", 4321), "server": ("127.0.0.1", 8000)}


class Iterable:
    """A WSGI response iterable that records its close and the thread that closed it."""

    def __init__(self, parts):
        self.parts, self.closed_in, self.closes = parts, None, 0

    def __iter__(self):
        return iter(self.parts)

    def close(self):
        self.closed_in = threading.current_thread().name
        self.closes += 1


def answering(iterable, headers=()):
    """A WSGI application that answers 200 with ``headers`` and ``iterable``."""
    def app(environ, start_response):
        start_response("200 OK", list(headers))
        return iterable

    return app


def serve(app, scope_, body: bytes, send=None, requests: int = 1) -> list[dict]:
    """The messages sent for ``requests`` requests served one after another by one pool."""
    sent = []

    async def default_send(message):
        sent.append(message)

    async def run():
        pool = WSGIPool(app, threads=1)
        try:
            for n in range(requests):
                await pool(scope_, io.BytesIO(body), send or default_send, ((request_id, f"req_{n + 1}"),))
        finally:
            pool.executor.shutdown()

    run_loop(run)
    return sent


def test_a_response_of_one_part_is_one_start_and_one_body_message_and_the_app_sees_the_request():
    seen = {}
    iterable = Iterable([b'{"ok": true}'])

    def app(environ, start_response):
        seen.update(body=environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])), path=environ["PATH_INFO"],
                    query=environ["QUERY_STRING"], header=environ["HTTP_X_THING"], client=environ["REMOTE_ADDR"],
                    request_id=request_id.get(), thread=threading.current_thread().name)
        start_response("201 Created", [("Content-Type", "application/json"), ("X-Request-Id", "req_1")])
        return iterable

    sent = serve(app, scope(body=b'{"input": "x"}'), b'{"input": "x"}')
    assert sent == [{"type": "http.response.start", "status": 201,
                     "headers": [(b"content-type", b"application/json"), (b"x-request-id", b"req_1")]},
                    {"type": "http.response.body", "body": b'{"ok": true}'}]
    assert seen == {"body": b'{"input": "x"}', "path": "/v1/embeddings", "query": "a=1", "header": "yes",
                    "client": "10.0.0.1", "request_id": "req_1", "thread": seen["thread"]}
    assert seen["thread"].startswith("WSGI")
    assert iterable.closed_in.startswith("WSGI")


def test_the_thread_keeps_its_own_context_from_request_to_request_and_the_given_variables_only_for_one():
    kept = contextvars.ContextVar("kept")  # as Django keeps its caches' clients per thread
    seen = []

    def app(environ, start_response):
        seen.append((request_id.get(), kept.get(None)))
        kept.set(len(seen))
        start_response("200 OK", [])
        return [b""]

    async def run():
        pool = WSGIPool(app, threads=1)
        try:
            for n in (1, 2):
                await pool(scope(), io.BytesIO(b""), _ignore, ((request_id, f"req_{n}"),))
            after = await asyncio.get_running_loop().run_in_executor(pool.executor, request_id.get)
        finally:
            pool.executor.shutdown()
        return after

    assert run_loop(run) == ""  # reset once the request is done
    assert seen == [("req_1", None), ("req_2", 1)]


async def _ignore(message):
    pass


def test_a_streamed_response_arrives_whole_in_parts_of_the_buffer_and_is_closed():
    part = bytes(range(256)) * 256  # 64 KiB
    iterable = Iterable([part] * 40)  # 2.5 MiB

    sent = serve(answering(iterable, [("Content-Type", "application/octet-stream")]), scope(), b"")
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert b"".join(m["body"] for m in bodies) == part * 40
    assert [len(m["body"]) for m in bodies] == [WSGIPool.BUFFER_BYTES, WSGIPool.BUFFER_BYTES, 512 * 1024]
    assert [m.get("more_body", False) for m in bodies] == [True, True, False]
    assert iterable.closed_in.startswith("WSGI")


def test_a_client_gone_mid_stream_still_closes_the_iterable():
    iterable = Iterable([b"x" * WSGIPool.BUFFER_BYTES] * 5)
    async def send(message):
        if message["type"] == "http.response.body":
            raise OSError("client gone")

    with pytest.raises(OSError, match="client gone"):
        serve(answering(iterable), scope(), b"", send=send)
    assert iterable.closed_in.startswith("WSGI")


def test_an_application_error_propagates_and_a_failing_iterable_is_closed():
    def failing_app(environ, start_response):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        serve(failing_app, scope(), b"")

    class Failing(Iterable):
        def __iter__(self):
            raise ValueError("bad part")

    iterable = Failing([])
    with pytest.raises(ValueError, match="bad part"):
        serve(answering(iterable), scope(), b"")
    assert iterable.closed_in.startswith("WSGI") and iterable.closes == 1

    class FailingLater(Iterable):  # a later part fails: closed once, by the call that read it
        def __iter__(self):
            yield b"x" * WSGIPool.BUFFER_BYTES
            raise ValueError("bad later part")

    later = FailingLater([])
    with pytest.raises(ValueError, match="bad later part"):
        serve(answering(later), scope(), b"")
    assert later.closes == 1


def test_write_before_the_iterable_and_a_replaced_start_are_honoured():
    def app(environ, start_response):
        start_response("200 OK", [("A", "1")])
        try:
            raise KeyError("late")
        except KeyError:
            import sys
            write = start_response("500 Internal Server Error", [("B", "2")], sys.exc_info())
        write(b"first ")
        return [b"then"]

    sent = serve(app, scope(), b"")
    assert sent[0] == {"type": "http.response.start", "status": 500, "headers": [(b"b", b"2")]}
    assert sent[1]["body"] == b"first then"


def test_a_call_cancelled_while_the_application_runs_closes_its_response_once_the_thread_is_done():
    started, release = threading.Event(), threading.Event()
    iterable = Iterable([b"x" * WSGIPool.BUFFER_BYTES] * 3)  # more than one part: left open by the call

    def app(environ, start_response):
        started.set()
        release.wait(10)
        start_response("200 OK", [])
        return iterable

    async def run():
        pool = WSGIPool(app, threads=1)
        call = asyncio.ensure_future(pool(scope(), io.BytesIO(b""), _ignore))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert iterable.closed_in is None  # the thread still runs the application
        release.set()
        pool.executor.shutdown(wait=True)

    run_loop(run)
    assert iterable.closed_in and iterable.closed_in.startswith("WSGI") and iterable.closes == 1


def test_a_call_cancelled_before_a_thread_ran_it_closes_the_body():
    release = threading.Event()
    body = io.BytesIO(b"unread")

    def blocking_app(environ, start_response):
        release.wait(10)
        start_response("200 OK", [])
        return [b""]

    async def run():
        pool = WSGIPool(blocking_app, threads=1)
        first = asyncio.ensure_future(pool(scope(), io.BytesIO(b""), _ignore))  # takes the one thread
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(pool(scope(), body, _ignore))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        await first
        pool.executor.shutdown(wait=True)

    run_loop(run)
    assert body.closed
