"""Before ``EmbeddingModel.price_per_million_tokens`` is dropped (embeddings 0003): every model
still without a `Price` row gets one from that field, in effect from 1970-01-01, so no model's
price is lost. From here on `Price` is the only source of prices."""
import datetime

from django.conf import settings
from django.db import migrations


def forwards(apps, schema_editor):
    EmbeddingModel = apps.get_model("embeddings", "EmbeddingModel")
    Price = apps.get_model("billing", "Price")
    for model in EmbeddingModel.objects.exclude(pk__in=Price.objects.values("model_id")):
        Price.objects.create(model=model, effective_from=datetime.date(1970, 1, 1),
                             price_per_million_tokens=model.price_per_million_tokens,
                             currency=settings.BILLING_CURRENCY)


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0004_usagerecord_to_metering"),
        ("embeddings", "0002_model_token_ids"),
    ]
    run_before = [("embeddings", "0003_remove_embeddingmodel_price_per_million_tokens")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
