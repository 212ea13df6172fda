"""Writes for metering and billing: usage records, prices, rollups, statements.

Rules, in one place:

* Token sums are exact integers; money is `Decimal`.
* A price (per 1,000,000 input tokens) is in effect from its ``effective_from`` UTC
  date until the model's next price; every hourly/daily bucket has one price.
* Statement lines are ``input_tokens * unit_price / 1,000,000`` rounded
  ROUND_HALF_UP to cents *per line*; a statement's total is the sum of its lines.
* Rollups are recomputed from raw records and upserted (never incremented), under a
  Postgres advisory lock, so re-running any range is idempotent.
"""
from __future__ import annotations

import calendar
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import DailyUsage, HourlyUsage, Price, PriceTier, Statement, StatementLine, price_tier_of
from config.errors import InvalidRequestError
from config.periods import month_bounds
from metering.models import UsageRecord

CENT = Decimal("0.01")
MILLION = Decimal(1_000_000)
# The first price of a model is in effect from this date (i.e. for all of its past).
EPOCH = date(1970, 1, 1)
# pg_advisory_xact_lock key that serializes rollup runs (any constant; "bill" in ASCII).
_ROLLUP_LOCK = 0x62696C6C


# --- Money ------------------------------------------------------------------------

def amount_for(*, input_tokens: int, unit_price: Decimal) -> Decimal:
    """``input_tokens * unit_price / 1e6`` rounded ROUND_HALF_UP to cents (the rule of a statement line)."""
    return (Decimal(input_tokens) * unit_price / MILLION).quantize(CENT, rounding=ROUND_HALF_UP)


def cost_for(*, input_tokens: int, unit_price: Decimal) -> Decimal:
    """``input_tokens * unit_price / 1e6`` exactly (no rounding): what the costs API sums."""
    return Decimal(input_tokens) * unit_price / MILLION


# --- Prices -----------------------------------------------------------------------

@dataclass(frozen=True)
class PriceSchedule:
    """The prices of one model in effect over time: ``starts`` (sorted UTC dates) and their ``prices``."""

    starts: list[date]
    prices: list[Decimal]
    currency: str

    def at(self, day: date) -> tuple[date, Decimal]:
        """``(effective_from, price per 1M tokens)`` in effect on ``day``."""
        i = bisect_right(self.starts, day) - 1
        if i < 0:  # `price_schedules` starts every schedule at the epoch
            raise LookupError(f"no price in effect on {day}")
        return self.starts[i], self.prices[i]


def price_schedules(*, model_ids, service_tier: str = PriceTier.DEFAULT) -> dict[int, PriceSchedule]:
    """The `PriceSchedule` of each model id for the price tier ``service_tier`` (`PriceTier`), read
    from `Price` rows (the one source of prices).

    Read-only. A model without any standard `Price` row is unpriced: its schedule is 0 per 1M tokens
    from 1970-01-01 (`price_initial_set` gives a model its first price, `price_create` a change).
    The batch schedule is `batch_price_schedule` of the standard one.
    """
    model_ids = set(model_ids)
    schedules: dict[int, PriceSchedule] = {}
    for price in Price.objects.filter(model_id__in=model_ids, service_tier=PriceTier.DEFAULT) \
            .order_by("model_id", "effective_from"):
        sched = schedules.setdefault(price.model_id, PriceSchedule([], [], price.currency))
        sched.starts.append(price.effective_from)
        sched.prices.append(price.price_per_million_tokens)
    for model_id in model_ids - schedules.keys():
        schedules[model_id] = PriceSchedule([], [], settings.BILLING_CURRENCY)
    for sched in schedules.values():
        if not sched.starts or sched.starts[0] > EPOCH:  # unpriced before its first price
            sched.starts.insert(0, EPOCH)
            sched.prices.insert(0, Decimal("0"))
    if service_tier == PriceTier.BATCH:
        rows: dict[int, list[Price]] = defaultdict(list)
        for price in Price.objects.filter(model_id__in=model_ids, service_tier=PriceTier.BATCH) \
                .order_by("model_id", "effective_from"):
            rows[price.model_id].append(price)
        schedules = {model_id: batch_price_schedule(standard=sched, batch_prices=rows[model_id])
                     for model_id, sched in schedules.items()}
    return schedules


