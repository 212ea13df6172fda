"""The platform as the README starts it: ``make serve`` (embedded PostgreSQL and Valkey, web,
worker, beat under circus) in a fresh copy of the repository, driven by real clients.

Figures (start to first 200, cold and warm) are printed for the closing note (``-s``).
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import openai
import psutil
import pytest

from tests.platform_process import ROOT, VENV, Platform, copy_tree, user_env

pytestmark = pytest.mark.runtime

MODEL = "all-MiniLM-L6-v2"
# Each request below is "hello world": [CLS] hello world [SEP] = 4 tokens.
HELLO_TOKENS = 4


def embed_status(base: str, key: str, text: str = "hello world") -> int:
    """POST /v1/embeddings with urllib (no client retries); the status code."""
    body = json.dumps({"model": MODEL, "input": text}).encode()
    request = urllib.request.Request(f"{base}/v1/embeddings", data=body, method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


class Stream:
    """Requests sent back to back by ``clients`` threads until `stop` (every 4th over the inline
    threshold, so through the worker): each answer's ``(status, x-request-id)``; status 0 when the
    connection failed (a killed server process)."""

    def __init__(self, base: str, key: str, clients: int = 3):
        import threading

        self.base, self.key = base, key
        self.answers: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, client: int) -> None:
        n = 0
        while not self._stop.is_set():
            text = "word " * 60 + f"{client} {n}" if n % 4 == 3 else f"hello world {client} {n}"
            body = json.dumps({"model": MODEL, "input": [text, text]}).encode()
            request = urllib.request.Request(f"{self.base}/v1/embeddings", data=body, method="POST", headers={
                "Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=90) as response:
                    response.read()
                    self.answers.append((response.status, response.headers.get("x-request-id")))
            except urllib.error.HTTPError as exc:
                self.answers.append((exc.code, exc.headers.get("x-request-id")))
            except OSError:
                self.answers.append((0, None))
                time.sleep(0.2)
            n += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


def usage_record_ids(platform: Platform, project: str) -> list[str]:
    """Request ids of every usage record of the project named ``project`` (any organization)."""
    # --no-imports: Django 5.2.x prints its auto-import count to stdout even for ``-c``.
    out = platform.manage("shell", "--no-imports", "--verbosity", "0", "-c", (
        "from metering.models import UsageRecord\n"
        f"print('\\n'.join(UsageRecord.objects.filter(project__name={project!r}).values_list('request_id', flat=True)))"))
    return [line for line in out.splitlines() if line.strip()]


def usage_tokens_today(platform: Platform, admin_key: str) -> int:
    """Input tokens of today's 1d bucket of the organization usage API (OpenAI's shape)."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    status, body = platform.get(f"/v1/organization/usage/embeddings?start_time={int(today.timestamp())}"
                                "&bucket_width=1d", headers={"Authorization": f"Bearer {admin_key}"})
    assert status == 200, body
    return sum(r["input_tokens"] for bucket in json.loads(body)["data"] for r in bucket["results"])


def console_session(platform: Platform, username: str, password: str):
    """A signed-in ``requests`` session on the console; returns (session, organization id)."""
    import requests

    session = requests.Session()
    page = session.get(f"{platform.base}/console/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    answer = session.post(f"{platform.base}/console/login/", headers={"Referer": page.url}, timeout=10,
                          data={"username": username, "password": password, "csrfmiddlewaretoken": token})
    organization = re.search(r"/console/orgs/([^/]+)/", answer.url)
    assert organization, (answer.status_code, answer.url)
    return session, organization.group(1)


def draft_tokens(session, platform: Platform, organization: str) -> tuple[int, str]:
    """Input tokens on this month's draft statement (console JSON download) and the Billing page."""
    month = datetime.now(UTC).strftime("%Y-%m")
    statement = session.get(f"{platform.base}/console/orgs/{organization}/billing/statements/{month}.json",
                            timeout=10)
    assert statement.status_code == 200, statement.text[:500]
    page = session.get(f"{platform.base}/console/orgs/{organization}/billing/", timeout=10)
    assert page.status_code == 200
    return sum(line["input_tokens"] for line in statement.json()["lines"]), page.text


