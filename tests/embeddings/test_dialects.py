"""The other providers' dialects of ``POST /v1/embeddings``: Yandex AI Studio's (``Authorization:
Api-Key <key>``, model URIs ``emb://<project_id>/<model>/latest``) and Nebius' (``usage.completion_tokens``)."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings
from tests.embeddings.test_prompts import TEXTS, search_variants  # noqa: F401 - the fixture

BODY = {"input": TEXTS, "encoding_format": "base64"}


@pytest.fixture
def yandex_client(created_key, default_model) -> APIClient:
    """A client that sends the key as Yandex AI Studio's clients send theirs."""
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {created_key.plaintext}")
    return api


def test_api_key_and_model_uri_give_what_bearer_and_the_plain_name_give(client, yandex_client, project,
                                                                       search_variants):
    for name in ("text-search-doc", "text-search-query"):
        plain = post_embeddings(client, {**BODY, "model": name})
        for uri in (f"emb://{project.public_id}/{name}/latest", f"emb://{project.public_id}/{name}/"):
            yandex = post_embeddings(yandex_client, {**BODY, "model": uri})
            assert yandex.status_code == 200, yandex.content
            assert yandex.json()["data"] == plain.json()["data"]  # the same float32 bytes
            assert yandex.json()["usage"] == plain.json()["usage"] and yandex.json()["model"] == name
    assert set(UsageRecord.objects.values_list("model__name", flat=True)) == {"text-search-doc", "text-search-query"}


def test_a_model_uri_naming_another_project_is_403_before_any_work(yandex_client, organization, search_variants):
    from accounts.services import project_get_or_create

    other = project_get_or_create(organization=organization, name="Other")
    for project_id in (other.public_id, "b1g-some-yandex-folder"):
        response = post_embeddings(yandex_client, {**BODY, "model": f"emb://{project_id}/text-search-doc/latest"})
        error = assert_error(response, 403, param=None, code="mismatched_project")
        assert project_id in error["message"]
    assert UsageRecord.objects.count() == 0


@pytest.mark.parametrize("uri", ["emb://{p}/text-search-doc/rc", "emb://{p}/text-search-doc/latest/x",
                                 "emb://{p}", "emb:///text-search-doc/latest", "emb://{p}/no-such-model/latest"])
def test_other_model_uris_are_unknown_models(client, project, search_variants, uri):
    response = post_embeddings(client, {**BODY, "model": uri.format(p=project.public_id)})
    assert_error(response, 404, param="model", code="model_not_found")


def test_a_bad_api_key_is_401_and_admin_routes_take_only_bearer(db, created_key, default_model, organization):
    from accounts.services import admin_api_key_create

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Api-Key sk-proj-not-a-key")
    assert_error(post_embeddings(api, {**BODY, "model": "all-MiniLM-L6-v2"}), 401, param=None,
                 code="invalid_api_key")
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {admin_api_key_create(organization=organization, name='a').plaintext}")
    error = assert_error(api.get("/v1/organization/costs?start_time=0"), 401, param=None, code="invalid_api_key")
    assert "Bearer" in error["message"]


def test_usage_has_completion_tokens_zero_for_nebius(client):
    usage = post_embeddings(client, {**BODY, "model": "all-MiniLM-L6-v2"}).json()["usage"]
    assert usage["completion_tokens"] == 0 and usage["prompt_tokens"] == usage["total_tokens"] > 0
