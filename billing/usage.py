"""Reads behind the usage and costs API (``/v1/organization/usage/embeddings``, ``/v1/organization/costs``).

Sources: ``1d`` buckets read `DailyUsage`, ``1h`` buckets `HourlyUsage` (both kept fresh
by the beat task every ``BILLING_ROLLUP_INTERVAL_SECONDS``, so the newest minutes show up
with that lag, as in OpenAI's usage API); ``1m`` buckets aggregate the raw `UsageRecord`
rows (at most 1440 minutes per page, served by the ``(organization, created_at)`` index).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncMinute

from billing.models import DailyUsage, HourlyUsage
from metering.models import UsageRecord
from billing.services import cost_for, price_schedules

# Bucket widths in seconds (OpenAI's `bucket_width` values).
BUCKET_SECONDS = {"1m": 60, "1h": 3600, "1d": 86400}
USAGE_GROUP_BY = ("project_id", "api_key_id", "model")
COSTS_GROUP_BY = ("project_id", "line_item")


@dataclass(frozen=True)
class UsageFilter:
    """An organization's usage in ``[start, end)`` (bucket-aligned UTC datetimes).

    ``project_ids``/``api_key_ids``/``model_ids`` are integer primary keys; ``None`` means
    no filter, an empty list matches nothing.
    """

    organization_id: int
    start: datetime
    end: datetime
    project_ids: list[int] | None = None
    api_key_ids: list[int] | None = None
    model_ids: list[int] | None = None

    def apply(self, queryset, time_field: str):
        qs = queryset.filter(organization_id=self.organization_id, **{f"{time_field}__gte": self.start,
                                                                        f"{time_field}__lt": self.end})
        if self.project_ids is not None:
            qs = qs.filter(project_id__in=self.project_ids)
        if self.api_key_ids is not None:
            qs = qs.filter(api_key_id__in=self.api_key_ids)
        if self.model_ids is not None:
            qs = qs.filter(model_id__in=self.model_ids)
        return qs


_FIELD = {"project_id": "project_id", "api_key_id": "api_key_id", "model": "model_id"}


def usage_embeddings_grouped(*, where: UsageFilter, bucket_width: str, group_by: list[str]) -> dict[int, list[dict]]:
    """Embeddings usage per bucket: ``{bucket_start_unix: [{"project_id", "api_key_id", "model_id",
    "input_tokens", "num_model_requests"}, ...]}``.

    Fields not in ``group_by`` (names from `USAGE_GROUP_BY`) are ``None``; buckets without
    usage are absent. Tokens are exact integer sums.
    """
    fields = [_FIELD[g] for g in group_by]
    if bucket_width == "1m":
        qs = (where.apply(UsageRecord.objects, "created_at").annotate(bucket=TruncMinute("created_at", tzinfo=UTC))
              .values("bucket", *fields).annotate(tokens=Sum("prompt_tokens"), n=Count("id")))
    else:
        source = DailyUsage if bucket_width == "1d" else HourlyUsage
        qs = (where.apply(source.objects, "bucket_start").values(*fields, bucket=F("bucket_start"))
              .annotate(tokens=Sum("input_tokens"), n=Sum("num_model_requests")))
    out: dict[int, list[dict]] = defaultdict(list)
    for row in qs.order_by("bucket", *fields):
        out[int(row["bucket"].timestamp())].append({
            "project_id": row.get("project_id"), "api_key_id": row.get("api_key_id"),
            "model_id": row.get("model_id"), "input_tokens": int(row["tokens"]),
            "num_model_requests": int(row["n"])})
    return out


def costs_grouped(*, where: UsageFilter, group_by: list[str]) -> tuple[dict[int, list[dict]], str]:
    """Costs per UTC day from the daily rollups: ``({day_start_unix: [{"project_id", "model_id",
    "amount"}]}, currency)``.

    Each day's tokens are priced at the price in effect that day; ``amount`` is the exact
    `Decimal` (not rounded; statements round per line to cents). ``group_by`` names come
    from `COSTS_GROUP_BY` (``line_item`` = the model).
    """
    from django.conf import settings

    rows = list(where.apply(DailyUsage.objects, "bucket_start").values("bucket_start", "project_id", "model_id")
                .annotate(tokens=Sum("input_tokens")).order_by())
    schedules = price_schedules(model_ids={r["model_id"] for r in rows})
    currency = next(iter(schedules.values())).currency if schedules else settings.BILLING_CURRENCY
    acc: dict[int, dict[tuple, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for r in rows:
        day = r["bucket_start"].astimezone(UTC)
        _, unit_price = schedules[r["model_id"]].at(day.date())
        key = (r["project_id"] if "project_id" in group_by else None,
               r["model_id"] if "line_item" in group_by else None)
        acc[int(day.timestamp())][key] += cost_for(input_tokens=r["tokens"], unit_price=unit_price)
    out = {bucket: [{"project_id": p, "model_id": m, "amount": amount}
                    for (p, m), amount in sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1] or 0))]
           for bucket, groups in acc.items()}
    return out, currency