def batch_price_schedule(*, standard: PriceSchedule, batch_prices: list[Price]) -> PriceSchedule:
    """A model's batch prices over time: its ``batch`` `Price` rows (sorted by date) where one is in
    effect, else ``BILLING_BATCH_PRICE_RATIO`` (OpenAI's Batch API: half) of the ``standard`` price in
    effect that day. A period starts at every date either changes; equal neighbours are merged."""
    ratio = settings.BILLING_BATCH_PRICE_RATIO
    batch = PriceSchedule([p.effective_from for p in batch_prices],
                          [p.price_per_million_tokens for p in batch_prices], standard.currency)
    out = PriceSchedule([], [], standard.currency)
    for day in sorted(set(standard.starts) | set(batch.starts)):
        price = (batch.at(day)[1] if batch.starts and batch.starts[0] <= day
                 else (standard.at(day)[1] * ratio).quantize(Decimal("0.000001")))
        if not out.prices or out.prices[-1] != price:
            out.starts.append(day)
            out.prices.append(price)
    return out


def _price_amount(price_per_million_tokens) -> Decimal:
    """The price as a `Decimal`; raises `InvalidRequestError` when it is negative."""
    price = Decimal(price_per_million_tokens)
    if price < 0:
        raise InvalidRequestError("A price cannot be negative.", param="price_per_million_tokens")
    return price


def _last_closed_month() -> date | None:
    """The ``period_start`` of the newest closed statement (any organization), or None: prices
    may only start after it, so a closed bill never changes."""
    return (Statement.objects.filter(status=Statement.Status.CLOSED).order_by("-period_start")
            .values_list("period_start", flat=True).first())


def price_initial_set(*, model, price_per_million_tokens: Decimal, currency: str | None = None,
                      service_tier: str = PriceTier.DEFAULT) -> Price:
    """Give ``model`` its first price, in effect from 1970-01-01 (so for all of its past usage) or,
    once a month is closed on a statement, from the month after the last closed one (a closed
    bill, and the costs of its months, never change); unless it already has a price: then its
    prices are kept and the earliest is returned.

    Idempotent: the release step (`config.run.migrate`) calls it for the default model on every
    deploy. ``service_tier``: the `PriceTier` it prices (``batch``: the model's first batch price,
    which replaces half the standard price from then on). Raises `InvalidRequestError` when the
    price is negative.
    """
    price = _price_amount(price_per_million_tokens)
    existing = Price.objects.filter(model=model, service_tier=service_tier).order_by("effective_from").first()
    if existing is not None:
        return existing
    last_closed = _last_closed_month()
    start = EPOCH if last_closed is None else month_after(last_closed)
    return Price.objects.get_or_create(model=model, service_tier=service_tier, effective_from=start, defaults={
        "price_per_million_tokens": price, "currency": currency or settings.BILLING_CURRENCY})[0]


def price_create(*, model, price_per_million_tokens: Decimal, effective_from: date,
                 currency: str | None = None, service_tier: str = PriceTier.DEFAULT) -> Price:
    """Set ``model``'s price per 1M input tokens from ``effective_from`` (UTC date) on.

    Usage before ``effective_from`` keeps the price then in effect (0 when the model had no price:
    use `price_initial_set` for a first price that covers the past). Raises
    `InvalidRequestError` when the price is negative, when a price already starts on
    that date, or when ``effective_from`` falls in a month already closed on a statement
    (a closed bill never changes). ``service_tier``: the `PriceTier` it prices.
    """
    price = _price_amount(price_per_million_tokens)
    last_closed = _last_closed_month()
    if last_closed and effective_from < month_after(last_closed):
        raise InvalidRequestError(
            f"{effective_from} falls in a closed billing month ({last_closed:%Y-%m}); "
            "a new price must start after the last closed month.", param="effective_from")
    if Price.objects.filter(model=model, service_tier=service_tier, effective_from=effective_from).exists():
        raise InvalidRequestError(f"{model.name} already has a {'batch ' if service_tier == PriceTier.BATCH else ''}"
                                  f"price starting {effective_from}.",
                                  param="effective_from")
    return Price.objects.create(model=model, service_tier=service_tier, price_per_million_tokens=price,
                                effective_from=effective_from, currency=currency or settings.BILLING_CURRENCY)


# --- Rollups ----------------------------------------------------------------------

def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def floor_day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _ceil(moment: datetime, floor, step: timedelta) -> datetime:
    floored = floor(moment)
    return floored if floored == moment else floored + step


@dataclass(frozen=True)
class RollupResult:
    """What a rollup run covered: hourly buckets in ``[hour_start, hour_end)``, daily in
    ``[day_start, day_end)``, and how many rollup rows each range now holds."""

    hour_start: datetime
    hour_end: datetime
    day_start: datetime
    day_end: datetime
    hourly_rows: int
    daily_rows: int


