"""Seeing it run, through the README's ``make serve`` (the session's `live_serve`): after requests
of known token counts, ``/metrics`` shows exactly those counts in the request, token and admission
series (a 429 and a 400 in their reason/code series, a dispatched request as a worker chunk); every
log line written while a request is served is one JSON object carrying its request id, and no line
has an ``sk-`` key; ``celery inspect ping`` answers from the running worker; every query of the
Grafana dashboard and of the alert rules names a series the live ``/metrics`` exports."""
from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.config.test_metrics import delta, samples
from tests.platform_process import ROOT, VENV

pytestmark = pytest.mark.runtime

MODEL = "all-MiniLM-L6-v2"
PLATFORM = ROOT / "platform"
# Over EMBEDDINGS_INLINE_MAX_TOKENS (128): [CLS] + 150 x "word" + [SEP], sent to the worker.
LONG_TEXT = "word " * 150
LONG_TOKENS = 152
EXPORTED = re.compile(r"\b((?:embeddings|django)_[a-zA-Z0-9_:]*)\b")


def metrics_now(live_serve) -> dict:
    status, body = live_serve.platform.get("/metrics")
    assert status == 200, body[:500]
    return samples(body)


def celery(live_serve, *args: str) -> str:
    """``celery -A config ARGS`` against the live platform's broker; its stdout."""
    result = subprocess.run([str(VENV / "bin" / "python"), "-m", "celery", "-A", "config", *args], cwd=ROOT,
                            env=live_serve.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def queries(path: Path) -> list[str]:
    """Every PromQL expression of the dashboard (panel targets) or alert rules file at ``path``."""
    if path.suffix == ".json":
        dashboard = json.loads(path.read_text())
        return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    return [rule["expr"] for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def test_metrics_logs_and_workers_through_make_serve(live_serve):
    org, limited_org = f"obs-{uuid.uuid4().hex[:8]}", f"obs-limited-{uuid.uuid4().hex[:8]}"
    key, limited_key = live_serve.key(org=org), live_serve.key(org=limited_org)
    live_serve.platform.manage("set_limits", "--org", limited_org, "--rpm", "1")
    auth = {"Authorization": f"Bearer {key}"}
    before = metrics_now(live_serve)
    bodies = [{"model": MODEL, "input": "hello world"}, {"model": MODEL, "input": ["a b c", "the food was good"]},
              {"model": MODEL, "input": "hello world", "service_tier": "flex"}, {"model": MODEL, "input": LONG_TEXT}]
    log_start = len(live_serve.platform.log())
    with httpx.Client(base_url=live_serve.base, timeout=120) as http:
        served = []
        for body in bodies:
            response = http.post("/v1/embeddings", json=body, headers=auth)
            assert response.status_code == 200, response.text
            served.append((body.get("service_tier", "default"), len(response.json()["data"]),
                           response.json()["usage"]["total_tokens"], response.headers["x-request-id"]))
        long_request_id = served[-1][3]
        assert served[0][2] == 4 and served[-1][2] == LONG_TOKENS  # [CLS] hello world [SEP]
        invalid = http.post("/v1/embeddings", json={"model": MODEL, "input": "x", "encoding_format": "hex"},
                            headers=auth)
        assert invalid.status_code == 400 and invalid.json()["error"]["code"] == "invalid_value"
        limited = [http.post("/v1/embeddings", json={"model": MODEL, "input": "hello world"},
                             headers={"Authorization": f"Bearer {limited_key}"}) for _ in range(2)]
        assert [r.status_code for r in limited] == [200, 429], limited[-1].text
        assert limited[1].json()["error"]["code"] == "rate_limit_exceeded"
        # Nobody opens /metrics with a tenant's key, not even from loopback.
        assert http.get("/metrics", headers=auth).status_code == 403
    after = metrics_now(live_serve)

    endpoint = "/v1/embeddings"
    assert delta(before, after, "embeddings_api_requests_total", endpoint=endpoint, status="200", code="") == 5
    assert delta(before, after, "embeddings_api_requests_total", endpoint=endpoint, status="400",
                 code="invalid_value") == 1
    assert delta(before, after, "embeddings_api_requests_total", endpoint=endpoint, status="429",
                 code="rate_limit_exceeded") == 1
    for tier in ("default", "flex"):
        tokens = sum(t for s, _, t, _ in served if s == tier) + (4 if tier == "default" else 0)  # + limited's
        inputs = sum(n for s, n, _, _ in served if s == tier) + (1 if tier == "default" else 0)
        assert delta(before, after, "embeddings_tokens_total", model=MODEL, service_tier=tier) == tokens, tier
        assert delta(before, after, "embeddings_inputs_total", model=MODEL, service_tier=tier) == inputs, tier
    assert delta(before, after, "embeddings_admission_decisions_total", outcome="admitted") == 5
    assert delta(before, after, "embeddings_admission_decisions_total", outcome="rate_limited_requests") == 1
    assert delta(before, after, "embeddings_usage_records_written_total") == 5
    assert sum(delta(before, after, name, worker=labels[0][1]) for (name, labels) in after
               if name == "embeddings_worker_chunks_total") == 1  # the long request's one chunk

    # Logs: the long request's lines (web: access and any other; worker: received, batch, succeeded).
    def written(log: str) -> bool:  # the worker's last line of the chunk, the access line of all 7 requests
        window = log[log_start:]
        return (any(long_request_id in line and "succeeded in" in line for line in window.splitlines())
                and window.count('"logger":"config.access"') - window.count('"path":"/metrics"') >= 7)

    deadline = time.monotonic() + 60
    while not written(log := live_serve.platform.log()):
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.2)
    lines = live_serve.platform.log_records(log_start)  # each line one JSON object
    about = [line for line in lines if long_request_id in json.dumps(line)]
    processes = {line.get("process") for line in about}
    assert {"web", "worker"} <= processes, about
    for line in about:
        assert line.get("request_id") == long_request_id or long_request_id in line.get("request_ids", []), line
    access = [line for line in lines if line.get("logger") == "config.access" and line.get("path") == endpoint]
    assert len(access) == 7 and all(line.get("request_id", "").startswith("req_") for line in access), access
    assert all(line.get("key_id", "").startswith("key_") and line.get("organization") and line.get("project")
               for line in access)
    assert next(line for line in access if line["request_id"] == long_request_id)["model"] == MODEL
    assert not re.search(r"\bsk-(?!\*\*\*)[A-Za-z0-9_-]", log), "an sk- key in the logs"

    # Workers visible: remote control answers.
    pong = celery(live_serve, "inspect", "ping", "--timeout", "10")
    assert "pong" in pong and "1 node online" in pong, pong
    # A rollup run (as beat sends it), so the rollup series exist; then every dashboard and alert
    # query names a series the live /metrics exports.
    if not any(name == "embeddings_usage_rollup_lag_seconds" for name, _ in metrics_now(live_serve)):
        celery(live_serve, "call", "billing.rollup_usage", "--queue", "billing")  # beat's first is a minute in
    deadline = time.monotonic() + 60
    while not any(name == "embeddings_usage_rollup_lag_seconds" for name, _ in metrics_now(live_serve)):
        assert time.monotonic() < deadline, "no rollup run recorded"
        time.sleep(0.5)
    exported = {name for name, _ in metrics_now(live_serve)}
    for path in (PLATFORM / "grafana" / "embeddings-platform.json", PLATFORM / "prometheus" / "alerts.yml"):
        named = {name for query in queries(path) for name in EXPORTED.findall(query)}
        assert len(named) > 5 and not named - exported, (path.name, sorted(named - exported))
