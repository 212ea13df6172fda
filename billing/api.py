"""The usage and costs API for organization admin keys, in OpenAI's shape.

``GET /v1/organization/usage/embeddings`` and ``GET /v1/organization/costs`` (OpenAI API
reference, "Usage" and "Costs"): a ``page`` object whose ``data`` are time buckets
(``start_time``/``end_time`` unix seconds) with ``results``, plus ``has_more`` and a
``next_page`` cursor. Buckets are aligned to UTC minutes/hours/days: ``start_time`` is
rounded down and ``end_time`` up to the bucket width; every bucket in range is listed
(empty ones with ``results: []``). An admin key sees only its own organization.
"""
from __future__ import annotations

import base64
import binascii
import time
from datetime import UTC, datetime

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import AdminAPIKeyAuthentication
from accounts.models import APIKey, Project
from config.errors import InvalidRequestError
from embeddings.models import EmbeddingModel

from .usage import BUCKET_SECONDS, COSTS_GROUP_BY, USAGE_GROUP_BY, UsageFilter, costs_grouped, \
    usage_embeddings_grouped

# OpenAI's limits on buckets per page: (default, max) per bucket width.
USAGE_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
COSTS_LIMITS = {"1d": (7, 180)}


def _list_param(request, name: str) -> list[str] | None:
    """A list query parameter: ``name=a&name=b``, ``name[]=a`` or ``name=a,b``; ``None`` when absent."""
    raw = request.query_params.getlist(name) + request.query_params.getlist(f"{name}[]")
    if not raw:
        return None
    return [part.strip() for value in raw for part in value.split(",") if part.strip()]


def _int_param(request, name: str, *, required: bool = False, minimum: int = 0) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        if required:
            raise InvalidRequestError(f"Missing required parameter: '{name}'.", param=name,
                                      code="missing_required_parameter")
        return None
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequestError(f"Invalid value for '{name}': expected an integer, got '{value}'.",
                                  param=name, code="invalid_value") from None
    if number < minimum:
        raise InvalidRequestError(f"Invalid value for '{name}': must be >= {minimum}.", param=name,
                                  code="invalid_value")
    return number


def _encode_page(bucket_start: int) -> str:
    return "page_" + base64.urlsafe_b64encode(f"v1:{bucket_start}".encode()).decode().rstrip("=")


def _decode_page(cursor: str) -> int:
    try:
        payload = cursor.removeprefix("page_")
        text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
        version, value = text.split(":")
        if version != "v1":
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequestError("Invalid value for 'page': not a cursor returned as 'next_page'.",
                                  param="page", code="invalid_value") from None


