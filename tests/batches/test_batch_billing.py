"""Batch usage is billed as its own line: at the model's batch price (half its price until it has a
batch price of its own, effective-dated like every price), on statements, in the costs API (line
item ``<model> (batch)``) and in the usage API (``group_by=batch``)."""
from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from django.core.management import call_command

from accounts.services import admin_api_key_create
from billing.services import amount_for, price_initial_set, statement_draft, usage_rollup_build
from embeddings.models import EmbeddingModel
from metering.models import UsageRecord

DAY1, DAY20 = datetime(2026, 10, 3, 12, tzinfo=UTC), datetime(2026, 10, 20, 12, tzinfo=UTC)


def record(project, key, model, tier: str, tokens: int, at: datetime, n: int) -> UsageRecord:
    return UsageRecord(request_id=f"req_{tier}_{n}", organization_id=project.organization_id, project=project,
                       api_key=key, model=model, input_count=1, prompt_tokens=tokens, total_tokens=tokens,
                       service_tier=tier, latency_ms=1, created_at=at)


def test_batch_usage_is_its_own_line_at_the_batch_price(organization, project, created_key):
    from rest_framework.test import APIClient

    model = EmbeddingModel.objects.create(name="priced", local_path="/none", dimensions=8, max_input_tokens=64)
    price_initial_set(model=model, price_per_million_tokens=Decimal("0.02"))
    # A batch price of its own from Oct 16: before, half of 0.02.
    call_command("set_price", model="priced", price="0.004", **{"from": "2026-10-16"}, batch=True)
    key = created_key.api_key
    UsageRecord.objects.bulk_create([
        record(project, key, model, "default", 1_000_000, DAY1, 1), record(project, key, model, "flex", 500_000, DAY1, 2),
        record(project, key, model, "batch", 3_000_000, DAY1, 3), record(project, key, model, "batch", 2_000_000, DAY20, 4),
    ])
    usage_rollup_build(start=datetime(2026, 10, 1, tzinfo=UTC), end=datetime(2026, 11, 1, tzinfo=UTC))
    draft = statement_draft(organization=organization, period_start=date(2026, 10, 1))
    lines = {(line.service_tier, line.price_effective_from): (line.input_tokens, line.unit_price, line.amount)
             for line in draft.lines}
    assert lines == {
        ("default", date(1970, 1, 1)): (1_500_000, Decimal("0.02"), Decimal("0.03")),
        ("batch", date(1970, 1, 1)): (3_000_000, Decimal("0.01"), amount_for(input_tokens=3_000_000,
                                                                              unit_price=Decimal("0.01"))),
        ("batch", date(2026, 10, 16)): (2_000_000, Decimal("0.004"), Decimal("0.01")),
    }
    assert draft.statement.total_amount == Decimal("0.03") + Decimal("0.03") + Decimal("0.01")

    admin = APIClient()
    admin.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_api_key_create(organization=organization, name='a').plaintext}")
    start = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp())
    costs = admin.get("/v1/organization/costs", {"start_time": start, "limit": 31, "group_by": ["line_item"]}).json()
    day1 = {r["line_item"]: r["amount"]["value"] for b in costs["data"] for r in b["results"]
            if b["start_time"] == int(datetime(2026, 10, 3, tzinfo=UTC).timestamp())}
    assert day1 == {"priced": 0.03, "priced (batch)": 0.03}
    usage = admin.get("/v1/organization/usage/embeddings", {"start_time": start, "limit": 31,
                                                            "group_by": ["batch"]}).json()
    day1 = [r for b in usage["data"] for r in b["results"]
            if b["start_time"] == int(datetime(2026, 10, 3, tzinfo=UTC).timestamp())]
    assert sorted((r["batch"], r["input_tokens"], r["num_model_requests"]) for r in day1) == [
        (False, 1_500_000, 2), (True, 3_000_000, 1)]
