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

from billing.models import DailyUsage, HourlyUsage, PriceTier, price_tier_of
from metering.models import UsageRecord
from billing.services import cost_for, price_schedules

# Bucket widths in seconds (OpenAI's `bucket_width` values).
BUCKET_SECONDS = {"1m": 60, "1h": 3600, "1d": 86400}
USAGE_GROUP_BY = ("project_id", "api_key_id", "model", "batch")
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


_FIELD = {"project_id": "project_id", "api_key_id": "api_key_id", "model": "model_id", "batch": "service_tier"}


def usage_embeddings_grouped(*, where: UsageFilter, bucket_width: str, group_by: list[str]) -> dict[int, list[dict]]:
    """Embeddings usage per bucket: ``{bucket_start_unix: [{"project_id", "api_key_id", "model_id",
    "batch", "input_tokens", "num_model_requests"}, ...]}``.

    Fields not in ``group_by`` (names from `USAGE_GROUP_BY`) are ``None``; ``batch`` (grouped by
    ``batch``, as OpenAI's usage API does) is whether the usage came from the Batch API. Buckets
    without usage are absent. Tokens are exact integer sums.
    """
    # The tier last: the default and flex rows of one group come together (one non-batch group).
    fields = [_FIELD[g] for g in group_by if g != "batch"] + (["service_tier"] if "batch" in group_by else [])
    if bucket_width == "1m":
        qs = (where.apply(UsageRecord.objects, "created_at").annotate(bucket=TruncMinute("created_at", tzinfo=UTC))
              .values("bucket", *fields).annotate(tokens=Sum("prompt_tokens"), n=Count("id")))
    else:
        source = DailyUsage if bucket_width == "1d" else HourlyUsage
        qs = (where.apply(source.objects, "bucket_start").values(*fields, bucket=F("bucket_start"))
              .annotate(tokens=Sum("input_tokens"), n=Sum("num_model_requests")))
    out: dict[int, list[dict]] = defaultdict(list)
    for row in qs.order_by("bucket", *fields):
        rows = out[int(row["bucket"].timestamp())]
        batch = None if "batch" not in group_by else price_tier_of(row["service_tier"]) == PriceTier.BATCH
        entry = {"project_id": row.get("project_id"), "api_key_id": row.get("api_key_id"),
                 "model_id": row.get("model_id"), "batch": batch, "input_tokens": 0, "num_model_requests": 0}
        if rows and all(rows[-1][k] == entry[k] for k in ("project_id", "api_key_id", "model_id", "batch")):
            entry = rows[-1]  # default and flex rows of one group: one non-batch group
        else:
            rows.append(entry)
        entry["input_tokens"] += int(row["tokens"])
        entry["num_model_requests"] += int(row["n"])
    return out


def costs_grouped(*, where: UsageFilter, group_by: list[str]) -> tuple[dict[int, list[dict]], str]:
    """Costs per UTC day from the daily rollups: ``({day_start_unix: [{"project_id", "model_id",
    "amount"}]}, currency)``.

    Each day's tokens are priced at the price of their tier in effect that day; ``amount`` is the
    exact `Decimal` (not rounded; statements round per line to cents). ``group_by`` names come
    from `COSTS_GROUP_BY` (``line_item`` = the model and the price tier: batch usage is its own
    line item, ``tier`` ``batch``).
    """
    from django.conf import settings

    rows = list(where.apply(DailyUsage.objects, "bucket_start")
                .values("bucket_start", "project_id", "model_id", "service_tier")
                .annotate(tokens=Sum("input_tokens")).order_by())
    model_ids = {r["model_id"] for r in rows}
    schedules = {tier: price_schedules(model_ids=model_ids, service_tier=tier) for tier in PriceTier.values}
    currency = next(iter(schedules[PriceTier.DEFAULT].values())).currency if rows else settings.BILLING_CURRENCY
    acc: dict[int, dict[tuple, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for r in rows:
        day = r["bucket_start"].astimezone(UTC)
        tier = price_tier_of(r["service_tier"])
        _, unit_price = schedules[tier][r["model_id"]].at(day.date())
        key = (r["project_id"] if "project_id" in group_by else None,
               (r["model_id"], tier) if "line_item" in group_by else None)
        acc[int(day.timestamp())][key] += cost_for(input_tokens=r["tokens"], unit_price=unit_price)
    out = {bucket: [{"project_id": p, "model_id": item[0] if item else None, "tier": item[1] if item else None,
                     "amount": amount}
                    for (p, item), amount in sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1] or (0, "")))]
           for bucket, groups in acc.items()}
    return out, currency
