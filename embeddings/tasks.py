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

from celery import current_task, shared_task
from celery.signals import task_postrun, task_prerun, task_received, worker_init

from config import metrics
from config.logs import RequestLogContext, log_context_end, log_context_start

from .serving.transport import pack_vectors

logger = logging.getLogger(__name__)

# Level of the workers' per-batch log line (the API process logs its inline batches at DEBUG).
BATCH_LOG_LEVEL = logging.INFO


@shared_task(name="embeddings.encode_chunk", acks_late=True, reject_on_worker_lost=True, ignore_result=False,
             resultrepr_maxsize=64)  # the success log line shows the shape, not kilobytes of base64
def encode_chunk(model_path: str, model_name: str, token_ids: list[list[int]], service_tier: str = "default",
                 deadline: float | None = None, request_id: str = "") -> dict:
    """Embed one chunk of a request in this worker's micro-batcher.

    Args:
        model_path: the model's ``local_path`` (the worker needs no database per chunk).
        model_name: the registry name, for logs.
        token_ids: ``n`` token-id lists, special tokens included.
        service_tier: ``"default"`` or ``"flex"`` (flex yields to waiting default work).
        deadline: Unix time (s) after which nobody waits for the result; the chunk is
            dropped if it has not started by then (the message also carries ``expires``).
        request_id: the request the chunk belongs to (its log lines carry it; `chunk_log_context`).

    Returns `pack_vectors` of the ``(n, d)`` float32, L2-normalized vectors, in order, plus
    ``wait_s`` (seconds in this worker's batcher before its batch started) and ``encode_s``
    (seconds its batch spent in the model). Counts the chunk and its share of the batch's model
    time for this worker (``embeddings_worker_*``, `config.metrics`).
    Raises ``TimeoutError`` when the deadline passes first; whatever the engine raised otherwise.
    """
    from .models import EmbeddingModel
    from .services import batcher_for

    timeout = None if deadline is None else deadline - time.time()
    if timeout is not None and timeout <= 0:
        raise TimeoutError(f"chunk of {len(token_ids)} inputs arrived after its deadline")
    model = EmbeddingModel(name=model_name, local_path=model_path)  # no database read per chunk
    worker = getattr(current_task.request, "hostname", None) or "unknown"
    future = batcher_for(model, log_level=BATCH_LOG_LEVEL).submit(token_ids, tier=service_tier, tag=request_id)
    metrics.WORKER_IN_PROGRESS.labels(worker).inc()
    try:
        vectors = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()  # not run yet: the batcher skips it
        raise TimeoutError(f"chunk of {len(token_ids)} inputs passed its deadline") from None
    finally:
        metrics.WORKER_IN_PROGRESS.labels(worker).dec()
    metrics.WORKER_CHUNKS.labels(worker).inc()
    metrics.WORKER_ENCODE_SECONDS.labels(worker).inc(future.encode_s * future.share)
    packed = pack_vectors(vectors)
    # The timings before the bytes: Celery's success line shows the first 64 characters of this.
    return {"shape": packed["shape"], "wait_s": round(future.wait_s, 6), "encode_s": round(future.encode_s, 6),
            "b64": packed["b64"]}


# Log context of the chunk a pool thread runs (task id -> token), from prerun to postrun, so Celery's
# own lines about it ("succeeded in") carry its request id too.
_chunk_contexts: dict[str, object] = {}


@task_prerun.connect
def chunk_log_context(sender=None, task_id=None, task=None, args=None, kwargs=None, **extra) -> None:
    """``task_prerun`` (in the thread that runs the task): every line written while an
    ``embeddings.encode_chunk`` runs carries its ``request_id`` and ``model``."""
    if task is None or task.name != "embeddings.encode_chunk":
        return
    context = RequestLogContext(request_id=(kwargs or {}).get("request_id", ""),
                                model=args[1] if args and len(args) > 1 else "")
    _chunk_contexts[task_id] = log_context_start(context)


@task_postrun.connect
def chunk_log_context_end(sender=None, task_id=None, **extra) -> None:
    """``task_postrun``: back to no context in the pool thread."""
    token = _chunk_contexts.pop(task_id, None)
    if token is not None:
        log_context_end(token)


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
    metrics.WORKER_INFO.labels(getattr(sender, "hostname", None) or "unknown",
                               ", ".join(devices) or "none").set(1)
