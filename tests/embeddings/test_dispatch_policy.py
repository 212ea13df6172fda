"""Where a request over ``EMBEDDINGS_INLINE_MAX_TOKENS`` is encoded: on a worker when it is its
API process's only request, in the process itself while the process is busy (another of its
requests encoding now or within `embeddings.services.BUSY_SECONDS`), up to
``EMBEDDINGS_INLINE_BUSY_MAX_TOKENS`` (default: the engine's pass size on CPU, 2,048).

No worker runs here: a request sent to the workers is answered 503 ``no_worker_available`` at
once, so the answer says which way it went. This process's batcher is paused to hold a first
request in flight while the second arrives.
"""
from __future__ import annotations

import threading
import time

import pytest
from rest_framework.test import APIClient

from config import heartbeats
from embeddings import dispatch, services
from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings

MODEL = "all-MiniLM-L6-v2"
LARGE = [f"the quick brown fox jumps over the lazy dog {i}" for i in range(40)]  # ~480 tokens


@pytest.fixture
def served_policy(settings):
    """The served thresholds (128 inline; busy: the engine's pass), no worker alive, not busy."""
    settings.EMBEDDINGS_INLINE_MAX_TOKENS = 128
    settings.EMBEDDINGS_INLINE_BUSY_MAX_TOKENS = -1
    client = heartbeats.client()
    keys = client.zrange(heartbeats.WORKERS_INDEX, 0, -1)
    client.delete(heartbeats.WORKERS_INDEX, *keys)
    dispatch._queue_states.clear()
    services._encoding._busy_until = 0.0
    yield settings
    dispatch._queue_states.clear()
    services._encoding._busy_until = 0.0


def api(key) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.plaintext}")
    return client


def test_a_lone_large_request_goes_to_the_workers(transactional_db, created_key, default_model, served_policy):
    response = post_embeddings(api(created_key), {"model": MODEL, "input": LARGE})
    assert_error(response, 503, param=None, code="no_worker_available", type="server_error")
    assert UsageRecord.objects.count() == 0


@pytest.mark.parametrize("busy_max, expected", [(-1, 200), (0, 503), (256, 503)])
def test_a_large_request_beside_another_is_encoded_in_the_process(transactional_db, created_key, default_model,
                                                                  served_policy, busy_max, expected):
    """While a small request of this process waits in its batcher, a large one arriving is encoded
    here too (200 with no worker alive), unless the busy threshold is 0 or below its size."""
    served_policy.EMBEDDINGS_INLINE_BUSY_MAX_TOKENS = busy_max
    batcher = services.batcher_for(default_model)
    answers: dict[str, object] = {}

    def call(name: str, texts: list[str]) -> None:
        from django.db import connection

        try:
            answers[name] = post_embeddings(api(created_key), {"model": MODEL, "input": texts})
        finally:
            connection.close()

    batcher.pause()
    try:
        first = threading.Thread(target=call, args=("small", ["hello there"]))
        first.start()
        deadline = time.monotonic() + 10
        while services._encoding.count < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert services._encoding.count == 1  # the small request waits in the paused batcher
        second = threading.Thread(target=call, args=("large", LARGE))
        second.start()
        if expected == 200:
            while services._encoding.count < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            second.join(30)
    finally:
        batcher.resume()
    first.join(30)
    second.join(30)
    assert answers["small"].status_code == 200
    if expected == 200:
        assert answers["large"].status_code == 200, answers["large"].content
        assert len(answers["large"].json()["data"]) == len(LARGE)
        assert UsageRecord.objects.count() == 2
    else:
        assert_error(answers["large"], 503, param=None, code="no_worker_available", type="server_error")
        assert UsageRecord.objects.count() == 1


def test_the_busy_threshold_follows_the_engine(default_model, served_policy):
    engine = services.engine_for(default_model)
    assert services.inline_busy_max_tokens(default_model) == engine.batch_tokens == 2048  # CPU
    served_policy.EMBEDDINGS_INLINE_BUSY_MAX_TOKENS = 1000
    assert services.inline_busy_max_tokens(default_model) == 1000
    served_policy.EMBEDDINGS_INLINE_MAX_TOKENS = 0  # the process runs no model
    assert services.inline_busy_max_tokens(default_model) == 0


def test_a_process_stays_busy_for_a_while_after_its_requests_overlapped(monkeypatch):
    """Busy = another request encoding now, or two overlapping within `BUSY_SECONDS` of now (counted
    from the end of the overlap, however long it lasted)."""
    monkeypatch.setattr(services, "BUSY_SECONDS", 0.2)
    flight = services._InFlight()
    with flight as busy:
        assert not busy  # alone
        with flight as busy:
            assert busy  # beside the first
            time.sleep(0.4)  # an overlap longer than the window
    time.sleep(0.05)
    with flight as busy:
        assert busy  # just after the overlap ended
    time.sleep(0.3)
    with flight as busy:
        assert not busy  # the window has passed


def test_a_lone_inline_request_asks_for_a_wide_pass_and_one_beside_another_does_not(
        transactional_db, created_key, default_model, served_policy, monkeypatch):
    """A small request alone in its process may use every core (`Engine.encode` ``wide``); one
    arriving while another of the process's requests encodes keeps to the process's own threads."""
    batcher = services.batcher_for(default_model)
    asked, encode = [], batcher.encode

    def spy(token_ids, **kwargs):
        asked.append(kwargs.get("wide", False))
        return encode(token_ids, **kwargs)

    monkeypatch.setattr(batcher, "encode", spy)
    assert post_embeddings(api(created_key), {"model": MODEL, "input": ["hello there"]}).status_code == 200
    assert asked == [True]
    with services._encoding:  # another request of this process, encoding
        assert post_embeddings(api(created_key), {"model": MODEL, "input": ["hello there"]}).status_code == 200
    assert asked == [True, False]
