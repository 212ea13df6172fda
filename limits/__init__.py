"""Quotas and rate limits: the `Limit` rows (organization, project, key), admission (exact
token reservations in Redis, one Lua script: `admission`), the ``x-ratelimit-*`` headers and
the 429 answers, and the reconciliation of monthly counters with the usage records."""
