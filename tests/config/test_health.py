"""``/healthz`` (liveness) and ``/readyz`` (this process's readiness, plus the platform's state)."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from config import heartbeats


@pytest.fixture
def no_heartbeats():
    """No worker or beat heartbeat left in the suite's Redis by an earlier test."""
    client = heartbeats.client()
    for key in client.scan_iter(match=f"{heartbeats.PREFIX}:*"):
        client.delete(key)  # the suite's own Redis: a scan is fine here


@pytest.fixture
def fresh_heartbeat_client():
    """`heartbeats.client` follows the (overridden) ``REDIS_URL``: it is looked up per URL."""
    yield


def test_healthz_answers_without_touching_anything(settings, fresh_heartbeat_client):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = APIClient().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_is_200_without_workers_and_says_none_is_alive(db, default_model, no_heartbeats, settings):
    from embeddings.services import warm_up

    warm_up()  # this process encodes inline: its models must be loaded to be ready
    response = APIClient().get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ready" and body["failed"] == []
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"] and body["checks"]["models"]["ok"]
    workers = body["platform"]["workers"]
    assert workers["alive"] == 0 and workers["hostnames"] == []
    assert workers["per_queue"] == dict.fromkeys(settings.CELERY_PLATFORM_QUEUES, 0)
    assert body["platform"]["beat"] == {"alive": False, "last_seen_seconds_ago": None}
    assert body["platform"]["rollup"]["last_run_seconds_ago"] is None


def test_readyz_is_503_naming_redis_when_it_is_unreachable(db, default_model, settings, fresh_heartbeat_client):
    from embeddings.services import warm_up

    warm_up()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = APIClient().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready" and body["failed"] == ["redis"]
    assert body["checks"]["redis"]["error"].startswith("unreachable")
    assert body["platform"]["workers"] is None  # unknown, not "none alive"


def test_readyz_is_503_naming_models_when_this_process_has_not_loaded_them(db, no_heartbeats):
    from embeddings.models import EmbeddingModel

    EmbeddingModel.objects.create(name="never-loaded", local_path="/models/never-loaded", dimensions=8,
                                  max_input_tokens=8)
    response = APIClient().get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["models"]
    assert "never-loaded" in response.json()["checks"]["models"]["error"]


def test_rollup_run_is_recorded_and_lag_measured(db, default_model, no_heartbeats, created_key):
    from metering.models import UsageRecord
    from billing.tasks import rollup_usage
    from embeddings.services import warm_up

    warm_up()
    UsageRecord.objects.create(request_id="req_lag", organization=created_key.api_key.project.organization,
                               project=created_key.api_key.project, api_key=created_key.api_key,
                               model=default_model, input_count=1, prompt_tokens=3, total_tokens=3, latency_ms=1)
    body = APIClient().get("/readyz").json()
    assert body["platform"]["rollup"]["lag_seconds"] >= 0 and body["platform"]["rollup"]["last_run_seconds_ago"] is None
    rollup_usage.apply().get()
    body = APIClient().get("/readyz").json()
    assert body["platform"]["rollup"]["lag_seconds"] == 0.0
    assert 0 <= body["platform"]["rollup"]["last_run_seconds_ago"] < 5


def test_readyz_details_only_for_whom_may_read_the_metrics(db, default_model, no_heartbeats, settings):
    """Worker host names, queues and the rollup's timing were told to any caller; a load
    balancer's probe gets the status alone (as /metrics, loopback or its token)."""
    from embeddings.services import warm_up

    warm_up()
    settings.METRICS_TOKEN = "scrape-secret"
    remote = APIClient(REMOTE_ADDR="203.0.113.7")
    body = remote.get("/readyz").json()
    assert body == {"status": "ready", "failed": []}, body
    assert set(remote.get("/readyz", HTTP_AUTHORIZATION="Bearer scrape-secret").json()) == {
        "status", "failed", "checks", "platform"}
    assert set(remote.get("/readyz", HTTP_AUTHORIZATION="Bearer sk-proj-x").json()) == {"status", "failed"}
    assert "platform" in APIClient().get("/readyz").json()  # loopback


def test_warm_up_puts_the_loaded_models_out_of_the_garbage_collectors_reach(db, default_model):
    """After warm-up every object then alive (torch, the model, Django: ~440,000) is frozen
    (``gc.freeze``), so no full collection walks them again while requests wait on the GIL."""
    import gc

    from embeddings.services import engine_for, warm_up

    gc.unfreeze()
    warm_up()
    assert gc.get_freeze_count() > 100_000
    tracked = {id(o) for o in gc.get_objects()}
    assert id(engine_for(default_model)) not in tracked  # frozen objects are in no generation
