"""The staff console's "Platform status" page (/console/platform/): staff see workers, queues, the
last hour's requests and tokens and the rollup lag; an organization's owner who is not staff gets
403, an anonymous visitor the sign-in page."""
from __future__ import annotations

import re
import time

from django.conf import settings
from django.test import Client

from config import heartbeats
from tests.conftest import post_embeddings
from tests.console.conftest import signed_in

URL = "/console/platform/"


def test_staff_see_the_platform_and_nobody_else(tenants, client, django_user_model):
    assert post_embeddings(client, {"model": "all-MiniLM-L6-v2", "input": "hello world"}).status_code == 200  # 4 tokens
    heartbeats.job_record("billing.rollup_usage", started_at=time.time() - 42)
    staff = django_user_model.objects.create_user(username="sam", password="x", is_staff=True)

    page = signed_in(staff).get(URL)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Platform status" in html
    assert re.search(r'id="requests-last-hour">1<', html) and re.search(r'id="tokens-last-hour"[^>]*>4<', html)
    assert re.search(r'id="rollup-lag">4\d s<', html), html  # 42 s behind: the last run started 42 s ago
    for queue in settings.CELERY_PLATFORM_QUEUES:  # the broker's queues, as /metrics reports them
        assert f"<code>{queue}</code>" in html
    assert 'id="usage-last-hour"' in html and "all-MiniLM-L6-v2" in html
    assert 'href="/console/platform/"' in html  # staff find it in the header

    assert signed_in(tenants["a_owner"]).get(URL).status_code == 403
    assert 'href="/console/platform/"' not in signed_in(tenants["a_owner"]).get("/console/", follow=True).content.decode()
    anonymous = Client().get(URL)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/console/login/")
