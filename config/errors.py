"""OpenAI-shaped errors for every ``/v1`` response that is not a 200.

The envelope (OpenAI API reference, "Error codes")::

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

`APIError` and its subclasses carry status, type, param and code; the DRF
exception handler below turns them, and DRF's own exceptions (parse errors,
415, 405, throttling, authentication), into that envelope. Unexpected
exceptions are turned into a 500 envelope by `config.middleware.OpenAIErrorMiddleware`.
"""
from __future__ import annotations

import logging

from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from . import exceptions as domain

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error the API reports in OpenAI's envelope.

    Attributes:
        status_code: the HTTP status (int).
        message: human-readable text, safe to show to the caller.
        type: OpenAI error type, e.g. ``invalid_request_error``.
        param: the request field at fault, or ``None``.
        code: a stable machine-readable code, or ``None``.
        headers: extra response headers (e.g. ``Retry-After``).
        logged: True when the condition is logged elsewhere (e.g. once per Redis outage,
            `config.redis_outage`), so Django's per-response ``django.request`` line is skipped.
    """

    status_code = 400
    type = "invalid_request_error"
    code: str | None = None
    logged = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status_code: int | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        if type is not None:
            self.type = type
        self.headers = headers or {}

    def body(self) -> dict:
        """The envelope as a dict: ``{"error": {...}}``."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


class InvalidRequestError(APIError):
    """400: the request is malformed or violates a documented limit."""


class AuthenticationError(APIError):
    """401 ``invalid_api_key``: missing, malformed, unknown, revoked or expired key."""

    status_code = 401
    code = "invalid_api_key"

    def __init__(self, message: str, **kwargs):
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="api"'})
        super().__init__(message, **kwargs)


class PermissionDeniedError(APIError):
    """403: the key may not act on what the request names (e.g. another project)."""

    status_code = 403


class NotFoundError(APIError):
    """404: e.g. ``model_not_found``."""

    status_code = 404


class RateLimitError(APIError):
    """429: ``rate_limit_exceeded`` or ``insufficient_quota``."""

    status_code = 429
    type = "requests"


class ServiceUnavailableError(APIError):
    """503: overloaded or a dependency is down; carries ``Retry-After``."""

    status_code = 503
    type = "server_error"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs):
        headers = {"Retry-After": str(retry_after), **(kwargs.pop("headers", None) or {})}
        super().__init__(message, headers=headers, **kwargs)


class GatewayTimeoutError(APIError):
    """504 ``timeout``: the deadline for the work passed (e.g. a worker did not answer in time)."""

    status_code = 504
    type = "server_error"
    code = "timeout"


class InternalServerError(APIError):
    """500 ``internal_error``: the work failed on our side (e.g. a worker raised).

    The message names the request id (as OpenAI's does) so support can find the
    server-side log; it never carries the underlying exception's text.
    """

    status_code = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, *, request_id: str, **kwargs):
        super().__init__(server_error_message(request_id), **kwargs)


def server_error_message(request_id: str) -> str:
    """The message of every 500 (OpenAI's wording), naming the request id, never the cause."""
    return ("The server had an error while processing your request. Sorry about that! "
            f"You can retry your request, or contact us if the error persists. (Request ID: {request_id})")


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """Build OpenAI's error envelope ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(message: str, *, status: int, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JsonResponse:
    """A plain Django `JsonResponse` carrying the envelope (for use outside DRF)."""
    response = JsonResponse(error_body(message, type=type, param=param, code=code), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


# DRF's validation codes mapped to the codes OpenAI uses for the same faults.
_VALIDATION_CODES = {
    "required": "missing_required_parameter",
    "null": "invalid_value",
    "blank": "invalid_value",
    "invalid": "invalid_value",
    "invalid_choice": "invalid_value",
    "min_value": "invalid_value",
    "max_value": "invalid_value",
    "max_length": "invalid_value",
    "null_characters_not_allowed": "invalid_value",
    "not_a_list": "invalid_value",
}


def _first_validation_error(detail, param: str | None = None):
    """Walk a DRF ValidationError ``detail`` to its first leaf.

    Returns ``(param, message, code)``; ``param`` is the top-level request field
    (nested errors name the top-level field, as OpenAI does).
    """
    if isinstance(detail, dict):
        for key, value in detail.items():
            return _first_validation_error(value, param or (None if key == "non_field_errors" else key))
        return param, "Invalid request.", "invalid_value"
    if isinstance(detail, list):
        if not detail:
            return param, "Invalid request.", "invalid_value"
        return _first_validation_error(detail[0], param)
    code = getattr(detail, "code", None)
    return param, str(detail), _VALIDATION_CODES.get(code, code)


def api_error_from_domain(exc: Exception) -> APIError | None:
    """The `APIError` (status, envelope, ``Retry-After``) of a domain error of the embeddings
    request (`config.exceptions`), or None for any other exception. The one place where
    those errors meet HTTP."""
    if isinstance(exc, domain.InvalidInput):
        return InvalidRequestError(exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, domain.ModelNotAllowed):
        return PermissionDeniedError(
            f"This API key may not use the model '{exc.model}': it is not in the {exc.scope}'s list of "
            "allowed models. Ask your administrator to allow it.", param="model", code="model_not_allowed")
    if isinstance(exc, domain.WorkersUnavailable):
        return ServiceUnavailableError(
            "No embedding worker is running right now. Please retry shortly.",
            code="no_worker_available", retry_after=exc.retry_after_s)
    if isinstance(exc, domain.Overloaded):
        return ServiceUnavailableError(
            "The embedding workers are overloaded right now. Please retry shortly.",
            code="server_overloaded", retry_after=exc.retry_after_s)
    if isinstance(exc, domain.BrokerUnavailable):
        return ServiceUnavailableError("The embedding workers are unreachable right now. Please retry shortly.",
                                       retry_after=exc.retry_after_s)
    if isinstance(exc, domain.DeadlineExceeded):
        return GatewayTimeoutError(
            f"The request timed out: the embedding workers did not finish within {exc.timeout_s:g} s. "
            "Please retry, or send fewer inputs per request.")
    if isinstance(exc, domain.WorkerFailed):
        return InternalServerError(request_id=exc.request_id)
    return None


def _content_type(context) -> str:
    """The ``Content-Type`` of the request an exception handler's ``context`` names ("" for none)."""
    request = (context or {}).get("request")
    return str(getattr(request, "content_type", "") or "").lower()


