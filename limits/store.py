"""The admission store: Redis and the one Lua script that reserves, settles and refunds
atomically (`ADMISSION_LUA`), behind `RedisBackend.run`. Time comes from Redis ``TIME`` so every
API server shares one clock. `AdmissionUnavailable` when Redis cannot be reached."""
from __future__ import annotations

import contextlib
import functools
import logging

from django.conf import settings

from config.redis_outage import redis_outage_for

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
-- ARGV[1] op: reserve | confirm-reserve | refund | settle | init | reconcile | version | bump
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

if op == 'confirm-reserve' then
  -- A reserve for a key its process authenticated from memory: the last two KEYS are the key's
  -- cache entry and its client address's failed-authentication counter, the last two ARGV the
  -- entry's bytes as that process knows them and the failure limit. An entry deleted or rewritten
  -- (every change to a key writes a mark with a new token), or an address at its limit: nothing
  -- is reserved.
  local failures = tonumber(redis.call('GET', KEYS[nk]) or '0') or 0
  if failures >= tonumber(ARGV[#ARGV]) or redis.call('GET', KEYS[nk - 1]) ~= ARGV[#ARGV - 1] then
    return {'unconfirmed'}
  end
  op = 'reserve'
  nk = nk - 2
end

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

local function set_level(i, limit, level)
  if level <= 0 then
    redis.call('DEL', KEYS[i])
  else
    redis.call('HSET', KEYS[i], 'u', tostring(level), 't', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(level * period / limit) + 1000)
  end
end

-- The bucket's level now, draining at ``limit`` per period. ``cap`` (reserve, not refund): a
-- bucket holds at most its limit. Use counted under a higher limit, since lowered, would
-- otherwise drain at the new rate, a lockout of used / limit periods; the capped level is
-- written back, so the bucket is empty one period later, as the 429's reset says. A refund
-- takes back a reservation made under the limit it names, from the level as it is.
local function level_of(i, limit, cap)
  local st = redis.call('HMGET', KEYS[i], 'u', 't')
  if not st[1] then return 0 end
  local level = tonumber(st[1]) - (now - tonumber(st[2])) * limit / period
  if level < 0 then level = 0 end
  if cap and level > limit then
    level = limit
    set_level(i, limit, level)
  end
  return level
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
    local level = level_of(i, limit, true)
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
    """Runs `ADMISSION_LUA` on Redis (EVALSHA, loaded on first use). Raises `AdmissionUnavailable`.

    Every call reports to the server's `config.redis_outage.OutageLog` (as ``admission``): an
    outage is logged once when it starts and once when it ends, not per request."""

    def __init__(self, url: str, timeout: float):
        import redis

        self.redis_errors = redis.exceptions.RedisError
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           health_check_interval=30)
        self.script = self.client.register_script(ADMISSION_LUA)
        self.outage = redis_outage_for(url)

    def _unavailable(self, exc: Exception) -> AdmissionUnavailable:
        self.outage.failed("admission", exc)
        return AdmissionUnavailable(str(exc))

    def run(self, op: str, keys: list[str], monthly_count: int, args: list, version: str = "") -> list | int | str:
        try:
            result = self.script(keys=keys, args=[op, monthly_count, PERIOD_MS, version, *args])
        except self.redis_errors as exc:
            raise self._unavailable(exc) from exc
        self.outage.succeeded()
        return _decode(result)

    def read(self, keys: list[str]) -> list[dict[str, str]]:
        """``HGETALL`` of each key (``{}`` when missing)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            values = pipe.execute()
        except self.redis_errors as exc:
            raise self._unavailable(exc) from exc
        self.outage.succeeded()
        return [_decode(h) for h in values]

    @contextlib.contextmanager
    def lock(self, name: str):
        """A lock shared by every process (redis-py's `Lock`), for rebuilds; Redis errors
        (including not getting the lock within 10 s) become `AdmissionUnavailable`."""
        lock = self.client.lock(name, timeout=30, blocking_timeout=10)
        try:
            acquired = lock.acquire()
        except self.redis_errors as exc:
            raise self._unavailable(exc) from exc
        self.outage.succeeded()
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
            raise self._unavailable(exc) from exc
        self.outage.succeeded()


def _decode(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        return {_decode(k): _decode(v) for k, v in value.items()}
    return value


@functools.cache  # a client per URL; building one twice in a race is harmless (no I/O until used)
def _backend_for(url: str, timeout: float) -> RedisBackend:
    return RedisBackend(url, timeout)


def admission_backend() -> RedisBackend:
    """The process's backend for the current ``ADMISSION_REDIS_URL``."""
    return _backend_for(settings.ADMISSION_REDIS_URL, settings.ADMISSION_REDIS_TIMEOUT)
