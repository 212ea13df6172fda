"""The session's shared ``make serve`` (tests/live.py) answers the official client, and its
keys are its own (the suite's database does not know them)."""
from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.runtime


def test_the_shared_make_serve_embeds_through_the_official_client(live_serve):
    key = live_serve.key()
    with openai.OpenAI(base_url=f"{live_serve.base}/v1", api_key=key, max_retries=0) as client:
        result = client.embeddings.create(model="all-MiniLM-L6-v2", input=["hello", "world"])
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0