_ROLLUP_SQL = """
    INSERT INTO {target} (bucket_start, organization_id, project_id, api_key_id, model_id, service_tier,
                          num_model_requests, input_tokens, updated_at)
    SELECT date_trunc('{unit}', {time} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
           organization_id, project_id, api_key_id, model_id, service_tier, {requests}, {tokens}, %(stamp)s
    FROM {source}
    WHERE {time} >= %(start)s AND {time} < %(end)s
    GROUP BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (bucket_start, organization_id, project_id, api_key_id, model_id, service_tier) DO UPDATE
    SET num_model_requests = EXCLUDED.num_model_requests, input_tokens = EXCLUDED.input_tokens,
        updated_at = EXCLUDED.updated_at
"""


def _rollup_postgres(model, *, unit: str, source: str, time: str, requests: str, tokens: str,
                     start: datetime, end: datetime, stamp: datetime) -> int:
    """One ``INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE`` (nothing travels through
    Python), then delete the range's rows that no group produced. Returns the rows written."""
    with connection.cursor() as cursor:
        cursor.execute(_ROLLUP_SQL.format(target=model._meta.db_table, unit=unit, source=source, time=time,
                                          requests=requests, tokens=tokens),
                       {"start": start, "end": end, "stamp": stamp})
        written = cursor.rowcount
    model.objects.filter(bucket_start__gte=start, bucket_start__lt=end).exclude(updated_at=stamp).delete()
    return written


def usage_rollup_build(*, start: datetime, end: datetime) -> RollupResult:
    """Recompute the hourly rollups of ``[start, end)`` from raw records, then the daily rollups
    of every day those hours touch from the hourly ones (idempotent).

    ``start`` is rounded down to the hour and ``end`` up; each bucket in the range is
    replaced by the aggregate of its raw records (rows of buckets without records are
    removed), so running it twice leaves the same rows and a late record changes exactly
    its own hourly and daily bucket. The aggregate and the upsert are one SQL statement
    per table (unchanged buckets keep their row ids) and runs are serialized with an
    advisory lock. Do not rebuild
    ranges whose raw records were dropped by retention (see
    ``platform/usage-partitioning.md``): their buckets would be emptied.
    """
    hour_start, hour_end = floor_hour(start), _ceil(end, floor_hour, timedelta(hours=1))
    day_start, day_end = floor_day(hour_start), _ceil(hour_end, floor_day, timedelta(days=1))
    with transaction.atomic():
        stamp = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ROLLUP_LOCK])
        hourly_rows = _rollup_postgres(
            HourlyUsage, unit="hour", source=UsageRecord._meta.db_table, time="created_at",
            requests="count(*)", tokens="sum(prompt_tokens)", start=hour_start, end=hour_end, stamp=stamp)
        daily_rows = _rollup_postgres(
            DailyUsage, unit="day", source=HourlyUsage._meta.db_table, time="bucket_start",
            requests="sum(num_model_requests)", tokens="sum(input_tokens)", start=day_start, end=day_end,
            stamp=stamp)
    return RollupResult(hour_start, hour_end, day_start, day_end, hourly_rows, daily_rows)


def usage_rollup_recent(*, now: datetime | None = None) -> RollupResult:
    """The beat task's run: re-roll the last ``BILLING_ROLLUP_LOOKBACK_HOURS`` hours up to ``now``.

    Records are stamped at insert time, so a record reaches the table at most a
    transaction's length after its ``created_at``; re-rolling a few trailing hours on
    every run picks such late records up. Older backfills re-roll their range with
    ``manage.py billing_rollup --start ... --end ...``.
    """
    now = now or timezone.now()
    return usage_rollup_build(start=now - timedelta(hours=settings.BILLING_ROLLUP_LOOKBACK_HOURS), end=now)


# --- Statements -------------------------------------------------------------------

def month_start(day: date) -> date:
    return day.replace(day=1)


def month_after(period_start: date) -> date:
    days = calendar.monthrange(period_start.year, period_start.month)[1]
    return period_start.replace(day=1) + timedelta(days=days)


@dataclass
class PricedUsage:
    """Usage of one (project, model, price tier, price) over a month: requests, tokens and the unit price."""

    num_model_requests: int
    input_tokens: int
    unit_price: Decimal


