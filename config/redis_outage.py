"""Redis outages logged once when they start and once when they end, with counts.

Every place that talks to Redis and survives its absence (the django-redis cache through
`config.cache.RedisCache`, the admission store in `limits.store`, the failed-key throttle in
`accounts.throttling`, the heartbeats in `config.heartbeats`) reports each operation to the
`OutageLog` of its server: `OutageLog.failed` when Redis could not be reached, `OutageLog.succeeded`
when it answered. The first failure logs one WARNING ("Redis at ... unavailable since ..."), the
first success after it logs one WARNING ("Redis at ... back after 10.2 s, N operations degraded
(admission 566, cache 1140)"), and an outage that lasts longer logs a reminder every
`REMIND_SECONDS`; nothing is logged per operation, and no traceback (a refused connection says
all there is to say). The state is per process: each API process or worker logs its own view.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from urllib.parse import urlsplit

from django.conf import settings

logger = logging.getLogger(__name__)

# Seconds between "still unavailable" lines of one long outage.
REMIND_SECONDS = 60.0


def redis_label(url: str) -> str:
    """``url`` as a log may show it: scheme, host, port or socket path and db; never a password."""
    parts = urlsplit(url)
    where = parts.path if parts.scheme == "unix" else (parts.hostname or "") + (
        f":{parts.port}" if parts.port else "") + (parts.path or "")
    return f"{parts.scheme}://{where}"


class OutageLog:
    """The outage state of one dependency, shared by the threads of a process.

    ``failed(operation, exc)`` counts one degraded operation (``operation``: a short name such
    as ``"cache"``) and logs the start of an outage; ``succeeded()`` logs its end with the
    duration (s) and counts. ``succeeded()`` outside an outage is one attribute read (no lock),
    so callers may report every successful round trip.
    """

    def __init__(self, name: str, log: logging.Logger = logger):
        self.name = name
        self.log = log
        self._lock = threading.Lock()
        self._since: float | None = None  # time.monotonic() of the first failure
        self._since_wall = 0.0
        self._reminded = 0.0
        self._counts: Counter[str] = Counter()

    @property
    def down(self) -> bool:
        """True between a failure and the next success."""
        return self._since is not None

    def failed(self, operation: str, exc: BaseException | None = None) -> None:
        """Count a degraded ``operation``; log the outage's start (first failure) or a reminder."""
        now = time.monotonic()
        with self._lock:
            self._counts[operation] += 1
            if self._since is None:
                self._since, self._since_wall, self._reminded = now, time.time(), now
                self.log.warning("%s unavailable since %s (%s: %s); operations degrade until it is back",
                                 self.name, _utc(self._since_wall), operation, _reason(exc))
            elif now - self._reminded >= REMIND_SECONDS:
                self._reminded = now
                self.log.warning("%s still unavailable after %.0f s, %s so far", self.name, now - self._since,
                                 self._summary())

    def succeeded(self) -> None:
        """Log the end of the outage, if one is under way (one line, with its counts)."""
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            self.log.warning("%s back after %.1f s (down since %s), %s", self.name,
                             time.monotonic() - self._since, _utc(self._since_wall), self._summary())
            self._since = None
            self._counts.clear()

    def _summary(self) -> str:
        total = sum(self._counts.values())
        parts = ", ".join(f"{name} {count}" for name, count in sorted(self._counts.items()))
        return f"{total} operations degraded ({parts})"


def _utc(unix: float) -> str:
    return datetime.fromtimestamp(unix, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}"


@functools.cache
def redis_outage_for(url: str) -> OutageLog:
    """The process's `OutageLog` of the Redis server at ``url`` (one per server, so an outage of one
    is not ended by the answers of another)."""
    return OutageLog(f"Redis at {redis_label(url)}")


def redis_outage() -> OutageLog:
    """The `OutageLog` of ``REDIS_URL`` (cache, heartbeats, the failed-key throttle)."""
    return redis_outage_for(settings.REDIS_URL)
