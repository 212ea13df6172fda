"""Rollups of the usage records (`metering.models.UsageRecord`), prices and statements.

Money is `decimal.Decimal` everywhere (never float); token counts are integers.
"""
from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.utils import timezone


class PriceTier(models.TextChoices):
    """What a price applies to: the synchronous API (``default``; flex is billed at it too) or the
    Batch API's lines (``batch``: usage with ``service_tier="batch"``)."""

    DEFAULT = "default", "Standard"
    BATCH = "batch", "Batch"


def price_tier_of(service_tier: str) -> str:
    """The `PriceTier` that bills usage of ``service_tier`` (a `metering.models.UsageRecord` tier)."""
    return PriceTier.BATCH if service_tier == PriceTier.BATCH else PriceTier.DEFAULT


class Price(models.Model):
    """The price of a model per 1,000,000 input tokens, in effect from ``effective_from`` (a UTC date) on.

    A price holds until the next row of the same model takes over, so a new price
    never rewrites usage before its date. Prices change at UTC midnight, so every
    hourly and daily usage bucket has exactly one price. These rows are the only source
    of prices: a model's first row (from 1970-01-01) comes from `billing.services.price_initial_set`,
    later ones from `price_create`; a model without rows is unpriced (0).

    ``service_tier``: `PriceTier`. A model's batch price is its ``batch`` row in effect, or, before
    its first one, ``BILLING_BATCH_PRICE_RATIO`` (half) of its standard price in effect that day.
    """

    model = models.ForeignKey("embeddings.EmbeddingModel", on_delete=models.PROTECT, related_name="prices")
    service_tier = models.CharField(max_length=8, choices=PriceTier.choices, default=PriceTier.DEFAULT)
    price_per_million_tokens = models.DecimalField(max_digits=12, decimal_places=6)
    currency = models.CharField(max_length=3, default="usd")
    effective_from = models.DateField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["model", "effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "service_tier", "effective_from"],
                                    name="price_model_tier_from_unique"),
            models.CheckConstraint(condition=Q(price_per_million_tokens__gte=Decimal("0")),
                                   name="price_non_negative"),
        ]

    def __str__(self) -> str:
        tier = " (batch)" if self.service_tier == PriceTier.BATCH else ""
        return f"{self.model}{tier} {self.price_per_million_tokens} {self.currency}/1M from {self.effective_from}"


class UsageRollup(models.Model):
    """An aggregate of `UsageRecord` rows per bucket, organization, project, key, model and service
    tier (``service_tier``: the records' own, so batch usage is its own row).

    ``input_tokens`` sums ``prompt_tokens`` (exact integers); ``num_model_requests``
    counts records. Rows are recomputed from raw records and upserted, never
    incremented, so re-running a bucket is idempotent. ``api_key`` is null for
    records whose key was deleted (the unique constraint treats nulls as equal); it
    has no database constraint so deleting a key never rewrites rollups (the next
    re-roll of the bucket replaces the row).
    """

    bucket_start = models.DateTimeField()
    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+",
                                     db_index=False)
    project = models.ForeignKey("accounts.Project", on_delete=models.PROTECT, related_name="+", db_index=False)
    api_key = models.ForeignKey("accounts.APIKey", null=True, on_delete=models.DO_NOTHING, related_name="+",
                                db_constraint=False, db_index=False)
    model = models.ForeignKey("embeddings.EmbeddingModel", on_delete=models.PROTECT, related_name="+",
                              db_index=False)
    service_tier = models.CharField(max_length=16, default="default")
    num_model_requests = models.PositiveBigIntegerField()
    input_tokens = models.PositiveBigIntegerField()
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        abstract = True


class HourlyUsage(UsageRollup):
    """Usage per UTC hour (``bucket_start`` on the hour). Built from raw records."""

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["bucket_start", "organization", "project", "api_key", "model",
                                            "service_tier"],
                                    name="hourly_usage_bucket_tier_unique", nulls_distinct=False),
        ]
        indexes = [models.Index(fields=["organization", "bucket_start"], name="hourly_usage_org_time")]


class DailyUsage(UsageRollup):
    """Usage per UTC day (``bucket_start`` at midnight). Built from `HourlyUsage`."""

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["bucket_start", "organization", "project", "api_key", "model",
                                            "service_tier"],
                                    name="daily_usage_bucket_tier_unique", nulls_distinct=False),
        ]
        indexes = [models.Index(fields=["organization", "bucket_start"], name="daily_usage_org_time")]


class Statement(models.Model):
    """An organization's monthly statement (``period_start``: the first day of the month, UTC).

    ``draft`` statements are recomputed from the rollups; once ``closed`` the statement
    and its lines never change (late records of a closed month are billed as
    ``adjustment`` lines on the organization's next statement).
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        CLOSED = "closed", "Closed"

    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="statements")
    period_start = models.DateField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT)
    currency = models.CharField(max_length=3, default="usd")
    total_amount = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("0.00"))
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["organization", "-period_start"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "period_start"], name="statement_org_period_unique"),
            models.CheckConstraint(condition=Q(status="draft") | Q(closed_at__isnull=False),
                                   name="statement_closed_has_time"),
        ]

    def __str__(self) -> str:
        return f"{self.organization} {self.period_start:%Y-%m} ({self.status})"


class StatementLine(models.Model):
    """One line of a statement: a project, a model, a price tier (``service_tier``: `PriceTier`, so
    batch usage is a line of its own) and the unit price in effect.

    ``amount = input_tokens * unit_price / 1,000,000`` rounded ROUND_HALF_UP to cents
    (per line; the statement total is the sum of the rounded lines). A price change
    mid-month gives one line per price. ``kind=adjustment`` lines bill records of an
    earlier, closed month (``usage_period_start``) that arrived after it closed.
    """

    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        ADJUSTMENT = "adjustment", "Adjustment"

    statement = models.ForeignKey(Statement, on_delete=models.CASCADE, related_name="lines")
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.USAGE)
    usage_period_start = models.DateField()
    project = models.ForeignKey("accounts.Project", on_delete=models.PROTECT, related_name="+")
    model = models.ForeignKey("embeddings.EmbeddingModel", on_delete=models.PROTECT, related_name="+")
    service_tier = models.CharField(max_length=8, choices=PriceTier.choices, default=PriceTier.DEFAULT)
    price_effective_from = models.DateField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=6, help_text="Per 1M input tokens.")
    num_model_requests = models.BigIntegerField()
    input_tokens = models.BigIntegerField()
    amount = models.DecimalField(max_digits=16, decimal_places=2)

    class Meta:
        ordering = ["statement", "kind", "usage_period_start", "project_id", "model_id", "service_tier",
                    "price_effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["statement", "kind", "usage_period_start", "project", "model", "service_tier",
                        "price_effective_from"],
                name="statement_line_tier_unique"),
        ]
