"""Seed one `Price` per registered model from ``EmbeddingModel.price_per_million_tokens``,
in effect from 1970-01-01, so past usage is priced at the registry's price and later
changes go through `billing.services.price_create`."""
import datetime

from django.db import migrations


def forwards(apps, schema_editor):
    EmbeddingModel = apps.get_model("embeddings", "EmbeddingModel")
    Price = apps.get_model("billing", "Price")
    for model in EmbeddingModel.objects.all():
        Price.objects.get_or_create(model=model, effective_from=datetime.date(1970, 1, 1),
                                    defaults={"price_per_million_tokens": model.price_per_million_tokens,
                                              "currency": "usd"})


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0002_rollups_prices_statements"),
        ("embeddings", "0001_initial"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
