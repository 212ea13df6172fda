"""The console's Batches page in a real headless Chromium (pytest-django's ``live_server``): a running
batch shows its state, progress and counts and can be cancelled; a completed one its downloads, and
they download. The batch tasks run in this process (`run_tasks`)."""
from __future__ import annotations

import io

import pytest
from playwright.sync_api import expect

from accounts.models import Membership
from accounts.selectors import ResolvedKey
from accounts.services import membership_add
from batches import files, services
from tests.batches.conftest import jsonl, request_line
from tests.console.test_console_browser import PASSWORD, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def new_batch(key, lines) -> str:
    upload = io.BytesIO(jsonl(lines))
    upload.size, upload.name = len(upload.getvalue()), "input.jsonl"
    file = files.file_create(key=key, upload=upload, purpose="batch")
    return services.batch_create(key=key, input_file_id=file.public_id, endpoint="/v1/embeddings",
                                 completion_window="24h").public_id


def test_batches_page_shows_progress_downloads_and_cancels(page, live_server, django_user_model, created_key,
                                                           default_model, run_tasks, settings, artifacts_dir):
    settings.BATCH_CHUNK_TOKENS = 12  # two lines per chunk
    project = created_key.api_key.project
    user = django_user_model.objects.create_user(username="bea", password=PASSWORD)
    membership_add(organization=project.organization, user=user, role=Membership.Role.MEMBER)
    key = ResolvedKey.from_model(created_key.api_key)
    done = new_batch(key, [request_line(f"a{i}") for i in range(3)])
    run_tasks()
    running = new_batch(key, [request_line(f"b{i}") for i in range(10)])
    run_tasks(limit=2)  # validated, one chunk of two lines done

    sign_in(page, live_server, "bea")
    page.goto(f"{live_server.url}/console/orgs/{project.organization.public_id}/projects/{project.public_id}/keys/")
    page.get_by_role("link", name="Batches →").click()
    row = page.locator(f"#batches tr[data-batch={running}]")
    expect(row).to_contain_text("in_progress")
    expect(row.locator("td.num")).to_have_text(["2", "0", "10", row.locator("td.num").nth(3).inner_text()])
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "20")
    finished = page.locator(f"#batches tr[data-batch={done}]")
    expect(finished).to_contain_text("completed")
    page.screenshot(path=artifacts_dir / "20-batches.png", full_page=True)
    with page.expect_download() as download:
        finished.get_by_role("link", name="Output").click()
    lines = open(download.value.path(), "rb").read().splitlines()
    assert sorted(line.split(b'"custom_id":"')[1].split(b'"')[0] for line in lines) == [b"a0", b"a1", b"a2"]

    row.get_by_role("button", name="Cancel").click()
    expect(page.locator(f"#batches tr[data-batch={running}]")).to_contain_text("cancelling")
    run_tasks()
    page.reload()
    expect(page.locator(f"#batches tr[data-batch={running}]")).to_contain_text("cancelled")
