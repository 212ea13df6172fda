"""Reads of usage records."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDate

from billing.models import UsageRecord

# --- The console's usage page -----------------------------------------------------------------

USAGE_GROUPS = ("model", "key")
DELETED_KEY_LABEL = "(deleted key)"


@dataclass(frozen=True)
class DailyUsage:
    """Usage of one series on one UTC day: ``series`` is the model name or the key's public id."""

    day: dt.date
    series: str
    label: str
    requests: int
    inputs: int
    total_tokens: int


def _day_bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start 00:00 UTC, the day after end 00:00 UTC): both days included."""
    return (dt.datetime.combine(start, dt.time.min, tzinfo=dt.UTC),
            dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC))


def _usage_records(*, organization, project, start: dt.date, end: dt.date) -> QuerySet[UsageRecord]:
    since, until = _day_bounds(start, end)
    records = UsageRecord.objects.filter(organization=organization, created_at__gte=since, created_at__lt=until)
    if project is not None:
        records = records.filter(project=project)
    return records


def usage_daily(*, organization, project=None, start: dt.date, end: dt.date,
                group_by: str = "model") -> list[DailyUsage]:
    """Requests, inputs and tokens per UTC day per model (``group_by="model"``) or per API
    key (``"key"``) for ``organization`` (optionally one of its ``project``) from ``start``
    to ``end`` (dates, both included), ordered by day then series.

    One ``GROUP BY`` over ``billing.UsageRecord`` (indexed by organization/project and
    ``created_at``); works on Postgres and SQLite. Days without usage are absent.
    A key deleted since is labelled ``(deleted key)``. Raises ``ValueError`` for another
    ``group_by``.
    """
    if group_by not in USAGE_GROUPS:
        raise ValueError(f"group_by must be one of {USAGE_GROUPS}, not {group_by!r}")
    fields = (["model__name"] if group_by == "model"
              else ["api_key__public_id", "api_key__name", "api_key__prefix", "api_key__last4"])
    rows = (_usage_records(organization=organization, project=project, start=start, end=end)
            .annotate(day=TruncDate("created_at", tzinfo=dt.UTC))
            .values("day", *fields)
            .annotate(requests=Count("id"), inputs=Sum("input_count"), total_tokens=Sum("total_tokens"))
            .order_by("day", *fields))
    result = []
    for row in rows:
        if group_by == "model":
            series = label = row["model__name"]
        elif row["api_key__public_id"] is None:
            series = label = DELETED_KEY_LABEL
        else:
            series = row["api_key__public_id"]
            masked = f"{row['api_key__prefix']}...{row['api_key__last4']}"
            label = f"{row['api_key__name']} ({masked})" if row["api_key__name"] else masked
        result.append(DailyUsage(day=row["day"], series=series, label=label, requests=row["requests"],
                                 inputs=row["inputs"], total_tokens=row["total_tokens"]))
    return result


def usage_recent(*, organization, project=None, start: dt.date, end: dt.date,
                 limit: int = 25) -> list[UsageRecord]:
    """The ``limit`` newest usage records (one per request) of ``organization`` (optionally
    ``project``) between ``start`` and ``end`` (dates, both included), with project, key and model."""
    return list(_usage_records(organization=organization, project=project, start=start, end=end)
                .select_related("project", "api_key", "model").defer("api_key__secret_hash")
                .order_by("-created_at")[:limit])
