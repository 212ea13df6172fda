"""Billing: rollups, prices, statements (Postgres). Raw records = rollups = statements, to the token and cent."""
from __future__ import annotations

import io
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from billing.exports import statement_export_csv, statement_export_json
from billing.models import DailyUsage, HourlyUsage, Statement, StatementLine
from metering.models import UsageRecord
from billing.services import (
    amount_for,
    price_create,
    price_initial_set,
    statement_build,
    statement_close,
    statements_close_due,
    usage_rollup_build,
    usage_rollup_recent,
)
from config.errors import InvalidRequestError
from embeddings.models import EmbeddingModel

from tests.billing.conftest import (MONTH, MONTH_END, MONTH_START, PRICE_A_NEW, PRICE_A_OLD,  # noqa: E402
                                    PRICE_CHANGE, sql_aggregate, unit_price)


def rollup_rows(model) -> dict:
    return {(r.bucket_start, r.organization_id, r.project_id, r.api_key_id, r.model_id): (r.input_tokens,
                                                                                           r.num_model_requests)
            for r in model.objects.all()}


def rollup_snapshot(model) -> list[tuple]:
    return sorted(model.objects.values_list("id", "bucket_start", "organization_id", "project_id", "api_key_id",
                                            "model_id", "input_tokens", "num_model_requests"))


def test_raw_records_equal_rollups_equal_statements_to_the_token_and_cent(month):
    usage_rollup_build(start=MONTH_START, end=MONTH_END)
    assert rollup_rows(HourlyUsage) == sql_aggregate("hour")
    assert rollup_rows(DailyUsage) == sql_aggregate("day")
    raw_tokens = sum(UsageRecord.objects.values_list("prompt_tokens", flat=True))
    assert sum(DailyUsage.objects.values_list("input_tokens", flat=True)) == raw_tokens

    # Statement lines from the raw records, each record priced at the price of its day.
    expected = defaultdict(lambda: [0, 0])
    for r in UsageRecord.objects.all():
        price = unit_price(r.model_id, r.created_at, month)
        acc = expected[(r.organization_id, r.project_id, r.model_id, price)]
        acc[0] += r.prompt_tokens
        acc[1] += 1
    statement_tokens = 0
    for org in month.orgs:
        statement = statement_build(organization=org, period_start=MONTH)
        got = {(org.pk, line.project_id, line.model_id, line.unit_price): [line.input_tokens, line.num_model_requests]
               for line in statement.lines.all()}
        want = {k: v for k, v in expected.items() if k[0] == org.pk}
        assert got == want
        for line in statement.lines.all():
            assert line.amount == amount_for(input_tokens=line.input_tokens, unit_price=line.unit_price)
            statement_tokens += line.input_tokens
        want_total = sum((amount_for(input_tokens=t, unit_price=k[3]) for k, (t, _) in want.items()), Decimal("0"))
        assert statement.total_amount == want_total > 0
        # The price change mid-month: model A has one line per price in every project with usage in both halves.
        assert {line.unit_price for line in statement.lines.filter(model=month.model_a)} == {PRICE_A_OLD, PRICE_A_NEW}
    assert statement_tokens == raw_tokens


def test_price_change_bills_each_record_at_the_price_then(month):
    usage_rollup_build(start=MONTH_START, end=MONTH_END)
    org = month.orgs[0]
    statement = statement_build(organization=org, period_start=MONTH)
    lines = statement.lines.filter(model=month.model_a)
    before = UsageRecord.objects.filter(organization=org, model=month.model_a, created_at__lt=datetime(
        2026, 10, 16, tzinfo=UTC))
    after = UsageRecord.objects.filter(organization=org, model=month.model_a, created_at__gte=datetime(
        2026, 10, 16, tzinfo=UTC))
    assert sum(line.input_tokens for line in lines if line.unit_price == PRICE_A_OLD) == \
        sum(before.values_list("prompt_tokens", flat=True))
    assert sum(line.input_tokens for line in lines if line.unit_price == PRICE_A_NEW) == \
        sum(after.values_list("prompt_tokens", flat=True))
    assert {line.price_effective_from for line in lines} == {date(1970, 1, 1), PRICE_CHANGE}
    # A first price for a model that has prices changes nothing (the release step sets it on every deploy).
    price_initial_set(model=month.model_a, price_per_million_tokens=Decimal("9"))
    rebuilt = statement_build(organization=org, period_start=MONTH)
    assert rebuilt.total_amount == statement.total_amount


