"""Project scoping of a key: every ``ai_project_id`` value and the ``OpenAI-Project`` header are
checked against the key's project (issue 11, item 9)."""
from __future__ import annotations

import pytest

from metering.models import UsageRecord
from tests.conftest import assert_error

BODY = {"model": "all-MiniLM-L6-v2", "input": "hi"}


@pytest.fixture
def other_project(organization):
    from accounts.services import project_get_or_create

    return project_get_or_create(organization=organization, name="Other")


@pytest.mark.parametrize("order", ["other_first", "own_first"])
def test_repeated_ai_project_id_naming_another_project_is_403(client, project, other_project, order):
    ids = [other_project.public_id, project.public_id]
    if order == "own_first":
        ids.reverse()
    query = "&".join(f"ai_project_id={value}" for value in ids)
    response = client.post(f"/v1/embeddings?{query}", BODY, format="json")
    error = assert_error(response, 403, param=None, code="mismatched_project")
    assert other_project.public_id in error["message"]
    assert UsageRecord.objects.count() == 0


def test_repeated_ai_project_id_all_naming_the_keys_project_is_fine(client, project):
    response = client.post(f"/v1/embeddings?ai_project_id={project.public_id}&ai_project_id={project.public_id}",
                           BODY, format="json")
    assert response.status_code == 200, response.content


def test_header_and_query_must_both_name_the_keys_project(client, project, other_project):
    response = client.post(f"/v1/embeddings?ai_project_id={project.public_id}", BODY, format="json",
                           HTTP_OPENAI_PROJECT=other_project.public_id)
    assert_error(response, 403, param=None, code="mismatched_project")


def test_repeated_project_header_is_403(client, project, other_project):
    """A header sent twice reaches WSGI joined by a comma (RFC 9110, 5.3): never one public id."""
    response = client.post("/v1/embeddings", BODY, format="json",
                           HTTP_OPENAI_PROJECT=f"{other_project.public_id},{project.public_id}")
    assert_error(response, 403, param=None, code="mismatched_project")


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/all-MiniLM-L6-v2"])
def test_the_models_endpoints_check_the_project_and_organization_headers_too(client, project, other_project, path):
    """As every other /v1 endpoint does (and OpenAI does on every call): another project or
    organization named is 403, the key's own is fine."""
    error = assert_error(client.get(path, HTTP_OPENAI_PROJECT=other_project.public_id), 403, param=None,
                         code="mismatched_project")
    assert other_project.public_id in error["message"]
    assert_error(client.get(f"{path}?ai_project_id={other_project.public_id}"), 403, param=None,
                 code="mismatched_project")
    assert_error(client.get(path, HTTP_OPENAI_ORGANIZATION="org_nope"), 403, param=None,
                 code="mismatched_organization")
    assert client.get(path, HTTP_OPENAI_PROJECT=project.public_id,
                      HTTP_OPENAI_ORGANIZATION=project.organization.public_id).status_code == 200
