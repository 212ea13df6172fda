"""`UsageRecord` moves here from `billing` with its table (``billing_usagerecord``) and rows:
state only, no SQL (billing.0004 removes it from billing's state)."""
import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("accounts", "0003_merge_0002_admin_api_key_0002_limits"),
        ("embeddings", "0002_model_token_ids"),
        ("billing", "0003_initial_prices_from_registry"),  # the table exists from here on
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="UsageRecord",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                                   verbose_name="ID")),
                        ("request_id", models.CharField(max_length=64, unique=True)),
                        ("input_count", models.PositiveIntegerField()),
                        ("prompt_tokens", models.PositiveBigIntegerField()),
                        ("total_tokens", models.PositiveBigIntegerField()),
                        ("user", models.CharField(blank=True, default="", max_length=256)),
                        ("service_tier", models.CharField(default="default", max_length=16)),
                        ("latency_ms", models.PositiveIntegerField()),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("api_key", models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL,
                                                      related_name="+", to="accounts.apikey")),
                        ("model", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="+",
                                                    to="embeddings.embeddingmodel")),
                        ("organization", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT,
                                                           related_name="+", to="accounts.organization")),
                        ("project", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT,
                                                      related_name="+", to="accounts.project")),
                    ],
                    options={
                        "db_table": "billing_usagerecord",
                        "indexes": [models.Index(fields=["project", "created_at"], name="usage_project_time"),
                                    models.Index(fields=["organization", "created_at"], name="usage_org_time"),
                                    models.Index(fields=["created_at"], name="usage_time")],
                    },
                ),
            ],
        ),
    ]
