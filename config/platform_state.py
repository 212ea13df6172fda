"""The platform's shared state as operators see it: queues on the broker, workers and beat alive
(`config.heartbeats`), and the usage rollup's last run and lag. One reader for everything that
reports it: ``/metrics`` (`config.metrics.PlatformStateCollector`), the staff console's "Platform
status" page, and dispatch's refusals (`queue_states` for the depth).

Every message the platform publishes carries a ``sent_at`` header (Unix s, `stamp_sent_at`, a
``before_task_publish`` handler), so the age of the oldest message waiting in a queue is read from
the message itself: kombu's Redis transport pushes on the left and workers pop on the right, so
the oldest is the last element of each priority list.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from django.conf import settings

from . import heartbeats

logger = logging.getLogger(__name__)

# Name of the scheduled rollup job whose runs `config.heartbeats.job_record` keeps (billing.tasks).
ROLLUP_JOB = "billing.rollup_usage"
SENT_AT_HEADER = "sent_at"


def stamp_sent_at(sender=None, headers=None, **kwargs) -> None:
    """Celery ``before_task_publish`` handler: the message's ``sent_at`` header (Unix s), unless
    it has one. Connected in `config.celery` (every process that publishes: web, beat, workers)."""
    if headers is not None:
        headers.setdefault(SENT_AT_HEADER, time.time())


@dataclass(frozen=True)
class QueueState:
    """A queue on the broker: ``depth`` messages waiting (not yet taken by a worker), and the
    ``oldest_age_s`` of the oldest of them (seconds; 0.0 when empty or when no message has a
    ``sent_at`` header)."""

    depth: int
    oldest_age_s: float


def queue_states(queues: list[str], *, oldest: bool = True) -> dict[str, QueueState]:
    """`QueueState` of each of ``queues``: ``LLEN`` (and with ``oldest`` ``LINDEX -1``) over the lists
    kombu's Redis transport keeps per queue, one per priority step (named by kombu itself,
    ``Channel._q_for_pri``), in one pipeline on a connection of the Celery app's pool. Raises
    ``redis.RedisError`` or kombu's ``OperationalError``."""
    from celery import current_app

    with current_app.pool.acquire(block=True, timeout=1) as connection:
        channel = connection.default_channel
        pipe = channel.client.pipeline(transaction=False)
        steps = list(channel.priority_steps)
        for queue in queues:
            for step in steps:
                pipe.llen(channel._q_for_pri(queue, step))
                if oldest:
                    pipe.lindex(channel._q_for_pri(queue, step), -1)
        replies = iter(pipe.execute())
    now, states = time.time(), {}
    for queue in queues:
        depth, sent = 0, []
        for _ in steps:
            depth += int(next(replies))
            if oldest:
                sent_at = _sent_at(next(replies))
                if sent_at is not None:
                    sent.append(sent_at)
        states[queue] = QueueState(depth=depth, oldest_age_s=max(0.0, now - min(sent)) if sent else 0.0)
    return states


def _sent_at(raw) -> float | None:
    """The ``sent_at`` header of a raw kombu message (JSON), None when absent or unreadable."""
    if not raw:
        return None
    try:
        value = json.loads(raw).get("headers", {}).get(SENT_AT_HEADER)
        return float(value) if value is not None else None
    except (ValueError, TypeError, AttributeError):
        return None


@dataclass
class PlatformState:
    """What `platform_state` read. ``None`` fields could not be read (``errors`` says why).

    ``workers``: the heartbeat dicts of the workers alive; ``workers_per_queue``: how many consume
    each queue; ``queues``: `QueueState` per platform queue; ``beat_alive``; ``rollup_last_run``:
    Unix s the last rollup run finished; ``rollup_lag_s``: now - the newest instant the rollups
    cover (the start of the last run: every usage record created before it is rolled up).
    """

    workers: list[dict] | None = None
    workers_per_queue: dict[str, int] | None = None
    queues: dict[str, QueueState] | None = None
    beat_alive: bool | None = None
    rollup_last_run: float | None = None
    rollup_lag_s: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def platform_state() -> PlatformState:
    """Read the platform's state from Redis and the broker (never raises: what failed is in
    ``errors``). Queues: ``CELERY_PLATFORM_QUEUES``."""
    import redis
    from kombu.exceptions import OperationalError

    queues = list(settings.CELERY_PLATFORM_QUEUES)
    state = PlatformState()
    now = time.time()
    try:
        state.workers = heartbeats.workers_alive()
        state.workers_per_queue = heartbeats.per_queue(state.workers, queues)
        state.beat_alive = heartbeats.beat_state() is not None
        last = heartbeats.job_last_run(ROLLUP_JOB)
        if last:
            state.rollup_last_run = float(last["finished_at"])
            state.rollup_lag_s = max(0.0, now - float(last["started_at"]))
    except redis.RedisError as exc:
        state.errors.append(f"redis: {exc.__class__.__name__}")
    try:
        state.queues = queue_states(queues)
    except (redis.RedisError, OperationalError) as exc:
        state.errors.append(f"broker: {exc.__class__.__name__}")
    return state
