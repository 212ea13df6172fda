"""A worker SIGKILLed while it holds a request's chunks, on the roles as deployed: ``make web``
and two ``make worker`` (issue 11, item 5).

The web process sees the worker stop being alive when its heartbeat key expires (15 s, three
missed beats; `config.heartbeats`), sends the chunks that worker had claimed to the queue
again, and the other worker computes them: the request returns 200 with the right vectors,
within its normal time plus 15 s, and is metered once. (Before: the caller waited the full
dispatch deadline for a 504, and the chunks waited for the 300 s visibility timeout.)
"""
from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest
from django.conf import settings

from metering.models import UsageRecord
from tests.platform_process import Platform, user_env
from tests.workers import worker_database_url

pytestmark = pytest.mark.runtime

MODEL = "all-MiniLM-L6-v2"
TEXTS = [f"the quick brown fox jumps over the lazy dog, line {i}" for i in range(300)]


def test_worker_killed_holding_chunks_the_request_still_returns_200_metered_once(
        transactional_db, created_key, default_model, reference_encode):
    env = user_env(DATABASE_URL=worker_database_url(), REDIS_URL=settings.REDIS_URL,
                   EMBEDDINGS_INLINE_MAX_TOKENS="0", EMBEDDINGS_CHUNK_TOKENS="256", EMBEDDINGS_DISPATCH_TIMEOUT="90",
                   EMBEDDINGS_MAX_BATCH_TOKENS="1024", WEB_CONCURRENCY="1")
    tag = uuid.uuid4().hex[:6]
    workers = [Platform("worker", env={**env, "QUEUES": "embeddings", "WORKER_NAME": f"kill-{tag}-{n}@%h"})
               for n in range(2)]
    web = Platform("web", env=env)
    result: dict = {}
    try:
        for worker in workers:
            worker.wait_log("Embedding worker ready", timeout=120)
            worker.wait_log(" ready.", timeout=60)
        web.wait_ready(timeout=120)
        starts = [len(w.log()) for w in workers]

        def call() -> None:
            request = urllib.request.Request(
                web.base + "/v1/embeddings", data=json.dumps({"model": MODEL, "input": TEXTS}).encode(),
                headers={"Authorization": f"Bearer {created_key.plaintext}", "Content-Type": "application/json"})
            started = time.monotonic()
            with urllib.request.urlopen(request, timeout=120) as response:
                result.update(status=response.status, body=json.loads(response.read()),
                              request_id=response.headers["x-request-id"], elapsed=time.monotonic() - started)

        thread = threading.Thread(target=call)
        thread.start()
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline:  # the first worker that runs a batch
            victim = next((w for w, s in zip(workers, starts) if "batch started model=" in w.log()[s:]), None)
            time.sleep(0.02)
        assert victim is not None, workers[0].log()[-3000:]
        victim.kill()
        killed_at = time.monotonic()
        thread.join(120)
        assert result.get("status") == 200, (result, web.log()[-4000:])
        print(f"kill -> 200 in {time.monotonic() - killed_at:.1f} s (request {result['elapsed']:.1f} s)")
        vectors = np.array([d["embedding"] for d in result["body"]["data"]], dtype=np.float32)
        np.testing.assert_allclose(vectors, reference_encode(TEXTS), atol=1e-5, rtol=0)
        assert UsageRecord.objects.filter(request_id=result["request_id"]).count() == 1
        assert UsageRecord.objects.count() == 1
        assert "sending it again" in web.log()
    finally:
        for role in (web, *workers):
            role.kill()
