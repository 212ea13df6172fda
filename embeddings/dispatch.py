"""Sending a large request's chunks to the workers and waiting for their vectors.

`encode_dispatched` cuts the token ids into chunks of at most ``EMBEDDINGS_CHUNK_TOKENS``
(`chunk_by_tokens`), refuses at once when no worker is alive for the queue or the queue is
deeper than ``EMBEDDINGS_MAX_QUEUE_DEPTH`` (`queue_check`, read at most once a second per
process), sends them by task name (the API never imports the workers' code), and re-sends a
chunk whose worker died holding it (by heartbeat, `config.heartbeats`). Errors are the domain
errors of `config.exceptions`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from config.exceptions import BrokerUnavailable, DeadlineExceeded, Overloaded, WorkerFailed, WorkersUnavailable
from config.metrics import phase_add

from .models import EmbeddingModel

logger = logging.getLogger(__name__)


def chunk_by_tokens(token_ids: list[list[int]], budget: int) -> list[list[list[int]]]:
    """Cut ``token_ids`` into consecutive chunks of at most ``budget`` tokens each (an input
    longer than the budget is a chunk of its own). Concatenated, the chunks are the input."""
    chunks: list[list[list[int]]] = []
    current: list[list[int]] = []
    used = 0
    for ids in token_ids:
        if current and used + len(ids) > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(ids)
        used += len(ids)
    if current:
        chunks.append(current)
    return chunks


# How often (s) a process re-reads worker liveness and queue depth (`queue_check`): admission to
# the queue costs no Redis round trip per request, and a dead or overloaded queue shows within 1 s.
QUEUE_STATE_SECONDS = 1.0
# How often (s) a waiting request checks that the workers holding its chunks are still alive.
OWNER_CHECK_SECONDS = 1.0
# A chunk nobody claimed while its queue stayed empty this long (s) was lost with a worker (see
# `_orphaned`); a live worker claims a chunk within milliseconds of taking it.
UNCLAIMED_GRACE_SECONDS = 5.0
# Retry-After (s) of the 503s: a worker that starts shows within one heartbeat interval (5 s).
WORKERS_RETRY_AFTER_SECONDS = 5
BROKER_RETRY_AFTER_SECONDS = 2


@dataclass
class _QueueState:
    alive: int
    depth: int
    at: float


_queue_states: dict[str, _QueueState] = {}


def queue_depth(queue: str) -> int:
    """Chunks waiting in ``queue`` on the broker (not yet taken by a worker;
    `config.platform_state.queue_states`). Raises ``redis.RedisError`` or kombu's ``OperationalError``."""
    from config.platform_state import queue_states

    return queue_states([queue], oldest=False)[queue].depth


def queue_check(queue: str) -> None:
    """Refuse work for ``queue`` that cannot be done in time, before sending any: raises
    `WorkersUnavailable` when no worker alive (by heartbeat, `config.heartbeats`) consumes it, and
    `Overloaded` when more than ``EMBEDDINGS_MAX_QUEUE_DEPTH`` chunks wait in it (0: no bound).
    Both are read at most every `QUEUE_STATE_SECONDS` per process. When Redis cannot be read
    the work is sent (sending will report the broker)."""
    import redis
    from kombu.exceptions import OperationalError

    from config import heartbeats

    now = time.monotonic()
    state = _queue_states.get(queue)
    if state is None or now - state.at > QUEUE_STATE_SECONDS:
        try:
            alive = heartbeats.per_queue(heartbeats.workers_alive(), [queue])[queue]
            depth = queue_depth(queue) if settings.EMBEDDINGS_MAX_QUEUE_DEPTH else 0
        except (redis.RedisError, OperationalError) as exc:
            logger.warning("Worker liveness of queue %s unreadable (%s); sending anyway", queue, exc)
            return
        state = _queue_states[queue] = _QueueState(alive, depth, now)
    if not state.alive:
        raise WorkersUnavailable(queue=queue, retry_after_s=WORKERS_RETRY_AFTER_SECONDS)
    bound = settings.EMBEDDINGS_MAX_QUEUE_DEPTH
    if bound and state.depth > bound:
        raise Overloaded(queue=queue, depth=state.depth, retry_after_s=WORKERS_RETRY_AFTER_SECONDS)


class _Chunk:
    """One chunk of a request and every task sent for it (the first, and any re-dispatch)."""

    def __init__(self, index: int, token_ids: list[list[int]]):
        self.index, self.token_ids = index, token_ids
        self.results: list = []
        self.value = None
        self.unclaimed_since: float | None = None  # monotonic s: unclaimed while its queue was empty

    def poll(self):
        """The packed vectors of the first task of this chunk that finished, else None; raises what
        a failed task raised."""
        for result in self.results:
            if result.ready():
                return result.get(propagate=True)
        return None


