"""Helpers to run a real Celery worker process for tests (``celery -A config worker`` as a subprocess).

The worker gets this process's environment with ``DATABASE_URL`` pointed at pytest-django's
test database (``test_<name>``), so it sees the models the tests committed, and the same
``REDIS_URL`` (the broker the tests publish to).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
TASK_RECEIVED = re.compile(r"embeddings\.encode_chunk\[([0-9a-f-]{36})\] received")
TASK_ID = re.compile(r"embeddings\.encode_chunk\[([0-9a-f-]{36})\]")
BATCH_LINE = re.compile(r"batch model=(\S+) items=(\d+) inputs=(\d+) tokens=(\d+) default=(\d+) flex=(\d+)"
                        r"(?: batch=(\d+))?")


def worker_database_url(name: str | None = None) -> str:
    """``DATABASE_URL`` of the test database this process uses (TCP or a Unix socket), or of the
    database ``name`` on the same server."""
    from urllib.parse import quote

    db = {**settings.DATABASES["default"]}
    db["NAME"] = name or db["NAME"]
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    socket_dir = (db.get("OPTIONS") or {}).get("host")
    if socket_dir:
        return f"postgres://{auth}/{db['NAME']}?host={socket_dir}"
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def wait_for_text(read, needle: str, *, timeout: float, start: int = 0, poll: float = 0.1,
                  what: str = "the log") -> None:
    """Block until ``needle`` appears in ``read()`` (a log's text) after offset ``start``; raise
    ``AssertionError`` with the log's tail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in read()[start:]:
            return
        time.sleep(poll)
    raise AssertionError(f"{needle!r} not in {what}:\n{read()[-6000:]}")


class WorkerProcess:
    """One ``celery -A config worker`` subprocess, its log in a temp file."""

    def __init__(self, *, concurrency: int = 16, env: dict[str, str] | None = None,
                 queues: str = "embeddings,embeddings-flex"):
        self.log_path = Path(tempfile.mkstemp(prefix="emb-worker-", suffix=".log")[1])
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        full_env = {**os.environ, "DATABASE_URL": worker_database_url(), "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues,
             "-l", "info", "-n", self.name, "-c", str(concurrency),
             "--without-mingle", "--without-gossip", "--without-heartbeat"],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the worker consumes (models warmed first); raise with its log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if " ready." in text and "Embedding worker ready" in text:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"worker did not start:\n{self.log()[-4000:]}")

    def wait_for(self, needle: str, timeout: float = 60.0, start: int = 0) -> None:
        """Block until ``needle`` appears in the log after offset ``start``."""
        wait_for_text(self.log, needle, timeout=timeout, start=start, poll=0.02, what="the worker's log")

    def batches(self, start: int = 0) -> list[dict]:
        """The batches this worker ran (its ``embeddings.serving.batching`` log lines after offset ``start``)."""
        return [{"model": m[1], "items": int(m[2]), "inputs": int(m[3]), "tokens": int(m[4]),
                 "default": int(m[5]), "flex": int(m[6]), "batch": int(m[7] or 0)}
                for m in BATCH_LINE.finditer(self.log()[start:])]

    def settle(self, timeout: float = 60.0) -> None:
        """Block until every chunk the worker received has finished (succeeded, raised, or was
        dropped as expired) and every batch it started is done: leftover work of an earlier test
        must not count in the next."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            received = set(TASK_RECEIVED.findall(text))
            done = {task_id for line in text.splitlines() if "received" not in line
                    for task_id in TASK_ID.findall(line)}
            finished = text.count("batch model=") + text.count("batch failed model=")
            if received <= done and text.count("batch started model=") == finished:
                return
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the worker dies at once, its unacknowledged chunks stay with Redis."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL after 15 s; removes the log (unless
        ``TEST_KEEP_WORKER_LOGS`` is set)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        if not os.environ.get("TEST_KEEP_WORKER_LOGS"):
            self.log_path.unlink(missing_ok=True)
