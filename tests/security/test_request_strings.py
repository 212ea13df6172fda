"""Strings from a ``POST /v1/embeddings`` body that reach the database (issue 11, item 3).

PostgreSQL refuses NUL (U+0000) in text. In a stored or looked-up field it used to fail inside
the database after inference (500, refunded, never counted toward RPM): it is a 400 in the
envelope before admission instead, and counts toward the key's RPM. (Lone surrogates never get
this far: the JSON parser refuses them, 400 ``invalid_json``.)
"""
from __future__ import annotations

import json

import pytest

from limits.services import limit_set
from metering.models import UsageRecord
from tests.conftest import assert_error



def post_raw(client, body: dict):
    """POST ``body`` serialized by ``json.dumps`` (NUL escaped as ``\\u0000``)."""
    return client.post("/v1/embeddings", json.dumps(body), content_type="application/json")


# Every string field of the body, and its answer. Of these only ``user`` is stored
# (UsageRecord.user; request_id is generated, service_tier validated). ``model`` is matched
# against the process's cached registry, never queried with the caller's text (so 404);
# encoding_format and service_tier are matched against fixed choices. Probed all the same.
FIELDS = {"user": (400, "invalid_value"), "model": (404, "model_not_found"),
          "encoding_format": (400, "invalid_value"), "service_tier": (400, "invalid_value")}


@pytest.mark.parametrize("value", ["alice\x00", "\x00"])
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_nul_in_a_body_string_is_a_4xx_before_admission(client, created_key, project, field, value):
    limit_set(organization=project.organization, api_key=created_key.api_key, rpm=100)
    body = {"model": "all-MiniLM-L6-v2", "input": "hello", field: value}
    response = post_raw(client, body)
    status, code = FIELDS[field]
    assert_error(response, status, param=field, code=code)
    assert UsageRecord.objects.count() == 0
    # Counted toward RPM on the rejection path: one request used.
    assert response["x-ratelimit-remaining-requests"] == "99"


def test_valid_user_still_stored(client):
    response = post_raw(client, {"model": "all-MiniLM-L6-v2", "input": "hello", "user": "ünïcode ✓"})
    assert response.status_code == 200, response.content
    assert UsageRecord.objects.get().user == "ünïcode ✓"
