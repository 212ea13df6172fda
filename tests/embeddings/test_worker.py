"""Large requests through the real Redis broker to a real Celery worker process.

One worker (``celery -A config worker`` subprocess) serves the module; it warms the model
the module committed to the test database before it consumes. Its per-batch log lines
(`embeddings.serving.batching`) show what it coalesced.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rest_framework.test import APIClient

from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings
from tests.embeddings.test_prompts import search_variants  # noqa: F401 - the fixture
from tests.workers import ROOT, WorkerProcess, worker_database_url

pytestmark = pytest.mark.worker

MODEL = "all-MiniLM-L6-v2"


def corpus(n: int, offset: int = 0) -> list[str]:
    """``n`` short texts of varied length (3 to ~10 tokens; the CI machine's CPU is slow)."""
    words = "the quick brown fox jumps over a lazy dog".split()
    return [" ".join(words[: 1 + i % 6]) + f" {i + offset}" for i in range(n)]


@pytest.fixture(scope="module")
def committed_model(django_db_setup, django_db_blocker):
    """The default model, committed to the test database so the worker warms it at start."""
    from embeddings.models import EmbeddingModel
    from embeddings.services import embedding_model_register_default

    with django_db_blocker.unblock():
        model = embedding_model_register_default()
    yield model
    with django_db_blocker.unblock():
        EmbeddingModel.objects.filter(pk=model.pk).delete()


@pytest.fixture(scope="module")
def worker(committed_model):
    """A real worker; batches of at most 4,096 tokens so that priority between batches shows."""
    process = WorkerProcess(concurrency=24, env={"EMBEDDINGS_MAX_BATCH_TOKENS": "4096"})
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def dispatch_all(settings):
    """Every request goes to the workers, in chunks of at most 1,024 tokens."""
    settings.EMBEDDINGS_INLINE_MAX_TOKENS = 0
    settings.EMBEDDINGS_CHUNK_TOKENS = 1024
    return settings


def wait_batches(worker, start: int, inputs: int, timeout: float = 10.0) -> list[dict]:
    """The worker's batches since log offset ``start``, once they add up to ``inputs`` rows."""
    deadline = time.monotonic() + timeout
    while True:
        batches = worker.batches(start)
        if sum(b["inputs"] for b in batches) >= inputs or time.monotonic() > deadline:
            return batches
        time.sleep(0.05)


def test_1000_inputs_through_the_worker_equal_inline_in_order(worker, client, dispatch_all):
    texts = corpus(1000)
    start = len(worker.log())
    response = post_embeddings(client, {"model": MODEL, "input": texts})
    assert response.status_code == 200, response.content
    body = response.json()
    assert [d["index"] for d in body["data"]] == list(range(1000))
    via_worker = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)

    batches = wait_batches(worker, start, 1000)
    assert sum(b["inputs"] for b in batches) == 1000  # really served by the worker, in several chunks
    assert sum(b["items"] for b in batches) > 1

    dispatch_all.EMBEDDINGS_INLINE_MAX_TOKENS = 10**9  # the same request, inline in this process
    inline = post_embeddings(client, {"model": MODEL, "input": texts, "encoding_format": "base64"})
    assert inline.status_code == 200
    import base64
    inline_vectors = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                               for d in inline.json()["data"]])
    np.testing.assert_allclose(via_worker, inline_vectors, atol=1e-5, rtol=0)

    record = UsageRecord.objects.get(request_id=response["x-request-id"])
    assert record.input_count == 1000 and record.total_tokens == body["usage"]["total_tokens"]


