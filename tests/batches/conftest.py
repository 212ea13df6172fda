"""Fixtures of the Batch API's tests: JSONL files, uploads through the API, and the batch tasks run
in this process in the order they were sent (`run_tasks`), for the tests that need no worker."""
from __future__ import annotations

import io

import orjson
import pytest

MODEL = "all-MiniLM-L6-v2"


def jsonl(lines) -> bytes:
    """One JSON document per line (dicts are dumped; bytes/str lines are taken as they are)."""
    out = []
    for line in lines:
        out.append(line if isinstance(line, bytes) else line.encode() if isinstance(line, str) else orjson.dumps(line))
    return b"\n".join(out) + b"\n"


def request_line(custom_id: str, body: dict | None = None, **fields) -> dict:
    """An input line for ``/v1/embeddings`` (``body`` defaults to one input naming ``custom_id``)."""
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
            "body": body if body is not None else {"model": MODEL, "input": f"text of {custom_id}"}, **fields}


def upload(client, content: bytes, name: str = "input.jsonl", **fields):
    """``POST /v1/files`` (multipart, purpose batch unless ``fields`` says otherwise); the response."""
    handle = io.BytesIO(content)
    handle.name = name
    return client.post("/v1/files", {"purpose": "batch", "file": handle, **fields}, format="multipart")


@pytest.fixture
def batch_files(settings, tmp_path):
    """Batch files in a temporary folder (Django's storage API, as configured)."""
    from django.core.files.storage import storages

    settings.STORAGES = {**settings.STORAGES, "batch_files": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "files")}}}
    storages._storages.pop("batch_files", None)
    yield tmp_path / "files"
    storages._storages.pop("batch_files", None)


@pytest.fixture
def run_tasks(monkeypatch, batch_files):
    """The batch tasks sent by `batches.services.task_send`, run in this process in the order they
    were sent when the test calls ``run_tasks()`` (returns the names run); ``run_tasks.sent`` lists
    what waits."""
    from batches import services, tasks

    sent: list[tuple] = []
    monkeypatch.setattr(services, "task_send", lambda name, *args, task_id=None: sent.append((name, args)))
    bodies = {"batches.validate": tasks.validate, "batches.run_chunk": tasks.run_chunk,
              "batches.finalize": tasks.finalize, "batches.tick": tasks.tick}

    def run(limit: int | None = None) -> list[str]:
        ran = []
        while sent and (limit is None or len(ran) < limit):
            name, args = sent.pop(0)
            bodies[name].run(*args)
            ran.append(name)
        return ran

    run.sent = sent
    return run
