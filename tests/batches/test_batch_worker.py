"""A batch on real Celery worker processes (the real Redis broker, the real model): interactive work
goes first, and a worker SIGKILLed in the middle of the batch loses nothing.

One test, two workers started together (the first on both queues, the second on the batch queue
only): (1) while the batch runs, an interactive request's chunk runs in the first forward pass the
first worker starts after receiving it, alone, before the batch's waiting passes (the batch's later
chunks are not even in the broker: `BATCH_CHUNKS_IN_FLIGHT`); (2) the first worker is killed
holding a chunk; the second gets it back (beat's tick sends again the chunks a dead worker claimed,
once its heartbeat expires: `batches.services.batches_tick`, called here as beat would; Redis's own
redelivery comes after the 300 s visibility timeout) and the batch completes:
every line once in the output, each metered once.
"""
from __future__ import annotations

import re
import shutil
import threading
import time

import numpy as np
import orjson
import pytest
from django.conf import settings
from rest_framework.test import APIClient

from batches.models import Batch
from batches.services import batches_tick
from metering.models import UsageRecord
from tests.batches.conftest import MODEL, jsonl, request_line, upload
from tests.conftest import post_embeddings
from tests.workers import WorkerProcess

pytestmark = pytest.mark.worker

QUEUES = "embeddings,embeddings-batch"
WORKER_ENV = {"BATCH_CHUNK_TOKENS": "480", "BATCH_PASS_TOKENS": "240", "BATCH_CHUNKS_IN_FLIGHT": "2"}
TEXTS = [f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(360)]  # ~16 tokens each
CHUNK_RECEIVED = re.compile(r"batches\.run_chunk\[([0-9a-f-]{36})\] received")
CHUNK_DONE = re.compile(r"batches\.run_chunk\[([0-9a-f-]{36})\] succeeded")


def wait(condition, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def test_interactive_work_goes_first_and_a_killed_worker_loses_no_line(transactional_db, created_key, default_model,
                                                                      reference_encode, settings):
    settings.EMBEDDINGS_INLINE_MAX_TOKENS = 0  # the interactive request goes to the worker too
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created_key.plaintext}")
    workers = [WorkerProcess(concurrency=8, env=WORKER_ENV, queues=QUEUES),
               WorkerProcess(concurrency=8, env=WORKER_ENV, queues="embeddings-batch")]
    try:
        for worker in workers:
            worker.wait_ready()
        file = upload(client, jsonl(request_line(f"c{i}", {"model": MODEL, "input": t})
                                    for i, t in enumerate(TEXTS))).json()
        batch_id = client.post("/v1/batches", {"input_file_id": file["id"], "endpoint": "/v1/embeddings",
                                                "completion_window": "24h"}, format="json").json()["id"]
        batch = Batch.objects.get(public_id=batch_id)
        wait(lambda: "batch started model=" in workers[0].log(), 90, "a batch pass on the first worker")

        # (1) An interactive request while batch passes wait in the worker's batcher.
        log = workers[0].log
        start = len(log())
        interactive = {}
        thread = threading.Thread(target=lambda: interactive.update(response=post_embeddings(
            client, {"model": MODEL, "input": [f"interactive {i}" for i in range(40)]})))
        thread.start()
        thread.join(60)
        assert interactive["response"].status_code == 200
        text = log()
        received = text.index("embeddings.encode_chunk[", start)
        started_after = text[received:].count("batch started model=")
        passes = workers[0].batches(received)
        done_before = len(workers[0].batches(0)) - len(passes)
        in_flight = text[:received].count("batch started model=") - done_before  # the pass running then
        assert in_flight in (0, 1) and started_after >= 1
        first_new = passes[in_flight]  # the first pass the worker started after receiving the chunk
        assert first_new["default"] == 1 and first_new["batch"] == 0, passes[:4]

        # (2) Kill the worker while it holds a chunk.
        def holding() -> bool:
            text = log()
            return len(set(CHUNK_RECEIVED.findall(text)) - set(CHUNK_DONE.findall(text))) >= 1
        wait(holding, 30, "a chunk in the worker")
        workers[0].kill()
        assert Batch.objects.get(pk=batch.pk).status == "in_progress"

        def completed() -> bool:
            batches_tick()  # beat's job, every BATCH_TICK_SECONDS
            return Batch.objects.filter(pk=batch.pk, status="completed").exists()
        wait(completed, 120, "the batch", poll=1)
        batch.refresh_from_db()
        assert (batch.total, batch.completed, batch.failed) == (len(TEXTS), len(TEXTS), 0)
        response = client.get(f"/v1/files/{batch.output_file_id}/content")
        lines = [orjson.loads(line) for line in b"".join(response.streaming_content).splitlines()]
        assert sorted(line["custom_id"] for line in lines) == sorted(f"c{i}" for i in range(len(TEXTS)))
        got = {line["custom_id"]: line["response"]["body"]["data"][0]["embedding"] for line in lines}
        vectors = np.array([got[f"c{i}"] for i in range(len(TEXTS))], dtype=np.float32)
        np.testing.assert_allclose(vectors, reference_encode(TEXTS), atol=1e-5, rtol=0)
        records = UsageRecord.objects.filter(service_tier="batch")
        assert records.count() == len(TEXTS)
        assert {line["response"]["request_id"] for line in lines} == set(records.values_list("request_id", flat=True))
        assert batch.input_tokens == sum(records.values_list("total_tokens", flat=True))
    finally:
        for worker in workers:
            worker.stop()
        shutil.rmtree(settings.STORAGES["batch_files"]["OPTIONS"]["location"] + f"/{created_key.api_key.project.organization.public_id}",
                      ignore_errors=True)