def test_with_threshold_zero_the_api_process_never_loads_a_model(worker, db):
    """A fresh API-like process (threshold 0, real broker) warms up and serves a request through
    the worker without importing sentence-transformers or loading weights."""
    script = (
        "import django, sys; django.setup()\n"
        "from embeddings import services\n"
        "from embeddings.serving import engine\n"
        "from embeddings.selectors import embedding_model_get\n"
        "assert services.warm_up() == ['all-MiniLM-L6-v2']\n"
        "m = embedding_model_get(name='all-MiniLM-L6-v2')\n"
        "ids = services.tokenizer_for(m).tokenize(['hello world'] * 3)\n"
        "v = services.encode_inputs(model=m, token_ids=ids, dimensions=None)\n"
        "assert v.shape == (3, 384), v.shape\n"
        "assert engine.loaded_engines() == [] and 'sentence_transformers' not in sys.modules\n"
        "print('NO-MODEL-OK')\n"
    )
    env = {**os.environ, "DATABASE_URL": worker_database_url(), "EMBEDDINGS_INLINE_MAX_TOKENS": "0",
           "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert "NO-MODEL-OK" in result.stdout, result.stderr[-3000:]


def test_concurrent_requests_from_several_clients_are_coalesced(worker, transactional_db, created_key,
                                                                  default_model, dispatch_all):
    clients, per_client = 12, 40
    worker.settle()  # chunks an earlier test gave up on are done or dropped
    start = len(worker.log())
    barrier = threading.Barrier(clients)
    responses: dict[int, object] = {}

    def call(i: int) -> None:
        from django.db import connection

        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {created_key.plaintext}")
        texts = corpus(per_client, offset=i * 1000)
        barrier.wait()
        try:
            responses[i] = (texts, post_embeddings(api, {"model": MODEL, "input": texts}))
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert len(responses) == clients
    for texts, response in responses.values():
        assert response.status_code == 200, response.content
        assert len(response.json()["data"]) == per_client
    batches = wait_batches(worker, start, clients * per_client)
    assert sum(b["inputs"] for b in batches) == clients * per_client
    # Chunks of different requests shared forward passes: fewer batches than chunks, and
    # at least one batch held the work of several requests.
    assert max(b["items"] for b in batches) >= 3, batches
    assert len(batches) < clients, batches
    assert UsageRecord.objects.count() == clients


def test_flex_requests_go_through_the_flex_queue_to_the_worker(worker, client, dispatch_all, reference_encode):
    """``service_tier: "flex"`` is served by the worker from ``embeddings-flex`` (the batcher's
    precedence of default work over flex is shown in test_worker_batching.py)."""
    texts = corpus(30)
    start = len(worker.log())
    response = post_embeddings(client, {"model": MODEL, "input": texts, "service_tier": "flex"})
    assert response.status_code == 200, response.content
    assert response.json()["service_tier"] == "flex"
    vectors = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, reference_encode(texts), atol=1e-5, rtol=0)
    batches = wait_batches(worker, start, len(texts))
    assert sum(b["flex"] for b in batches) >= 1 and not any(b["default"] for b in batches), batches
    assert "embeddings-flex" in worker.log()  # the worker consumes the flex queue


def test_prompt_variants_through_the_worker_equal_the_reference_and_load_no_second_model(
        worker, client, dispatch_all, search_variants, reference_model):
    """The prompt is applied where the API tokenizes, so the worker embeds exactly what
    ``encode(text, prompt=...)`` does, with the one engine it loaded at start."""
    from tests.embeddings.test_prompts import bert_tokens, reference

    texts = corpus(40)
    plain_tokens = sum(bert_tokens(t) for t in texts)
    start = len(worker.log())
    for name, prompt in search_variants.items():
        response = post_embeddings(client, {"model": name, "input": texts})
        assert response.status_code == 200, response.content
        got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, reference(reference_model, texts, prompt=prompt), atol=1e-5, rtol=0)
        assert response.json()["usage"]["prompt_tokens"] == plain_tokens + len(texts) * (bert_tokens(prompt) - 2)
    assert sum(b["inputs"] for b in wait_batches(worker, start, 80)) == 80  # the worker served both
    assert worker.log().count("Loaded model ") == 1  # at its start; the variants share that engine


def test_worker_failure_is_a_500_envelope_with_the_request_id_and_nothing_metered(worker, client, dispatch_all,
                                                                                   tmp_path):
    """A model whose weights the worker cannot load: the chunk raises in the worker."""
    from embeddings.models import EmbeddingModel

    source = EmbeddingModel.objects.get(name=MODEL).local_path
    broken = tmp_path / "tokenizer-only"
    broken.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(source, name)):
            shutil.copy(os.path.join(source, name), broken / name)
    (broken / "modules.json").write_text("[]")
    EmbeddingModel.objects.create(name="broken", local_path=str(broken), dimensions=384, max_input_tokens=256)

    response = post_embeddings(client, {"model": "broken", "input": ["hello", "world"]})
    error = assert_error(response, 500, param=None, code="internal_error", type="server_error")
    assert response["x-request-id"] in error["message"]
    assert "Traceback" not in response.content.decode()
    assert UsageRecord.objects.count() == 0


