"""Failed API-key authentication, throttled per client address (in Redis).

Every failed bearer authentication (malformed, unknown, revoked, expired key) from one address
counts in a fixed window of ``API_AUTH_FAILURE_WINDOW_SECONDS`` that starts at its first failure;
once ``API_AUTH_FAILURE_LIMIT`` failures are counted, every request from that address that sends
a key is answered 429 ``too_many_failed_authentications`` with ``Retry-After`` (the rest of the
window), before any database lookup, valid key or not: a valid key must not tell a guesser
apart from a refused guess (GitHub's API and django-axes' address lockouts do the same). Other
addresses are never affected, and a success does not reset the count (else one valid key would
let a guesser go on). The address is `config.client_address.client_ip`; IPv6 clients count per
/64, the block one host is usually given (RFC 6177).

Cost: none of its own per authenticated request: the count is read in the round trip that reads
the key's cache entry (`accounts.authentication.BearerKeyAuthentication`: one ``MGET``), before
the key is looked at, or, for a key an embeddings request takes from its process's memory, in the
admission round trip that confirms it (`accounts.authentication.KeyConfirmation`), before
anything is reserved; plus one pipelined INCR + TTL round trip on the failure path only. Redis
unreachable: the throttle lets requests through (authentication still works from the database)
and the outage is logged by `config.redis_outage`.
"""
from __future__ import annotations

import ipaddress

import redis
from django.conf import settings
from django.core.cache import cache
from django_redis import get_redis_connection

from config.errors import RateLimitError
from config.redis_outage import redis_outage


def _bucket(address: str) -> str:
    """The unit that is counted: the address itself, or its /64 for IPv6."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def auth_failures_cache_name(address: str) -> str:
    """The cache key (the cache's prefix not included) counting failures of ``address``'s bucket:
    what ``cache.get_many`` takes to read it in the round trip of another key (`BearerKeyAuthentication`)."""
    return f"authfail:{_bucket(address)}"


def auth_failures_cache_key(address: str) -> str:
    """The Redis key (cache prefix included) counting failures of ``address``'s bucket."""
    return str(cache.make_key(auth_failures_cache_name(address)))


def _client() -> redis.Redis:
    return get_redis_connection("default")


def auth_failures_check(*, address: str, count: int | None = None) -> None:
    """Raise `RateLimitError` (429 ``too_many_failed_authentications``, ``Retry-After`` in s) when
    ``address`` has had ``API_AUTH_FAILURE_LIMIT`` failures in the current window. ``count``: the
    failures the caller already read (under `auth_failures_cache_name`); None reads them (one GET)."""
    key = auth_failures_cache_key(address)
    try:
        if count is None:
            count = int(_client().get(key) or 0)
            redis_outage().succeeded()
        if count < settings.API_AUTH_FAILURE_LIMIT:
            return
        retry_after = max(1, int(_client().ttl(key)))
    except redis.RedisError as exc:
        redis_outage().failed("auth throttle", exc)
        return
    redis_outage().succeeded()
    raise RateLimitError(
        f"Too many failed authentication attempts from your IP address ({count} in the last "
        f"{settings.API_AUTH_FAILURE_WINDOW_SECONDS} s). Please try again in {retry_after}s.",
        code="too_many_failed_authentications", headers={"Retry-After": str(retry_after)})


def auth_failure_record(*, address: str) -> int:
    """Count one failed authentication of ``address``; returns the count in the window (0 when
    Redis is unreachable). One round trip (INCR and TTL); a second, EXPIRE, only when the key has
    no expiry yet (the window's first failure), so a counter can never outlive its window."""
    key = auth_failures_cache_key(address)
    try:
        pipe = _client().pipeline(transaction=False)
        pipe.incr(key)
        pipe.ttl(key)
        count, ttl = (int(value) for value in pipe.execute())
        if ttl < 0:
            _client().expire(key, settings.API_AUTH_FAILURE_WINDOW_SECONDS)
    except redis.RedisError as exc:
        redis_outage().failed("auth throttle", exc)
        return 0
    redis_outage().succeeded()
    return count