def priced_usage(*, organization_id: int, period_start: date) -> dict[tuple[int, int, str, date], PricedUsage]:
    """The month's usage of an organization from the daily rollups, keyed by
    ``(project_id, model_id, price tier, price_effective_from)``: each day's tokens go to the price
    of their tier (`billing.models.price_tier_of`) in effect that day."""
    start, end = month_bounds(period_start)
    rows = list(DailyUsage.objects.filter(organization_id=organization_id, bucket_start__gte=start,
                                          bucket_start__lt=end)
                .values("bucket_start", "project_id", "model_id", "service_tier")
                .annotate(n=Sum("num_model_requests"), tokens=Sum("input_tokens")).order_by())
    model_ids = {r["model_id"] for r in rows}
    schedules = {tier: price_schedules(model_ids=model_ids, service_tier=tier) for tier in PriceTier.values}
    out: dict[tuple[int, int, str, date], PricedUsage] = {}
    for r in rows:
        tier = price_tier_of(r["service_tier"])
        effective_from, unit_price = schedules[tier][r["model_id"]].at(r["bucket_start"].astimezone(UTC).date())
        key = (r["project_id"], r["model_id"], tier, effective_from)
        acc = out.setdefault(key, PricedUsage(0, 0, unit_price))
        acc.num_model_requests += r["n"]
        acc.input_tokens += r["tokens"]
    return out


def statement_build(*, organization, period_start: date) -> Statement:
    """Create or recompute the draft statement of ``organization`` for the month of ``period_start``.

    Usage lines: one per (project, model, price in effect), from the daily rollups.
    Adjustment lines: for each earlier *closed* month, what its rollups now hold beyond
    what was billed for it (records that arrived after it closed), priced as in that
    month; the adjustment's amount is the rounded amount of all its tokens minus the
    amounts already billed, so the cents always add up. A closed statement is returned
    unchanged.
    """
    period_start = month_start(period_start)
    with transaction.atomic():
        statement, _ = Statement.objects.select_for_update().get_or_create(
            organization=organization, period_start=period_start,
            defaults={"currency": settings.BILLING_CURRENCY})
        if statement.status == Statement.Status.CLOSED:
            return statement
        statement.lines.all().delete()
        lines = _statement_lines(statement)
        StatementLine.objects.bulk_create(lines)
        statement.total_amount = sum((line.amount for line in lines), Decimal("0.00"))
        statement.updated_at = timezone.now()
        statement.save(update_fields=["total_amount", "updated_at"])
    return statement


@dataclass
class StatementDraft:
    """A statement computed without writing anything: an unsaved `Statement` (status
    ``draft``) and its unsaved `StatementLine` rows, in the shape `billing.exports` takes."""

    statement: Statement
    lines: list[StatementLine]


def statement_draft(*, organization, period_start: date) -> StatementDraft:
    """What `statement_build` would store for the month of ``period_start`` right now, computed
    read-only (no row is written).

    The console shows and exports open months with it, so a GET never writes. Lines carry
    their ``project`` and ``model`` objects (for the exports' names). Use `statement_build`
    or `statement_close` to store a statement.
    """
    from accounts.models import Project
    from embeddings.models import EmbeddingModel

    period_start = month_start(period_start)
    statement = Statement(organization=organization, period_start=period_start,
                          currency=settings.BILLING_CURRENCY, status=Statement.Status.DRAFT)
    existing = (Statement.objects.filter(organization=organization, period_start=period_start)
                .values_list("pk", flat=True).first())
    lines = _statement_lines(statement, exclude_statement_id=existing)
    projects = Project.objects.in_bulk({line.project_id for line in lines})
    models = EmbeddingModel.objects.in_bulk({line.model_id for line in lines})
    for line in lines:
        line.project, line.model = projects[line.project_id], models[line.model_id]
    statement.total_amount = sum((line.amount for line in lines), Decimal("0.00"))
    return StatementDraft(statement=statement, lines=lines)


def _statement_lines(statement: Statement, *, exclude_statement_id: int | None = None) -> list[StatementLine]:
    """The usage and adjustment lines of ``statement`` (unsaved). ``exclude_statement_id``: the
    stored statement of the same month, whose lines are not "already billed" (defaults to
    ``statement.pk``)."""
    period_start = statement.period_start
    lines = [
        StatementLine(statement=statement, kind=StatementLine.Kind.USAGE, usage_period_start=period_start,
                      project_id=project_id, model_id=model_id, service_tier=tier, price_effective_from=effective_from,
                      unit_price=u.unit_price, num_model_requests=u.num_model_requests,
                      input_tokens=u.input_tokens,
                      amount=amount_for(input_tokens=u.input_tokens, unit_price=u.unit_price))
        for (project_id, model_id, tier, effective_from), u in sorted(priced_usage(
            organization_id=statement.organization_id, period_start=period_start).items())
    ]
    lines += _adjustment_lines(statement, exclude_statement_id=exclude_statement_id or statement.pk)
    return lines