class _Window:
    """The parsed time window of a request: bucket width, this page's buckets, the next cursor."""

    def __init__(self, request, *, widths: dict[str, tuple[int, int]], default_width: str = "1d"):
        width = request.query_params.get("bucket_width", default_width)
        if width not in widths:
            raise InvalidRequestError(
                f"Invalid value for 'bucket_width': '{width}'. Supported values are: {', '.join(widths)}.",
                param="bucket_width", code="invalid_value")
        step = BUCKET_SECONDS[width]
        start = _int_param(request, "start_time", required=True)
        end = _int_param(request, "end_time")
        end = int(time.time()) if end is None else end
        if end <= start:
            raise InvalidRequestError("'end_time' must be after 'start_time'.", param="end_time",
                                      code="invalid_value")
        default_limit, max_limit = widths[width]
        limit = _int_param(request, "limit", minimum=1)
        limit = default_limit if limit is None else limit
        if limit > max_limit:
            raise InvalidRequestError(f"Invalid value for 'limit': at most {max_limit} buckets of {width}.",
                                      param="limit", code="invalid_value")
        first, last = start - start % step, -(-end // step) * step  # floor / ceil to the width
        cursor = request.query_params.get("page")
        if cursor:
            first = _decode_page(cursor)
            if first % step or not (start - start % step <= first < last):
                raise InvalidRequestError("Invalid value for 'page': the cursor does not belong to this query.",
                                          param="page", code="invalid_value")
        self.width, self.step = width, step
        self.page_start = first
        self.page_end = min(last, first + limit * step)
        self.next_page = _encode_page(self.page_end) if self.page_end < last else None

    def dt(self, unix: int) -> datetime:
        return datetime.fromtimestamp(unix, tz=UTC)

    def page(self, results_of) -> dict:
        """OpenAI's page object with every bucket of this page; ``results_of(bucket_start)`` -> list."""
        data = [{"object": "bucket", "start_time": t, "end_time": t + self.step, "results": results_of(t)}
                for t in range(self.page_start, self.page_end, self.step)]
        return {"object": "page", "data": data, "has_more": self.next_page is not None,
                "next_page": self.next_page}


def _group_by(request, allowed: tuple[str, ...]) -> list[str]:
    group_by = _list_param(request, "group_by") or []
    for field in group_by:
        if field not in allowed:
            raise InvalidRequestError(
                f"Invalid value for 'group_by': '{field}'. Supported values are: {', '.join(allowed)}.",
                param="group_by", code="invalid_value")
    return list(dict.fromkeys(group_by))


def _reject_unsupported(request, *names: str) -> None:
    for name in names:
        if _list_param(request, name) is not None:
            raise InvalidRequestError(
                f"'{name}' is not supported: usage is not attributed to console users on this platform.",
                param=name, code="unsupported_parameter")


class _OrganizationAPIView(APIView):
    """Base of the ``/v1/organization`` views: admin keys only, scoped to the key's organization.

    Every query goes through `filter_for` with ``request.auth.organization_id``, so a
    tenant can never name another organization's projects, keys or usage.
    """

    authentication_classes = [AdminAPIKeyAuthentication]

    def filter_for(self, request, window: _Window, *, keys: bool = True, models: bool = True) -> UsageFilter:
        org_id = request.auth.organization_id
        project_ids = _list_param(request, "project_ids")
        api_key_ids = _list_param(request, "api_key_ids") if keys else None
        model_names = _list_param(request, "models") if models else None
        return UsageFilter(
            organization_id=org_id,
            start=window.dt(window.page_start),
            end=window.dt(window.page_end),
            project_ids=None if project_ids is None else list(
                Project.objects.filter(organization_id=org_id, public_id__in=project_ids).values_list("pk", flat=True)),
            api_key_ids=None if api_key_ids is None else list(
                APIKey.objects.filter(project__organization_id=org_id, public_id__in=api_key_ids)
                .values_list("pk", flat=True)),
            model_ids=None if model_names is None else [
                m.pk for m in EmbeddingModel.objects.all() if set(m.names) & set(model_names)],
        )


def _public_ids(rows) -> tuple[dict, dict, dict]:
    project_ids = {r["project_id"] for r in rows if r.get("project_id")}
    key_ids = {r["api_key_id"] for r in rows if r.get("api_key_id")}
    model_ids = {r["model_id"] for r in rows if r.get("model_id")}
    return (dict(Project.objects.filter(pk__in=project_ids).values_list("pk", "public_id")),
            dict(APIKey.objects.filter(pk__in=key_ids).values_list("pk", "public_id")),
            dict(EmbeddingModel.objects.filter(pk__in=model_ids).values_list("pk", "name")))


class UsageEmbeddingsView(_OrganizationAPIView):
    """``GET /v1/organization/usage/embeddings``: input tokens and requests per time bucket.

    Query: ``start_time`` (required, unix s), ``end_time`` (default now, exclusive),
    ``bucket_width`` (``1m``/``1h``/``1d``, default ``1d``), ``project_ids``,
    ``api_key_ids``, ``models`` (names or aliases), ``group_by`` (``project_id``/``api_key_id``/``model``),
    ``limit`` (buckets; 1d: 7/31, 1h: 24/168, 1m: 60/1440 default/max), ``page``.
    Results are ``organization.usage.embeddings.result`` objects; ungrouped fields are null.
    """

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Embeddings usage")
    def get(self, request):
        _reject_unsupported(request, "user_ids")
        group_by = _group_by(request, USAGE_GROUP_BY)
        window = _Window(request, widths=USAGE_LIMITS)
        grouped = usage_embeddings_grouped(where=self.filter_for(request, window), bucket_width=window.width,
                                           group_by=group_by)
        projects, keys, models = _public_ids([r for rows in grouped.values() for r in rows])

        def results(bucket: int) -> list[dict]:
            return [{
                "object": "organization.usage.embeddings.result",
                "input_tokens": r["input_tokens"],
                "num_model_requests": r["num_model_requests"],
                "project_id": projects.get(r["project_id"]),
                "user_id": None,
                "api_key_id": keys.get(r["api_key_id"]),
                "model": models.get(r["model_id"]),
            } for r in grouped.get(bucket, [])]

        return Response(window.page(results))


class CostsView(_OrganizationAPIView):
    """``GET /v1/organization/costs``: spend per UTC day, priced at the price in effect that day.

    Query: ``start_time`` (required), ``end_time``, ``bucket_width`` (``1d`` only),
    ``project_ids``, ``group_by`` (``project_id``/``line_item``; a line item is a model),
    ``limit`` (default 7, max 180), ``page``. ``amount.value`` is the exact cost (not
    rounded to cents; monthly statements round per line).
    """

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Costs")
    def get(self, request):
        group_by = _group_by(request, COSTS_GROUP_BY)
        window = _Window(request, widths=COSTS_LIMITS)
        grouped, currency = costs_grouped(where=self.filter_for(request, window, keys=False, models=False),
                                          group_by=group_by)
        projects, _, models = _public_ids([r for rows in grouped.values() for r in rows])

        def results(bucket: int) -> list[dict]:
            return [{
                "object": "organization.costs.result",
                "amount": {"value": float(r["amount"]), "currency": currency},
                "line_item": models.get(r["model_id"]),
                "project_id": projects.get(r["project_id"]),
            } for r in grouped.get(bucket, [])]

        return Response(window.page(results))
