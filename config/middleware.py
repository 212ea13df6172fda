"""Request-level middleware: request ids, body-size limit and error envelopes for ``/v1``."""
from __future__ import annotations

import logging
import time
import uuid

from django import db
from django.conf import settings
from django.http import Http404

from . import logs, metrics
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


def content_coding_refused(value: str) -> str | None:
    """The 415 message for a request body sent with ``Content-Encoding: value``; None for none or
    ``identity``. No coding is supported (RFC 9110 §8.4.1: 415 for a coding the server does not
    support): a body is read as it is, so a gzip body read as JSON was a 400 and a plain body
    labelled ``br`` a 200."""
    coding = value.strip().lower()
    if coding in ("", "identity"):
        return None
    return f"Content-Encoding '{coding[:64]}' is not supported: send the request body uncompressed."


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


# SQLSTATEs of a database that cannot be reached or is going away (PostgreSQL, Appendix A): the
# connection classes, admin/crash shutdown, "cannot connect now", too many connections.
UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached now (down, restarting, out of
    connections): Django's ``InterfaceError`` (a connection already closed), or an
    ``OperationalError`` from libpq without a server's SQLSTATE (no connection) or with one of
    `UNREACHABLE_SQLSTATES`. A deadlock, a cancelled statement or a full disk is not: those stay
    500s, logged with their traceback."""
    if isinstance(exc, db.InterfaceError):
        return True
    if not isinstance(exc, db.OperationalError):
        return False
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(UNREACHABLE_SQLSTATES)


class OpenAIErrorMiddleware:
    """For ``/v1`` paths: 413 for oversized bodies and a 500 envelope for crashes.

    * A body larger than `body_limit` of its path (bytes, from ``Content-Length``) is
      refused before it is read: 413 ``request_too_large`` (the server, `config.asgi`, does
      the same before Django sees the request; this covers other entry points).
    * An unexpected exception is logged with its traceback (server-side only) and
      answered with a 500 envelope that names the request id, never the traceback; the database
      unreachable (`database_unreachable`) is a 503 with ``Retry-After``.
    * A path holding NUL (``%00``), under ``/v1`` or not, is answered 404 (``handler404``: the
      envelope's ``unknown_url`` under ``/v1``): no id can hold one (PostgreSQL's text cannot), and
      a lookup by one would fail in the database (a 500).
    * A body in a content coding (``Content-Encoding: gzip``, ...) is refused, 415
      ``unsupported_content_encoding`` (`content_coding_refused`; the server, `config.asgi`, does
      the same before reading the body), rather than parsed as if it were plain.
    * ``Allow`` lists the methods a ``/v1`` resource answers: ``OPTIONS`` is a 405 here (DRF's
      metadata is off, ``DEFAULT_METADATA_CLASS``), so it is not listed (RFC 9110 §10.2.1).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if "\x00" in request.path:
            raise Http404("A path holding NUL names nothing here.")
        if request.path.startswith(API_PREFIX):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            limit = body_limit(request.path)
            if length > limit:
                return body_too_large(length, limit)
            refused = content_coding_refused(request.headers.get("Content-Encoding", "")) if length else None
            if refused:
                return error_response(refused, status=415, code="unsupported_content_encoding")
            response = self.get_response(request)
            allow = response.get("Allow")
            if allow and "OPTIONS" in allow:
                response["Allow"] = ", ".join(m for m in (x.strip() for x in allow.split(",")) if m != "OPTIONS")
            return response
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not request.path.startswith(API_PREFIX):
            return None
        request_id = getattr(request, "request_id", "unknown")
        if database_unreachable(exception):
            # a dependency's outage, answered as a Redis outage is (503 to retry), not a crash
            logger.warning("Database unavailable in %s %s (request %s): %s", request.method, request.path,
                           request_id, exception)
            return error_response("The database is temporarily unavailable, so the request was not served. "
                                  "Please retry shortly.", status=503, type="server_error",
                                  code="service_unavailable",
                                  headers={"Retry-After": str(settings.ADMISSION_RETRY_AFTER_SECONDS)})
        logger.exception("Unhandled error in %s %s (request %s)", request.method, request.path, request_id)
        return error_response(server_error_message(request_id), status=500, type="server_error",
                              code="internal_error")


class ObservabilityMiddleware:
    """Per request: the log context (`config.logs.RequestLogContext`: every line written while the
    request is served carries its id, and once DRF resolved the key its organization, project and
    key ids) and, for ``/v1``, the metrics of `config.metrics`: the response by endpoint, status
    and error code; for ``/v1/embeddings`` its latency, phases and admission outcome.

    Sits right after `RequestIDMiddleware`. Under the ASGI server the context was opened by
    `config.asgi` (which writes the access line with it); elsewhere (tests, WSGI) it opens one.
    With ``METRICS_ENABLED`` off it keeps the log context only."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.metrics = settings.METRICS_ENABLED

    def __call__(self, request):
        context = logs.log_context()
        token = None
        if context is None:
            context = logs.RequestLogContext()
            token = logs.log_context_start(context)
        context.request_id, context.request = request.request_id, request
        api = self.metrics and request.path.startswith(API_PREFIX)
        timer = phases_token = None
        if api and request.path == EMBEDDINGS_PATH:
            timer, phases_token = metrics.phases_start()
        try:
            response = self.get_response(request)
            if api:
                self._observe(request, response, timer)
            return response
        finally:
            if phases_token is not None:
                metrics.phases_end(phases_token)
            if token is not None:
                logs.log_context_end(token)

    @staticmethod
    def _observe(request, response, timer) -> None:
        error_type, code = _error_of(response)
        metrics.API_REQUESTS.labels(_endpoint(request), str(response.status_code), code or "").inc()
        if timer is None:
            return
        metrics.REQUEST_DURATION.observe(time.perf_counter() - request.started_at)
        timer.observe()
        outcome = metrics.admission_outcome(timer=timer, status=response.status_code, error_type=error_type,
                                            code=code)
        if outcome is not None:
            metrics.ADMISSION.labels(outcome).inc()


EMBEDDINGS_PATH = "/v1/embeddings"


def _endpoint(request) -> str:
    """The route of ``request`` (``/v1/embeddings``, ``/v1/models/<str:model_id>``), ``unknown`` for
    a path no route serves: a bounded label, never the raw path."""
    from django.urls import Resolver404, resolve

    match = getattr(request, "resolver_match", None)
    if match is None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return "unknown"
    route = match.route or ""
    return "unknown" if route.startswith("^") else f"/{route}"


def _error_of(response) -> tuple[str | None, str | None]:
    """``(type, code)`` of the OpenAI error envelope in ``response``, ``(None, None)`` for a success or
    a body that is not the envelope."""
    if response.status_code < 400:
        return None, None
    data = getattr(response, "data", None)  # DRF's Response: the dict before rendering
    if data is None and response.get("Content-Type", "").startswith("application/json") and not response.streaming:
        try:
            import orjson

            data = orjson.loads(response.content)
        except (orjson.JSONDecodeError, ValueError):
            return None, None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, None
    return error.get("type"), error.get("code")
