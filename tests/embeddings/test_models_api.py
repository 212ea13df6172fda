"""GET /v1/models and /v1/models/{id} in OpenAI's shape."""
from tests.conftest import assert_error


def test_list_models(client, matryoshka_model):
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids == ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "test-matryoshka"]
    first = body["data"][0]
    assert first["object"] == "model" and first["owned_by"] == "system" and isinstance(first["created"], int)
    assert first["dimensions"] == 384 and first["max_input_tokens"] == 256


def test_retrieve_model_by_name_and_alias(client):
    for model_id in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        response = client.get(f"/v1/models/{model_id}")
        assert response.status_code == 200
        assert response.json()["id"] == model_id


def test_retrieve_unknown_model(client):
    assert_error(client.get("/v1/models/text-embedding-3-large"), 404, param=None, code="model_not_found")


def test_models_need_a_key(default_model):
    from rest_framework.test import APIClient

    assert_error(APIClient().get("/v1/models"), 401, param=None, code="invalid_api_key")
