"""Celery tasks of the embedding workers (``celery -A config worker``; see platform/README.md).

`encode_chunk` is one chunk of one request: a plain task (``acks_late=True``,
``reject_on_worker_lost=True``) on the threads pool whose thread hands the chunk to the
process's `embeddings.serving.batching.MicroBatcher` and waits. The batcher coalesces the
chunks of concurrent requests into shared forward passes. (celery-batches was tried on
this machine and rejected: it needs ``celery<5.7``, cuts batches by a timer and the
prefetch count, acks a batch that raised and loses in-flight messages with early acks;
issue 3.)

Transport: token ids go in as JSON ints; vectors come back as little-endian float32
bytes, base64-encoded inside the JSON result (`serving.transport`), never
as JSON float lists. Results expire after ``CELERY_RESULT_EXPIRES`` seconds.

At worker start (``worker_init``, before any message is taken) every active model is
loaded and warmed, once per process, on CUDA in fp16 when present, else on the CPU; the
worker logs which.
"""
from __future__ import annotations

import concurrent.futures
import logging
import time

from celery import shared_task
from celery.signals import task_received, worker_init

from .serving.transport import pack_vectors

logger = logging.getLogger(__name__)

# Level of the workers' per-batch log line (the API process logs its inline batches at DEBUG).
BATCH_LOG_LEVEL = logging.INFO


@shared_task(name="embeddings.encode_chunk", acks_late=True, reject_on_worker_lost=True, ignore_result=False,
             resultrepr_maxsize=64)  # the success log line shows the shape, not kilobytes of base64
def encode_chunk(model_path: str, model_name: str, token_ids: list[list[int]], service_tier: str = "default",
                 deadline: float | None = None) -> dict:
    """Embed one chunk of a request in this worker's micro-batcher.

    Args:
        model_path: the model's ``local_path`` (the worker needs no database per chunk).
        model_name: the registry name, for logs.
        token_ids: ``n`` token-id lists, special tokens included.
        service_tier: ``"default"`` or ``"flex"`` (flex yields to waiting default work).
        deadline: Unix time (s) after which nobody waits for the result; the chunk is
            dropped if it has not started by then (the message also carries ``expires``).

    Returns `pack_vectors` of the ``(n, d)`` float32, L2-normalized vectors, in order.
    Raises ``TimeoutError`` when the deadline passes first; whatever the engine raised otherwise.
    """
    from .models import EmbeddingModel
    from .services import batcher_for

    timeout = None if deadline is None else deadline - time.time()
    if timeout is not None and timeout <= 0:
        raise TimeoutError(f"chunk of {len(token_ids)} inputs arrived after its deadline")
    model = EmbeddingModel(name=model_name, local_path=model_path)  # no database read per chunk
    future = batcher_for(model, log_level=BATCH_LOG_LEVEL).submit(token_ids, tier=service_tier)
    try:
        vectors = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()  # not run yet: the batcher skips it
        raise TimeoutError(f"chunk of {len(token_ids)} inputs passed its deadline") from None
    return pack_vectors(vectors)


@task_received.connect
def claim_chunk(sender=None, request=None, **kwargs) -> None:
    """Record which worker took each chunk (``task_received``: in the worker's main process, whose
    heartbeat says whether it is alive, for every pool), so the API can send the chunk again when
    this worker dies holding it (`embeddings.dispatch.encode_dispatched`)."""
    if request is None or request.name != "embeddings.encode_chunk":
        return
    from config.heartbeats import chunk_claim

    args = request.args or ()
    deadline = args[4] if len(args) > 4 and args[4] else time.time() + 300
    chunk_claim(request.id, hostname=request.hostname, ttl_s=int(deadline - time.time()) + 60)


@worker_init.connect
def warm_worker(sender=None, **kwargs) -> None:
    """Load and warm every active model before the worker consumes (``worker_init`` signal)."""
    from django.db import connections

    from .services import warm_up

    try:
        names = warm_up(load_engines=True, batch_log_level=BATCH_LOG_LEVEL)
    except Exception:  # noqa: BLE001 - a worker without a database still serves (loads models per chunk)
        logger.exception("Could not list the active models; they will load on their first chunk")
        names = []
    finally:
        connections.close_all()
    from .serving.engine import loaded_engines

    devices = sorted({f"{e.device} ({'fp16' if e.device.startswith('cuda') else 'fp32'})"
                      for e in loaded_engines()})
    logger.info("Embedding worker ready: models=%s device=%s", names, ", ".join(devices) or "none loaded")
