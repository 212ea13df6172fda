"""POST /v1/embeddings against Postgres and the real model: every input form and error."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings

MODEL = "all-MiniLM-L6-v2"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "a",
    "Postgres stores every usage record, one row per request, for billing.",
]


def vectors_of(response) -> np.ndarray:
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    assert all(d["object"] == "embedding" for d in data)
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def test_single_string_matches_sentence_transformers(client, reference_encode):
    response = post_embeddings(client, {"model": MODEL, "input": SENTENCES[0]})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == MODEL
    assert body["service_tier"] == "default"
    got = vectors_of(response)
    assert got.shape == (1, 384)
    np.testing.assert_allclose(got, reference_encode(SENTENCES[:1]), atol=1e-5)
    # [CLS] + 10 WordPiece tokens + [SEP]
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}  # Nebius: completion_tokens
    assert response["x-request-id"].startswith("req_")


def test_array_of_strings_in_input_order(client, reference_encode, reference_model):
    response = post_embeddings(client, {"model": MODEL, "input": SENTENCES})
    assert response.status_code == 200
    np.testing.assert_allclose(vectors_of(response), reference_encode(SENTENCES), atol=1e-5)
    expected_tokens = sum(len(reference_model.tokenizer(s)["input_ids"]) for s in SENTENCES)
    assert response.json()["usage"]["prompt_tokens"] == expected_tokens


def test_served_token_ids_embed_like_their_text(client, served_token_ids, reference_encode, reference_model):
    """``register_models --token-ids served``: ids of the model's own tokenizer, as before."""
    bare = [reference_model.tokenizer(s, add_special_tokens=False)["input_ids"] for s in SENTENCES]
    one = post_embeddings(client, {"model": MODEL, "input": bare[0]})
    many = post_embeddings(client, {"model": MODEL, "input": bare})
    assert one.status_code == 200 and many.status_code == 200, (one.content, many.content)
    np.testing.assert_allclose(vectors_of(one), reference_encode(SENTENCES[:1]), atol=1e-5)
    np.testing.assert_allclose(vectors_of(many), reference_encode(SENTENCES), atol=1e-5)
    assert one.json()["usage"]["prompt_tokens"] == len(bare[0]) + 2


def test_alias_is_accepted_and_canonical_name_returned(client):
    response = post_embeddings(client, {"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "hi"})
    assert response.status_code == 200
    assert response.json()["model"] == MODEL


def test_base64_decodes_to_the_float_vector(client):
    floats = vectors_of(post_embeddings(client, {"model": MODEL, "input": SENTENCES, "encoding_format": "float"}))
    response = post_embeddings(client, {"model": MODEL, "input": SENTENCES, "encoding_format": "base64"})
    assert response.status_code == 200
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                        for d in response.json()["data"]])
    assert decoded.shape == (4, 384)
    np.testing.assert_array_equal(decoded, floats)


