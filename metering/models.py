"""`UsageRecord`: the source of truth for quotas and billing."""
from __future__ import annotations

from django.db import models
from django.utils import timezone


class UsageRecord(models.Model):
    """One row per successful ``/v1/embeddings`` request (insert-only).

    ``request_id`` is unique, so a retried write (or a redelivered task) can never
    bill twice. Token counts are the tokens the model processed, special tokens
    included, as reported in the response's ``usage``. ``latency_ms`` runs from the
    request's arrival to its record being written (milliseconds): after its encode, or, for a
    small request alone in its API process, whose record is written while it encodes
    (``EMBEDDINGS_METER_ALONGSIDE``), before it (the request's own latency is the
    ``config.access`` line's ``duration_ms`` and the Prometheus phase histograms).
    """

    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey("accounts.Project", on_delete=models.PROTECT, related_name="+")
    # Also ON DELETE SET NULL in PostgreSQL itself (metering.0002, config.migration_operations): a
    # migration that recreates this constraint must keep that.
    api_key = models.ForeignKey("accounts.APIKey", null=True, on_delete=models.SET_NULL, related_name="+")
    model = models.ForeignKey("embeddings.EmbeddingModel", on_delete=models.PROTECT, related_name="+")
    input_count = models.PositiveIntegerField()
    prompt_tokens = models.PositiveBigIntegerField()
    total_tokens = models.PositiveBigIntegerField()
    user = models.CharField(max_length=256, blank=True, default="")
    service_tier = models.CharField(max_length=16, default="default")
    latency_ms = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "billing_usagerecord"  # the table it had in `billing`, kept (no copy of the data)
        indexes = [
            models.Index(fields=["project", "created_at"], name="usage_project_time"),
            models.Index(fields=["organization", "created_at"], name="usage_org_time"),
            # Serves the rollup's time-range scans (and, per partition, the monthly plan
            # in platform/usage-partitioning.md).
            models.Index(fields=["created_at"], name="usage_time"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.total_tokens} tokens"