@pytest.fixture
def fresh_copy(tmp_path):
    return copy_tree(tmp_path / "platform")


def test_make_serve_runs_the_whole_platform_and_survives_restarts(fresh_copy):
    platform = Platform("serve", cwd=fresh_copy)
    try:
        cold = platform.wait_ready()
        status, ready = platform.readyz()
        assert status == 200 and ready["failed"] == [], ready
        # every child's lines name it (JSON lines, config.logs); the supervisor runs web, worker and beat
        platform.wait_log('"process":"worker"', timeout=60)
        platform.wait_log('"process":"beat"', timeout=60)
        assert '"process":"web"' in platform.log()
        platform.wait_log(" ready.", timeout=120)
        time.sleep(3)
        idle = platform.processes()
        memory = sum(_uss(p) for p in idle)

        key = platform.manage("create_api_key", "--org", "Acme", "--project", "Default", "--name", "laptop")
        admin_key = platform.manage("create_api_key", "--org", "Acme", "--admin")
        platform.manage("create_console_user", "--username", "owner", "--org", "Acme",
                        "--password", "a-long-test-password-1")
        with openai.OpenAI(base_url=f"{platform.base}/v1", api_key=key, max_retries=0) as client:
            served_at = time.monotonic()
            result = client.embeddings.create(model=MODEL, input=["The food was delicious.", "Embeddings!"])
        assert len(result.data) == 2 and len(result.data[0].embedding) == 384
        tokens = result.usage.total_tokens

        # Quota exact across the two web processes: a project that fits exactly 10 requests.
        quota_key = platform.manage("create_api_key", "--org", "Acme", "--project", "Quota", "--name", "q")
        platform.manage("set_limits", "--org", "Acme", "--project", "Quota",
                        "--monthly-tokens", str(10 * HELLO_TOKENS))
        assert platform.log().count("Started worker-") >= 2  # granian's two processes (WEB_CONCURRENCY)
        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(lambda _: embed_status(platform.base, quota_key), range(64)))
        assert statuses.count(200) == 10 and statuses.count(429) == 54, statuses
        tokens_expected = tokens + 10 * HELLO_TOKENS

        # From here to the usage check, a stream of requests runs while a web process, the worker
        # and the embedded Valkey are each killed outright (SIGKILL): every 200 keeps its usage record.
        stream_key = platform.manage("create_api_key", "--org", "Acme", "--project", "Stream", "--name", "s")
        stream = Stream(platform.base, stream_key)
        time.sleep(2)
        (granian,) = [p for p in platform.children_named("granian") if "granian" not in " ".join(p.parent().cmdline())]
        granian.children()[0].send_signal(signal.SIGKILL)  # one of its processes; granian starts another
        time.sleep(2)

        # The worker killed outright: circus logs it and starts another; a big request then works.
        (old_worker,) = platform.children_named("celery", "worker")
        offset = len(platform.log())
        old_worker.send_signal(signal.SIGKILL)
        platform.wait_log("worker (pid", timeout=15, start=offset)
        assert f"worker (pid {old_worker.pid}) exited with signal 9; restarting" in platform.log()
        platform.wait_log("embeddings@", timeout=120, start=offset)
        platform.wait_log(" ready.", timeout=120, start=offset)
        # 40 x 63 tokens: over both inline thresholds (128; and 2,048 while its web process is busy
        # with the stream's requests), so the worker serves it.
        big = ["word " * 60 + str(i) for i in range(40)]
        with openai.OpenAI(base_url=f"{platform.base}/v1", api_key=key, max_retries=0, timeout=90) as client:
            result = client.embeddings.create(model=MODEL, input=big)
        assert len(result.data) == 40 and result.usage.total_tokens > 2048
        assert "embeddings.encode_chunk" in platform.log()[offset:]
        tokens_expected += result.usage.total_tokens

        # An embedded server killed outright: the launcher restarts it, its data kept.
        (valkey,) = [p for p in platform.processes() if "valkey-server" in " ".join(p.cmdline())]
        offset = len(platform.log())
        valkey.kill()
        platform.wait_log("embedded Valkey restarted", timeout=30, start=offset)
        platform.wait_ready(timeout=60)
        assert embed_status(platform.base, quota_key) == 429  # the spent quota is still enforced
        time.sleep(3)
        stream.stop()
        recorded = usage_record_ids(platform, "Stream")
        served = [rid for status, rid in stream.answers if status == 200]
        refused = [rid for status, rid in stream.answers if status not in (0, 200)]
        assert len(served) >= 20, stream.answers
        assert len(recorded) == len(set(recorded))  # one record per request id
        assert set(served) <= set(recorded), f"200s without a usage record: {set(served) - set(recorded)}"
        assert not set(refused) & set(recorded), "an error answer was billed"
        cut = sum(1 for status, _ in stream.answers if status == 0)
        # A record with no 200 seen is a request the client lost its connection on (a kill)
        assert len(recorded) - len(served) <= cut
        kill_counts = (f"{len(stream.answers)} answers: {len(served)} x 200, {len(refused)} errors "
                       f"({sorted({s for s, _ in stream.answers if s not in (0, 200)})}), {cut} cut off; "
                       f"{len(recorded)} usage records, {len(recorded) - len(served)} without a 200 seen")

        # Fresh figures within 90 s of being served (default rollup interval): usage API, draft.
        # Timed from a request served once the kills above are over (the worker that runs the
        # rollups was restarted meanwhile); by then everything served before it must show too.
        assert embed_status(platform.base, key) == 200
        served_at = time.monotonic()
        tokens_expected += HELLO_TOKENS
        session, organization = console_session(platform, "owner", "a-long-test-password-1")
        deadline = served_at + 90
        while True:
            api_tokens = usage_tokens_today(platform, admin_key)
            statement_tokens, page = draft_tokens(session, platform, organization)
            if api_tokens >= tokens_expected and statement_tokens >= tokens_expected:
                break
            assert time.monotonic() < deadline, (api_tokens, statement_tokens, tokens_expected)
            time.sleep(2)
        fresh_after = time.monotonic() - served_at
        assert f"{statement_tokens:,}" in page or str(statement_tokens) in page
        _, ready = platform.readyz()
        assert ready["platform"]["beat"]["alive"] and ready["platform"]["rollup"]["last_run_seconds_ago"] is not None
        assert all(n >= 1 for n in ready["platform"]["workers"]["per_queue"].values()), ready["platform"]

        elapsed, left = platform.terminate()
        assert not left, f"still running {elapsed:.1f} s after SIGTERM: {left}"
        assert elapsed < 10

        # Started again: the same keys and the same usage are there.
        platform = Platform("serve", cwd=fresh_copy)
        warm = platform.wait_ready()
        assert embed_status(platform.base, key) == 200
        tokens_expected += HELLO_TOKENS
        assert usage_tokens_today(platform, admin_key) >= tokens_expected - HELLO_TOKENS
        assert embed_status(platform.base, quota_key) == 429  # the quota is still spent
        elapsed_again, left = platform.terminate(ctrl_c=True)
        assert not left and elapsed_again < 10
        print(f"\nmake serve: ready in {cold:.1f} s cold, {warm:.1f} s warm; rollup visible after "
              f"{fresh_after:.1f} s; stopped in {elapsed:.1f} s / {elapsed_again:.1f} s; idle: "
              f"{len(idle)} processes, {memory / 2**20:.0f} MiB unique resident memory; kills mid-stream: "
              f"{kill_counts}")
    finally:
        platform.kill()


def _uss(proc: psutil.Process) -> int:
    """Unique resident bytes of ``proc`` (what it alone holds), 0 if it is gone."""
    try:
        return proc.memory_full_info().uss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def test_serve_stops_with_instructions_when_an_embedded_server_cannot_start(tmp_path):
    """A ``var/postgres`` made by another PostgreSQL major: nothing starts, the message says why
    and how to use servers of one's own, and the exit status is 1."""
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "PG_VERSION").write_text("16\n")
    result = subprocess.run([str(VENV / "bin" / "python"), "-m", "config.run", "serve"], cwd=ROOT,
                            env=user_env(VAR_DIR=str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "holds a PostgreSQL 16 cluster" in result.stderr
    assert "DATABASE_URL=postgres://" in result.stderr and "REDIS_URL=" in result.stderr
    assert not (tmp_path / "valkey").exists()  # nothing else was started