def test_rerunning_a_rollup_changes_nothing_and_a_late_record_changes_exactly_its_bucket(month):
    usage_rollup_build(start=MONTH_START, end=MONTH_END)
    hourly, daily = rollup_snapshot(HourlyUsage), rollup_snapshot(DailyUsage)
    usage_rollup_build(start=MONTH_START, end=MONTH_END)
    usage_rollup_build(start=datetime(2026, 10, 9, 22, 30, tzinfo=UTC), end=datetime(2026, 10, 11, tzinfo=UTC))
    assert rollup_snapshot(HourlyUsage) == hourly and rollup_snapshot(DailyUsage) == daily

    key = month.keys[0]
    late_at = datetime(2026, 10, 10, 13, 27, tzinfo=UTC)
    UsageRecord.objects.create(request_id="req_late", organization_id=key.project.organization_id,
                               project_id=key.project_id, api_key=key, model=month.model_b, input_count=1,
                               prompt_tokens=777, total_tokens=777, latency_ms=5, created_at=late_at)
    usage_rollup_recent(now=late_at + timedelta(hours=1))  # the beat run an hour later
    bucket = (key.project.organization_id, key.project_id, key.pk, month.model_b.pk)
    for model, snapshot, start in ((HourlyUsage, hourly, datetime(2026, 10, 10, 13, tzinfo=UTC)),
                                   (DailyUsage, daily, datetime(2026, 10, 10, tzinfo=UTC))):
        before = {r[1:6]: r[6:] for r in snapshot}
        after = {r[1:6]: r[6:] for r in rollup_snapshot(model)}
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        assert changed == {(start, *bucket)}
        old = before.get((start, *bucket), (0, 0))
        assert after[(start, *bucket)] == (old[0] + 777, old[1] + 1)
        assert {r[0] for r in snapshot} <= {r[0] for r in rollup_snapshot(model)}  # same rows, same ids


def test_closed_statement_is_frozen_and_late_records_become_next_months_adjustment(month):
    org = month.orgs[1]
    with pytest.raises(InvalidRequestError):
        statement_close(organization=org, period_start=MONTH, now=datetime(2026, 10, 31, 23, tzinfo=UTC))
    closed = statement_close(organization=org, period_start=MONTH, now=datetime(2026, 11, 2, tzinfo=UTC))
    assert closed.status == Statement.Status.CLOSED and closed.closed_at
    csv_before, total_before = statement_export_csv(closed), closed.total_amount

    # A late October record, and an attempt to reprice October: neither changes the closed bill.
    key = [k for k in month.keys if k.project.organization_id == org.pk][0]
    UsageRecord.objects.create(request_id="req_late_oct", organization=org, project_id=key.project_id, api_key=key,
                               model=month.model_a, input_count=1, prompt_tokens=123_457, total_tokens=123_457,
                               latency_ms=5, created_at=datetime(2026, 10, 20, 8, tzinfo=UTC))
    with pytest.raises(InvalidRequestError):
        price_create(model=month.model_a, price_per_million_tokens=Decimal("1"), effective_from=date(2026, 10, 20))
    usage_rollup_build(start=MONTH_START, end=MONTH_END)  # the backfill re-roll
    again = statement_build(organization=org, period_start=MONTH)
    assert statement_export_csv(again) == csv_before and again.total_amount == total_before
    assert statement_close(organization=org, period_start=MONTH, now=datetime(2026, 12, 1, tzinfo=UTC)).pk == closed.pk

    november = statement_build(organization=org, period_start=date(2026, 11, 1))
    (adjustment,) = november.lines.filter(kind=StatementLine.Kind.ADJUSTMENT)
    assert (adjustment.usage_period_start, adjustment.input_tokens, adjustment.num_model_requests,
            adjustment.unit_price) == (MONTH, 123_457, 1, PRICE_A_NEW)
    # Cents add up: October's rounded line amount for all its tokens = billed + adjustment.
    billed = StatementLine.objects.get(statement=closed, project_id=key.project_id, model=month.model_a,
                                       unit_price=PRICE_A_NEW)
    assert billed.amount + adjustment.amount == amount_for(input_tokens=billed.input_tokens + 123_457,
                                                           unit_price=PRICE_A_NEW)
    assert november.total_amount == adjustment.amount


