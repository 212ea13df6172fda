"""Management commands: key bootstrap and model registration."""
from __future__ import annotations

import io
from datetime import date
from decimal import Decimal

from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import APIKey, Organization, Project
from embeddings.models import EmbeddingModel


def test_create_api_key_prints_only_the_key_and_creates_what_is_missing(default_model):
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", org="Globex", project="Search", name="ci", stdout=out, stderr=err)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sk-proj-")
    key = lines[0]
    org = Organization.objects.get(name="Globex")
    project = Project.objects.get(organization=org, name="Search")
    assert APIKey.objects.get(project=project).name == "ci"

    # Same org/project again (any case): reused, a second key is added.
    out2 = io.StringIO()
    call_command("create_api_key", org="globex", project="SEARCH", stdout=out2, stderr=io.StringIO())
    assert Organization.objects.filter(name__iexact="globex").count() == 1
    assert APIKey.objects.filter(project=project).count() == 2

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hi"}, format="json").status_code == 200


def test_register_models_is_idempotent(db):
    out = io.StringIO()
    call_command("register_models", stdout=out)
    call_command("register_models", stdout=out)
    model = EmbeddingModel.objects.get()
    assert (model.name, model.dimensions, model.max_input_tokens) == ("all-MiniLM-L6-v2", 384, 256)
    assert model.aliases == ["sentence-transformers/all-MiniLM-L6-v2"]


def test_release_step_prices_the_default_model_once_and_keeps_a_later_price(db, settings):
    from billing.models import Price
    from billing.services import price_create
    from config.run import registry_seed

    settings.BILLING_DEFAULT_MODEL_PRICE = Decimal("0.010000")
    registry_seed()
    model = EmbeddingModel.objects.get()
    assert list(Price.objects.filter(model=model).values_list("effective_from", "price_per_million_tokens")) == [
        (date(1970, 1, 1), Decimal("0.010000"))]
    price_create(model=model, price_per_million_tokens=Decimal("0.5"), effective_from=date(2030, 1, 1))
    settings.BILLING_DEFAULT_MODEL_PRICE = Decimal("7")  # a later deploy: prices are billing's, not reset
    registry_seed()
    assert list(Price.objects.filter(model=model).order_by("effective_from")
                .values_list("price_per_million_tokens", flat=True)) == [Decimal("0.010000"), Decimal("0.5")]
