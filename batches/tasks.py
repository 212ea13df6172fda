"""Celery tasks of the Batch API, on ``BATCH_QUEUE`` (``embeddings-batch``), sent by name by
`batches.services` (see its docstring for a batch's life). Each is idempotent, acked late and
redelivered when its worker dies (``reject_on_worker_lost``), like the embedding chunks.
"""
from __future__ import annotations

from celery import shared_task
from celery.signals import task_received
from django.conf import settings

from . import services

# A step that met a broken dependency (Redis down for admission, the database) is tried again.
_RETRY = {"autoretry_for": (Exception,), "retry_backoff": 2, "retry_backoff_max": 60, "max_retries": 20}


@shared_task(name="batches.validate", acks_late=True, reject_on_worker_lost=True, ignore_result=True, **_RETRY)
def validate(batch_id: int) -> None:
    """`batches.services.batch_validate`."""
    services.batch_validate(batch_id=batch_id)


@shared_task(name="batches.run_chunk", acks_late=True, reject_on_worker_lost=True, ignore_result=True, **_RETRY)
def run_chunk(batch_id: int, index: int) -> None:
    """`batches.services.chunk_run`: chunk ``index`` of the batch."""
    services.chunk_run(batch_id=batch_id, index=index)


@shared_task(name="batches.finalize", acks_late=True, reject_on_worker_lost=True, ignore_result=True, **_RETRY)
def finalize(batch_id: int) -> None:
    """`batches.services.batch_finalize`."""
    services.batch_finalize(batch_id=batch_id)


@shared_task(name="batches.tick", ignore_result=True)
def tick() -> None:
    """`batches.services.batches_tick` (beat, every ``BATCH_TICK_SECONDS``)."""
    services.batches_tick()


@task_received.connect
def claim_chunk(sender=None, request=None, **kwargs) -> None:
    """Record which worker took each batch chunk (as `embeddings.tasks.claim_chunk` does for the
    synchronous API's), and each validation and finalization (under `services.step_claim_id`, their
    batch's), so beat's tick sends it again soon after that worker dies."""
    if request is None or request.name not in ("batches.run_chunk", *services.STEP_TASKS):
        return
    from config.heartbeats import chunk_claim

    if request.name == "batches.run_chunk":
        claim = request.id
    else:  # sent with the batch's id, as `services.task_send` sends it (or as a keyword)
        batch_id = request.args[0] if request.args else (request.kwargs or {}).get("batch_id")
        if batch_id is None:
            return
        claim = services.step_claim_id(request.name, batch_id)
    chunk_claim(claim, hostname=request.hostname, ttl_s=settings.BATCH_CHUNK_RESEND_SECONDS + 60)
