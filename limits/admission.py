"""Admission: exact token reservations against every applicable limit, atomically.

Step 4 of an embeddings request (`embeddings.views.EmbeddingsView.post`). Once a
request is tokenized its exact token count is known; `admission_reserve` reserves
it against all the limits that apply to the key, at once, in one atomic step:

* the **monthly token quota** (hard) of the organization and of the project:
  counters per calendar month (UTC) that count every request (limited or not, so a
  limit set later starts from the true usage), rebuilt from `billing.UsageRecord`
  (the source of truth) when missing;
* **RPM / TPM** of the organization, the project and the key: token buckets that
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

Redis down: ``ADMISSION_REDIS_DOWN_POLICY`` = ``closed`` (default: 503 with
``Retry-After``) or ``open`` (admit without limits, log a warning). Never a 500.
"""
from __future__ import annotations

import contextlib
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone

from django.conf import settings

from config.errors import RateLimitError, ServiceUnavailableError
from config.periods import month_bounds

from .scopes import Scope, ScopeLimits
from .selectors import limits_for_key, usage_tokens_between

logger = logging.getLogger(__name__)

# RPM / TPM buckets refill over this many milliseconds (one minute).
PERIOD_MS = 60_000
# Monthly counters outlive their month by this long (reconciliation of last month).
MONTHLY_TTL_GRACE_MS = 40 * 24 * 3600 * 1000
# A missing monthly counter is rebuilt at most this many times per request before giving up (503).
MAX_REBUILD_ROUNDS = 5

