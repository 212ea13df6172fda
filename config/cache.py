"""The cache backend: django-redis' ``RedisCache`` that reports each operation to the Redis
server's `config.redis_outage.OutageLog`.

With ``IGNORE_EXCEPTIONS`` an unreachable Redis is a cache miss (API keys and limits are then
read from the database); django-redis would log a traceback per operation
(``DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS``, off in settings), three per API request. Instead the
outage is logged once when it starts and once when it ends, with counts.
"""
from __future__ import annotations

from django_redis.cache import RedisCache as DjangoRedisCache
from django_redis.client.default import _main_exceptions
from django_redis.exceptions import ConnectionInterrupted

from .redis_outage import OutageLog, redis_outage_for

# Client methods that do no I/O: neither a success nor a failure of Redis.
_NO_IO = frozenset({"get_client", "get_client_with_index", "get_next_client_index", "make_key", "make_pattern",
                    "encode", "decode", "connect", "disconnect", "close", "lock"})


class _ReportingClient:
    """A django-redis client whose I/O methods report to ``outage``; every other attribute is the
    client's own."""

    def __init__(self, client, outage: OutageLog):
        self._client = client
        self._outage = outage

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if name.startswith("_") or name in _NO_IO or not callable(attribute):
            return attribute
        outage = self._outage

        def reported(*args, **kwargs):
            try:
                result = attribute(*args, **kwargs)
            except ConnectionInterrupted as exc:
                outage.failed("cache", exc)
                raise
            outage.succeeded()
            return result

        return reported


class RedisCache(DjangoRedisCache):
    """``django_redis.cache.RedisCache`` whose operations are reported to `redis_outage_for` of its
    server (the first one when ``LOCATION`` names several)."""

    _reporting = None

    @property
    def client(self):
        if self._reporting is None:
            server = self._server if isinstance(self._server, str) else self._server[0]
            self._reporting = _ReportingClient(super().client, redis_outage_for(server.split(",")[0]))
        return self._reporting

    def get_many_stored(self, names) -> dict[str, tuple[object, bytes]]:
        """``get_many`` (one ``MGET``) that also returns what each value is stored as:
        ``{name: (value, stored bytes)}`` for the ``names`` found. The bytes are what a Lua script
        compares to learn whether an entry is still the one read (`accounts.authentication`).
        Redis unreachable: ``{}`` with ``IGNORE_EXCEPTIONS`` (a miss, as ``get_many``), else the
        Redis error; reported to the server's outage log either way."""
        client = self.client
        stored_as = {client.make_key(name): name for name in names}
        try:
            values = client.get_client(write=False).mget(*stored_as)
        except _main_exceptions as exc:
            client._outage.failed("cache", exc)
            if self._ignore_exceptions:
                return {}
            raise
        client._outage.succeeded()
        return {stored_as[key]: (client.decode(value), value)
                for key, value in zip(stored_as, values) if value is not None}
