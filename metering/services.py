"""The writer of `metering.models.UsageRecord`."""
from __future__ import annotations

from .models import UsageRecord


def usage_record_create(*, request_id: str, organization_id: int, project_id: int, api_key_id: int | None,
                        model_id: int, input_count: int, prompt_tokens: int, total_tokens: int,
                        user: str = "", service_tier: str = "default", latency_ms: int) -> UsageRecord:
    """Insert the usage record of one successful request (one INSERT, no UPDATE).

    Raises ``django.db.IntegrityError`` when ``request_id`` was already metered.
    """
    return UsageRecord.objects.create(
        request_id=request_id,
        organization_id=organization_id,
        project_id=project_id,
        api_key_id=api_key_id,
        model_id=model_id,
        input_count=input_count,
        prompt_tokens=prompt_tokens,
        total_tokens=total_tokens,
        user=user,
        service_tier=service_tier,
        latency_ms=latency_ms,
    )