def test_deadline_passed_is_a_504_envelope_and_nothing_metered(worker, client, dispatch_all):
    dispatch_all.EMBEDDINGS_DISPATCH_TIMEOUT = 0.05  # seconds: far less than 1,000 inputs take
    started = time.monotonic()
    response = post_embeddings(client, {"model": MODEL, "input": corpus(1000)})
    assert_error(response, 504, param=None, code="timeout", type="server_error")
    assert time.monotonic() - started < 10
    assert UsageRecord.objects.count() == 0
    worker.settle()  # the chunks it held finish or are dropped before the next test


@pytest.fixture
def broker_down():
    """Point this process's Celery app at a closed port (nothing listens on it), then restore."""
    from config.celery import app

    def reset_pools():
        app._pool = None
        app.__dict__["amqp"]._producer_pool = None

    url = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:18399/3"
    reset_pools()
    yield
    app.conf.broker_url = url
    reset_pools()


def test_broker_down_is_a_503_envelope_with_retry_after_within_the_deadline(client, dispatch_all, broker_down):
    started = time.monotonic()
    response = post_embeddings(client, {"model": MODEL, "input": corpus(50)})
    elapsed = time.monotonic() - started
    assert_error(response, 503, param=None, code="service_unavailable", type="server_error")
    assert int(response["Retry-After"]) >= 1
    assert elapsed < 10, elapsed  # the deadline is 60 s: no hang
    assert UsageRecord.objects.count() == 0


def test_worker_killed_mid_request_completes_by_redelivery_or_5xx_and_is_metered_at_most_once(
        worker, transactional_db, created_key, default_model, dispatch_all, reference_encode):
    """SIGKILL the worker while it runs the request's chunks (acks_late: still unacknowledged in
    Redis). A new worker redelivers them once the visibility timeout passes (4 s here; in
    production it exceeds the dispatch deadline, so the caller gets a 504 instead), and the
    request completes with the right vectors, metered exactly once. (kombu's Redis transport has
    a short window, between popping a message and recording it as unacknowledged, in which a
    killed worker loses it; then the caller gets a 504 envelope and nothing is metered.)

    Runs last among this module's tests that need the worker (it kills the module's worker)."""
    dispatch_all.EMBEDDINGS_CHUNK_TOKENS = 256
    dispatch_all.EMBEDDINGS_DISPATCH_TIMEOUT = 90
    texts = corpus(300, offset=7000)
    worker.settle()
    start = len(worker.log())
    result: dict[str, object] = {}

    def call() -> None:
        from django.db import connection

        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {created_key.plaintext}")
        try:
            result["response"] = post_embeddings(api, {"model": MODEL, "input": texts})
        finally:
            connection.close()

    thread = threading.Thread(target=call)
    thread.start()
    worker.wait_for("batch started model=", start=start)  # it holds the chunks and runs the first batch
    worker.kill()
    assert worker.batches(start) == []  # killed before it finished a batch of this request

    replacement = WorkerProcess(concurrency=24, env={"EMBEDDINGS_VISIBILITY_TIMEOUT": "4",
                                                     "EMBEDDINGS_UNACKED_RESTORE_INTERVAL": "1"})
    try:
        replacement.wait_ready()
        thread.join(120)
        response = result["response"]
        if response.status_code == 200:
            vectors = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
            np.testing.assert_allclose(vectors, reference_encode(texts), atol=1e-5, rtol=0)
            assert sum(b["inputs"] for b in replacement.batches()) >= len(texts)
            assert UsageRecord.objects.filter(request_id=response["x-request-id"]).count() == 1
            assert UsageRecord.objects.count() == 1
        else:
            assert_error(response, 504, param=None, code="timeout", type="server_error")
            assert UsageRecord.objects.count() == 0
            print("worker killed: the request got a 504; replacement log:\n", replacement.log()[-3000:])
    finally:
        replacement.stop()
