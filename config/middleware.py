"""Request-level middleware: request ids, body-size limit and error envelopes for ``/v1``."""
from __future__ import annotations

import logging
import time
import uuid

from django.conf import settings

from .errors import error_response, server_error_message

logger = logging.getLogger(__name__)

API_PREFIX = "/v1/"


def body_limit(path: str) -> int:
    """The largest request body (bytes) accepted on ``path``: the entry of
    ``settings.REQUEST_BODY_MAX_BYTES`` with the longest matching path prefix (``""`` matches
    every path). Used before the body is read, by `config.asgi` and `OpenAIErrorMiddleware`."""
    limits = settings.REQUEST_BODY_MAX_BYTES
    prefix = max((p for p in limits if path.startswith(p)), key=len, default=None)
    return limits[prefix] if prefix is not None else settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def body_too_large_message(length: int | None, limit: int) -> str:
    """The message of a 413 (`length`, `limit`: bytes; `length` None when unknown, e.g. a
    chunked body that went past the limit)."""
    said = f"{length} bytes" if length is not None else f"more than {limit} bytes"
    return f"Request body too large: {said}; the limit is {limit} bytes."


def body_too_large(length: int, limit: int):
    """413 ``request_too_large`` in the envelope, as a Django response."""
    return error_response(body_too_large_message(length, limit), status=413, code="request_too_large")


def new_request_id() -> str:
    """A fresh request id, ``req_`` + 32 hex chars (the shape OpenAI's ``x-request-id`` has)."""
    return f"req_{uuid.uuid4().hex}"


class RequestIDMiddleware:
    """Give every request an id (``request.request_id``) and echo it as ``x-request-id``;
    note its arrival time (``request.started_at``, `time.perf_counter` seconds).

    The id is always generated here: it is the idempotency key of the usage record
    (unique in the database), so a client cannot choose it.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.started_at = time.perf_counter()  # seconds; latency is measured from here
        request.request_id = new_request_id()
        response = self.get_response(request)
        response["x-request-id"] = request.request_id
        return response


class OpenAIErrorMiddleware:
    """For ``/v1`` paths: 413 for oversized bodies and a 500 envelope for crashes.

    * A body larger than `body_limit` of its path (bytes, from ``Content-Length``) is
      refused before it is read: 413 ``request_too_large`` (the server, `config.asgi`, does
      the same before Django sees the request; this covers other entry points).
    * An unexpected exception is logged with its traceback (server-side only) and
      answered with a 500 envelope that names the request id, never the traceback.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith(API_PREFIX):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            limit = body_limit(request.path)
            if length > limit:
                return body_too_large(length, limit)
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not request.path.startswith(API_PREFIX):
            return None
        request_id = getattr(request, "request_id", "unknown")
        logger.exception("Unhandled error in %s %s (request %s)", request.method, request.path, request_id)
        return error_response(server_error_message(request_id), status=500, type="server_error",
                              code="internal_error")
