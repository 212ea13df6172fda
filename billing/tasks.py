"""Celery tasks of billing, sent by beat (``CELERY_BEAT_SCHEDULE`` in settings; its ``options``
route them to the ``billing`` queue, consumed by ``celery -A config worker -Q billing``)."""
from __future__ import annotations

import time

from celery import shared_task

from config import heartbeats
from config.metrics import ROLLUP_DURATION
from config.platform_state import ROLLUP_JOB

from . import services

__all__ = ["ROLLUP_JOB", "close_statements", "rollup_usage"]


@shared_task(name="billing.rollup_usage", ignore_result=True)
def rollup_usage() -> dict:
    """Re-roll the trailing ``BILLING_ROLLUP_LOOKBACK_HOURS`` into the hourly/daily rollups.

    Returns the covered ranges and row counts (ISO times), for logs.
    """
    started_at = time.time()
    result = services.usage_rollup_recent()
    ROLLUP_DURATION.observe(time.time() - started_at)
    heartbeats.job_record(ROLLUP_JOB, started_at=started_at, hour_end=result.hour_end.timestamp())
    return {"hour_start": result.hour_start.isoformat(), "hour_end": result.hour_end.isoformat(),
            "hourly_rows": result.hourly_rows, "daily_rows": result.daily_rows}


@shared_task(name="billing.close_statements", ignore_result=True)
def close_statements() -> list[str]:
    """Close (freeze) last month's statements once the grace period has passed; idempotent."""
    return [str(s) for s in services.statements_close_due()]
