"""The official `openai` client, pointed at a live server, gets correct vectors."""
from __future__ import annotations

import numpy as np
import openai
import pytest

from metering.models import UsageRecord
from tests.embeddings.test_prompts import search_variants  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db(transaction=True)

TEXTS = ["The official client must just work.", "Only base_url and api_key change.", "ok"]


@pytest.fixture
def openai_client(live_server, created_key, default_model):
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=created_key.plaintext, max_retries=0)
    yield client
    client.close()  # ends the keep-alive sockets, so the server threads close their DB connections


def test_default_encoding_base64(openai_client, reference_encode):
    result = openai_client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, reference_encode(TEXTS), atol=1e-5)
    assert [d.index for d in result.data] == [0, 1, 2]
    assert result.model == "all-MiniLM-L6-v2"
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0
    assert UsageRecord.objects.get().total_tokens == result.usage.total_tokens


def test_float_encoding_and_single_string(openai_client, reference_encode):
    result = openai_client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(np.array(result.data[0].embedding, dtype=np.float32), reference_encode(TEXTS[:1])[0],
                               atol=1e-5)


def test_models_list_and_retrieve(openai_client):
    ids = [m.id for m in openai_client.models.list()]
    assert "all-MiniLM-L6-v2" in ids
    assert openai_client.models.retrieve("all-MiniLM-L6-v2").id == "all-MiniLM-L6-v2"


def test_errors_surface_as_the_clients_typed_exceptions(openai_client, live_server):
    with pytest.raises(openai.NotFoundError) as not_found:
        openai_client.embeddings.create(model="text-embedding-3-small", input="x")
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.embeddings.create(model="all-MiniLM-L6-v2", input="")
    assert bad.value.param == "input"
    with openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-proj-wrong", max_retries=0) as wrong_key, \
            pytest.raises(openai.AuthenticationError) as unauthorized:
        wrong_key.embeddings.create(model="all-MiniLM-L6-v2", input="x")
    assert unauthorized.value.code == "invalid_api_key"
    assert UsageRecord.objects.count() == 0


def test_yandex_style_client_with_project_and_a_model_uri(live_server, created_key, project, search_variants,
                                                          reference_model):
    """OpenAI's client as Yandex AI Studio documents it: ``project=`` (sent as ``OpenAI-Project``) and
    ``emb://<project_id>/<model>/latest``; the response's ``usage.completion_tokens`` parses."""
    from tests.embeddings.test_prompts import QUERY_PROMPT, reference

    with openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=created_key.plaintext, project=project.public_id,
                       max_retries=0) as client:
        result = client.embeddings.create(model=f"emb://{project.public_id}/text-search-query/latest", input=TEXTS)
        with pytest.raises(openai.PermissionDeniedError) as other:
            client.embeddings.create(model="emb://proj_other/text-search-query/latest", input=TEXTS)
    np.testing.assert_allclose([d.embedding for d in result.data], reference(reference_model, TEXTS, QUERY_PROMPT),
                               atol=1e-5)
    assert result.model == "text-search-query" and result.usage.model_extra == {"completion_tokens": 0}
    assert other.value.code == "mismatched_project"