ADMISSION_LUA = r"""
-- KEYS: the monthly counter hashes first (ARGV[2] of them), then the token-bucket hashes,
-- then (reserve with a limits version, and version/bump) the limits-version key.
-- ARGV[1] op: reserve | refund | settle | init | reconcile | version | bump
-- ARGV[2] number of monthly keys, ARGV[3] bucket period (ms), ARGV[4] the limits version the
-- caller's cached limits belong to ('' = limits read from the database now: no check);
-- then 3 values per key: limit (-1 = none), cost (or db sum), extra (generation / expiry ms / s0).
local op = ARGV[1]
local nm = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function arg(i, j) return ARGV[4 + (i - 1) * 3 + j] end
local nk = #KEYS

if op == 'version' or op == 'bump' or (op == 'reserve' and ARGV[4] ~= '') then
  -- Limits are cached per process under this version; any change sets a new one, so a
  -- reservation is never made against limits older than the last change (checked atomically).
  local v = redis.call('GET', KEYS[nk])
  if op == 'bump' or not v then
    v = ARGV[5] or tostring(now)
    redis.call('SET', KEYS[nk], v)
  end
  if op ~= 'reserve' then return v end
  if v ~= ARGV[4] then return {'stale', v} end
  nk = nk - 1
end

local function level_of(i, limit)
  local st = redis.call('HMGET', KEYS[i], 'u', 't')
  if not st[1] then return 0 end
  local level = tonumber(st[1]) - (now - tonumber(st[2])) * limit / period
  if level < 0 then level = 0 end
  return level
end

local function set_level(i, limit, level)
  if level <= 0 then
    redis.call('DEL', KEYS[i])
  else
    redis.call('HSET', KEYS[i], 'u', tostring(level), 't', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(level * period / limit) + 1000)
  end
end

if op == 'reserve' then
  local missing = {}
  for i = 1, nm do
    if redis.call('EXISTS', KEYS[i]) == 0 then missing[#missing + 1] = i end
  end
  if #missing > 0 then return {'missing', missing} end
  local reject, retry = 0, '0'
  local values, gens = {}, {}
  for i = 1, nm do
    local limit, cost = tonumber(arg(i, 1)), tonumber(arg(i, 2))
    local st = redis.call('HMGET', KEYS[i], 'u', 'g')
    local used = tonumber(st[1] or '0')
    values[i], gens[i] = used, st[2] or ''
    if reject == 0 and limit >= 0 and used + cost > limit then reject = i end
  end
  for i = nm + 1, nk do
    local limit, cost = tonumber(arg(i, 1)), tonumber(arg(i, 2))
    local level = level_of(i, limit)
    values[i] = level
    if reject == 0 and cost > 0 and level + cost > limit then
      reject = i
      if cost > limit then retry = '-1' else retry = tostring((level + cost - limit) * period / limit) end
    end
  end
  if reject == 0 then
    for i = 1, nm do
      local cost = tonumber(arg(i, 2))
      values[i] = redis.call('HINCRBY', KEYS[i], 'u', cost)
      redis.call('HINCRBY', KEYS[i], 'r', cost)
    end
    for i = nm + 1, nk do
      local limit, cost = tonumber(arg(i, 1)), tonumber(arg(i, 2))
      if cost > 0 then
        values[i] = values[i] + cost
        set_level(i, limit, values[i])
      end
    end
  end
  local out = {'ok', reject, retry}
  if reject ~= 0 then out[1] = 'rejected' end
  for i = 1, nk do out[#out + 1] = tostring(values[i]) end
  for i = 1, nm do out[#out + 1] = gens[i] end
  return out
elseif op == 'refund' or op == 'settle' then
  for i = 1, nm do
    local cost, gen = tonumber(arg(i, 2)), arg(i, 3)
    if redis.call('EXISTS', KEYS[i]) == 1 then
      local same = redis.call('HGET', KEYS[i], 'g') == gen
      if op == 'refund' and same then
        redis.call('HINCRBY', KEYS[i], 'u', -cost)
        redis.call('HINCRBY', KEYS[i], 'r', -cost)
      elseif op == 'settle' then
        if same then redis.call('HINCRBY', KEYS[i], 'r', -cost)
        else redis.call('HINCRBY', KEYS[i], 'u', cost) end
        redis.call('HINCRBY', KEYS[i], 's', cost)
      end
    end
  end
  if op == 'refund' then
    for i = nm + 1, #KEYS do
      local limit, cost = tonumber(arg(i, 1)), tonumber(arg(i, 2))
      if cost > 0 then set_level(i, limit, level_of(i, limit) - cost) end
    end
  end
  return 'ok'
elseif op == 'init' then
  local created = 0
  for i = 1, nm do
    if redis.call('EXISTS', KEYS[i]) == 0 then
      redis.call('HSET', KEYS[i], 'u', arg(i, 2), 'r', 0, 's', 0, 'g', arg(i, 3))
      redis.call('PEXPIREAT', KEYS[i], arg(i, 1))
      created = created + 1
    end
  end
  return created
elseif op == 'reconcile' then
  -- one monthly key; arg(1,1) = s0 (settled before the database was read), arg(1,2) = db sum, arg(1,3) = gen
  if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
  local st = redis.call('HMGET', KEYS[1], 'u', 'r', 's', 'g')
  if st[4] ~= arg(1, 3) then return {'changed'} end
  local new = tonumber(arg(1, 2)) + tonumber(st[2] or '0') + tonumber(st[3] or '0') - tonumber(arg(1, 1))
  redis.call('HSET', KEYS[1], 'u', new)
  return {'ok', st[1], tostring(new), st[2] or '0'}
end
return redis.error_reply('unknown op ' .. op)
"""


class AdmissionUnavailable(Exception):
    """The admission store (Redis) could not be reached or answered in time."""


# ---------------------------------------------------------------------------------------------------
# Backends: one primitive, `run(op, keys, monthly_count, args)`, with the Lua script's semantics.
# ---------------------------------------------------------------------------------------------------

