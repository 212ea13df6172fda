"""ASGI entry point: the web role's application (``config.asgi:application``, served by
granian, see `config.web`).

Django's ASGI handler, behind `RequestGate`, which runs before Django sees a request:

* a body longer than its route allows (`config.middleware.body_limit`, bytes, from
  ``Content-Length``) is answered 413 at once, unread (the envelope under ``/v1``);
* a chunked body (``Transfer-Encoding: chunked``, no ``Content-Length``) is read here up to
  that limit (413 past it) and handed on with its ``Content-Length`` set: Django REST
  framework reads a body without ``Content-Length`` as empty;
* at most ``WEB_THREADS`` requests per process are in Django (each in a thread) at once,
  counted from the moment their body has arrived whole: a slow client holds no thread.
"""
from __future__ import annotations

import asyncio
import json
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from config.errors import error_body  # noqa: E402  (after Django is set up)
from config.middleware import API_PREFIX, body_limit, body_too_large_message, new_request_id  # noqa: E402


async def _too_large(scope, send, limit: int, length: int | None) -> None:
    """Answer 413 and close the connection (the body is left unread)."""
    message = body_too_large_message(length, limit)
    if scope["path"].startswith(API_PREFIX):
        body = json.dumps(error_body(message, code="request_too_large")).encode()
        content_type = b"application/json"
    else:
        body, content_type = message.encode(), b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), (b"x-request-id", new_request_id().encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestGate:
    """ASGI middleware: body limits per route, chunked bodies, and ``threads`` requests per
    process in the application at once (see the module docstring)."""

    def __init__(self, app, threads: int):
        self.app = app
        self.threads = threads
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.threads)
        limit = body_limit(scope["path"])
        length, chunked = None, False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.strip().isdigit():
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if length is not None and length > limit:
            return await _too_large(scope, send, limit, length)
        if chunked and length is None:
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                if len(body) > limit:
                    return await _too_large(scope, send, limit, None)
                if not message.get("more_body"):
                    break
            headers = [(n, v) for n, v in scope["headers"] if n != b"transfer-encoding"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
            receive = self._replay(bytes(body), receive)
        held = False

        async def gated_receive():
            nonlocal held
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body") and not held:
                await self._slots.acquire()  # the body is whole: now it may take a thread
                held = True
            return message

        try:
            return await self.app(scope, gated_receive, send)
        finally:
            if held:
                self._slots.release()

    @staticmethod
    def _replay(body: bytes, receive):
        """A ``receive`` that returns ``body`` whole once, then waits on the connection's."""
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


application = RequestGate(django_application, threads=int(os.environ.get("WEB_THREADS") or 16))

from config.web import warm_up  # noqa: E402

warm_up()