def test_dimensions_truncates_and_renormalizes(client, matryoshka_model, reference_encode):
    response = post_embeddings(client, {"model": "test-matryoshka", "input": SENTENCES, "dimensions": 64})
    assert response.status_code == 200, response.content
    got = vectors_of(response)
    assert got.shape == (4, 64)
    full = reference_encode(SENTENCES)[:, :64]
    expected = full / np.linalg.norm(full, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_dimensions_equal_to_full_size_is_identity(client, matryoshka_model, reference_encode):
    response = post_embeddings(client, {"model": "test-matryoshka", "input": "hi", "dimensions": 384})
    np.testing.assert_allclose(vectors_of(response), reference_encode(["hi"]), atol=1e-5)


def test_user_and_tier_are_stored(client):
    response = post_embeddings(client, {"model": MODEL, "input": "hi", "user": "user-42", "service_tier": "flex"})
    assert response.status_code == 200
    assert response.json()["service_tier"] == "flex"
    record = UsageRecord.objects.get()
    assert (record.user, record.service_tier) == ("user-42", "flex")


def test_nulls_for_optional_fields_mean_defaults(client):
    response = post_embeddings(client, {"model": MODEL, "input": "hi", "encoding_format": None,
                                        "dimensions": None, "user": None, "service_tier": None})
    assert response.status_code == 200, response.content
    assert isinstance(response.json()["data"][0]["embedding"], list)


def test_truncating_model_cuts_instead_of_rejecting(client, default_model, reference_encode):
    from embeddings.services import embedding_model_register

    embedding_model_register(name="test-truncating", path=default_model.local_path, truncate=True)
    long_text = "word " * 400
    response = post_embeddings(client, {"model": "test-truncating", "input": long_text})
    assert response.status_code == 200, response.content
    assert response.json()["usage"]["prompt_tokens"] == 256
    # sentence-transformers truncates at max_seq_length (256) too.
    np.testing.assert_allclose(vectors_of(response), reference_encode([long_text]), atol=1e-5)


# --- errors: exact status, type, param and code; nothing metered ----------------------------

BAD_BODIES = [
    ({"model": MODEL, "input": ""}, "input", "invalid_value"),
    ({"model": MODEL, "input": []}, "input", "invalid_value"),
    ({"model": MODEL, "input": [[]]}, "input", "invalid_value"),
    ({"model": MODEL, "input": ["ok", ""]}, "input", "invalid_value"),
    ({"model": MODEL, "input": ["ok", 5]}, "input", "invalid_type"),
    ({"model": MODEL, "input": [1, "a"]}, "input", "invalid_type"),
    ({"model": MODEL, "input": [[1, 2], 3]}, "input", "invalid_type"),
    ({"model": MODEL, "input": [[1, 2.5]]}, "input", "invalid_type"),
    ({"model": MODEL, "input": [True]}, "input", "invalid_type"),
    ({"model": MODEL, "input": 42}, "input", "invalid_type"),
    ({"model": MODEL, "input": {"text": "x"}}, "input", "invalid_type"),
    ({"model": MODEL, "input": None}, "input", "invalid_value"),
    ({"model": MODEL}, "input", "missing_required_parameter"),
    ({"input": "hi"}, "model", "missing_required_parameter"),
    ({"model": 5, "input": "hi"}, "model", "invalid_type"),
    ({"model": MODEL, "input": "hi", "encoding_format": "int8"}, "encoding_format", "invalid_value"),
    ({"model": MODEL, "input": "hi", "dimensions": 0}, "dimensions", "invalid_value"),
    ({"model": MODEL, "input": "hi", "dimensions": "64"}, "dimensions", "invalid_value"),
    ({"model": MODEL, "input": "hi", "dimensions": 64}, "dimensions", "unsupported_parameter"),
    ({"model": MODEL, "input": "hi", "user": 7}, "user", "invalid_type"),
    ({"model": MODEL, "input": "hi", "user": "u" * 257}, "user", "invalid_value"),
    ({"model": MODEL, "input": "hi", "service_tier": "priority"}, "service_tier", "invalid_value"),
    ({"model": MODEL, "input": "hi", "temperature": 1}, "temperature", "unknown_parameter"),
    ({"model": MODEL, "input": [-1]}, "input", "invalid_token_id"),
    ({"model": MODEL, "input": [[101, 100277]]}, "input", "invalid_token_id"),  # past cl100k_base
    ({"model": MODEL, "input": [[101, 100265]]}, "input", "invalid_token_id"),  # a gap in cl100k_base
]


@pytest.mark.parametrize(("body", "param", "code"), BAD_BODIES, ids=[f"{p}-{c}-{i}" for i, (_, p, c) in
                                                                    enumerate(BAD_BODIES)])
def test_bad_input_gets_400_envelope_and_is_not_metered(client, body, param, code):
    response = post_embeddings(client, body)
    assert_error(response, 400, param=param, code=code)
    assert UsageRecord.objects.count() == 0


def test_body_that_is_not_an_object(client):
    response = client.post("/v1/embeddings", b'["a"]', content_type="application/json")
    assert_error(response, 400, param=None, code="invalid_type")


def test_unknown_model_is_404_model_not_found(client):
    response = post_embeddings(client, {"model": "text-embedding-3-small", "input": "hi"})
    error = assert_error(response, 404, param="model", code="model_not_found")
    assert "text-embedding-3-small" in error["message"]
    assert UsageRecord.objects.count() == 0


def test_inactive_model_is_404(client, default_model):
    from embeddings.selectors import embedding_models_cache_clear

    default_model.is_active = False
    default_model.save()
    embedding_models_cache_clear()
    assert_error(post_embeddings(client, {"model": MODEL, "input": "hi"}), 404, param="model",
                 code="model_not_found")


def test_dimensions_above_model_size(client, matryoshka_model):
    response = post_embeddings(client, {"model": "test-matryoshka", "input": "hi", "dimensions": 385})
    assert_error(response, 400, param="dimensions", code="invalid_value")


def test_too_many_inputs(client):
    response = post_embeddings(client, {"model": MODEL, "input": ["x"] * 2049})
    error = assert_error(response, 400, param="input", code="too_many_inputs")
    assert "2048" in error["message"]


def test_2048_inputs_are_accepted(client):
    response = post_embeddings(client, {"model": MODEL, "input": [f"item {i}" for i in range(2048)],
                                        "encoding_format": "base64"})
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2048


def test_input_over_context_length_uses_openai_wording(client, reference_model):
    text = "word " * 300  # 300 WordPiece tokens + 2 special tokens
    response = post_embeddings(client, {"model": MODEL, "input": ["fine", text]})
    error = assert_error(response, 400, param="input", code="context_length_exceeded")
    assert error["message"].startswith(
        "This model's maximum context length is 256 tokens, however you requested 302 tokens "
        "(302 in your prompt; 0 for the completion). Please reduce your prompt; or completion length.")
    assert "input[1]" in error["message"]
    assert UsageRecord.objects.count() == 0


def test_served_ids_outside_the_models_vocabulary(client, served_token_ids):
    error = assert_error(post_embeddings(client, {"model": MODEL, "input": [[101, 30522]]}), 400, param="input",
                         code="invalid_token_id")
    assert "30522" in error["message"] and "own tokenizer" in error["message"]
    assert UsageRecord.objects.count() == 0


def test_exactly_max_tokens_is_accepted(client, served_token_ids):
    ids = [2773] * 254  # + [CLS] + [SEP] = 256
    response = post_embeddings(client, {"model": MODEL, "input": ids})
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == 256
    assert_error(post_embeddings(client, {"model": MODEL, "input": ids + [2773]}), 400, param="input",
                 code="context_length_exceeded")


def test_more_than_300k_tokens_per_request(client, served_token_ids):
    # 1,200 inputs x 256 tokens = 307,200 tokens: each input is legal, the sum is not.
    ids = [[2773] * 254] * 1200
    response = post_embeddings(client, {"model": MODEL, "input": ids})
    error = assert_error(response, 400, param="input", code="max_tokens_per_request")
    assert "307200" in error["message"] and "300000" in error["message"]
    assert UsageRecord.objects.count() == 0


# --- project scoping ------------------------------------------------------------------

def test_project_header_naming_the_keys_project_is_fine(client, project):
    response = post_embeddings(client, {"model": MODEL, "input": "hi"}, HTTP_OPENAI_PROJECT=project.public_id)
    assert response.status_code == 200


def test_project_header_naming_another_project_is_403(client, organization):
    from accounts.services import project_get_or_create

    other = project_get_or_create(organization=organization, name="Other")
    response = post_embeddings(client, {"model": MODEL, "input": "hi"}, HTTP_OPENAI_PROJECT=other.public_id)
    assert_error(response, 403, param=None, code="mismatched_project")
    assert UsageRecord.objects.count() == 0


def test_ai_project_id_query_naming_another_project_is_403(client):
    response = client.post("/v1/embeddings?ai_project_id=proj_someoneelse", {"model": MODEL, "input": "hi"},
                           format="json")
    assert_error(response, 403, param=None, code="mismatched_project")


def test_organization_header_naming_another_org_is_403(client):
    response = post_embeddings(client, {"model": MODEL, "input": "hi"}, HTTP_OPENAI_ORGANIZATION="org_other")
    assert_error(response, 403, param=None, code="mismatched_organization")