class RedisBackend:
    """Runs `ADMISSION_LUA` on Redis (EVALSHA, loaded on first use). Raises `AdmissionUnavailable`."""

    def __init__(self, url: str, timeout: float):
        import redis

        self.redis_errors = redis.exceptions.RedisError
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           health_check_interval=30)
        self.script = self.client.register_script(ADMISSION_LUA)

    def run(self, op: str, keys: list[str], monthly_count: int, args: list, version: str = "") -> list | int | str:
        try:
            result = self.script(keys=keys, args=[op, monthly_count, PERIOD_MS, version, *args])
        except self.redis_errors as exc:
            raise AdmissionUnavailable(str(exc)) from exc
        return _decode(result)

    def read(self, keys: list[str]) -> list[dict[str, str]]:
        """``HGETALL`` of each key (``{}`` when missing)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return [_decode(h) for h in pipe.execute()]
        except self.redis_errors as exc:
            raise AdmissionUnavailable(str(exc)) from exc

    @contextlib.contextmanager
    def lock(self, name: str):
        """A lock shared by every process (redis-py's `Lock`), for rebuilds; Redis errors
        (including not getting the lock within 10 s) become `AdmissionUnavailable`."""
        lock = self.client.lock(name, timeout=30, blocking_timeout=10)
        try:
            acquired = lock.acquire()
        except self.redis_errors as exc:
            raise AdmissionUnavailable(str(exc)) from exc
        if not acquired:
            raise AdmissionUnavailable(f"lock {name} not acquired within 10 s")
        try:
            yield
        finally:
            try:
                lock.release()
            except self.redis_errors:
                pass  # expired (30 s) or Redis gone: the rebuild's write was "only if missing" anyway

    def delete(self, keys: list[str]) -> None:
        try:
            self.client.delete(*keys)
        except self.redis_errors as exc:
            raise AdmissionUnavailable(str(exc)) from exc


def _decode(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        return {_decode(k): _decode(v) for k, v in value.items()}
    return value


_backends: dict[str, RedisBackend] = {}
_backends_lock = threading.Lock()


def admission_backend() -> RedisBackend:
    """The process's backend for the current ``ADMISSION_REDIS_URL``."""
    url = settings.ADMISSION_REDIS_URL
    backend = _backends.get(url)
    if backend is None:
        with _backends_lock:
            backend = _backends.get(url)
            if backend is None:
                backend = RedisBackend(url, settings.ADMISSION_REDIS_TIMEOUT)
                _backends[url] = backend
    return backend


# ---------------------------------------------------------------------------------------------------
# What a request is checked against.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One counter a request is checked against: ``kind`` ``monthly_tokens`` / ``rpm`` / ``tpm``,
    the scope, the limit (``None`` = count only), the cost (tokens or requests) and the store key."""

    kind: str
    scope: Scope
    limit: int | None
    cost: int
    key: str


def monthly_key(scope: Scope, month_start: datetime) -> str:
    """Store key of a scope's monthly counter, e.g. ``adm:m:proj:12:202611``."""
    return f"{settings.ADMISSION_KEY_PREFIX}:m:{scope.slug}:{scope.pk}:{month_start:%Y%m}"


def bucket_key(scope: Scope, kind: str) -> str:
    """Store key of a scope's RPM or TPM bucket, e.g. ``adm:b:key:7:rpm``."""
    return f"{settings.ADMISSION_KEY_PREFIX}:b:{scope.slug}:{scope.pk}:{kind}"


def build_checks(*, applied: list[tuple[Scope, ScopeLimits]], tokens: int, service_tier: str,
                 month_start: datetime) -> tuple[list[Check], list[Check]]:
    """The monthly checks (organization and project, always counted) and the RPM/TPM checks.

    ``flex`` requests count to the monthly quota but do not consume RPM/TPM (cost 0: the
    buckets are only read, for the headers). Returns ``(monthly, buckets)``.
    """
    consume = service_tier != "flex"
    monthly, buckets = [], []
    for scope, limits in applied:
        if scope.kind != "key":
            monthly.append(Check("monthly_tokens", scope, limits.monthly_tokens, tokens,
                                 monthly_key(scope, month_start)))
        if limits.rpm is not None:
            buckets.append(Check("rpm", scope, limits.rpm, 1 if consume else 0, bucket_key(scope, "rpm")))
        if limits.tpm is not None:
            buckets.append(Check("tpm", scope, limits.tpm, tokens if consume else 0, bucket_key(scope, "tpm")))
    return monthly, buckets


def _args(checks: list[Check], extras: list) -> list:
    args = []
    for check, extra in zip(checks, extras):
        args += [-1 if check.limit is None else check.limit, check.cost, extra]
    return args


# ---------------------------------------------------------------------------------------------------
# Headers (OpenAI's x-ratelimit-* set) and errors.
# ---------------------------------------------------------------------------------------------------

def go_duration(ms: float) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*`` (Go's format): ``0s``, ``250ms``, ``1s``,
    ``1.5s``, ``6m0s``, ``1h2m3s``."""
    ms = max(0, math.ceil(ms))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


@dataclass(frozen=True)
class BucketState:
    """A bucket after the step: its check, the units in it (0 = full capacity left)."""

    check: Check
    level: float

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.check.limit - self.level + 1e-9))

    @property
    def reset_ms(self) -> float:
        """Milliseconds until the bucket is full again."""
        return self.level * PERIOD_MS / self.check.limit if self.check.limit else 0.0


UNLIMITED = "unlimited"


def ratelimit_headers(states: list[BucketState], *, known: bool = True) -> dict[str, str]:
    """The six ``x-ratelimit-*`` headers from bucket states.

    Per dimension (requests = RPM, tokens = TPM) the most constraining applicable limit is
    reported (least remaining). A dimension with no limit reports ``unlimited`` and ``0s``.
    ``known=False`` (store unreachable, fail-open): only the limits are reported.
    """
    headers = {}
    for dimension, kind in (("requests", "rpm"), ("tokens", "tpm")):
        candidates = [s for s in states if s.check.kind == kind]
        if not candidates:
            headers.update({f"x-ratelimit-limit-{dimension}": UNLIMITED,
                            f"x-ratelimit-remaining-{dimension}": UNLIMITED,
                            f"x-ratelimit-reset-{dimension}": "0s"})
            continue
        state = min(candidates, key=lambda s: (s.remaining, s.check.limit))
        headers[f"x-ratelimit-limit-{dimension}"] = str(state.check.limit)
        if known:
            headers[f"x-ratelimit-remaining-{dimension}"] = str(state.remaining)
            headers[f"x-ratelimit-reset-{dimension}"] = go_duration(state.reset_ms)
    return headers


# The official OpenAI clients honour this header: no automatic retries where waiting cannot help
# (quota exhausted until the month ends; a request larger than the whole bucket; a limit of 0).
NO_RETRY = {"x-should-retry": "false"}

_KIND_TEXT = {"rpm": "requests per min (RPM)", "tpm": "tokens per min (TPM)"}


def _retry_headers(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


def _rejection(check: Check, value: float, retry_ms: float, month_end: datetime, headers: dict) -> RateLimitError:
    """The 429 for a failed check, worded as OpenAI words it, naming scope and limit."""
    who = f"{check.scope.kind} {check.scope.public_id}"
    if check.kind == "monthly_tokens":
        seconds = (month_end - datetime.now(dt_timezone.utc)).total_seconds()
        return RateLimitError(
            f"You exceeded your current quota: the monthly token quota (monthly_tokens) of {who} is "
            f"{check.limit} tokens; {int(value)} are used and this request needs {check.cost}. The quota "
            f"resets at {month_end:%Y-%m-%dT%H:%M:%SZ}; ask your administrator to raise it.",
            type="insufficient_quota", code="insufficient_quota",
            headers={**headers, **_retry_headers(seconds), **NO_RETRY})
    error_type = "requests" if check.kind == "rpm" else "tokens"
    if retry_ms < 0 and check.limit == 0:
        return RateLimitError(f"Rate limit reached for {who} on {_KIND_TEXT[check.kind]}: Limit 0; no requests "
                              "are allowed. Ask your administrator to raise it.",
                              type=error_type, code="rate_limit_exceeded", headers={**headers, **NO_RETRY})
    if retry_ms < 0:  # larger than the whole bucket: no wait helps, so no Retry-After
        return RateLimitError(
            f"Request too large for {who} on {_KIND_TEXT[check.kind]}: Limit {check.limit}, Requested "
            f"{check.cost}. The input or output tokens must be reduced in order to run successfully.",
            type=error_type, code="rate_limit_exceeded", headers={**headers, **NO_RETRY})
    used = min(check.limit, math.ceil(value - 1e-9))
    return RateLimitError(
        f"Rate limit reached for {who} on {_KIND_TEXT[check.kind]}: Limit {check.limit}, Used {used}, "
        f"Requested {check.cost}. Please try again in {go_duration(retry_ms)}.",
        type=error_type, code="rate_limit_exceeded", headers={**headers, **_retry_headers(retry_ms / 1000)})


def redis_down_error() -> ServiceUnavailableError:
    """503 with ``Retry-After`` (``ADMISSION_RETRY_AFTER_SECONDS``): the fail-closed answer."""
    seconds = settings.ADMISSION_RETRY_AFTER_SECONDS
    return ServiceUnavailableError(
        "Rate limiting is temporarily unavailable, so the request was not admitted. Please retry shortly.",
        headers=_retry_headers(seconds))


# ---------------------------------------------------------------------------------------------------
# The steps.
# ---------------------------------------------------------------------------------------------------

@dataclass
class Reservation:
    """What `admission_reserve` reserved; use as a context manager around encode + meter:
    an exception refunds it (and propagates), a clean exit settles it.

    ``headers`` are the ``x-ratelimit-*`` headers of the response. ``reserved`` is False
    when the store was down and the policy is ``open`` (nothing to refund or settle).
    """

    monthly: list[Check]
    buckets: list[Check]
    generations: list[str]
    headers: dict[str, str]
    reserved: bool = True
    done: bool = field(default=False, repr=False)

    def _finish(self, op: str) -> None:
        if not self.reserved or self.done:
            return
        self.done = True
        checks = self.monthly + self.buckets
        extras = self.generations + [""] * len(self.buckets)
        try:
            admission_backend().run(op, [c.key for c in checks], len(self.monthly), _args(checks, extras))
        except AdmissionUnavailable:
            # Refund lost: counters stay high (safe side). Settle lost: only `r` stays high.
            logger.warning("Admission store unreachable: %s of a reservation not recorded", op)

    def refund(self) -> None:
        """Give back everything reserved (idempotent). Counters are as before the request."""
        self._finish("refund")

    def settle(self) -> None:
        """Mark the reservation as used (after the usage record is written; idempotent)."""
        self._finish("settle")

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.settle()
        else:
            self.refund()
        return False


def limits_version_key() -> str:
    """Store key of the limits version (a token that changes on every limit change)."""
    return f"{settings.ADMISSION_KEY_PREFIX}:limits-version"


class _LimitsCache:
    """This process's copy of the limits per key, valid while the store's limits version is
    the one it was read under (checked atomically by every reservation) and for at most
    ``LIMITS_CACHE_SECONDS``."""

    def __init__(self):
        self.version: str | None = None
        self.entries: dict[int, tuple[str, float, list]] = {}

    def reset(self, version: str | None) -> None:
        self.version, self.entries = version, {}


_limits_cache = _LimitsCache()


def _applied_limits(backend, key) -> tuple[list, str]:
    """``(applied limits, version)`` for ``key``: from this process's cache when it is current,
    else read from the database under the store's current version. Version ``""`` (the embedded
    default, ``LIMITS_CACHE_SECONDS = 0``): read from the database every time, nothing to check."""

    ttl = settings.LIMITS_CACHE_SECONDS
    if not ttl:
        return limits_for_key(key=key), ""
    cache = _limits_cache
    entry = cache.entries.get(key.key_id)
    now = time.monotonic()
    if entry and entry[0] == cache.version and entry[1] > now:
        return entry[2], entry[0]
    version = backend.run("version", [limits_version_key()], 0, [])
    applied = limits_for_key(key=key)  # read after learning the version: never newer-version-stale
    if version != cache.version:
        cache.reset(version)
    cache.entries[key.key_id] = (version, now + ttl, applied)
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


def admission_reserve(*, key, tokens: int, service_tier: str) -> Reservation:
    """Reserve ``tokens`` (the request's exact token count) and one request against every limit
    that applies to ``key`` (an `accounts.selectors.ResolvedKey`), atomically.

    Raises:
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
            applied, version = _applied_limits(backend, key)
            monthly, buckets = build_checks(applied=applied, tokens=tokens, service_tier=service_tier,
                                            month_start=month_start)
            checks = monthly + buckets
            keys = [c.key for c in checks] + ([limits_version_key()] if version else [])
            result = backend.run("reserve", keys, len(monthly), _args(checks, [""] * len(checks)), version)
            if result[0] == "stale":  # limits changed since this process read them
                _limits_cache.reset(result[1])
            elif result[0] == "missing":
                _rebuild_missing(backend, [monthly[i - 1] for i in result[1]], month_start, month_end)
            else:
                break
        else:
            raise AdmissionUnavailable("limits or monthly counters kept changing")
    except AdmissionUnavailable as exc:
        monthly, buckets = build_checks(applied=limits_for_key(key=key), tokens=tokens,
                                        service_tier=service_tier, month_start=month_start)
        if settings.ADMISSION_REDIS_DOWN_POLICY == "open":
            logger.warning("Admission store unreachable (%s); admitting without limits (policy: open)", exc)
            return Reservation(monthly, buckets, [], ratelimit_headers(
                [BucketState(c, 0.0) for c in buckets], known=False), reserved=False)
        logger.error("Admission store unreachable (%s); refusing (policy: closed)", exc)
        raise redis_down_error() from exc

    status, reject, retry = result[0], int(result[1]), float(result[2])
    values = [float(v) for v in result[3:3 + len(checks)]]
    generations = list(result[3 + len(checks):])
    states = [BucketState(c, values[len(monthly) + i]) for i, c in enumerate(buckets)]
    headers = ratelimit_headers(states)
    if status == "rejected":
        raise _rejection(checks[reject - 1], values[reject - 1], retry, month_end, headers)
    return Reservation(monthly, buckets, generations, headers)


def admission_peek_headers(*, key) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers for ``key`` without consuming anything (for responses
    that end before admission, e.g. a 400). ``{}`` when the store is unreachable."""

    _, buckets = build_checks(applied=limits_for_key(key=key), tokens=0, service_tier="flex",
                              month_start=datetime.now(dt_timezone.utc))
    if not buckets:
        return ratelimit_headers([])
    try:
        result = admission_backend().run("reserve", [c.key for c in buckets], 0,
                                         _args(buckets, [""] * len(buckets)))
    except AdmissionUnavailable:
        return {}
    return ratelimit_headers([BucketState(c, float(v)) for c, v in zip(buckets, result[3:3 + len(buckets)])])


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


class RateLimitHeadersMixin:
    """For DRF views that admit requests: put the ``x-ratelimit-*`` headers on every response
    after authentication: those of the reservation (``request.reservation``) or of the 429;
    for a response that ended before admission (e.g. a 400), the current state, unconsumed.
    Responses to unauthenticated requests carry none (there is no key to report on)."""

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.has_header("x-ratelimit-limit-requests"):
            return response
        reservation = getattr(request, "reservation", None)
        if reservation is not None:
            headers = reservation.headers
        else:
            from accounts.selectors import ResolvedKey

            key = getattr(request, "_auth", None)  # set by DRF once authentication ran
            if not isinstance(key, ResolvedKey) or response.status_code in (401, 503):
                return response
            headers = admission_peek_headers(key=key)
        for name, value in headers.items():
            response[name] = value
        return response
