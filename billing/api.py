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
from dataclasses import dataclass
from datetime import UTC, datetime

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.fields import empty
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import AdminAPIKeyAuthentication
from accounts.models import APIKey, Project
from config.schema import error_responses
from embeddings.models import EmbeddingModel

from .usage import BUCKET_SECONDS, COSTS_GROUP_BY, USAGE_GROUP_BY, UsageFilter, costs_grouped, \
    usage_embeddings_grouped

# OpenAI's limits on buckets per page: (default, max) per bucket width.
USAGE_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
COSTS_LIMITS = {"1d": (7, 180)}
# The last UTC day a bucket may start (9999-12-31): later timestamps have no datetime (year 10000).
MAX_UNIX_TIME = 253402214400


def _invalid(param: str, message: str, code: str = "invalid") -> serializers.ValidationError:
    """A validation error naming ``param`` (rendered by `config.errors` as ``invalid_value``)."""
    return serializers.ValidationError({param: [serializers.ErrorDetail(message, code=code)]})


class QueryListField(serializers.ListField):
    """A list query parameter: ``name=a&name=b``, ``name[]=a`` or ``name=a,b`` (OpenAI's clients
    send the first); absent = no filter. Items are non-empty strings without NUL (DRF's CharField)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("child", serializers.CharField(max_length=200))
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def get_value(self, dictionary):
        raw = dictionary.getlist(self.field_name) + dictionary.getlist(f"{self.field_name}[]")
        if not raw:
            return empty
        return [part.strip() for value in raw for part in value.split(",") if part.strip()]


def _encode_page(bucket_start: int) -> str:
    return "page_" + base64.urlsafe_b64encode(f"v1:{bucket_start}".encode()).decode().rstrip("=")


def _decode_page(cursor: str) -> int:
    """The bucket start (unix s) a ``next_page`` cursor points at; `ValidationError` if it is not one."""
    try:
        payload = cursor.removeprefix("page_")
        text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
        version, value = text.split(":")
        if version != "v1":
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _invalid("page", "Invalid value for 'page': not a cursor returned as 'next_page'.") from None


@dataclass(frozen=True)
class Window:
    """The time window of one page: bucket ``width`` (``1m``/``1h``/``1d``) and ``step`` (s), this
    page's ``[page_start, page_end)`` (unix s, bucket-aligned) and the cursor of the next page."""

    width: str
    step: int
    page_start: int
    page_end: int
    next_page: str | None

    @staticmethod
    def dt(unix: int) -> datetime:
        return datetime.fromtimestamp(unix, tz=UTC)

    def page(self, results_of) -> dict:
        """OpenAI's page object with every bucket of this page; ``results_of(bucket_start)`` -> list."""
        data = [{"object": "bucket", "start_time": t, "end_time": t + self.step, "results": results_of(t)}
                for t in range(self.page_start, self.page_end, self.step)]
        return {"object": "page", "data": data, "has_more": self.next_page is not None,
                "next_page": self.next_page}


