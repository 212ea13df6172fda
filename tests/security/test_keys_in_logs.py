"""No API key in the logs (issue 11, item 10): a key sent in the query string, in headers, in a
bad body, in the path and as the Host reaches the live web role; its captured stdout/stderr
never contains it. gunicorn's access log wrote the request line, query string included."""
from __future__ import annotations

import json
import logging

import httpx
import pytest

from config.logs import redact

pytestmark = pytest.mark.runtime


def test_a_key_sent_every_way_is_never_written_to_the_logs(live_web):
    key = live_web.key
    secret = key.split("-")[-1]  # the random part, whatever prefix a line might keep
    auth = {"Authorization": f"Bearer {key}"}
    before = len(live_web.platform.log())
    with httpx.Client(base_url=live_web.base, timeout=30) as http:
        assert http.get("/v1/models", params={"api_key": key}).status_code == 401
        assert http.get("/v1/models", params={"api_key": key}, headers=auth).status_code == 200
        assert http.get("/v1/models", headers={"X-Api-Key": key, "Authorization": f"Bearer {key}x"}).status_code == 401
        bad = http.post("/v1/embeddings", content=json.dumps({"model": key, "input": ["a", {"x": key}]}),
                        headers={**auth, "Content-Type": "application/json"})
        assert bad.status_code in (400, 404)
        assert http.post("/v1/embeddings", content=f'{{"input": "{key}', headers=auth).status_code in (400, 415)
        assert http.get(f"/v1/{key}", headers=auth).status_code == 404
        assert http.get("/v1/models", headers={"Host": f"{key}.example"}).status_code == 400
        assert http.get(f"/console/?next={key}").status_code in (200, 302)
    # The server's log lines for these requests were written (a key-free log of nothing proves nothing).
    # (JSON lines, config.logs: the access line's fields)
    live_web.platform.wait_log('"path":"/v1/models","status":400', start=before, timeout=30)
    log = live_web.platform.log()[before:]
    assert '"path":"/v1/models","status":401' in log and "Invalid HTTP_HOST header" in log, log[-3000:]
    assert key not in log and secret not in log, [line for line in log.splitlines() if secret in line]


def test_any_log_record_has_its_keys_masked(caplog):
    """The record factory (config.logs) masks every logger's records, arguments and exceptions."""
    key = "sk-proj-Abc_123-xyz"
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("calling with %s", key)
        try:
            raise ValueError(f"bad key {key}")
        except ValueError:
            logging.getLogger("other").exception("failed for %r", {"api_key": key})
    text = "\n".join(caplog.messages) + "\n".join(record.exc_text or "" for record in caplog.records)
    assert key not in text and "sk-***" in text
    assert redact(f"a {key} b sk-admin-Q9") == "a sk-*** b sk-***"
    assert redact("GET /console/invitations/inv-Ab_9-x/ 410") == "GET /console/invitations/inv-***/ 410"
