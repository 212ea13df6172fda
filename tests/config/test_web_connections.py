"""The web role (``make serve``) keeps its database connections: Django runs on a fixed pool of
threads per process (`config.asgi`), each holding its connection for ``CONN_MAX_AGE``, so
requests do not each open one (and start a PostgreSQL backend)."""
from __future__ import annotations

import httpx
import pytest

from tests.config.test_observability_live import metrics_now

pytestmark = pytest.mark.runtime

REQUESTS = 40


def new_connections(live_serve) -> float:
    """Database connections every process of the platform opened so far (django-prometheus)."""
    return sum(value for (name, _), value in metrics_now(live_serve).items() if name == "django_db_new_connections_total")


def test_sequential_requests_reuse_the_web_processes_connections(live_serve):
    key = live_serve.key()
    with httpx.Client(base_url=live_serve.base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        assert http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "warm"}).status_code == 200
        before = new_connections(live_serve)
        for i in range(REQUESTS):
            response = http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": f"text {i}"})
            assert response.status_code == 200, response.text
    opened = new_connections(live_serve) - before
    # One per request before the pool (Django's ASGI handler: a new thread, so a new connection, per
    # request); now at most one per thread that served, plus what the worker and beat open meanwhile.
    assert opened <= 8, f"{opened} connections opened for {REQUESTS} requests"
