"""The console's quota and rate-limit bars show the limits set by `set_limits` and the real usage."""
from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import Membership
from accounts.services import membership_add
from limits.services import limit_set
from tests.conftest import post_embeddings


def used_now(page: str, figures: str) -> int:
    """The ``used`` figure of the bar whose text ends with ``figures`` ("N of <figures>")."""
    return int(re.search(rf"(\d+) of {re.escape(figures)}", page).group(1))


@pytest.fixture
def signed_in(organization, project):
    user = get_user_model().objects.create_user("quinn", password="pw-quinn-123")
    membership_add(organization=organization, user=user, role=Membership.Role.READER)
    browser = Client()
    browser.force_login(user)
    return browser


def test_projects_page_shows_the_organizations_quota_with_real_usage(signed_in, client, organization):
    limit_set(organization=organization, monthly_tokens=50_000_000, rpm=6)
    responses = [post_embeddings(client, {"model": "all-MiniLM-L6-v2", "input": "hello world"}) for _ in range(3)]
    assert [r.status_code for r in responses] == [200] * 3
    used = sum(r.json()["usage"]["total_tokens"] for r in responses)  # 12 tokens

    page = signed_in.get(f"/console/orgs/{organization.public_id}/").content.decode()
    assert "Quotas and rate limits" in page
    assert f"Monthly tokens · Organization {organization.name}" in page
    assert f"{used} of 50M tokens this month" in page
    # RPM is a bucket refilling 1 request per 10 s: 3 requests just now leave it at 2-3 of 6.
    assert "Requests per minute · Organization" in page
    assert 2 <= used_now(page, "6 requests per minute, now") <= 3


def test_usage_page_adds_the_projects_and_keys_limits(signed_in, client, organization, project, created_key):
    limit_set(organization=organization, project=project, tpm=60)
    limit_set(organization=organization, project=project, api_key=created_key.api_key, rpm=5)
    assert post_embeddings(client, {"model": "all-MiniLM-L6-v2", "input": "hello world"}).status_code == 200

    page = signed_in.get(f"/console/orgs/{organization.public_id}/usage/?project={project.public_id}").content.decode()
    assert f"Tokens per minute · Project {project.name}" in page
    assert 1 <= used_now(page, "60 tokens per minute, now") <= 4  # 4 tokens, refilling 1 per second
    assert f"Requests per minute · Key {created_key.api_key.name}" in page
    assert used_now(page, "5 requests per minute, now") == 1
    assert f"Monthly tokens · Project {project.name}" in page and "4 tokens this month · no limit" in page


def test_no_limits_still_shows_this_months_tokens(signed_in, organization):
    page = signed_in.get(f"/console/orgs/{organization.public_id}/").content.decode()
    assert "0 tokens this month · no limit" in page
