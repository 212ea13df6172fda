"""Liveness of the platform's background processes, kept in Redis: one definition of "alive".

* **Workers**: every Celery worker process writes ``platform:worker:<hostname>:<pid>`` (JSON:
  hostname, pid, queues it consumes, started and last-seen Unix times) every `INTERVAL_SECONDS`
  from its own timer (`WorkerHeartbeat`, a worker bootstep), with a TTL of `TTL_SECONDS`, and
  its key's last-seen time in the sorted set ``platform:workers`` (so readers never scan the
  keyspace). A worker is **alive** while its key exists: it wrote within the last
  `TTL_SECONDS` (three missed beats). A worker that stops cleanly deletes its key at once.
* **Beat**: `BeatScheduler` (Celery's ``PersistentScheduler``) writes ``platform:beat`` on
  its ticks, at most every `INTERVAL_SECONDS`, with the same TTL.
* **Runs of scheduled jobs** (`job_record`): ``platform:job:<name>`` holds the last run's
  start and end (Unix s) and what it covered; no TTL (the last run is a fact, not liveness).

Readers (`workers_alive`, `beat_state`, `job_last_run`) never raise on a Redis error: they
return what they could read and the caller reports Redis itself.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time

import redis
from celery import bootsteps
from celery.beat import PersistentScheduler
from django.conf import settings

from .redis_outage import redis_outage

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0
TTL_SECONDS = 15  # three missed beats
PREFIX = "platform"
WORKERS_INDEX = f"{PREFIX}:workers"  # sorted set: worker key -> last-seen Unix time
CHUNK_PREFIX = f"{PREFIX}:chunk"  # platform:chunk:<task id> -> the worker key that took it

@functools.cache  # one client per URL; building one twice in a race is harmless (no I/O until used)
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def client() -> redis.Redis:
    """This process's client for ``REDIS_URL`` (1 s socket timeouts: a health probe must not hang)."""
    return _client_for(settings.REDIS_URL)


def _write(key: str, value: dict, ttl: int | None) -> None:
    """SET ``key``; a Redis error is counted in the outage log (`config.redis_outage`), not raised."""
    try:
        client().set(key, json.dumps(value), ex=ttl)
    except redis.RedisError as exc:
        redis_outage().failed("heartbeat", exc)
        return
    redis_outage().succeeded()


def _read_json(raw) -> dict | None:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Worker bootstep: writes this worker's heartbeat every `INTERVAL_SECONDS` on the worker's
    timer, and deletes it on a clean stop."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.tref = None
        self.key = ""
        self.info: dict = {}

    def start(self, worker) -> None:
        queues = sorted(worker.app.amqp.queues.consume_from or worker.app.amqp.queues)
        self.key = worker_key(worker.hostname)
        self.info = {"hostname": worker.hostname, "pid": os.getpid(), "host": socket.gethostname(),
                     "queues": queues, "started_at": time.time()}
        self.beat()
        self.tref = worker.timer.call_repeatedly(INTERVAL_SECONDS, self.beat)

    def beat(self) -> None:
        now = time.time()
        _write(self.key, {**self.info, "last_seen": now}, TTL_SECONDS)
        try:
            client().zadd(WORKERS_INDEX, {self.key: now})
        except redis.RedisError:
            pass

    def stop(self, worker) -> None:
        if self.tref is not None:
            self.tref.cancel()
        try:
            client().delete(self.key)
            client().zrem(WORKERS_INDEX, self.key)
        except redis.RedisError:
            pass


class BeatScheduler(PersistentScheduler):
    """Celery beat's persistent scheduler that also writes beat's heartbeat on its ticks."""

    _last_beat = 0.0

    def tick(self, *args, **kwargs):
        now = time.time()
        if now - self._last_beat >= INTERVAL_SECONDS:
            self._last_beat = now
            _write(f"{PREFIX}:beat", {"pid": os.getpid(), "host": socket.gethostname(), "last_seen": now},
                   TTL_SECONDS)
        # Wake up at least every INTERVAL_SECONDS so the heartbeat stays fresh between jobs.
        return min(super().tick(*args, **kwargs), INTERVAL_SECONDS)


