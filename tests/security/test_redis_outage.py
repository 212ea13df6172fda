"""A Redis outage is logged once when it starts and once when it ends, with counts; no traceback
or error line per request (issue 11, item 14). Runs against a private Valkey (`config.embedded`)
that the test stops and starts again on the same socket."""
from __future__ import annotations

import logging
import re

import pytest
from rest_framework.test import APIClient

from config.embedded import EmbeddedValkey, redis_url
from config.redis_outage import OutageLog
from tests.conftest import assert_error, post_embeddings

BODY = {"model": "all-MiniLM-L6-v2", "input": "hi"}


@pytest.fixture
def private_redis(tmp_path, settings):
    """Every Redis user of the API process (cache, admission, throttle, heartbeats) pointed at a
    Valkey of this test's own."""
    valkey = EmbeddedValkey(tmp_path)
    valkey.start()
    url = redis_url(tmp_path)
    settings.REDIS_URL = settings.ADMISSION_REDIS_URL = url
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": url}}
    yield valkey
    valkey.stop()


def bad_key_call():
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Bearer sk-proj-" + "Z" * 43)
    return api.get("/v1/models")


def test_outage_is_logged_once_at_start_and_once_at_end(private_redis, client, caplog):
    caplog.set_level(logging.INFO)
    assert post_embeddings(client, BODY).status_code == 200
    caplog.clear()

    private_redis.stop()
    for _ in range(10):
        assert_error(post_embeddings(client, BODY), 503, param=None, code="service_unavailable", type="server_error")
        assert_error(bad_key_call(), 401, param=None, code="invalid_api_key")  # the throttle lets it through
    private_redis.start()
    assert post_embeddings(client, BODY).status_code == 200

    assert not [r for r in caplog.records if r.exc_info], "no traceback per operation"
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in loud] == ["config.redis_outage", "config.redis_outage"], \
        [(r.name, r.getMessage()) for r in loud]
    start, end = (r.getMessage() for r in loud)
    assert re.search(r"^Redis at unix://\S+ unavailable since \d{4}-\d\d-\d\dT[\d:.]+Z \(\w[\w ]*: ", start), start
    match = re.search(r"^Redis at unix://\S+ back after ([\d.]+) s \(down since [^)]+\), (\d+) operations degraded "
                      r"\((.+)\)$", end)
    assert match, end
    counts = dict(part.rsplit(" ", 1) for part in match.group(3).split(", "))
    assert int(match.group(2)) == sum(int(v) for v in counts.values())
    # Per request: the throttle's count and the key's cache entry are one cache read; a refused key
    # records its failure (auth throttle).
    assert int(counts["admission"]) >= 10 and int(counts["auth throttle"]) >= 10 and int(counts["cache"]) >= 20


def test_outage_log_counts_and_reminds(caplog, monkeypatch):
    import config.redis_outage as module

    clock = [100.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    log = OutageLog("Redis at test", logging.getLogger("test.outage"))
    caplog.set_level(logging.INFO, logger="test.outage")
    log.succeeded()
    assert not caplog.records and not log.down
    log.failed("cache", ConnectionError("refused"))
    for _ in range(4):
        log.failed("admission")
    clock[0] += module.REMIND_SECONDS
    log.failed("cache")
    clock[0] += 2.5
    log.succeeded()
    log.succeeded()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "unavailable since" in messages[0] and "cache: ConnectionError: refused" in messages[0]
    assert messages[1] == "Redis at test still unavailable after 60 s, 6 operations degraded (admission 4, cache 2) so far"
    assert messages[2].startswith("Redis at test back after 62.5 s (down since ")
    assert messages[2].endswith("6 operations degraded (admission 4, cache 2)")
    assert not log.down
