"""What the OpenAPI schema (drf-spectacular) says beyond the views: the error envelope every
non-200 answer carries (the bearer schemes are in `accounts.schema`).

Views declare their errors with `error_responses` so the schema lists each status they answer.
"""
from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

# What each status means on this API (the description in the schema).
ERROR_STATUSES = {
    400: "Invalid request: a parameter is missing or wrong (`error.param` names it).",
    401: "No key, or a key that is unknown, revoked or expired (`invalid_api_key`).",
    403: "The key may not do this (another project, an admin key where a project key is needed, ...).",
    404: "Not found (e.g. `model_not_found`).",
    409: "The object is in a state that does not allow this (e.g. cancelling a completed batch).",
    413: "The body is larger than this route accepts.",
    429: "A rate limit or quota was reached; see `Retry-After` and `x-ratelimit-*`.",
    500: "The server failed; the message names the request id.",
    503: "Overloaded or a dependency is down; retry after `Retry-After` seconds.",
    504: "The work did not finish within the deadline.",
}


class ErrorSerializer(serializers.Serializer):
    """OpenAI's error object: ``message`` (safe to show), ``type``, ``param`` (the request field at
    fault or null) and ``code`` (stable, machine-readable, or null)."""

    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class ErrorResponseSerializer(serializers.Serializer):
    """The envelope of every non-200 answer on ``/v1``: ``{"error": ErrorSerializer}``."""

    error = ErrorSerializer()


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """``extend_schema(responses=...)`` entries for ``statuses``, each the envelope with its meaning."""
    return {status: OpenApiResponse(ErrorResponseSerializer, description=ERROR_STATUSES[status])
            for status in statuses}