def openai_exception_handler(exc, context) -> Response | None:
    """DRF ``EXCEPTION_HANDLER``: render known errors in OpenAI's envelope (domain errors of the
    embeddings request through `api_error_from_domain`).

    Returns ``None`` for unexpected exceptions so they propagate to
    `config.middleware.OpenAIErrorMiddleware`, which logs them and answers 500.
    """
    exc = api_error_from_domain(exc) or exc
    if isinstance(exc, APIError):
        response = Response(exc.body(), status=exc.status_code, headers=exc.headers)
        if exc.logged:
            response._has_been_logged = True  # what django.utils.log.log_response checks
        return response

    if isinstance(exc, drf_exceptions.ValidationError):
        param, message, code = _first_validation_error(exc.detail)
        return Response(error_body(message, param=param, code=code), status=400)

    if isinstance(exc, drf_exceptions.NotAuthenticated):
        return Response(
            error_body(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            ),
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    if isinstance(exc, drf_exceptions.AuthenticationFailed):
        return Response(error_body(str(exc.detail), code="invalid_api_key"), status=401,
                        headers={"WWW-Authenticate": 'Bearer realm="api"'})
    if isinstance(exc, drf_exceptions.ParseError) and _content_type(context).startswith("multipart/"):
        return Response(error_body(f"We could not parse the multipart/form-data body of your request "
                                   f"(a file upload). Detail: {exc.detail}", code="invalid_body"), status=400)
    if isinstance(exc, drf_exceptions.ParseError):
        return Response(
            error_body(
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                f"but what was sent was not valid JSON.) Detail: {exc.detail}",
                code="invalid_json",
            ),
            status=400,
        )
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        # what this endpoint reads (its parsers): application/json, or multipart/form-data for uploads
        view = context.get("view")
        accepted = [parser.media_type for parser in view.get_parsers()] if view is not None else []
        sent = _content_type(context).split(";")[0].strip()[:100]
        return Response(
            error_body(f"Unsupported Content-Type '{sent}'. Send the body as "
                       f"{' or '.join(accepted) or 'application/json'}.", code="unsupported_media_type"),
            status=415,
        )
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        request = context.get("request")
        method = getattr(request, "method", "")
        path = getattr(request, "path", "")
        return Response(error_body(f"Method not allowed ({method} {path}).", code="method_not_allowed"),
                        status=405)
    if isinstance(exc, (Http404, drf_exceptions.NotFound)):
        return Response(error_body("Not found.", code="not_found"), status=404)
    if isinstance(exc, drf_exceptions.PermissionDenied):
        return Response(error_body(str(exc.detail), code="permission_denied"), status=403)
    if isinstance(exc, drf_exceptions.Throttled):
        headers = {"Retry-After": str(exc.wait)} if exc.wait is not None else {}
        return Response(error_body(str(exc.detail), type="requests", code="rate_limit_exceeded"),
                        status=429, headers=headers)
    if isinstance(exc, drf_exceptions.APIException):
        return Response(error_body(str(exc.detail), code=exc.default_code), status=exc.status_code)
    return None
