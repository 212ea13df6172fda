"""Through the README's ``make serve`` (the session's `live_serve`): an operator registers Yandex-style
``text-search-query``/``text-search-doc`` variants with ``manage.py register_models``, and the
official ``openai`` client, set up as Yandex AI Studio documents it (``project=<project_id>``, model
URIs), gets the reference vectors inline and from the worker."""
from __future__ import annotations

import re
import subprocess
import time

import numpy as np
import openai
import pytest

from tests.embeddings.test_prompts import BASE, DOC_PROMPT, QUERY_PROMPT, bert_tokens, reference
from tests.platform_process import VENV
from tests.workers import BATCH_LINE

pytestmark = pytest.mark.runtime

QUERIES = ["How do I reset my password?"]  # 10 tokens with the prompt: inline (EMBEDDINGS_INLINE_MAX_TOKENS=128)
DOCUMENTS = [f"Document {i}: open Settings, then Security, then choose Reset password." for i in range(20)]  # ~400


def project_key(live_serve) -> tuple[str, str]:
    """A new project key's plaintext and its project's public id (``create_api_key`` says it on stderr)."""
    platform = live_serve.platform
    result = subprocess.run([str(VENV / "bin" / "python"), "manage.py", "create_api_key", "--org", "yandex-style",
                             "--project", "Default"], cwd=platform.cwd, env=platform.env, capture_output=True,
                            text=True, timeout=120, check=True)
    return result.stdout.strip(), re.search(r"/(proj_\w+)", result.stderr)[1]


def test_yandex_style_variants_through_make_serve_with_the_official_client(live_serve, reference_model):
    live_serve.platform.manage("register_models", "--prompt", f"query={QUERY_PROMPT}", "--prompt",
                               f"document={DOC_PROMPT}", "--variant", "text-search-query=query",
                               "--variant", "text-search-doc=document")
    key, project_id = project_key(live_serve)
    base_url = f"{live_serve.base}/v1"
    with openai.OpenAI(base_url=base_url, api_key=key, project=project_id, max_retries=0) as yandex, \
            openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as plain:
        deadline = time.monotonic() + 15  # each web process re-reads the registry every 5 s
        while "text-search-doc" not in (listed := {m.id: m for m in yandex.models.list()}):
            assert time.monotonic() < deadline, list(listed)
            time.sleep(0.5)
        assert listed["text-search-doc"].model_extra["variant_of"] == BASE
        assert listed["text-search-doc"].model_extra["prompt"] == DOC_PROMPT

        offset = len(live_serve.platform.log())
        query = yandex.embeddings.create(model=f"emb://{project_id}/text-search-query/latest", input=QUERIES)
        docs = yandex.embeddings.create(model=f"emb://{project_id}/text-search-doc/latest", input=DOCUMENTS)
        docs_by_name = plain.embeddings.create(model="text-search-doc", input=DOCUMENTS)
        with pytest.raises(openai.PermissionDeniedError) as other_project:
            yandex.embeddings.create(model="emb://b1g-another-folder/text-search-doc/latest", input=QUERIES)

    np.testing.assert_allclose([d.embedding for d in query.data], reference(reference_model, QUERIES, QUERY_PROMPT),
                               atol=1e-5)
    np.testing.assert_allclose([d.embedding for d in docs.data], reference(reference_model, DOCUMENTS, DOC_PROMPT),
                               atol=1e-5)
    assert [d.embedding for d in docs.data] == [d.embedding for d in docs_by_name.data]
    assert query.usage.prompt_tokens == query.usage.total_tokens == bert_tokens(QUERY_PROMPT + QUERIES[0])
    assert docs.usage.prompt_tokens == sum(bert_tokens(DOC_PROMPT + d) for d in DOCUMENTS)
    assert query.usage.model_extra == {"completion_tokens": 0}  # Nebius' field, parsed by the client
    assert other_project.value.code == "mismatched_project"

    log = live_serve.platform.log()
    worker_batches = [BATCH_LINE.search(record.get("message", "")) for record in live_serve.platform.log_records(offset)
                      if record.get("process") == "worker"]
    assert sum(int(m[3]) for m in worker_batches if m) >= 2 * len(DOCUMENTS)  # the documents went to the worker
    assert "Loaded model " not in log[offset:]  # the variants ran on the engines loaded at start