def test_statements_close_due_closes_last_month_after_the_grace(month):
    grace = settings.BILLING_CLOSE_GRACE_HOURS
    assert statements_close_due(now=MONTH_END + timedelta(hours=grace - 1)) == []  # Sept: nothing to close
    assert not Statement.objects.exists()
    # One organization closed by hand first (the command): the beat still closes the others.
    statement_close(organization=month.orgs[0], period_start=MONTH, now=MONTH_END + timedelta(hours=1))
    closed = statements_close_due(now=MONTH_END + timedelta(hours=grace + 1))
    assert {s.organization_id for s in closed} == {o.pk for o in month.orgs}
    assert all(s.status == Statement.Status.CLOSED and s.period_start == MONTH for s in closed)
    assert sum(s.total_amount for s in closed) == sum(
        StatementLine.objects.values_list("amount", flat=True))
    assert sum(StatementLine.objects.values_list("input_tokens", flat=True)) == sum(
        UsageRecord.objects.values_list("prompt_tokens", flat=True))
    assert len(statements_close_due(now=MONTH_END + timedelta(hours=grace + 2))) == 3  # idempotent


def test_statement_exports_csv_and_json_by_command(month):
    org = month.orgs[2]
    out = io.StringIO()
    call_command("billing_statement", org=org.name, month="2026-10", close=True, stdout=out, stderr=io.StringIO())
    statement = Statement.objects.get(organization=org, period_start=MONTH)
    assert statement.status == Statement.Status.CLOSED
    rows = out.getvalue().splitlines()
    assert rows[0].startswith("organization_id,period,kind,usage_period,project_id")
    assert len(rows) == 1 + statement.lines.count()
    assert out.getvalue() == statement_export_csv(statement)
    out = io.StringIO()
    call_command("billing_statement", org=org.public_id, month="2026-10", format="json", stdout=out,
                 stderr=io.StringIO())
    import json

    body = json.loads(out.getvalue())
    assert body == statement_export_json(statement)
    assert Decimal(body["total_amount"]) == sum(Decimal(line["amount"]) for line in body["lines"])
    with pytest.raises(CommandError):
        call_command("billing_statement", org="nobody", month="2026-10", stdout=io.StringIO())


