"""Reads of usage records and statements."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDate

from metering.models import UsageRecord

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


# --- The console's billing page ---------------------------------------------------------------


@dataclass(frozen=True)
class StatementSummary:
    """One month on the billing page: ``period`` (first day, UTC), ``status`` (``draft`` or
    ``closed``), ``total_amount`` (Decimal, ``currency``), and the billed requests and input
    tokens summed over its lines (adjustment lines included)."""

    period: dt.date
    status: str
    currency: str
    total_amount: Decimal
    num_model_requests: int
    input_tokens: int
    line_count: int
    closed_at: dt.datetime | None


def statements_for_organization(*, organization, today: dt.date) -> list[StatementSummary]:
    """``organization``'s statements, newest first: every closed one as stored, plus the open
    months as drafts computed now without writing (`billing.services.statement_draft`): the
    month of ``today`` always, the month before while it is not closed yet and had usage, and
    any month with a stored draft."""
    from billing.models import Statement
    from billing.services import month_start, statement_draft

    closed = (Statement.objects.filter(organization=organization, status=Statement.Status.CLOSED)
              .annotate(requests=Sum("lines__num_model_requests"), tokens=Sum("lines__input_tokens"),
                        n_lines=Count("lines")))
    out = [StatementSummary(s.period_start, s.status, s.currency, s.total_amount, s.requests or 0, s.tokens or 0,
                            s.n_lines, s.closed_at) for s in closed]
    closed_periods = {s.period for s in out}
    current = month_start(today)
    previous = month_start(current - dt.timedelta(days=1))
    stored_drafts = set(Statement.objects.filter(organization=organization, status=Statement.Status.DRAFT)
                        .values_list("period_start", flat=True))
    for period in sorted({current, previous} | stored_drafts - closed_periods, reverse=True):
        if period in closed_periods or period > current:
            continue
        draft = statement_draft(organization=organization, period_start=period)
        if period == previous and period not in stored_drafts and not draft.lines:
            continue  # nothing to bill last month
        out.append(StatementSummary(period, draft.statement.status, draft.statement.currency,
                                    draft.statement.total_amount,
                                    sum(line.num_model_requests for line in draft.lines),
                                    sum(line.input_tokens for line in draft.lines), len(draft.lines), None))
    return sorted(out, key=lambda s: s.period, reverse=True)
