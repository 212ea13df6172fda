"""The console's admin keys and billing pages: roles (403), other tenants (404), admin keys
created and revoked in the console against the real ``/v1/organization`` API, and statement
downloads equal to `billing.exports`, computed for open months without writing."""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import AdminAPIKey
from accounts.services import admin_api_key_create, hash_key, membership_add
from billing.exports import statement_export_csv, statement_export_json
from billing.models import Statement, StatementLine
from metering.models import UsageRecord
from billing.services import month_start, price_initial_set, statement_build, statement_close, usage_rollup_build
from embeddings.models import EmbeddingModel
from tests.conftest import assert_error
from tests.console.conftest import PASSWORD, Role, signed_in

USAGE = "/v1/organization/usage/embeddings"


def admin_api(key: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return api


def week_ago() -> int:
    return int((timezone.now() - timedelta(days=7)).timestamp())


@pytest.fixture
def admin(tenants, django_user_model):
    user = django_user_model.objects.create_user(username="adam", password=PASSWORD)
    membership_add(organization=tenants["a_org"], user=user, role=Role.ADMIN)
    return user


def test_admin_keys_page_and_nav_are_for_owners_and_admins_only(tenants, admin):
    t = tenants
    org = t["a_org"].public_id
    page_url = reverse("console:admin-keys", kwargs={"org": org})
    billing_url = reverse("console:billing", kwargs={"org": org})
    existing = admin_api_key_create(organization=t["a_org"], name="finance").admin_api_key
    revoke_url = reverse("console:admin-key-revoke", kwargs={"org": org, "key": existing.public_id})
    for user in (t["a_owner"], admin):
        client = signed_in(user)
        page = client.get(page_url)
        assert page.status_code == 200 and existing.masked in page.content.decode()
        assert "no-store" in page["Cache-Control"]
        home = client.get(reverse("console:projects", kwargs={"org": org})).content.decode()
        assert f'href="{page_url}"' in home and f'href="{billing_url}"' in home
    for user in (t["member"], t["reader"]):
        client = signed_in(user)
        home = client.get(reverse("console:projects", kwargs={"org": org})).content.decode()
        assert page_url not in home and billing_url not in home
        assert client.get(page_url).status_code == 403
        assert client.post(page_url, {"name": "sneaky"}).status_code == 403
        assert client.get(revoke_url).status_code == 403
        assert client.post(revoke_url).status_code == 403
        assert client.get(billing_url).status_code == 403
    assert AdminAPIKey.objects.filter(organization=t["a_org"]).count() == 1
    existing.refresh_from_db()
    assert existing.revoked_at is None


def test_admin_key_created_in_the_console_reads_usage_until_revoked(tenants, admin):
    t = tenants
    org = t["a_org"].public_id
    client = signed_in(admin)
    url = reverse("console:admin-keys", kwargs={"org": org})
    response = client.post(url, {"name": "grafana", "expires_on": "2999-01-31"})
    assert response.status_code == 201 and "no-store" in response["Cache-Control"]
    plaintext = response.context["created"].plaintext
    assert re.fullmatch(r"sk-admin-[A-Za-z0-9]{43}", plaintext)
    assert response.content.decode().count(plaintext) == 1 and 'data-copy="#new-key"' in response.content.decode()
    key = AdminAPIKey.objects.get(name="grafana")
    assert key.organization == t["a_org"] and key.created_by == admin
    assert key.secret_hash == hash_key(plaintext) and key.expires_at == datetime(2999, 1, 31, tzinfo=UTC)

    reply = admin_api(plaintext).get(USAGE, {"start_time": week_ago()})
    assert reply.status_code == 200 and reply.json()["object"] == "page"
    listing = client.get(url).content.decode()
    assert plaintext not in listing and key.secret_hash not in listing and key.masked in listing

    revoke_url = reverse("console:admin-key-revoke", kwargs={"org": org, "key": key.public_id})
    confirm = client.get(revoke_url)
    assert confirm.status_code == 200 and key.masked in confirm.content.decode()
    assert client.post(revoke_url)["Location"] == url
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert_error(admin_api(plaintext).get(USAGE, {"start_time": week_ago()}), 401, param=None,
                 code="invalid_api_key")
    assert "revoked" in client.get(url).content.decode()


@pytest.mark.parametrize("data, error", [
    ({"name": ""}, "This field is required."),
    ({"name": "x", "expires_on": "2000-01-01"}, "Pick a day after today."),
])
def test_bad_admin_key_input_is_refused_and_creates_nothing(tenants, data, error):
    response = signed_in(tenants["a_owner"]).post(
        reverse("console:admin-keys", kwargs={"org": tenants["a_org"].public_id}), data)
    assert response.status_code == 400 and error in response.content.decode()
    assert not AdminAPIKey.objects.exists()


def test_another_tenants_admin_keys_and_statements_are_404(tenants):
    t = tenants
    b_key = admin_api_key_create(organization=t["b_org"], name="bravo").admin_api_key
    a, b = t["a_org"].public_id, t["b_org"].public_id
    client = signed_in(t["a_owner"])
    foreign = [
        reverse("console:admin-keys", kwargs={"org": b}),
        reverse("console:admin-key-revoke", kwargs={"org": b, "key": b_key.public_id}),
        reverse("console:admin-key-revoke", kwargs={"org": a, "key": b_key.public_id}),  # B's key under A
        reverse("console:billing", kwargs={"org": b}),
        reverse("console:statement-download", kwargs={"org": b, "period": "2026-01", "fmt": "csv"}),
    ]
    for url in foreign:
        assert client.get(url).status_code == 404, url
        assert client.post(url, {"name": "pwned"}).status_code == 404, url
    b_key.refresh_from_db()
    assert b_key.revoked_at is None and AdminAPIKey.objects.count() == 1
    for url in (reverse("console:admin-keys", kwargs={"org": a}), reverse("console:billing", kwargs={"org": a})):
        anonymous = APIClient().get(url)
        assert anonymous.status_code == 302 and anonymous["Location"].startswith("/console/login/?next=")


@pytest.fixture
def billed(tenants):
    """Acme's usage: 3 records in the month before last (closed), 2 in this month (open)."""
    t = tenants
    model = EmbeddingModel.objects.create(name="bill-console", local_path="/none", dimensions=8,
                                          max_input_tokens=256)
    price_initial_set(model=model, price_per_million_tokens=Decimal("0.020000"))
    now = timezone.now()
    this_month = month_start(now.date())
    closed_month = month_start(month_start(this_month - timedelta(days=1)) - timedelta(days=1))
    at = [datetime.combine(closed_month, datetime.min.time(), tzinfo=UTC) + timedelta(days=d, hours=3)
          for d in (0, 1, 2)] + [datetime.combine(this_month, datetime.min.time(), tzinfo=UTC) + timedelta(minutes=m)
                                 for m in (1, 2)]
    UsageRecord.objects.bulk_create([
        UsageRecord(request_id=f"req_console_bill_{i}", organization=t["a_org"], project=t["a_project"],
                    api_key=t["a_key"], model=model, input_count=1, prompt_tokens=1_000_000 + i,
                    total_tokens=1_000_000 + i, latency_ms=3, created_at=moment)
        for i, moment in enumerate(at)])
    usage_rollup_build(start=at[0], end=now + timedelta(hours=1))
    statement_close(organization=t["a_org"], period_start=closed_month, now=now, reroll=False)
    return closed_month, this_month


def test_billing_page_lists_closed_and_draft_statements_and_downloads_match_exports(tenants, billed):
    t = tenants
    closed_month, this_month = billed
    org = t["a_org"].public_id
    client = signed_in(t["a_owner"])
    client.get(reverse("console:billing", kwargs={"org": org}))  # session settles (remembers the organization)
    with CaptureQueriesContext(connection) as queries:
        page = client.get(reverse("console:billing", kwargs={"org": org}))
        draft_csv = client.get(reverse("console:statement-download",
                                       kwargs={"org": org, "period": f"{this_month:%Y-%m}", "fmt": "csv"}))
        draft_json = client.get(reverse("console:statement-download",
                                        kwargs={"org": org, "period": f"{this_month:%Y-%m}", "fmt": "json"}))
    writes = [q["sql"] for q in queries.captured_queries
              if re.match(r"\s*(INSERT|UPDATE|DELETE)", q["sql"], re.IGNORECASE)]
    assert writes == []
    assert page.status_code == 200
    rows = page.context["statements"]
    assert [(s.period, s.status) for s in rows] == [(this_month, "draft"), (closed_month, "closed")]
    closed = Statement.objects.get(organization=t["a_org"], period_start=closed_month)
    assert rows[1].total_amount == closed.total_amount == closed.lines.get().amount
    assert (rows[1].num_model_requests, rows[1].input_tokens) == (3, 3_000_003)
    assert (rows[0].num_model_requests, rows[0].input_tokens) == (2, 2_000_007)
    html = page.content.decode()
    for s in rows:
        for fmt in ("csv", "json"):
            assert reverse("console:statement-download",
                           kwargs={"org": org, "period": f"{s.period:%Y-%m}", "fmt": fmt}) in html
    assert not Statement.objects.filter(period_start=this_month).exists()
    assert draft_csv.status_code == 200 and draft_csv["Content-Type"].startswith("text/csv")
    assert "no-store" in draft_csv["Cache-Control"]

    # The draft downloaded equals what statement_build then stores, line for line.
    stored = statement_build(organization=t["a_org"], period_start=this_month)
    assert draft_csv.content.decode() == statement_export_csv(stored)
    assert draft_json.json() == statement_export_json(stored)
    assert draft_json.json()["status"] == "draft" and draft_json.json()["total_amount"] == "0.04"
    # The closed month as stored.
    closed_csv = client.get(reverse("console:statement-download",
                                    kwargs={"org": org, "period": f"{closed_month:%Y-%m}", "fmt": "csv"}))
    assert closed_csv.content.decode() == statement_export_csv(closed)
    assert StatementLine.objects.filter(statement=closed).count() == 1