def worker_key(hostname: str, pid: int | None = None) -> str:
    """The heartbeat key of the worker ``hostname`` (Celery's node name), process ``pid`` (default:
    this process)."""
    return f"{PREFIX}:worker:{hostname}:{os.getpid() if pid is None else pid}"


def chunk_claim(task_id: str, *, hostname: str, ttl_s: int) -> None:
    """Record that this worker process (``hostname``) took the task ``task_id``, for ``ttl_s``
    seconds, so the caller can tell when the worker holding its chunk is no longer alive
    (`chunk_owners`). Never raises (a lost claim only means no early re-dispatch)."""
    try:
        client().set(f"{CHUNK_PREFIX}:{task_id}", worker_key(hostname), ex=max(1, int(ttl_s)))
    except redis.RedisError as exc:
        logger.warning("claim of chunk %s not written: %s", task_id, exc)


def chunk_unclaim(task_id: str) -> None:
    """Forget the claim of ``task_id`` (`chunk_claim`): it is sent again, and the next worker to take
    it claims it anew. Never raises (a claim left behind only means one more early re-dispatch)."""
    try:
        client().delete(f"{CHUNK_PREFIX}:{task_id}")
    except redis.RedisError as exc:
        logger.warning("claim of chunk %s not forgotten: %s", task_id, exc)


def chunk_owners(task_ids: list[str]) -> list[str | None]:
    """The worker key that took each task (`chunk_claim`), None where none did (yet). Raises
    ``redis.RedisError``."""
    if not task_ids:
        return []
    return [raw.decode() if raw else None for raw in client().mget([f"{CHUNK_PREFIX}:{t}" for t in task_ids])]


def worker_keys_alive() -> set[str]:
    """The keys of the workers alive now (heartbeat key present). Raises ``redis.RedisError``."""
    keys = client().zrangebyscore(WORKERS_INDEX, time.time() - TTL_SECONDS, "+inf")
    values = client().mget(keys) if keys else []
    return {key.decode() for key, value in zip(keys, values) if value}


def workers_alive() -> list[dict]:
    """Every worker alive now (see module docstring), each its heartbeat dict. Raises
    ``redis.RedisError`` when Redis cannot be read."""
    now = time.time()
    client().zremrangebyscore(WORKERS_INDEX, "-inf", now - TTL_SECONDS)  # long gone: forget
    keys = client().zrangebyscore(WORKERS_INDEX, now - TTL_SECONDS, "+inf")
    values = client().mget(keys) if keys else []
    return [info for info in map(_read_json, values) if info]


def per_queue(workers: list[dict], queues: list[str]) -> dict[str, int]:
    """``{queue: how many of ``workers`` (`workers_alive`) consume it}``, every one of ``queues``
    listed (0 when none), plus any other queue a worker consumes."""
    counts = dict.fromkeys(queues, 0)
    for info in workers:
        for queue in info.get("queues", []):
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def beat_state() -> dict | None:
    """Beat's last heartbeat (``pid``, ``host``, ``last_seen``), None when beat is not alive.
    Raises ``redis.RedisError``."""
    return _read_json(client().get(f"{PREFIX}:beat"))


def job_record(name: str, *, started_at: float, **details) -> None:
    """Record a finished run of the scheduled job ``name`` (start and end as Unix s, plus
    ``details``). Never raises."""
    _write(f"{PREFIX}:job:{name}", {"started_at": started_at, "finished_at": time.time(), **details}, None)


def job_last_run(name: str) -> dict | None:
    """The last run `job_record` stored for ``name``, or None. Raises ``redis.RedisError``."""
    return _read_json(client().get(f"{PREFIX}:job:{name}"))
