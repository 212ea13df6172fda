"""Dead workers and overload, decided before any work is sent (issue 11, item 5).

"Alive" is `config.heartbeats`'s one definition (a heartbeat key in Redis). With no worker alive
for the queue the request is answered 503 ``no_worker_available`` at once, not a 504 after the
dispatch deadline; with more than ``EMBEDDINGS_MAX_QUEUE_DEPTH`` chunks waiting, 503
``server_overloaded``. Real Redis (the broker and the heartbeats), no worker process: the
heartbeat of a worker is written as a worker writes it. The kill test (a worker dies holding
chunks) runs on the roles: tests/config/test_worker_kill.py.
"""
from __future__ import annotations

import json
import time

import pytest
from django.conf import settings
from kombu.transport.redis import Channel

from config import heartbeats
from embeddings import dispatch
from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings

MODEL = "all-MiniLM-L6-v2"
TEXTS = [f"the quick brown fox {i}" for i in range(40)]


def broker():
    """A Redis client on the broker (kombu's own, from the app's connection)."""
    from config.celery import app

    with app.connection_for_write() as connection:
        return connection.default_channel.client


@pytest.fixture
def dispatched(settings):
    """Every request goes to the workers; a short deadline, so that without the checks the test
    fails in seconds (504) rather than a minute."""
    settings.EMBEDDINGS_INLINE_MAX_TOKENS = 0
    settings.EMBEDDINGS_CHUNK_TOKENS = 64
    settings.EMBEDDINGS_DISPATCH_TIMEOUT = 3
    dispatch._queue_states.clear()
    yield settings
    dispatch._queue_states.clear()


@pytest.fixture
def no_workers():
    """No heartbeat in Redis: forget every worker (those of earlier tests, even killed ones)."""
    client = heartbeats.client()
    keys = client.zrange(heartbeats.WORKERS_INDEX, 0, -1)
    client.delete(heartbeats.WORKERS_INDEX, *keys)


@pytest.fixture
def fake_worker(no_workers):
    """The heartbeat of a worker on the ``embeddings`` queue, as `WorkerHeartbeat` writes it (no
    process consumes: what is sent stays in the queue)."""
    key = heartbeats.worker_key("fake@test", 1)
    now = time.time()
    heartbeats.client().set(key, json.dumps({"hostname": "fake@test", "pid": 1, "queues": ["embeddings"],
                                             "last_seen": now}), ex=heartbeats.TTL_SECONDS)
    heartbeats.client().zadd(heartbeats.WORKERS_INDEX, {key: now})
    queues = [settings.EMBEDDINGS_QUEUE] + [f"{settings.EMBEDDINGS_QUEUE}{Channel.sep}{p}" for p in (3, 6, 9)]
    broker().delete(*queues)
    yield queues
    broker().delete(*queues)
    heartbeats.client().delete(key)
    heartbeats.client().zrem(heartbeats.WORKERS_INDEX, key)


def test_no_worker_alive_is_a_503_no_worker_available_and_nothing_is_sent(client, dispatched, no_workers):
    broker().delete(settings.EMBEDDINGS_QUEUE)
    response = post_embeddings(client, {"model": MODEL, "input": TEXTS})
    assert_error(response, 503, param=None, code="no_worker_available", type="server_error")
    assert int(response["Retry-After"]) >= 1
    assert broker().llen(settings.EMBEDDINGS_QUEUE) == 0  # decided before sending: nothing queued
    assert UsageRecord.objects.count() == 0
    assert response["x-ratelimit-limit-requests"]  # the refunded reservation's headers


def test_a_worker_on_another_queue_only_is_no_worker_for_this_one(client, dispatched, fake_worker):
    response = post_embeddings(client, {"model": MODEL, "input": TEXTS, "service_tier": "flex"})
    assert_error(response, 503, param=None, code="no_worker_available", type="server_error")


def test_a_queue_deeper_than_the_bound_is_a_503_server_overloaded(client, dispatched, fake_worker):
    dispatched.EMBEDDINGS_MAX_QUEUE_DEPTH = 5
    broker().lpush(fake_worker[0], *["{}"] * 3)
    broker().lpush(fake_worker[2], *["{}"] * 3)  # a priority sub-queue (kombu's name) counts too
    response = post_embeddings(client, {"model": MODEL, "input": TEXTS})
    assert_error(response, 503, param=None, code="server_overloaded", type="server_error")
    assert int(response["Retry-After"]) >= 1
    assert broker().llen(fake_worker[0]) == 3  # nothing more was sent
    assert UsageRecord.objects.count() == 0


def test_a_queue_within_the_bound_is_sent_to(client, dispatched, fake_worker):
    dispatched.EMBEDDINGS_MAX_QUEUE_DEPTH = 5
    dispatched.EMBEDDINGS_DISPATCH_TIMEOUT = 0.5
    broker().lpush(fake_worker[0], *["{}"] * 5)
    response = post_embeddings(client, {"model": MODEL, "input": TEXTS})
    # Sent (the fake worker never answers, so the deadline passes): the bound did not refuse it.
    assert_error(response, 504, param=None, code="timeout", type="server_error")
    assert broker().llen(fake_worker[0]) > 5
