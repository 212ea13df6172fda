"""Request-level middleware: request ids, body-size limit and error envelopes for ``/v1``."""
from __future__ import annotations

import logging
import time
import uuid

from django.conf import settings

from .errors import error_response, server_error_message

logger = logging.getLogger(__name__)

API_PREFIX = "/v1/"


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

    * A body larger than ``EMBEDDINGS_MAX_BODY_BYTES`` (bytes, from
      ``Content-Length``) is refused before it is read: 413 ``request_too_large``.
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
            limit = settings.EMBEDDINGS_MAX_BODY_BYTES
            if length > limit:
                return error_response(
                    f"Request body too large: {length} bytes; the limit is {limit} bytes.",
                    status=413, code="request_too_large",
                )
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not request.path.startswith(API_PREFIX):
            return None
        request_id = getattr(request, "request_id", "unknown")
        logger.exception("Unhandled error in %s %s (request %s)", request.method, request.path, request_id)
        return error_response(server_error_message(request_id), status=500, type="server_error",
                              code="internal_error")
