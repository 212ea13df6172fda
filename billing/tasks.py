"""Celery tasks of billing, sent by beat (``CELERY_BEAT_SCHEDULE`` in settings; its ``options``
route them to the ``billing`` queue, consumed by ``celery -A config worker -Q billing``)."""
from __future__ import annotations

from celery import shared_task

from . import services


@shared_task(name="billing.rollup_usage", ignore_result=True)
def rollup_usage() -> dict:
    """Re-roll the trailing ``BILLING_ROLLUP_LOOKBACK_HOURS`` into the hourly/daily rollups.

    Returns the covered ranges and row counts (ISO times), for logs.
    """
    result = services.usage_rollup_recent()
    return {"hour_start": result.hour_start.isoformat(), "hour_end": result.hour_end.isoformat(),
            "hourly_rows": result.hourly_rows, "daily_rows": result.daily_rows}


@shared_task(name="billing.close_statements", ignore_result=True)
def close_statements() -> list[str]:
    """Close (freeze) last month's statements once the grace period has passed; idempotent."""
    return [str(s) for s in services.statements_close_due()]
