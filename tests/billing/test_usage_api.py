"""The usage and costs API (``/v1/organization/...``) for admin keys, against direct SQL aggregates."""
from __future__ import annotations

import io
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts.models import AdminAPIKey, APIKey, Project
from accounts.services import admin_api_key_create, admin_api_key_revoke
from metering.models import UsageRecord
from billing.services import usage_rollup_build
from embeddings.models import EmbeddingModel
from tests.conftest import assert_error
from tests.billing.conftest import MONTH_END, MONTH_START, PRICE_CHANGE, sql_aggregate, unit_price

USAGE = "/v1/organization/usage/embeddings"
COSTS = "/v1/organization/costs"
T0, T1 = int(MONTH_START.timestamp()), int(MONTH_END.timestamp())


@pytest.fixture
def rolled(month):
    usage_rollup_build(start=MONTH_START, end=MONTH_END)
    return month


def admin_client(org) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_api_key_create(organization=org, name='t').plaintext}")
    return api


def public_names():
    return (dict(Project.objects.values_list("pk", "public_id")), dict(APIKey.objects.values_list("pk", "public_id")),
            dict(EmbeddingModel.objects.values_list("pk", "name")))


def flatten(pages) -> dict:
    """``{(start_time, project_id, api_key_id, model): (input_tokens, num_model_requests)}`` of all pages."""
    out = {}
    for page in pages:
        for bucket in page["data"]:
            assert bucket["object"] == "bucket" and bucket["end_time"] > bucket["start_time"]
            for r in bucket["results"]:
                assert r["object"] == "organization.usage.embeddings.result" and r["user_id"] is None
                key = (bucket["start_time"], r["project_id"], r["api_key_id"], r["model"])
                assert key not in out
                out[key] = (r["input_tokens"], r["num_model_requests"])
    return out


def expected(org_id, trunc, by, **kw) -> dict:
    projects, keys, models = public_names()
    names = {"project_id": projects, "api_key_id": keys, "model_id": models}
    out = {}
    for (bucket, *values), tokens in sql_aggregate(trunc, org_id=org_id, by=by, **kw).items():
        named = dict(zip(by, values))
        out[(int(bucket.timestamp()),
             names["project_id"].get(named.get("project_id")),
             names["api_key_id"].get(named.get("api_key_id")),
             names["model_id"].get(named.get("model_id")))] = tokens
    return out


def test_daily_buckets_grouped_match_sql_and_pages_walk_the_month(rolled):
    org = rolled.orgs[0]
    api = admin_client(org)
    response = api.get(USAGE, {"start_time": T0, "end_time": T1, "bucket_width": "1d", "limit": 31,
                               "group_by": ["project_id", "model"]})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "page" and body["has_more"] is False and body["next_page"] is None
    assert [b["start_time"] for b in body["data"]] == list(range(T0, T1, 86400))
    assert flatten([body]) == expected(org.pk, "day", ("project_id", "model_id"))

    # Default limit (7 days) and the cursor: 5 pages cover the month, same figures.
    pages, params = [], {"start_time": T0, "end_time": T1, "group_by": "project_id,model"}
    while True:
        page = api.get(USAGE, params).json()
        pages.append(page)
        assert len(page["data"]) <= 7
        if not page["has_more"]:
            break
        params["page"] = page["next_page"]
    assert len(pages) == 5 and flatten(pages) == flatten([body])