class UsageQuerySerializer(serializers.Serializer):
    """Query of ``GET /v1/organization/usage/embeddings`` (OpenAI's parameters and limits).

    ``start_time``/``end_time``: unix seconds (end exclusive, default now), at most 9999-12-31;
    ``limit``: buckets per page (per width: `USAGE_LIMITS`); ``page``: a ``next_page`` cursor.
    ``validated_data`` gains ``window`` (`Window`). Invalid values raise DRF's `ValidationError`
    naming the parameter (400 ``invalid_value`` / ``missing_required_parameter`` in the envelope).
    """

    LIMITS = USAGE_LIMITS
    GROUP_BY = USAGE_GROUP_BY

    start_time = serializers.IntegerField(min_value=0, max_value=MAX_UNIX_TIME)
    end_time = serializers.IntegerField(required=False, min_value=0, max_value=MAX_UNIX_TIME)
    bucket_width = serializers.ChoiceField(choices=list(USAGE_LIMITS), default="1d")
    limit = serializers.IntegerField(required=False, min_value=1)
    page = serializers.CharField(required=False, max_length=200)
    project_ids = QueryListField()
    api_key_ids = QueryListField()
    models = QueryListField()
    group_by = QueryListField(child=serializers.ChoiceField(choices=USAGE_GROUP_BY))
    user_ids = QueryListField(help_text="Not supported: usage is not attributed to console users here.")

    def validate_user_ids(self, value):
        if value:
            raise serializers.ValidationError("'user_ids' is not supported: usage is not attributed to "
                                              "console users on this platform.", code="unsupported_parameter")
        return value

    def validate(self, attrs):
        width = attrs["bucket_width"]
        step = BUCKET_SECONDS[width]
        start = attrs["start_time"]
        end = attrs.get("end_time", int(time.time()))
        if end <= start:
            raise _invalid("end_time", "'end_time' must be after 'start_time'.")
        default_limit, max_limit = self.LIMITS[width]
        limit = attrs.get("limit", default_limit)
        if limit > max_limit:
            raise _invalid("limit", f"Invalid value for 'limit': at most {max_limit} buckets of {width}.")
        first, last = start - start % step, min(-(-end // step) * step, MAX_UNIX_TIME)  # floor / ceil
        if cursor := attrs.get("page"):
            first = _decode_page(cursor)
            if first % step or not (start - start % step <= first < last):
                raise _invalid("page", "Invalid value for 'page': the cursor does not belong to this query.")
        page_end = min(last, first + limit * step)
        attrs["window"] = Window(width, step, first, page_end, _encode_page(page_end) if page_end < last else None)
        attrs["group_by"] = list(dict.fromkeys(attrs.get("group_by", [])))
        return attrs


class CostsQuerySerializer(UsageQuerySerializer):
    """Query of ``GET /v1/organization/costs``: ``1d`` buckets only (default 7, max 180 per page),
    ``group_by`` ``project_id``/``line_item``; no key or model filter. Errors as `UsageQuerySerializer`."""

    LIMITS = COSTS_LIMITS
    GROUP_BY = COSTS_GROUP_BY

    bucket_width = serializers.ChoiceField(choices=list(COSTS_LIMITS), default="1d")
    group_by = QueryListField(child=serializers.ChoiceField(choices=COSTS_GROUP_BY))
    api_key_ids = None
    models = None
    user_ids = None


class _BucketSerializer(serializers.Serializer):
    object = serializers.CharField(default="bucket")
    start_time = serializers.IntegerField(help_text="Unix seconds, inclusive.")
    end_time = serializers.IntegerField(help_text="Unix seconds, exclusive.")


class UsageEmbeddingsResultSerializer(serializers.Serializer):
    """``organization.usage.embeddings.result``: tokens and requests of one group in a bucket."""

    object = serializers.CharField(default="organization.usage.embeddings.result")
    input_tokens = serializers.IntegerField()
    num_model_requests = serializers.IntegerField()
    project_id = serializers.CharField(allow_null=True)
    user_id = serializers.CharField(allow_null=True)
    api_key_id = serializers.CharField(allow_null=True)
    model = serializers.CharField(allow_null=True)
    batch = serializers.BooleanField(allow_null=True, help_text="Whether the usage came from the Batch API "
                                                                "(grouped by `batch`), else null.")


class UsageBucketSerializer(_BucketSerializer):
    results = UsageEmbeddingsResultSerializer(many=True)


class UsagePageSerializer(serializers.Serializer):
    """OpenAI's ``page`` of usage buckets."""

    object = serializers.CharField(default="page")
    data = UsageBucketSerializer(many=True)
    has_more = serializers.BooleanField()
    next_page = serializers.CharField(allow_null=True, help_text="Pass as `page` for the next buckets.")


class AmountSerializer(serializers.Serializer):
    value = serializers.FloatField(help_text="Exact cost (not rounded to cents).")
    currency = serializers.CharField()


class CostsResultSerializer(serializers.Serializer):
    """``organization.costs.result``: the spend of one group in a bucket."""

    object = serializers.CharField(default="organization.costs.result")
    amount = AmountSerializer()
    line_item = serializers.CharField(allow_null=True, help_text="A model name; `<model> (batch)` for the "
                                                                 "Batch API's usage of it.")
    project_id = serializers.CharField(allow_null=True)


class CostsBucketSerializer(_BucketSerializer):
    results = CostsResultSerializer(many=True)


class CostsPageSerializer(UsagePageSerializer):
    """OpenAI's ``page`` of cost buckets."""

    data = CostsBucketSerializer(many=True)


ERRORS = error_responses(400, 401, 403)


class _OrganizationAPIView(APIView):
    """Base of the ``/v1/organization`` views: admin keys only, scoped to the key's organization.

    Every query goes through `filter_for` with ``request.auth.organization_id``, so a
    tenant can never name another organization's projects, keys or usage.
    """

    authentication_classes = [AdminAPIKeyAuthentication]
    query_serializer_class: type[UsageQuerySerializer] = UsageQuerySerializer

    def query(self, request) -> dict:
        """The validated query (`UsageQuerySerializer.validated_data`); raises `ValidationError`."""
        serializer = self.query_serializer_class(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    @staticmethod
    def filter_for(request, query: dict) -> UsageFilter:
        """The `UsageFilter` of ``query``'s page: the key's organization, public ids resolved to
        primary keys inside it (ids of other organizations match nothing)."""
        org_id = request.auth.organization_id
        window: Window = query["window"]
        project_ids, api_key_ids, model_names = (query.get(name) for name in ("project_ids", "api_key_ids",
                                                                               "models"))
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


def line_item(model: str | None, tier: str | None) -> str | None:
    """A costs line item: the model's name, ``"<model> (batch)"`` for its Batch API usage."""
    if model is None:
        return None
    return f"{model} (batch)" if tier == "batch" else model


class UsageEmbeddingsView(_OrganizationAPIView):
    """``GET /v1/organization/usage/embeddings``: input tokens and requests per time bucket.

    Query: `UsageQuerySerializer` (``start_time`` required; ``bucket_width`` ``1m``/``1h``/``1d``;
    filters ``project_ids``, ``api_key_ids``, ``models`` (names or aliases); ``group_by``
    ``project_id``/``api_key_id``/``model``; ``limit``; ``page``). Results are
    ``organization.usage.embeddings.result`` objects; ungrouped fields are null.
    """

    @extend_schema(parameters=[UsageQuerySerializer], responses={200: UsagePageSerializer, **ERRORS},
                   summary="Embeddings usage", operation_id="usage-embeddings")
    def get(self, request):
        query = self.query(request)
        window: Window = query["window"]
        grouped = usage_embeddings_grouped(where=self.filter_for(request, query), bucket_width=window.width,
                                           group_by=query["group_by"])
        projects, keys, models = _public_ids([r for rows in grouped.values() for r in rows])

        def results(bucket: int) -> list[dict]:
            return [{
                "input_tokens": r["input_tokens"],
                "num_model_requests": r["num_model_requests"],
                "project_id": projects.get(r["project_id"]),
                "user_id": None,
                "api_key_id": keys.get(r["api_key_id"]),
                "model": models.get(r["model_id"]),
                "batch": r["batch"],
            } for r in grouped.get(bucket, [])]

        return Response(UsagePageSerializer(window.page(results)).data)


class CostsView(_OrganizationAPIView):
    """``GET /v1/organization/costs``: spend per UTC day, priced at the price in effect that day.

    Query: `CostsQuerySerializer` (``start_time`` required, ``end_time``, ``bucket_width`` ``1d``,
    ``project_ids``, ``group_by`` ``project_id``/``line_item`` (a line item is a model), ``limit``
    (default 7, max 180), ``page``). ``amount.value`` is the exact cost (not rounded to cents;
    monthly statements round per line).
    """

    query_serializer_class = CostsQuerySerializer

    @extend_schema(parameters=[CostsQuerySerializer], responses={200: CostsPageSerializer, **ERRORS},
                   summary="Costs", operation_id="usage-costs")
    def get(self, request):
        query = self.query(request)
        grouped, currency = costs_grouped(where=self.filter_for(request, query), group_by=query["group_by"])
        projects, _, models = _public_ids([r for rows in grouped.values() for r in rows])

        def results(bucket: int) -> list[dict]:
            return [{
                "amount": {"value": float(r["amount"]), "currency": currency},
                "line_item": line_item(models.get(r["model_id"]), r["tier"]),
                "project_id": projects.get(r["project_id"]),
            } for r in grouped.get(bucket, [])]

        return Response(CostsPageSerializer(query["window"].page(results)).data)
