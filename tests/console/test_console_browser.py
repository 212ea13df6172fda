"""The web console in a real headless Chromium against a live server (pytest-django's
``live_server``), with the real model behind ``/v1/embeddings``.

Screenshots of every page land in ``test-artifacts/console/``.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from playwright.sync_api import expect

from accounts.models import APIKey, Membership
from accounts.services import membership_add, organization_get_or_create

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-test-password-42"


@pytest.fixture
def owner(django_user_model):
    user = django_user_model.objects.create_user(username="olivia", email="olivia@example.com", password=PASSWORD)
    membership_add(organization=organization_get_or_create(name="Acme"), user=user, role=Membership.Role.OWNER)
    return user


@pytest.fixture(autouse=True)
def csp_violations(page):
    """Every Content-Security-Policy violation Chromium reports while a test runs: the console's
    policy allows no inline script or style, so a page that needs one fails here."""
    seen = []
    page.on("console", lambda message: seen.append(message.text) if "Content Security Policy" in message.text
            else None)
    yield seen
    assert seen == []


def sign_in(page, live_server, username):
    page.goto(f"{live_server.url}/console/")
    expect(page).to_have_url(re.compile(r"/console/login/"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


@dataclass
class Reply:
    status_code: int
    headers: dict
    body: dict


def embed(live_server, key: str) -> Reply:
    """POST /v1/embeddings over real HTTP to the live server with ``key``."""
    request = urllib.request.Request(
        f"{live_server.url}/v1/embeddings", method="POST",
        data=json.dumps({"model": "all-MiniLM-L6-v2", "input": ["hello world", "the console works"]}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Reply(response.status, dict(response.headers), json.loads(response.read()))
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), json.loads(error.read()))


def copy_shown_key(page, live_server, heading: str) -> str:
    """On the page that shows a new key once (under ``heading``), press Copy as a user would and
    return what reached the clipboard."""
    expect(page.get_by_role("heading", name=heading)).to_be_visible()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    return page.evaluate("navigator.clipboard.readText()")


def test_sign_in_create_project_and_key_call_api_see_usage_revoke(page, live_server, owner, default_model,
                                                                   artifacts_dir):
    shot = lambda name: page.screenshot(path=artifacts_dir / f"{name}.png", full_page=True)  # noqa: E731

    page.goto(f"{live_server.url}/console/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shot("01-sign-in")
    sign_in(page, live_server, "olivia")
    expect(page.get_by_role("heading", name=re.compile("^Acme"))).to_be_visible()
    expect(page.get_by_text("No projects yet.")).to_be_visible()
    expect(page.get_by_role("link", name="API docs")).to_have_attribute("href", "/api/docs/")
    shot("02-projects-empty")

    # Create a project: lands on its (empty) keys page.
    page.get_by_label("Name").fill("Search backend")
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_role("heading", name=re.compile("^Search backend"))).to_be_visible()
    expect(page.get_by_text("No keys yet.")).to_be_visible()
    shot("03-keys-empty")

    # Create a key: the plaintext is shown once, with a copy button.
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    key = copy_shown_key(page, live_server, "Save your key")
    assert key == page.locator("#new-key").input_value()
    assert re.fullmatch(r"sk-proj-[A-Za-z0-9]{43}", key)
    shot("04-key-created")

    # The copied key works against the real model.
    response = embed(live_server, key)
    assert response.status_code == 200, response.body
    body = response.body
    assert len(body["data"]) == 2 and len(body["data"][0]["embedding"]) == 384
    request_id = response.headers["x-request-id"]

    # Back on the keys page: masked, active, used; the plaintext is not on the page any more.
    page.get_by_role("link", name="Done").click()
    row = page.locator("#keys tbody tr", has_text="laptop")
    expect(row).to_contain_text(APIKey.objects.get(name="laptop").masked)
    expect(row).to_contain_text("active")
    expect(row.locator(".last-used")).to_have_text(re.compile(r"^(now|.*seconds? ago)$"))  # used just now
    assert key not in page.content()
    shot("05-keys")

    # The usage page shows the request: its id, its tokens, the chart.
    page.get_by_role("link", name="Usage", exact=True).click()
    expect(page.locator("#recent-requests")).to_contain_text(request_id)
    expect(page.locator("#total-requests")).to_have_text("1")
    expect(page.locator("#total-tokens")).to_have_text(str(body["usage"]["total_tokens"]))
    expect(page.locator("#usage-table")).to_contain_text("all-MiniLM-L6-v2")
    expect(page.locator("#usage-chart rect")).to_have_count(1)
    shot("06-usage-by-model")
    page.get_by_label("Split by").select_option("key")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#usage-table")).to_contain_text("laptop (sk-proj-")
    shot("07-usage-by-key")

    # Revoke, after a confirmation page; the next call gets 401.
    page.get_by_role("link", name="Projects").click()
    page.get_by_role("link", name="Search backend").click()
    page.locator("#keys tbody tr", has_text="laptop").get_by_role("link", name="Revoke").click()
    expect(page.get_by_role("heading", name=re.compile("Revoke key"))).to_be_visible()
    shot("08-revoke-confirm")
    page.get_by_role("button", name="Revoke key").click()
    expect(page.locator("#keys tbody tr", has_text="laptop")).to_contain_text("revoked")
    shot("09-keys-revoked")

    response = embed(live_server, key)
    assert response.status_code == 401
    assert response.body["error"]["code"] == "invalid_api_key"

    page.get_by_role("link", name="Members").click()
    expect(page.locator("#members")).to_contain_text("olivia")
    shot("10-members")


def test_reader_sees_keys_but_no_create_or_revoke_controls(page, live_server, owner, django_user_model,
                                                          artifacts_dir):
    from accounts.models import Organization
    from accounts.services import api_key_create, project_get_or_create

    organization = Organization.objects.get(name="Acme")
    project = project_get_or_create(organization=organization, name="Shared")
    api_key_create(project=project, name="prod", created_by=owner)
    reader = django_user_model.objects.create_user(username="rita", password=PASSWORD)
    membership_add(organization=organization, user=reader, role=Membership.Role.READER)

    sign_in(page, live_server, "rita")
    expect(page.locator("#projects")).to_contain_text("Shared")
    expect(page.get_by_role("button", name="Create project")).to_have_count(0)
    page.get_by_role("link", name="Shared").click()
    expect(page.locator("#keys")).to_contain_text("prod")
    expect(page.get_by_role("button", name="Create key")).to_have_count(0)
    expect(page.get_by_role("link", name="Revoke")).to_have_count(0)
    page.screenshot(path=artifacts_dir / "11-reader-keys.png", full_page=True)


def test_failed_sign_in_says_so_and_first_run_hint_is_gone_once_users_exist(page, live_server, owner):
    page.goto(f"{live_server.url}/console/login/")
    expect(page.locator("#first-run")).to_have_count(0)
    page.get_by_label("Username").fill("olivia")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Please enter a correct username and password")).to_be_visible()


def test_quota_bars_and_api_docs_render(page, live_server, artifacts_dir, db):
    """The quota/rate-limit partial (fed plain data here) draws proportional bars; the API docs
    page renders from locally served assets."""
    from django.template.loader import render_to_string

    bars = [{"label": "Monthly tokens", "used": 12_300_000, "limit": 50_000_000, "unit": "tokens",
             "period": "this month"},
            {"label": "Requests per minute", "used": 2_700, "limit": 3_000, "unit": "requests", "period": "per minute"},
            {"label": "Tokens per minute", "used": 1_000_000, "limit": 1_000_000, "unit": "tokens",
             "period": "per minute"},
            {"label": "Project monthly tokens", "used": 4_200, "limit": None, "unit": "tokens",
             "period": "this month"}]
    html = render_to_string("console/_limit_bars.html", {"limit_bars": bars})
    page.set_content(f'<link rel="stylesheet" href="{live_server.url}/static/console/console.css">'
                     f'<main>{html}</main>')
    expect(page.locator("#limits")).to_contain_text("12.3M of 50M tokens this month")
    expect(page.locator("#limits")).to_contain_text("4.2K tokens this month · no limit")
    track, fill = page.locator(".limit-track").first.bounding_box(), page.locator(".limit-fill").first.bounding_box()
    assert fill["width"] / track["width"] == pytest.approx(0.24, abs=0.01)
    page.screenshot(path=artifacts_dir / "12-limit-bars.png", full_page=True)

    page.goto(f"{live_server.url}/api/docs/")
    expect(page.get_by_role("heading", name=re.compile("Create embeddings"))).to_be_visible(timeout=15000)
    page.screenshot(path=artifacts_dir / "13-api-docs.png")


def test_owner_creates_an_admin_key_and_downloads_a_statement(page, live_server, owner, artifacts_dir):
    """Admin keys and Billing in the nav; the admin key copied from the console reads the
    usage API; the current month's draft statement downloads as JSON equal to the export."""
    from datetime import UTC, datetime, timedelta

    from django.utils import timezone

    from accounts.models import Organization
    from accounts.services import api_key_create, project_get_or_create
    from billing.exports import statement_export_json
    from metering.models import UsageRecord
    from billing.services import month_start, price_initial_set, statement_draft, usage_rollup_build
    from embeddings.models import EmbeddingModel

    organization = Organization.objects.get(name="Acme")
    project = project_get_or_create(organization=organization, name="Search")
    key = api_key_create(project=project, name="prod", created_by=owner).api_key
    model = EmbeddingModel.objects.create(name="bill-browser", local_path="/none", dimensions=8,
                                          max_input_tokens=256)
    price_initial_set(model=model, price_per_million_tokens=Decimal("0.020000"))
    start = datetime.combine(month_start(timezone.now().date()), datetime.min.time(), tzinfo=UTC)
    UsageRecord.objects.create(request_id="req_browser_bill", organization=organization, project=project,
                               api_key=key, model=model, input_count=1, prompt_tokens=1_234_567,
                               total_tokens=1_234_567, latency_ms=3, created_at=start + timedelta(minutes=1))
    usage_rollup_build(start=start, end=timezone.now() + timedelta(hours=1))

    sign_in(page, live_server, "olivia")
    page.get_by_role("link", name="Admin keys").click()
    expect(page.get_by_text("No admin keys yet.")).to_be_visible()
    page.get_by_label("Name").fill("grafana")
    page.get_by_role("button", name="Create admin key").click()
    admin_key = copy_shown_key(page, live_server, "Save your admin key")
    assert re.fullmatch(r"sk-admin-[A-Za-z0-9]{43}", admin_key)
    page.screenshot(path=artifacts_dir / "14-admin-key-created.png", full_page=True)
    start_time = int(start.timestamp())
    request = urllib.request.Request(f"{live_server.url}/v1/organization/usage/embeddings?start_time={start_time}",
                                     headers={"Authorization": f"Bearer {admin_key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        results = [r for b in json.loads(response.read())["data"] for r in b["results"]]
    assert sum(r["input_tokens"] for r in results) == 1_234_567
    page.get_by_role("link", name="Done").click()
    expect(page.locator("#admin-keys tbody tr", has_text="grafana")).to_contain_text("active")
    page.screenshot(path=artifacts_dir / "15-admin-keys.png", full_page=True)

    page.get_by_role("link", name="Billing").click()
    row = page.locator("#statements tbody tr").first
    expect(row).to_contain_text("draft")
    expect(row).to_contain_text("1,234,567")
    expect(row.locator(".amount")).to_have_text("0.02 USD")
    page.screenshot(path=artifacts_dir / "16-billing.png", full_page=True)
    with page.expect_download() as download:
        row.get_by_role("link", name="JSON").click()
    body = json.loads(open(download.value.path()).read())
    draft = statement_draft(organization=organization, period_start=start.date())
    assert body == statement_export_json(draft.statement, draft.lines) and body["total_amount"] == "0.02"


def test_owner_invites_by_email_and_the_invitee_creates_an_account_and_joins(page, live_server, owner, browser,
                                                                             artifacts_dir):
    """Members page: invite an address, copy the link shown once; in another browser the link
    creates an account for that address and lands in the organization."""
    from django.core import mail

    sign_in(page, live_server, "olivia")
    page.get_by_role("link", name="Members").click()
    page.get_by_label("E-mail").fill("newbie@example.com")
    page.locator("#member-invite select[name=role]").select_option("reader")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.locator("#invitation-created")).to_contain_text("An e-mail with this link was sent")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    link = page.evaluate("navigator.clipboard.readText()")
    assert link.startswith(f"{live_server.url}/console/invitations/inv-") and link in mail.outbox[-1].body
    expect(page.locator("#invitations")).to_contain_text("newbie@example.com")
    page.screenshot(path=artifacts_dir / "14-member-invited.png", full_page=True)

    context = browser.new_context()
    invitee = context.new_page()
    violations = []
    invitee.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    invitee.goto(link)
    expect(invitee.get_by_role("heading", name="Join Acme")).to_be_visible()
    invitee.get_by_label("Username").fill("newbie")
    invitee.get_by_label("Password", exact=True).fill("correct-horse-battery-staple-9")
    invitee.get_by_label("Password again").fill("correct-horse-battery-staple-9")
    invitee.screenshot(path=artifacts_dir / "15-invitation.png", full_page=True)
    invitee.get_by_role("button", name="Create account and accept").click()
    expect(invitee.get_by_text("You are now a member of Acme (Reader).")).to_be_visible()
    expect(invitee.get_by_role("heading", name=re.compile("^Acme"))).to_be_visible()
    context.close()
    assert violations == []
    assert Membership.objects.get(user__username="newbie").role == Membership.Role.READER