def test_hourly_and_minute_buckets_and_filters_match_sql(rolled):
    org = rolled.orgs[1]
    api = admin_client(org)
    week_end = T0 + 7 * 86400
    body = api.get(USAGE, {"start_time": T0, "end_time": week_end, "bucket_width": "1h", "limit": 168}).json()
    assert len(body["data"]) == 168 and not body["has_more"]
    want = expected(org.pk, "hour", (), end=datetime.fromtimestamp(week_end, UTC))
    assert flatten([body]) == want

    project = Project.objects.filter(organization=org).order_by("pk").first()
    key = APIKey.objects.filter(project=project).order_by("pk").first()
    body = api.get(USAGE, {"start_time": T0, "end_time": week_end, "bucket_width": "1h", "limit": 168,
                           "project_ids[]": project.public_id, "api_key_ids": [key.public_id],
                           "models": "bill-b", "group_by": ["api_key_id"]}).json()
    got = flatten([body])
    assert got and all(k[2] == key.public_id for k in got)
    raw = defaultdict(lambda: [0, 0])
    for r in UsageRecord.objects.filter(api_key=key, model=rolled.model_b, created_at__lt=datetime.fromtimestamp(
            week_end, UTC)):
        acc = raw[int(r.created_at.replace(minute=0, second=0, microsecond=0).timestamp())]
        acc[0] += r.prompt_tokens
        acc[1] += 1
    assert {k[0]: v for k, v in got.items()} == {k: tuple(v) for k, v in raw.items()}

    # 1m buckets read raw rows: a busy day, 1440 minutes.
    day = T0 + 3 * 86400
    body = api.get(USAGE, {"start_time": day, "end_time": day + 86400, "bucket_width": "1m", "limit": 1440,
                           "group_by": "model"}).json()
    assert len(body["data"]) == 1440
    assert flatten([body]) == expected(org.pk, "minute", ("model_id",), start=datetime.fromtimestamp(day, UTC),
                                       end=datetime.fromtimestamp(day + 86400, UTC))


