"""Fixtures of the billing tests: a generated month of usage, and the aggregates to check against."""
from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from accounts.services import api_key_create, organization_get_or_create, project_get_or_create
from billing.services import price_create, price_initial_set
from embeddings.models import EmbeddingModel
from metering.models import UsageRecord

MONTH = date(2026, 10, 1)
MONTH_START = datetime(2026, 10, 1, tzinfo=UTC)
MONTH_END = datetime(2026, 11, 1, tzinfo=UTC)
PRICE_CHANGE = date(2026, 10, 16)
PRICE_A_OLD, PRICE_A_NEW, PRICE_B = Decimal("0.020000"), Decimal("0.013000"), Decimal("0.050000")


@pytest.fixture
def month(db):
    """A generated October 2026: 3 orgs x 2 projects x 2 keys x 2 models, 3000 records.

    Model A costs 0.02/1M until Oct 15 and 0.013/1M from Oct 16; model B 0.05/1M.
    A few records have no key (a deleted key). Returns a namespace of the objects.
    """
    rng = random.Random(6)
    model_a = EmbeddingModel.objects.create(name="bill-a", local_path="/none", dimensions=8, max_input_tokens=256)
    model_b = EmbeddingModel.objects.create(name="bill-b", local_path="/none", dimensions=8, max_input_tokens=256)
    price_initial_set(model=model_a, price_per_million_tokens=PRICE_A_OLD)
    price_initial_set(model=model_b, price_per_million_tokens=PRICE_B)
    price_create(model=model_a, price_per_million_tokens=PRICE_A_NEW, effective_from=PRICE_CHANGE)
    orgs, keys = [], []
    for o in range(3):
        org = organization_get_or_create(name=f"Bill Org {o}")
        orgs.append(org)
        for p in range(2):
            project = project_get_or_create(organization=org, name=f"P{p}")
            for k in range(2):
                keys.append(api_key_create(project=project, name=f"k{k}").api_key)
    seconds = int((MONTH_END - MONTH_START).total_seconds())
    records = []
    for i in range(3000):
        key = rng.choice(keys)
        tokens = rng.randint(1, 5000)
        records.append(UsageRecord(
            request_id=f"req_gen_{i}", organization_id=key.project.organization_id, project_id=key.project_id,
            api_key_id=None if i % 97 == 0 else key.pk, model=rng.choice([model_a, model_b]), input_count=1,
            prompt_tokens=tokens, total_tokens=tokens, latency_ms=5,
            created_at=MONTH_START + timedelta(seconds=rng.randrange(seconds))))
    UsageRecord.objects.bulk_create(records, batch_size=1000)

    class Month:
        pass

    m = Month()
    m.orgs, m.keys, m.model_a, m.model_b = orgs, keys, model_a, model_b
    return m


def unit_price(model_id, moment: datetime, m) -> Decimal:
    if model_id == m.model_b.pk:
        return PRICE_B
    return PRICE_A_OLD if moment.date() < PRICE_CHANGE else PRICE_A_NEW


def sql_aggregate(trunc: str, *, org_id: int | None = None, start=MONTH_START, end=MONTH_END,
                  by=("organization_id", "project_id", "api_key_id", "model_id")) -> dict:
    """``{(bucket, *by): (tokens, requests)}`` straight from the raw table."""
    cols = ", ".join(by)
    where = "AND organization_id = %s" if org_id else ""
    params = [start, end] + ([org_id] if org_id else [])
    with connection.cursor() as cursor:
        cursor.execute(f"""
            SELECT date_trunc('{trunc}', created_at AT TIME ZONE 'UTC') AS bucket{', ' + cols if cols else ''},
                   sum(prompt_tokens), count(*)
            FROM billing_usagerecord WHERE created_at >= %s AND created_at < %s {where}
            GROUP BY 1{''.join(f', {i + 2}' for i in range(len(by)))}""", params)
        return {(row[0].replace(tzinfo=UTC), *row[1:-2]): (int(row[-2]), int(row[-1])) for row in cursor.fetchall()}
