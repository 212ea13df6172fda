"""Admission: exact token reservations against every applicable limit, atomically (the steps:
`admission_reserve`, settle/refund through `Reservation`, `admission_reconcile`). The store and
its Lua script are in `store`, the counters a request is checked against in `checks`, the
429s and ``x-ratelimit-*`` headers in `headers`, the DRF mixin in `api`.

Step 4 of an embeddings request (`embeddings.views.EmbeddingsView.post`). Once a
request is tokenized its exact token count is known; `admission_reserve` reserves
it against all the limits that apply to the key, at once, in one atomic step:

* the **monthly token quota** (hard) of the organization and of the project:
  counters per calendar month (UTC) that count every request (limited or not, so a
  limit set later starts from the true usage), rebuilt from `billing.UsageRecord`
  (the source of truth) when missing;
* **RPM / TPM** of the organization, the project, the key and the project's limits for the
  request's model (OpenAI's project rate limits): token buckets that
  hold ``limit`` units and refill continuously at ``limit`` per 60 s (OpenAI's
  semantics: ``x-ratelimit-reset-*`` is the time until the bucket is full again).

Either everything is reserved or nothing is (a rejected request reserves nothing).
A request that fails after admission is refunded (`Reservation.refund`); one that
succeeded is settled after its usage record is written (`Reservation.settle`).

The store is Redis (``ADMISSION_REDIS_URL``, default ``REDIS_URL``; the embedded default's
private Valkey included): one Lua script call per step (`ADMISSION_LUA`), time from Redis
``TIME`` so every API server shares one clock. Shared by all API processes and machines
(a single Redis, not a cluster).

Counter hashes (monthly): ``u`` tokens used this month including reservations in
flight, ``r`` tokens reserved in flight, ``s`` tokens settled (monotonic), ``g``
the generation (new on every rebuild from the database). A refund applies only to
the generation it reserved in; a settle whose generation is gone (Redis lost the
counter and it was rebuilt while the request ran) adds its tokens again, so the
counter can be high (safe) but never low once that request is done.

Limits are read from Postgres (`accounts.models.Limit`) and kept per process; every change
sets a new *limits version* in the store, and each reservation passes the version its limits
were read under: the script refuses (``stale``) when it is not current, so a change applies to
the very next request in every process without a cache lookup per request.

The same call confirms a key its process took from memory (``confirm-reserve``;
`accounts.authentication.APIKeyAuthentication` with ``remember``): nothing is reserved, and
`KeyUnconfirmed` raised, unless the key's cache entry is still the one the process read and its
client address is under its failed-authentication limit.

Redis down: ``ADMISSION_REDIS_DOWN_POLICY`` = ``closed`` (default: 503 with
``Retry-After``) or ``open`` (admit without limits, log a warning). Never a 500.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone

from django.conf import settings

from config.periods import month_bounds

from .scopes import Scope
from .selectors import limits_for_key, usage_tokens_between

logger = logging.getLogger(__name__)

from .checks import Check, _args, build_checks, monthly_key
from .headers import BucketState, _rejection, ratelimit_headers, redis_down_error
from .store import MAX_REBUILD_ROUNDS, MONTHLY_TTL_GRACE_MS, AdmissionUnavailable, admission_backend

# ---------------------------------------------------------------------------------------------------
# The steps.
# ---------------------------------------------------------------------------------------------------

# Settles of requests that succeeded run here, while their responses are rendered and sent
# (`Reservation.__exit__`). Its queue is drained when the interpreter exits (concurrent.futures
# joins its threads at exit); a SIGKILL loses what is still queued.
_settler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="admission-settle")
# Settles queued and not yet run. One settle thread serializes what every request thread adds, so
# while the store answers slowly (each settle waits up to ADMISSION_REDIS_TIMEOUT) the queue could
# grow without end; past `SETTLE_QUEUE_MAX` a request settles in its own thread instead, before its
# response is sent (backpressure: it waits for the store, as admission did; memory stays bounded).
SETTLE_QUEUE_MAX = 1000
_settles_queued = 0
_settles_lock = threading.Lock()


@dataclass
class Reservation:
    """What `admission_reserve` reserved; use as a context manager around encode + meter:
    an exception refunds it (and propagates), a clean exit settles it, on this process's settle
    thread: the request does not wait for it (unless `SETTLE_QUEUE_MAX` settles are already
    waiting for that thread: then in the request's own thread, before its response is sent). A
    settle only moves the tokens from ``r`` (in flight) to ``s`` (settled) of the counters it
    reserved in, so nothing a request is checked against waits for it. One lost (an outage, or a SIGKILL with settles still queued) leaves
    ``r`` high: `admission_reconcile` then keeps those tokens on top of the database's sum, so
    the counter errs high until the month ends, never low. That is one Redis round trip fewer per
    request (~0.9 ms of a one-text request on 2 cores, ``bench/request_phases.py``).

    ``headers`` are the ``x-ratelimit-*`` headers of the response. ``reserved`` is False
    when the store was down and the policy is ``open`` (nothing to refund or settle).
    """

    monthly: list[Check]
    buckets: list[Check]
    generations: list[str]
    headers: dict[str, str]
    reserved: bool = True
    done: bool = field(default=False, repr=False)

    def _finish(self, op: str, backend=None) -> None:
        if not self.reserved or self.done:
            return
        self.done = True
        checks = self.monthly + self.buckets
        extras = self.generations + [""] * len(self.buckets)
        try:
            (backend or admission_backend()).run(op, [c.key for c in checks], len(self.monthly),
                                                 _args(checks, extras))
        except AdmissionUnavailable:
            # Refund lost: counters stay high (safe side). Settle lost: only `r` stays high. The
            # outage itself is logged once, with counts, by config.redis_outage (not per request).
            logger.debug("Admission store unreachable: %s of a reservation not recorded", op)

    def refund(self) -> None:
        """Give back everything reserved (idempotent). Counters are as before the request."""
        self._finish("refund")

    def settle(self) -> None:
        """Mark the reservation as used (after the usage record is written; idempotent)."""
        self._finish("settle")

    def __enter__(self) -> "Reservation":
        return self

    def _settle_logged(self, backend) -> None:
        """`settle` where an error has no caller to reach (on the settle thread, or in a request's
        thread past `SETTLE_QUEUE_MAX`): it is logged. Counts the settle off the queue."""
        global _settles_queued
        try:
            self._finish("settle", backend)
        except Exception:  # noqa: BLE001 - nobody else would hear of it
            logger.exception("Settling a reservation failed")
        finally:
            with _settles_lock:
                _settles_queued -= 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        global _settles_queued
        if exc_type is None:
            if self.reserved and not self.done:
                backend = admission_backend()  # the store it reserved in, whatever settings say later
                with _settles_lock:  # counted down by _settle_logged, wherever it runs
                    behind = _settles_queued >= SETTLE_QUEUE_MAX
                    _settles_queued += 1
                if behind:  # the settle thread is that far behind: this one runs here
                    self._settle_logged(backend)
                    return False
                try:
                    _settler.submit(self._settle_logged, backend)
                except RuntimeError:  # the interpreter is shutting down: no more threads
                    self._settle_logged(backend)
        else:
            self.refund()
        return False


def settles_wait(timeout: float | None = 10.0) -> None:
    """Block until every settle queued before this call has run (the settle thread runs them in
    order): for a reader that must see the counters as settled, e.g. a test comparing them.
    Raises ``concurrent.futures.TimeoutError`` after ``timeout`` seconds."""
    _settler.submit(lambda: None).result(timeout=timeout)


def limits_version_key() -> str:
    """Store key of the limits version (a token that changes on every limit change)."""
    return f"{settings.ADMISSION_KEY_PREFIX}:limits-version"


class _LimitsCache:
    """This process's copy of the limits per scope (organization, project and key ids) and model,
    valid while the store's limits version is the one it was read under (checked atomically by every
    reservation) and for at most ``LIMITS_CACHE_SECONDS``."""

    def __init__(self):
        self.version: str | None = None
        self.entries: dict[tuple[int, int, int, str], tuple[str, float, list]] = {}

    def reset(self, version: str | None) -> None:
        self.version, self.entries = version, {}


_limits_cache = _LimitsCache()


def _applied_limits(backend, key, model: str) -> tuple[list, str]:
    """``(applied limits, version)`` for ``key`` and ``model``: from this process's cache when it is current,
    else read from the database under the store's current version. Version ``""`` (the embedded
    default, ``LIMITS_CACHE_SECONDS = 0``): read from the database every time, nothing to check."""

    ttl = settings.LIMITS_CACHE_SECONDS
    if not ttl:
        return limits_for_key(key=key, model=model), ""
    cache = _limits_cache
    # The key's whole scope: a key id alone is not one (batches of deleted keys all run as key 0).
    scope = (key.organization_id, key.project_id, key.key_id, model)
    entry = cache.entries.get(scope)
    now = time.monotonic()
    if entry and entry[0] == cache.version and entry[1] > now:
        return entry[2], entry[0]
    version = backend.run("version", [limits_version_key()], 0, [])
    applied = limits_for_key(key=key, model=model)  # read after learning the version: never newer-version-stale
    if version != cache.version:
        cache.reset(version)
    cache.entries[scope] = (version, now + ttl, applied)
    return applied, version


def admission_limits_changed() -> None:
    """Tell every process that limits changed (a new limits version): their next reservation
    re-reads the limits from the database. Call after the change is committed (and, to be safe
    inside a transaction, also before). A store that is down is logged, not raised: processes
    then pick the change up within ``LIMITS_CACHE_SECONDS``."""
    try:
        admission_backend().run("bump", [limits_version_key()], 0, [secrets.token_hex(8)])
    except AdmissionUnavailable as exc:
        logger.warning("Limits changed but the admission store is unreachable (%s); processes see the "
                       "change within LIMITS_CACHE_SECONDS", exc)


def _rebuild_missing(backend, checks: list[Check], month_start: datetime, month_end: datetime) -> None:
    """Recreate missing monthly counters from `billing.UsageRecord` (the source of truth).

    Under a lock per counter (shared by all processes with Redis) so that one process reads
    the database; creation is "only if still missing", so a counter that reservations are
    already using is never overwritten. While a counter is missing nothing is admitted
    against it (the script answers ``missing``), so no reservation made after the loss can be
    lost. (Requests that were in flight when Redis lost the counter are not in the usage
    table yet; each adds its tokens back when it settles, so until they finish the counter
    reads low by at most the tokens they had in flight. Redis persistence avoids even that.)
    """

    expire_at = int(month_end.timestamp() * 1000) + MONTHLY_TTL_GRACE_MS
    for check in checks:
        with backend.lock(f"{check.key}:rebuild"):
            if backend.read([check.key])[0]:
                continue
            used = usage_tokens_between(scope=check.scope, start=month_start, end=month_end)
            created = backend.run("init", [check.key], 1, [expire_at, used, secrets.token_hex(8)])
            if created:
                logger.info("Rebuilt monthly counter %s from the usage tables: %s tokens", check.key, used)


class KeyUnconfirmed(Exception):
    """`admission_reserve` could not confirm the key it was given as taken from a process's memory
    (its ``key_confirmation``): the key changed, its client address is over its failed-authentication
    limit, or the store is unreachable. Nothing was reserved; the caller authenticates the request
    with a round trip and tries again (`embeddings.views.EmbeddingsView`)."""


def admission_reserve(*, key, tokens: int, service_tier: str, model: str = "",
                      key_confirmation=None) -> Reservation:
    """Reserve ``tokens`` (the request's exact token count) and one request against every limit
    that applies to ``key`` (an `accounts.selectors.ResolvedKey`) and ``model`` (the canonical name
    of the requested model: its project's limits for that model apply too), atomically.

    ``key_confirmation``: an `accounts.authentication.KeyConfirmation` when ``key`` was taken from
    the process's memory; the same round trip then checks it first (raises `KeyUnconfirmed`).

    Raises:
        KeyUnconfirmed: ``key_confirmation`` failed, or the store is down while one was given.
        RateLimitError: 429 ``insufficient_quota`` (monthly quota; type ``insufficient_quota``)
            or ``rate_limit_exceeded`` (RPM: type ``requests``; TPM: type ``tokens``), with
            ``Retry-After`` (seconds) / ``retry-after-ms`` and the ``x-ratelimit-*`` headers.
            Nothing is reserved then.
        ServiceUnavailableError: 503 with ``Retry-After`` when the store is down and
            ``ADMISSION_REDIS_DOWN_POLICY`` is ``closed``.
    """

    month_start, month_end = month_bounds(datetime.now(dt_timezone.utc))
    backend = admission_backend()
    try:
        for _ in range(MAX_REBUILD_ROUNDS):
            applied, version = _applied_limits(backend, key, model)
            monthly, buckets = build_checks(applied=applied, tokens=tokens, service_tier=service_tier,
                                            month_start=month_start)
            checks = monthly + buckets
            keys = [c.key for c in checks] + ([limits_version_key()] if version else [])
            args = _args(checks, [""] * len(checks))
            op = "reserve"
            if key_confirmation is not None:
                op = "confirm-reserve"
                keys += [key_confirmation.entry_key, key_confirmation.failures_key]
                args += [key_confirmation.entry, key_confirmation.failures_limit]
            result = backend.run(op, keys, len(monthly), args, version)
            if result[0] == "unconfirmed":
                raise KeyUnconfirmed()
            if result[0] == "stale":  # limits changed since this process read them
                _limits_cache.reset(result[1])
            elif result[0] == "missing":
                _rebuild_missing(backend, [monthly[i - 1] for i in result[1]], month_start, month_end)
            else:
                break
        else:
            raise AdmissionUnavailable("limits or monthly counters kept changing")
    except AdmissionUnavailable as exc:
        if key_confirmation is not None:  # no store to confirm the key: authenticate it first
            raise KeyUnconfirmed() from exc
        monthly, buckets = build_checks(applied=limits_for_key(key=key, model=model), tokens=tokens,
                                        service_tier=service_tier, month_start=month_start)
        if settings.ADMISSION_REDIS_DOWN_POLICY == "open":
            logger.debug("Admission store unreachable (%s); admitting without limits (policy: open)", exc)
            return Reservation(monthly, buckets, [], ratelimit_headers(
                [BucketState(c, 0.0) for c in buckets], known=False), reserved=False)
        # Logged once per outage (config.redis_outage), not per request.
        logger.debug("Admission store unreachable (%s); refusing (policy: closed)", exc)
        raise redis_down_error() from exc

    status, reject, retry = result[0], int(result[1]), float(result[2])
    values = [float(v) for v in result[3:3 + len(checks)]]
    generations = list(result[3 + len(checks):])
    states = [BucketState(c, values[len(monthly) + i]) for i, c in enumerate(buckets)]
    headers = ratelimit_headers(states)
    if status == "rejected":
        _remember_rpm_full(key, checks[reject - 1], retry)
        raise _rejection(checks[reject - 1], values[reject - 1], retry, month_end, headers)
    return Reservation(monthly, buckets, generations, headers)


# key id -> time.monotonic() until which an RPM bucket of the key is known to be full (a store
# call said so: "retry in ..."). Buckets only fill up between refills (every process adds, none
# takes away), so until then every request of the key gets 429.
_rpm_full_until: dict[int, float] = {}
_RPM_FULL_MAX_KEYS = 10_000  # bound on this process's memory of them


def _remember_rpm_full(key, check: Check, retry_ms: float) -> None:
    if check.kind != "rpm" or retry_ms <= 0:
        return
    if len(_rpm_full_until) >= _RPM_FULL_MAX_KEYS:
        _rpm_full_until.clear()
    _rpm_full_until[key.key_id] = time.monotonic() + retry_ms / 1000


def admission_precheck(*, key, service_tier: str, model: str = "") -> None:
    """Before the expensive steps of a request (tokenization): raise the RPM 429 at once when this
    process already knows an RPM bucket of ``key`` is full (a reservation or a refusal was
    rejected for it, and the bucket has not refilled one request since). No store call
    otherwise, so accepted requests pay nothing; when one is known full, one store call confirms
    it (and makes the 429's headers), as a refused request makes anyway. ``flex`` requests do
    not consume RPM: never refused here. ``model``: as in `admission_reserve` (a bucket full for
    another model of the key is found not full here, forgotten, and the request goes on).

    Raises `RateLimitError` (429 ``rate_limit_exceeded``, type ``requests``, ``Retry-After``).
    """
    until = _rpm_full_until.get(key.key_id)
    if until is None or service_tier == "flex":
        return
    if time.monotonic() >= until:
        _rpm_full_until.pop(key.key_id, None)
        return
    # Every bucket, the TPM ones at cost 0 (read, for the headers: a 429 reports every limit).
    _, buckets = build_checks(applied=limits_for_key(key=key, model=model), tokens=0, service_tier="default",
                              month_start=datetime.now(dt_timezone.utc))
    keys = [c.key for c in buckets]
    try:
        result = admission_backend().run("reserve", keys, 0, _args(buckets, [""] * len(buckets)))
        if result[0] != "rejected":  # a limit was raised meanwhile: give the unit back, go on
            _rpm_full_until.pop(key.key_id, None)
            admission_backend().run("refund", keys, 0, _args(buckets, [""] * len(buckets)))
            return
    except AdmissionUnavailable:
        return  # admission itself applies the store-down policy
    reject, retry = int(result[1]), float(result[2])
    states = [BucketState(c, float(v)) for c, v in zip(buckets, result[3:3 + len(buckets)])]
    _remember_rpm_full(key, buckets[reject - 1], retry)
    raise _rejection(buckets[reject - 1], states[reject - 1].level, retry, datetime.now(dt_timezone.utc),
                     ratelimit_headers(states))


def admission_charge_rejected(*, key) -> dict[str, str]:
    """Count a request refused before admission (an invalid body, an unknown model, an input over
    the model's limits) toward every RPM limit of ``key`` (its organization's, project's and own;
    not the project's limits per model: the request may name none, or one it may not use), and
    return the ``x-ratelimit-*`` headers of its response.

    Why: validation, and tokenization most of all, costs CPU; a key at its RPM limit must not be
    able to keep a server busy with requests that are refused anyway (issue 11, item 2). This is
    the one store call the rejection path makes in any case (for the headers), so accepted
    requests pay nothing for it. Requests (RPM) are charged one unit each, tokens (TPM) and the
    monthly quota nothing (none were served); a flex request is charged like any other, since an
    invalid body may not even name its tier.

    Raises `RateLimitError` (429 ``rate_limit_exceeded``, type ``requests``, ``Retry-After``) when
    an RPM bucket is full: the caller answers that instead of the refusal. ``{}`` (no headers,
    nothing charged) when the store is unreachable.
    """

    _, buckets = build_checks(applied=limits_for_key(key=key), tokens=0, service_tier="default",
                              month_start=datetime.now(dt_timezone.utc))
    if not buckets:
        return ratelimit_headers([])
    try:
        result = admission_backend().run("reserve", [c.key for c in buckets], 0,
                                         _args(buckets, [""] * len(buckets)))
    except AdmissionUnavailable:
        return {}
    states = [BucketState(c, float(v)) for c, v in zip(buckets, result[3:3 + len(buckets)])]
    headers = ratelimit_headers(states)
    if result[0] == "rejected":
        reject = int(result[1])
        _remember_rpm_full(key, buckets[reject - 1], float(result[2]))
        raise _rejection(buckets[reject - 1], states[reject - 1].level, float(result[2]),
                         datetime.now(dt_timezone.utc), headers)
    return headers


@dataclass(frozen=True)
class ReconcileRow:
    """One monthly counter reconciled: store value before and after, the database sum,
    the tokens in flight (reserved, not yet settled), all in tokens."""

    scope: Scope
    month_start: datetime
    before: int | None
    database: int
    in_flight: int
    after: int

    @property
    def changed(self) -> bool:
        return self.before != self.after


def admission_reconcile(*, scope: Scope, month_start: datetime, month_end: datetime,
                        dry_run: bool = False) -> ReconcileRow:
    """Rebuild a scope's monthly counter from `billing.UsageRecord`, keeping reservations in flight.

    New value = database sum + tokens reserved in flight + tokens settled while the database
    was read (those may be counted twice: the counter errs high, never low). A missing counter
    is created from the database sum. Raises `AdmissionUnavailable` when the store is down.
    """

    backend = admission_backend()
    key = monthly_key(scope, month_start)
    for _ in range(MAX_REBUILD_ROUNDS):
        snapshot = backend.read([key])[0]
        database = usage_tokens_between(scope=scope, start=month_start, end=month_end)
        if not snapshot:
            if not dry_run:
                expire_at = int(month_end.timestamp() * 1000) + MONTHLY_TTL_GRACE_MS
                backend.run("init", [key], 1, [expire_at, database, secrets.token_hex(8)])
            return ReconcileRow(scope, month_start, None, database, 0, database)
        in_flight = int(snapshot.get("r", 0))
        if dry_run:
            return ReconcileRow(scope, month_start, int(snapshot["u"]), database, in_flight, database + in_flight)
        result = backend.run("reconcile", [key], 1, [snapshot.get("s", "0"), database, snapshot["g"]])
        if result[0] == "ok":
            return ReconcileRow(scope, month_start, int(result[1]), database, int(result[3]), int(result[2]))
    raise AdmissionUnavailable(f"counter {key} kept changing generation")


def admission_usage(*, monthly: list[Check], buckets: list[Check]) -> tuple[list[int | None], list[float | None]]:
    """Current values without consuming: tokens used this month per monthly check (``None``
    when the counter is missing) and bucket levels per RPM/TPM check. Raises `AdmissionUnavailable`."""
    backend = admission_backend()
    used = [int(h["u"]) if h else None for h in backend.read([c.key for c in monthly])] if monthly else []
    levels: list[float | None] = []
    if buckets:
        result = backend.run("reserve", [c.key for c in buckets], 0, _args(buckets, [""] * len(buckets)))
        levels = [float(v) for v in result[3:3 + len(buckets)]]
    return used, levels