def _adjustment_lines(statement: Statement, *, exclude_statement_id: int | None) -> list[StatementLine]:
    closed_months = (Statement.objects.filter(organization_id=statement.organization_id,
                                              status=Statement.Status.CLOSED,
                                              period_start__lt=statement.period_start)
                     .values_list("period_start", flat=True))
    lines = []
    for month in sorted(closed_months):
        billed: dict[tuple, list] = defaultdict(lambda: [0, 0, Decimal("0.00")])
        for line in StatementLine.objects.filter(statement__organization_id=statement.organization_id,
                                                 usage_period_start=month).exclude(
                                                     statement_id=exclude_statement_id):
            acc = billed[(line.project_id, line.model_id, line.service_tier, line.price_effective_from)]
            acc[0] += line.num_model_requests
            acc[1] += line.input_tokens
            acc[2] += line.amount
        for key, u in sorted(priced_usage(organization_id=statement.organization_id, period_start=month).items()):
            requests, tokens, amount = billed.get(key, (0, 0, Decimal("0.00")))
            if u.input_tokens == tokens and u.num_model_requests == requests:
                continue
            project_id, model_id, tier, effective_from = key
            lines.append(StatementLine(
                statement=statement, kind=StatementLine.Kind.ADJUSTMENT, usage_period_start=month,
                project_id=project_id, model_id=model_id, service_tier=tier, price_effective_from=effective_from,
                unit_price=u.unit_price, num_model_requests=u.num_model_requests - requests,
                input_tokens=u.input_tokens - tokens,
                amount=amount_for(input_tokens=u.input_tokens, unit_price=u.unit_price) - amount))
    return lines


def statement_close(*, organization, period_start: date, now: datetime | None = None,
                    reroll: bool = True) -> Statement:
    """Re-roll the month from raw records (unless ``reroll`` is false: the caller just did),
    recompute the statement and freeze it.

    Raises `InvalidRequestError` when the month has not ended yet at ``now``. Closing a
    closed statement returns it unchanged.
    """
    period_start = month_start(period_start)
    start, end = month_bounds(period_start)
    now = now or timezone.now()
    if now < end:
        raise InvalidRequestError(f"{period_start:%Y-%m} has not ended yet; it cannot be closed.",
                                  param="period")
    existing = Statement.objects.filter(organization=organization, period_start=period_start).first()
    if existing and existing.status == Statement.Status.CLOSED:
        return existing
    if reroll:
        usage_rollup_build(start=start, end=end)
    with transaction.atomic():
        statement = statement_build(organization=organization, period_start=period_start)
        statement = Statement.objects.select_for_update().get(pk=statement.pk)
        if statement.status != Statement.Status.CLOSED:
            statement.status = Statement.Status.CLOSED
            statement.closed_at = now
            statement.save(update_fields=["status", "closed_at"])
    return statement


def statements_close_due(*, now: datetime | None = None) -> list[Statement]:
    """Close last month's statements once ``BILLING_CLOSE_GRACE_HOURS`` have passed since it ended.

    Every organization with usage that month (or with an open draft for it) gets a
    closed statement. Idempotent: already closed statements are left as they are.
    Returns the statements closed (or found closed) by this call.
    """
    from accounts.models import Organization

    now = now or timezone.now()
    # The latest month that ended at least the grace period ago.
    period = month_start(month_start((now - timedelta(hours=settings.BILLING_CLOSE_GRACE_HOURS)).date())
                         - timedelta(days=1))
    start, end = month_bounds(period)

    def organizations_to_bill() -> set[int]:
        ids = set(DailyUsage.objects.filter(bucket_start__gte=start, bucket_start__lt=end)
                  .values_list("organization_id", flat=True).distinct())
        return ids | set(Statement.objects.filter(period_start=period).values_list("organization_id", flat=True))

    closed = set(Statement.objects.filter(period_start=period, status=Statement.Status.CLOSED)
                 .values_list("organization_id", flat=True))
    if closed and organizations_to_bill() <= closed:
        # Closed on an earlier run: nothing to re-roll (late records go to next month's adjustments).
        return list(Statement.objects.filter(period_start=period))
    usage_rollup_build(start=start, end=end)
    org_ids = organizations_to_bill()
    return [statement_close(organization=org, period_start=period, now=now, reroll=False)
            for org in Organization.objects.filter(pk__in=org_ids)]