def test_beat_schedule_and_rollup_task(db, organization, project, created_key):
    from billing.tasks import close_statements, rollup_usage

    queues = {entry["task"]: entry["options"]["queue"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert queues == {"billing.rollup_usage": "billing", "billing.close_statements": "billing",
                      "batches.tick": "embeddings-batch"}
    model = EmbeddingModel.objects.create(name="bill-task", local_path="/none", dimensions=8, max_input_tokens=8)
    UsageRecord.objects.create(request_id="req_now", organization=organization, project=project,
                               api_key=created_key.api_key, model=model, input_count=1, prompt_tokens=42,
                               total_tokens=42, latency_ms=1)
    rollup_usage.apply().get()
    assert list(HourlyUsage.objects.values_list("input_tokens", "num_model_requests")) == [(42, 1)]
    assert list(DailyUsage.objects.values_list("input_tokens", "num_model_requests")) == [(42, 1)]
    close_statements.apply().get()


def test_rollup_rebuilt_from_nothing_equals_the_raw_aggregate(month):
    """Rolling up twice keeps the same rows (ids included); rolled up again from empty tables,
    the buckets equal the raw records' aggregate."""
    usage_rollup_build(start=MONTH_START, end=MONTH_END)
    hourly, daily = rollup_snapshot(HourlyUsage), rollup_snapshot(DailyUsage)
    usage_rollup_build(start=MONTH_START, end=MONTH_END)
    assert rollup_snapshot(HourlyUsage) == hourly
    assert rollup_snapshot(DailyUsage) == daily
    HourlyUsage.objects.all().delete()
    DailyUsage.objects.all().delete()
    usage_rollup_build(start=MONTH_START, end=MONTH_END)
    assert rollup_rows(HourlyUsage) == sql_aggregate("hour")
    assert rollup_rows(DailyUsage) == sql_aggregate("day")


def test_statement_download_is_for_the_organizations_owners_and_admins(month, django_user_model):
    """The console's download (``/console/orgs/<org>/billing/statements/<YYYY-MM>.<fmt>``, an
    `OrganizationView`): owners and admins get the file, members and readers 403, another
    organization's statement 404, anonymous users the sign-in page."""
    from django.test import Client
    from django.urls import reverse

    from accounts.models import Membership

    org, other = month.orgs[0], month.orgs[1]
    statement_close(organization=org, period_start=MONTH, now=datetime(2026, 11, 2, tzinfo=UTC))
    users = {}
    for role in Membership.Role.values:
        users[role] = django_user_model.objects.create_user(role, password="pw-123456789")
        Membership.objects.create(user=users[role], organization=org, role=role)

    def url(organization, period="2026-10", fmt="csv"):
        return reverse("console:statement-download", kwargs={"org": organization.public_id, "period": period,
                                                             "fmt": fmt})

    anonymous = Client().get(url(org))
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/console/login/?next=")
    statement = Statement.objects.get(organization=org, period_start=MONTH)
    for role in ("owner", "admin"):
        browser = Client()
        browser.force_login(users[role])
        response = browser.get(url(org))
        assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
        assert response["Content-Disposition"] == f'attachment; filename="statement-{org.public_id}-2026-10.csv"'
        assert response.content.decode() == statement_export_csv(statement)
        body = browser.get(url(org, fmt="json")).json()
        assert body == statement_export_json(statement)
        assert body["status"] == "closed" and body["total_amount"] == str(statement.total_amount)
    # Another organization's statement, a bad or future month: 404; a member or a reader: 403.
    assert browser.get(url(other)).status_code == 404
    assert browser.get(url(org, period="2026-13")).status_code == 404
    assert browser.get(url(org, period="2999-01")).status_code == 404
    for role in ("member", "reader"):
        browser.force_login(users[role])
        assert browser.get(url(org)).status_code == 403
        assert browser.get(url(org, fmt="json")).status_code == 403
    assert Client().get(f"/billing/statements/{org.public_id}/2026-10.csv").status_code == 404  # old route gone


def test_set_price_command_sets_a_first_price_then_only_dated_changes(db):
    import io

    from django.core.management import CommandError, call_command

    from billing.models import Price

    model = EmbeddingModel.objects.create(name="priced-by-command", local_path="/none", dimensions=8,
                                          max_input_tokens=8)
    call_command("set_price", model=model.name, price="0.02", stdout=io.StringIO())
    with pytest.raises(CommandError, match="already has a price"):
        call_command("set_price", model=model.name, price="0.03", stdout=io.StringIO())
    call_command("set_price", model=model.name, price="0.03", effective_from="2031-02-01", stdout=io.StringIO())
    assert list(Price.objects.filter(model=model).order_by("effective_from")
                .values_list("effective_from", "price_per_million_tokens")) == [
        (date(1970, 1, 1), Decimal("0.02")), (date(2031, 2, 1), Decimal("0.03"))]


def test_a_first_price_set_after_a_closed_month_leaves_closed_months_unpriced(month):
    """A model billed at 0 on a closed statement stays at 0 for that month: its first price starts
    the month after the last closed one."""
    from billing.models import Price

    statement_close(organization=month.orgs[0], period_start=MONTH, now=datetime(2026, 11, 2, 12, tzinfo=UTC))
    late = EmbeddingModel.objects.create(name="priced-late", local_path="/none", dimensions=8, max_input_tokens=8)
    price_initial_set(model=late, price_per_million_tokens=Decimal("0.02"))
    assert Price.objects.get(model=late).effective_from == date(2026, 11, 1)