def test_costs_match_records_priced_at_the_price_of_their_day(rolled):
    org = rolled.orgs[2]
    api = admin_client(org)
    body = api.get(COSTS, {"start_time": T0, "end_time": T1, "limit": 31, "group_by": ["line_item"]}).json()
    assert body["object"] == "page" and len(body["data"]) == 31
    want = defaultdict(Decimal)
    for r in UsageRecord.objects.filter(organization=org):
        day = int(r.created_at.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
        want[(day, EmbeddingModel.objects.get(pk=r.model_id).name)] += (
            Decimal(r.prompt_tokens) * unit_price(r.model_id, r.created_at, rolled) / Decimal(10**6))
    got = {}
    for bucket in body["data"]:
        for r in bucket["results"]:
            assert r["object"] == "organization.costs.result" and r["amount"]["currency"] == "usd"
            assert r["project_id"] is None
            got[(bucket["start_time"], r["line_item"])] = r["amount"]["value"]
    assert got.keys() == want.keys()
    for key, value in got.items():
        assert abs(Decimal(str(value)) - want[key]) < Decimal("1e-9"), key
    # project_ids + group_by project_id: only that project, and its month adds up.
    project = Project.objects.filter(organization=org).order_by("pk").first()
    body = api.get(COSTS, {"start_time": T0, "end_time": T1, "limit": 31, "project_ids": project.public_id,
                           "group_by": "project_id"}).json()
    results = [r for b in body["data"] for r in b["results"]]
    assert {r["project_id"] for r in results} == {project.public_id}
    want_project = sum((Decimal(r.prompt_tokens) * unit_price(r.model_id, r.created_at, rolled) / Decimal(10**6)
                        for r in UsageRecord.objects.filter(project=project)), Decimal(0))
    assert abs(sum(Decimal(str(r["amount"]["value"])) for r in results) - want_project) < Decimal("1e-8")
    # The day of the price change is priced at the new price.
    change = int(datetime(PRICE_CHANGE.year, PRICE_CHANGE.month, PRICE_CHANGE.day, tzinfo=UTC).timestamp())
    assert (change, "bill-a") in got


def test_admin_key_sees_only_its_own_organization(rolled):
    org0, org1 = rolled.orgs[0], rolled.orgs[1]
    api = admin_client(org0)
    other_project = Project.objects.filter(organization=org1).first()
    body = api.get(USAGE, {"start_time": T0, "end_time": T1, "limit": 31,
                           "project_ids": other_project.public_id}).json()
    assert all(b["results"] == [] for b in body["data"])
    body = api.get(USAGE, {"start_time": T0, "end_time": T1, "limit": 31, "group_by": "project_id"}).json()
    seen = {r["project_id"] for b in body["data"] for r in b["results"]}
    assert seen == set(Project.objects.filter(organization=org0).values_list("public_id", flat=True))
    total = sum(r["input_tokens"] for b in body["data"] for r in b["results"])
    assert total == sum(UsageRecord.objects.filter(organization=org0).values_list("prompt_tokens", flat=True))


def test_key_kinds_are_kept_apart(rolled, default_model, created_key):
    created = admin_api_key_create(organization=rolled.orgs[0])
    admin = APIClient()
    admin.credentials(HTTP_AUTHORIZATION=f"Bearer {created.plaintext}")
    response = admin.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hi"}, format="json")
    assert_error(response, 403, param=None, code="admin_key_not_allowed")

    project_key = APIClient()
    project_key.credentials(HTTP_AUTHORIZATION=f"Bearer {created_key.plaintext}")
    assert_error(project_key.get(USAGE, {"start_time": T0}), 403, param=None, code="admin_key_required")
    assert_error(APIClient().get(USAGE, {"start_time": T0}), 401, param=None, code="invalid_api_key")
    bogus = APIClient()
    bogus.credentials(HTTP_AUTHORIZATION="Bearer sk-admin-" + "x" * 43)
    assert_error(bogus.get(COSTS, {"start_time": T0}), 401, param=None, code="invalid_api_key")
    admin_api_key_revoke(admin_api_key=created.admin_api_key)
    assert_error(admin.get(USAGE, {"start_time": T0}), 401, param=None, code="invalid_api_key")
    assert created.admin_api_key.masked.startswith("sk-admin-") and created.plaintext not in str(
        AdminAPIKey.objects.values_list())


@pytest.mark.parametrize("path,params,param", [
    (USAGE, {}, "start_time"),
    (USAGE, {"start_time": "yesterday"}, "start_time"),
    (USAGE, {"start_time": T0, "end_time": T0}, "end_time"),
    (USAGE, {"start_time": T0, "bucket_width": "2d"}, "bucket_width"),
    (USAGE, {"start_time": T0, "limit": 0}, "limit"),
    (USAGE, {"start_time": T0, "limit": 32}, "limit"),
    (USAGE, {"start_time": T0, "bucket_width": "1h", "limit": 169}, "limit"),
    (USAGE, {"start_time": T0, "group_by": "colour"}, "group_by"),
    (USAGE, {"start_time": T0, "page": "page_garbage!"}, "page"),
    (USAGE, {"start_time": T0, "end_time": T1, "page": "page_djE6MA"}, "page"),  # "v1:0": outside the window
    (COSTS, {"start_time": T0, "bucket_width": "1h"}, "bucket_width"),
    (COSTS, {"start_time": T0, "group_by": "model"}, "group_by"),
    (COSTS, {"start_time": T0, "limit": 181}, "limit"),
    # Past the last day a bucket can have (year 10000 has no datetime), NUL in list values.
    (USAGE, {"start_time": 253402300800}, "start_time"),
    (USAGE, {"start_time": T0, "end_time": 10 ** 13}, "end_time"),
    (COSTS, {"start_time": 10 ** 13, "end_time": 10 ** 13 + 1}, "start_time"),
    (USAGE, {"start_time": T0, "project_ids": "proj_\x00"}, "project_ids"),
    (USAGE, {"start_time": T0, "api_key_ids": "\x00"}, "api_key_ids"),
    (USAGE, {"start_time": T0, "models": "all\x00"}, "models"),
    (COSTS, {"start_time": T0, "project_ids": "\x00"}, "project_ids"),
    (USAGE, {"start_time": T0, "limit": 10 ** 30}, "limit"),
])
def test_bad_parameters_get_a_400_envelope(organization, path, params, param):
    response = admin_client(organization).get(path, params)
    assert_error(response, 400, param=param, code="invalid_value" if params else "missing_required_parameter")


def test_user_ids_are_refused(organization):
    response = admin_client(organization).get(USAGE, {"start_time": T0, "user_ids": "user_1"})
    assert_error(response, 400, param="user_ids", code="unsupported_parameter")


def test_create_api_key_admin_prints_only_the_key(db):
    out = io.StringIO()
    call_command("create_api_key", org="Initech", admin=True, name="finance", stdout=out, stderr=io.StringIO())
    (key,) = out.getvalue().splitlines()
    assert key.startswith("sk-admin-")
    row = AdminAPIKey.objects.get(organization__name="Initech")
    assert row.name == "finance" and row.masked.endswith(key[-4:])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    body = api.get(USAGE, {"start_time": T0, "end_time": T0 + 86400}).json()
    assert body["data"][0]["results"] == []
    with pytest.raises(CommandError):
        call_command("create_api_key", org="Initech", admin=True, project="P", stdout=io.StringIO())
    with pytest.raises(CommandError):
        call_command("create_api_key", org="Initech", stdout=io.StringIO())