def encode_dispatched(*, model: EmbeddingModel, token_ids: list[list[int]], service_tier: str = "default",
                      request_id: str = "", timeout: float | None = None) -> np.ndarray:
    """Send ``token_ids`` to the ``embeddings`` queue (``embeddings-flex`` for flex) in chunks of
    ``EMBEDDINGS_CHUNK_TOKENS`` tokens, wait for all of them until the deadline
    (``timeout`` s, default ``EMBEDDINGS_DISPATCH_TIMEOUT``), and merge in input order.

    Before sending, `queue_check` refuses at once when no worker is alive for the queue or the
    queue is too deep. While waiting, every `OWNER_CHECK_SECONDS` the chunks whose worker (the
    one that claimed the task, `config.heartbeats.chunk_claim`) is no longer alive, or that
    vanished unclaimed (`_orphaned`), are sent again under a new task id; the first result of a
    chunk wins. A SIGKILLed worker stops being
    alive when its heartbeat key expires (15 s), so such a request finishes within its normal
    time plus 15 s, and is metered once (by the caller, after this returns).

    Chunks carry ``expires`` = the deadline: a worker drops those the caller stopped waiting
    for (and the redelivered messages of a dead worker, which come after it). Results are
    deleted once read.

    The request's ``queue_wait`` phase (`config.metrics`) is the time waited less the longest time a
    chunk's batch spent in the model (the workers report it with the vectors).

    Returns ``(n, model.dimensions)`` float32. Raises (`config.exceptions`)
    `WorkersUnavailable`, `Overloaded`, `BrokerUnavailable` (the broker cannot be reached),
    `DeadlineExceeded` (the deadline passed), `WorkerFailed` (a worker raised).
    """
    from celery import current_app
    from celery.exceptions import TaskRevokedError
    from celery.exceptions import TimeoutError as CeleryTimeoutError
    from kombu.exceptions import OperationalError

    from .serving.transport import unpack_vectors

    timeout = settings.EMBEDDINGS_DISPATCH_TIMEOUT if timeout is None else timeout
    queue = settings.EMBEDDINGS_FLEX_QUEUE if service_tier == "flex" else settings.EMBEDDINGS_QUEUE
    queue_check(queue)
    started = time.monotonic()
    deadline = time.time() + timeout
    chunks = [_Chunk(i, c) for i, c in enumerate(chunk_by_tokens(token_ids, settings.EMBEDDINGS_CHUNK_TOKENS))]

    def send(chunk: _Chunk) -> None:
        # By name (`embeddings.tasks.encode_chunk`): the API does not import the workers' code.
        chunk.results.append(current_app.send_task(
            "embeddings.encode_chunk", args=(model.local_path, model.name, chunk.token_ids, service_tier, deadline),
            kwargs={"request_id": request_id}, queue=queue, expires=max(0.01, deadline - time.time()),
            # What logs and Flower show of the message: never the token ids (the inputs, encoded).
            argsrepr=f"({model.name!r}, <{len(chunk.token_ids)} inputs>, {service_tier!r})", kwargsrepr=request_id))

    try:
        for chunk in chunks:
            send(chunk)
        next_check = time.monotonic() + OWNER_CHECK_SECONDS
        while pending := [c for c in chunks if c.value is None]:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise CeleryTimeoutError()
            if time.monotonic() >= next_check:  # once a second: any task done, any worker gone?
                for chunk in pending:
                    chunk.value = chunk.poll()
                for chunk in _orphaned([c for c in pending if c.value is None], queue):
                    logger.warning("Request %s: the worker holding chunk %d is gone; sending it again",
                                   request_id, chunk.index)
                    chunk.unclaimed_since = None
                    send(chunk)
                next_check = time.monotonic() + OWNER_CHECK_SECONDS
                continue
            try:  # wait on one task (Celery's result backend wakes us), at most until the next check
                pending[0].value = pending[0].results[-1].get(
                    timeout=max(0.01, min(left, next_check - time.monotonic())), propagate=True)
            except CeleryTimeoutError:
                pass
        parts = [unpack_vectors(chunk.value) for chunk in chunks]
        encode_s = max(float(chunk.value.get("encode_s", 0.0)) for chunk in chunks)
        phase_add("queue_wait", max(0.0, time.monotonic() - started - encode_s))
    except OperationalError as exc:
        logger.warning("Broker unreachable for request %s: %s", request_id, exc)
        raise BrokerUnavailable(retry_after_s=BROKER_RETRY_AFTER_SECONDS) from exc
    except (CeleryTimeoutError, TaskRevokedError, TimeoutError) as exc:
        logger.warning("Request %s: %d chunks not done within %.1f s", request_id, len(chunks), timeout)
        raise DeadlineExceeded(request_id=request_id, timeout_s=timeout) from exc
    except Exception as exc:
        logger.exception("Worker failed on request %s", request_id)
        raise WorkerFailed(request_id=request_id) from exc
    finally:
        for chunk in chunks:
            for result in chunk.results:
                try:
                    result.forget()
                except Exception:  # noqa: BLE001 - results expire anyway
                    pass
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _orphaned(pending: list[_Chunk], queue: str) -> list[_Chunk]:
    """Of ``pending``, the chunks whose last task will not finish: it was claimed by a worker that
    is no longer alive, or nobody claimed it although ``queue`` has been empty for
    `UNCLAIMED_GRACE_SECONDS` (kombu's Redis transport pops a message before the worker sees it:
    a worker killed in between took it without a claim). ``[]`` when Redis cannot be read."""
    import redis
    from kombu.exceptions import OperationalError

    from config import heartbeats

    try:
        alive = heartbeats.worker_keys_alive()
        owners = heartbeats.chunk_owners([c.results[-1].id for c in pending])
        empty = None if all(owners) else queue_depth(queue) == 0
    except (redis.RedisError, OperationalError):
        return []
    now, orphaned = time.monotonic(), []
    for chunk, owner in zip(pending, owners):
        if owner is not None:
            if owner not in alive:
                orphaned.append(chunk)
        elif not empty:
            chunk.unclaimed_since = None  # still waiting in the queue
        elif chunk.unclaimed_since is None:
            chunk.unclaimed_since = now
        elif now - chunk.unclaimed_since >= UNCLAIMED_GRACE_SECONDS:
            orphaned.append(chunk)
    return orphaned
