"""The Batch API in this process (`run_tasks` runs the batch tasks): files, batches, validation,
per-line errors, metering, cancel, expiry, quota, other projects' objects. The real worker, the
official client and `make serve`: test_batch_worker.py and test_batch_live.py."""
from __future__ import annotations

import orjson
import numpy as np
import pytest

from batches.models import Batch, BatchResult
from metering.models import UsageRecord
from tests.batches.conftest import MODEL, jsonl, request_line, upload
from tests.conftest import assert_error


def create(client, file_id: str, **fields):
    return client.post("/v1/batches", {"input_file_id": file_id, "endpoint": "/v1/embeddings",
                                       "completion_window": "24h", **fields}, format="json")


def content(client, file_id: str) -> list[dict]:
    response = client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200
    return [orjson.loads(line) for line in b"".join(response.streaming_content).splitlines()]


def test_a_batch_runs_every_line_and_meters_each_once(client, run_tasks, reference_encode, settings):
    settings.BATCH_CHUNK_TOKENS = 40  # several chunks
    texts = [f"sentence number {i} of the batch" for i in range(12)]
    lines = [request_line(f"c{i}", {"model": MODEL, "input": text}) for i, text in enumerate(texts)]
    file = upload(client, jsonl(lines)).json()
    assert file["purpose"] == "batch" and file["id"].startswith("file-") and file["status"] == "processed"
    batch = create(client, file["id"], metadata={"job": "nightly"}).json()
    assert batch["status"] == "validating" and batch["metadata"] == {"job": "nightly"}
    run_tasks()
    batch = client.get(f"/v1/batches/{batch['id']}").json()
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    assert batch["error_file_id"] is None
    out = {line["custom_id"]: line for line in content(client, batch["output_file_id"])}
    vectors = np.array([out[f"c{i}"]["response"]["body"]["data"][0]["embedding"] for i in range(12)], dtype=np.float32)
    np.testing.assert_allclose(vectors, reference_encode(texts), atol=1e-5, rtol=0)
    records = UsageRecord.objects.filter(service_tier="batch")
    assert records.count() == 12
    assert batch["usage"]["input_tokens"] == sum(r.total_tokens for r in records)
    assert {out[f"c{i}"]["response"]["request_id"] for i in range(12)} == set(records.values_list("request_id", flat=True))
    assert not BatchResult.objects.exists()


@pytest.fixture
def other_client(db, default_model):
    """A key of another organization's project."""
    from rest_framework.test import APIClient

    from accounts.services import api_key_create, organization_get_or_create, project_get_or_create

    project = project_get_or_create(organization=organization_get_or_create(name="Other"), name="Default")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(project=project, name='other').plaintext}")
    return api


def run_batch(client, run_tasks, lines, **fields) -> dict:
    file = upload(client, jsonl(lines)).json()
    batch = create(client, file["id"], **fields).json()
    run_tasks()
    return client.get(f"/v1/batches/{batch['id']}").json()


# --- Files ---------------------------------------------------------------------------------------------------

def test_files_upload_list_retrieve_content_delete(client, batch_files):
    data = jsonl([request_line("a"), request_line("b")])
    first = upload(client, data, name="first.jsonl").json()
    second = upload(client, data, name="second.jsonl", **{"expires_after[anchor]": "created_at",
                                                            "expires_after[seconds]": "3600"}).json()
    assert (first["filename"], first["bytes"]) == ("first.jsonl", len(data))
    assert second["expires_at"] - second["created_at"] == 3600
    listed = client.get("/v1/files").json()
    assert [f["id"] for f in listed["data"]] == [second["id"], first["id"]] and not listed["has_more"]
    page = client.get("/v1/files", {"limit": 1}).json()
    assert [f["id"] for f in page["data"]] == [second["id"]] and page["has_more"]
    assert [f["id"] for f in client.get("/v1/files", {"limit": 1, "after": second["id"]}).json()["data"]] == [first["id"]]
    assert client.get(f"/v1/files/{first['id']}").json() == first
    response = client.get(f"/v1/files/{first['id']}/content", HTTP_ACCEPT="application/binary")  # the client's
    assert b"".join(response.streaming_content) == data
    assert client.delete(f"/v1/files/{first['id']}").json() == {"id": first["id"], "object": "file", "deleted": True}
    assert_error(client.get(f"/v1/files/{first['id']}"), 404, param="id", code="not_found")
    assert [p.name for p in batch_files.rglob("*.jsonl")] == [f"{second['id']}.jsonl"]


def test_file_uploads_refused(client, batch_files, settings):
    assert_error(upload(client, b"{}\n", purpose="fine-tune"), 400, param="purpose", code="invalid_value")
    assert_error(client.post("/v1/files", {"purpose": "batch"}, format="multipart"), 400, param="file",
                 code="missing_required_parameter")
    assert_error(upload(client, b""), 400, param="file", code="empty_file")
    assert_error(upload(client, b"{}\n", **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}),
                 400, param="expires_after", code="invalid_value")
    settings.BATCH_FILE_MAX_BYTES = 10
    assert_error(upload(client, b"x" * 11), 400, param="file", code="file_too_large")
    settings.BATCH_FILE_MAX_BYTES = 1000
    settings.BATCH_STORAGE_QUOTA_BYTES = 15
    assert upload(client, b"x" * 10).status_code == 200
    assert_error(upload(client, b"x" * 10), 400, param="file", code="storage_quota_exceeded")
    assert len(list(batch_files.rglob("*.jsonl"))) == 1  # the refused upload left no bytes behind


def test_a_multipart_body_that_cannot_be_parsed_is_not_called_json(client, batch_files):
    """A multipart upload with no boundary was answered "We could not parse the JSON body"."""
    response = client.generic("POST", "/v1/files", b"--x\r\n", content_type="multipart/form-data")
    error = assert_error(response, 400, param=None, code="invalid_body")
    assert "multipart/form-data" in error["message"] and "JSON" not in error["message"], error


def test_expired_files_are_deleted_by_the_tick(client, batch_files):
    from datetime import timedelta

    from django.utils import timezone

    from batches.models import File
    from batches.services import batches_tick

    file = upload(client, jsonl([request_line("a")])).json()
    batches_tick(now=timezone.now() + timedelta(days=29))
    assert File.objects.filter(public_id=file["id"]).exists()
    batches_tick(now=timezone.now() + timedelta(days=31))  # BATCH_FILE_RETENTION_SECONDS: 30 days
    assert not File.objects.filter(public_id=file["id"]).exists()
    assert not list(batch_files.rglob("*.jsonl"))


def test_another_projects_files_and_batches_are_404(client, other_client, run_tasks):
    file = upload(client, jsonl([request_line("a")])).json()
    batch = create(client, file["id"]).json()
    for path in (f"/v1/files/{file['id']}", f"/v1/files/{file['id']}/content"):
        assert_error(other_client.get(path), 404, param="id", code="not_found")
    assert_error(other_client.delete(f"/v1/files/{file['id']}"), 404, param="id", code="not_found")
    assert_error(create(other_client, file["id"]), 404, param="id", code="not_found")
    assert_error(other_client.get(f"/v1/batches/{batch['id']}"), 404, param="batch_id", code="not_found")
    assert_error(other_client.post(f"/v1/batches/{batch['id']}/cancel"), 404, param="batch_id", code="not_found")
    assert other_client.get("/v1/files").json()["data"] == []
    assert other_client.get("/v1/batches").json()["data"] == []
    assert [b["id"] for b in client.get("/v1/batches").json()["data"]] == [batch["id"]]


def test_batch_create_refusals(client, batch_files):
    file = upload(client, jsonl([request_line("a")])).json()
    assert_error(create(client, file["id"], endpoint="/v1/chat/completions"), 400, param="endpoint",
                 code="invalid_value")
    assert_error(create(client, file["id"], completion_window="48h"), 400, param="completion_window",
                 code="invalid_value")
    assert_error(create(client, file["id"], metadata={f"k{i}": "v" for i in range(17)}), 400, param="metadata",
                 code="invalid_value")
    assert_error(create(client, file["id"], priority="high"), 400, param="priority", code="unknown_parameter")
    assert_error(create(client, "file-nope"), 404, param="id", code="not_found")
    # OpenAI's metadata is strings: NUL (PostgreSQL's jsonb cannot hold it) in a key or value, a
    # number or a boolean (not turned into text) are refused, never a 500
    for metadata in ({"a\x00": "y"}, {"a": "y\x00"}, {"a": 1}, {"b": 2.5}, {"c": True}, {"k" * 65: "v"}):
        assert_error(create(client, file["id"], metadata=metadata), 400, param="metadata", code="invalid_value")
    assert not Batch.objects.exists()


def test_expires_after_seconds_in_other_than_ascii_digits_is_refused(client, batch_files):
    """``str.isdigit`` holds for superscript and Arabic-Indic digits: the first made ``int`` raise (a
    500), the second was read as 3600."""
    for seconds in ("³⁶⁰⁰", "٣٦٠٠", "3600 ", "+3600", "9" * 5000):
        assert_error(upload(client, b"{}\n", **{"expires_after[anchor]": "created_at",
                                                "expires_after[seconds]": seconds}),
                     400, param="expires_after", code="invalid_value")
    assert upload(client, b"{}\n", **{"expires_after[anchor]": "created_at",
                                       "expires_after[seconds]": "3600"}).status_code == 200


def test_the_upload_form_refuses_unknown_fields_and_a_field_given_twice(client, batch_files):
    """As the JSON endpoints refuse unknown fields; of two file parts one was kept silently."""
    import io

    from batches.models import File

    error = assert_error(upload(client, b"{}\n", extra="1"), 400, param="extra", code="unknown_parameter")
    assert error["message"] == "Unrecognized request argument supplied: extra"
    first, second = io.BytesIO(b"{}\n"), io.BytesIO(b"[]\n")
    first.name, second.name = "a.jsonl", "b.jsonl"
    assert_error(client.post("/v1/files", {"purpose": "batch", "file": [first, second]}, format="multipart"), 400,
                 param="file", code="invalid_value")
    assert_error(client.post("/v1/files", {"purpose": ["batch", "batch"], "file": io.BytesIO(b"{}")},
                             format="multipart"), 400, param="purpose", code="invalid_value")
    assert not File.objects.exists()


def test_a_validation_taken_by_a_worker_that_died_is_sent_again_at_the_next_tick(client, run_tasks):
    """As a dead worker's chunks are: a validation (or finalization) claimed by a worker whose
    heartbeat is gone is sent again at beat's next tick, not after Redis's 300 s visibility timeout
    (a probe's batch stayed validating 307 s); one held by a live worker is left alone."""
    import time
    import types

    from batches.services import batches_tick
    from batches.tasks import claim_chunk
    from config import heartbeats

    file = upload(client, jsonl([request_line("a")])).json()
    ids = [Batch.objects.get(public_id=create(client, file["id"]).json()["id"]).pk for _ in range(2)]
    assert run_tasks.sent == [("batches.validate", (pk,)) for pk in ids]
    run_tasks.sent.clear()
    live = heartbeats.worker_key("live@host")
    heartbeats.client().set(live, b'{"hostname": "live@host"}', ex=60)
    heartbeats.client().zadd(heartbeats.WORKERS_INDEX, {live: time.time()})
    try:
        # Celery's task_received, as each worker fires it on taking the task
        claim_chunk(request=types.SimpleNamespace(name="batches.validate", id="t-0", args=[ids[0]], hostname="dead@host"))
        claim_chunk(request=types.SimpleNamespace(name="batches.validate", id="t-1", args=[ids[1]], hostname="live@host"))
        batches_tick()
        assert run_tasks.sent == [("batches.validate", (ids[0],))]
        batches_tick()  # sent again once: its dispatch time moved on
        assert run_tasks.sent == [("batches.validate", (ids[0],))]
    finally:
        heartbeats.client().delete(live)
        heartbeats.client().zrem(heartbeats.WORKERS_INDEX, live)


def test_the_synchronous_api_refuses_the_batch_tier(client):
    from tests.conftest import post_embeddings

    assert_error(post_embeddings(client, {"model": MODEL, "input": "hi", "service_tier": "batch"}), 400,
                 param="service_tier", code="invalid_value")


# --- Validation ----------------------------------------------------------------------------------------------

MALFORMED = {
    "invalid_json_line": [request_line("a"), b"{not json"],
    "invalid_request": [request_line("a"), b"[1, 2]"],
    "invalid_url": [request_line("a"), {**request_line("b"), "url": "/v1/chat/completions"}],
    "duplicate_custom_id": [request_line("a"), request_line("a")],
    "mismatched_model": [request_line("a"), request_line("b", {"model": "test-matryoshka", "input": "x"})],
    "too_many_requests": [request_line(str(i)) for i in range(4)],
    "too_many_inputs": [request_line("a", {"model": MODEL, "input": ["x", "y"]}),
                        request_line("b", {"model": MODEL, "input": ["x", "y"]})],
    "empty_file": [b"", b"   "],
}


@pytest.mark.parametrize("code", list(MALFORMED))
def test_a_malformed_file_fails_the_batch_and_nothing_runs(client, run_tasks, settings, matryoshka_model, code):
    settings.BATCH_MAX_REQUESTS = 3
    settings.BATCH_MAX_INPUTS = 3
    batch = run_batch(client, run_tasks, MALFORMED[code])
    assert batch["status"] == "failed" and batch["failed_at"], batch
    assert batch["errors"]["data"][0]["code"] == code, batch["errors"]
    assert batch["output_file_id"] is None and batch["request_counts"]["completed"] == 0
    assert not UsageRecord.objects.exists()


@pytest.mark.parametrize("head", [b"", b"\n"], ids=["before-line-1", "alone-on-line-1"])
def test_a_file_opening_with_a_utf8_byte_order_mark_runs(client, run_tasks, head):
    """Windows editors save JSONL with a BOM before the first line: it is not part of that line (a
    line holding only the mark is a blank line, skipped)."""
    file = upload(client, b"\xef\xbb\xbf" + head + jsonl([request_line("a"), request_line("b")])).json()
    batch = create(client, file["id"]).json()
    run_tasks()
    batch = client.get(f"/v1/batches/{batch['id']}").json()
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 2, batch
    assert [line["custom_id"] for line in content(client, batch["output_file_id"])] == ["a", "b"]


def test_a_file_of_only_a_byte_order_mark_is_an_empty_file(client, run_tasks):
    batch = run_batch(client, run_tasks, [b"\xef\xbb\xbf"])
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == "empty_file", batch


def test_bad_lines_go_to_the_error_file_with_the_synchronous_apis_error(client, run_tasks):
    from tests.conftest import post_embeddings

    bodies = {"ok": {"model": MODEL, "input": "fine"},
              "empty": {"model": MODEL, "input": ""},
              "unknown-param": {"model": MODEL, "input": "x", "temperature": 1},
              "too-long": {"model": MODEL, "input": "word " * 400},
              "no-model": {"model": "no-such-model", "input": "x"},
              "dimensions": {"model": MODEL, "input": "x", "dimensions": 3},
              "ok-base64": {"model": MODEL, "input": ["a", "b"], "encoding_format": "base64"}}
    batch = run_batch(client, run_tasks, [request_line(cid, body) for cid, body in bodies.items()])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 7, "completed": 2, "failed": 5}
    errors = {line["custom_id"]: line for line in content(client, batch["error_file_id"])}
    assert set(errors) == {"empty", "unknown-param", "too-long", "no-model", "dimensions"}
    for cid, line in errors.items():
        sync = post_embeddings(client, bodies[cid])
        assert line["response"]["status_code"] == sync.status_code
        assert line["response"]["body"] == sync.json(), cid
        assert line["error"] is None and line["id"].startswith("batch_req_")
    out = {line["custom_id"]: line["response"]["body"] for line in content(client, batch["output_file_id"])}
    assert isinstance(out["ok-base64"]["data"][1]["embedding"], str)
    assert out["ok"]["service_tier"] == "batch"
    assert UsageRecord.objects.filter(service_tier="batch").count() == 2


def test_batch_lines_obey_the_model_allowlists_and_model_uris_as_the_synchronous_api(
        client, run_tasks, project, created_key, matryoshka_model):
    """A line naming a model its project's or its key's allowlist leaves out fails with the
    synchronous API's 403 (the allowlists as they are when its chunk runs) and is not billed; a
    model URI reads as it does there (its own project's: served; another project's: 403); a URI
    naming another model than the batch's other lines is a second model."""
    from tests.conftest import post_embeddings

    def errors_as_the_synchronous_api(bodies: dict, completed: int) -> dict:
        batch = run_batch(client, run_tasks, [request_line(cid, body) for cid, body in bodies.items()])
        assert batch["status"] == "completed", batch
        assert batch["request_counts"] == {"total": len(bodies), "completed": completed,
                                           "failed": len(bodies) - completed}
        errors = {line["custom_id"]: line["response"] for line in content(client, batch["error_file_id"])}
        for cid, response in errors.items():
            sync = post_embeddings(client, bodies[cid])
            assert (response["status_code"], response["body"]) == (sync.status_code, sync.json()), cid
        return {cid: (response["status_code"], response["body"]["error"]["code"]) for cid, response in errors.items()}

    other = {"model": matryoshka_model.name, "input": "x"}
    project.allowed_models = [MODEL]
    project.save()
    assert errors_as_the_synchronous_api({"project-list": other}, 0) == {"project-list": (403, "model_not_allowed")}
    project.allowed_models = []
    project.save()
    created_key.api_key.allowed_models = [MODEL]
    created_key.api_key.save()
    assert errors_as_the_synchronous_api({"key-list": other}, 0) == {"key-list": (403, "model_not_allowed")}
    created_key.api_key.allowed_models = []
    created_key.api_key.save()

    own = f"emb://{project.public_id}/{MODEL}/latest"
    assert errors_as_the_synchronous_api({
        "plain": {"model": MODEL, "input": "x"}, "uri": {"model": own, "input": "x"},
        "foreign-uri": {"model": f"emb://proj_elsewhere/{MODEL}/latest", "input": "x"}}, 2) == {
        "foreign-uri": (403, "mismatched_project")}
    assert UsageRecord.objects.filter(service_tier="batch").count() == 2

    mixed = run_batch(client, run_tasks, [request_line("a", {"model": MODEL, "input": "x"}), request_line(
        "b", {"model": f"emb://{project.public_id}/{matryoshka_model.name}/latest", "input": "x"})])
    assert mixed["status"] == "failed" and [e["code"] for e in mixed["errors"]["data"]] == ["mismatched_model"]


def test_a_deleted_keys_allowlist_still_binds_its_batch(client, project, run_tasks, matryoshka_model):
    """Lines run as the project once the creating key is deleted; that key's allowlist, as it was
    when the batch was made, still applies (no key left to read it from)."""
    from rest_framework.test import APIClient

    from accounts.models import APIKey
    from accounts.services import api_key_create

    created = api_key_create(project=project, name="narrow")
    created.api_key.allowed_models = [MODEL]
    created.api_key.save()
    narrow = APIClient()
    narrow.credentials(HTTP_AUTHORIZATION=f"Bearer {created.plaintext}")
    file = upload(narrow, jsonl([request_line("x", {"model": matryoshka_model.name, "input": "x"})])).json()
    batch = create(narrow, file["id"]).json()
    APIKey.objects.filter(pk=created.api_key.pk).delete()
    run_tasks()
    batch = client.get(f"/v1/batches/{batch['id']}").json()  # another key of the project reads it
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    [line] = content(client, batch["error_file_id"])
    assert (line["response"]["status_code"], line["response"]["body"]["error"]["code"]) == (403, "model_not_allowed")
    assert not UsageRecord.objects.filter(service_tier="batch").exists()


def test_the_enqueued_token_limit_fails_a_batch_at_creation(client, run_tasks, organization):
    from django.core.management import call_command

    call_command("set_limits", "--org", organization.public_id, "--model", MODEL,
                 "--batch-1-day-max-input-tokens", "20")
    batch = run_batch(client, run_tasks, [request_line(str(i)) for i in range(5)])  # 7 tokens each
    assert batch["status"] == "failed"
    assert batch["errors"]["data"][0]["code"] == "token_limit_exceeded"
    assert run_batch(client, run_tasks, [request_line(str(i)) for i in range(2)])["status"] == "completed"


# --- Cancel, expiry, quota -----------------------------------------------------------------------------------

@pytest.fixture
def chunked(settings):
    settings.BATCH_CHUNK_TOKENS = 12  # two lines (5-6 tokens) per chunk
    settings.BATCH_CHUNKS_IN_FLIGHT = 2
    return [request_line(f"c{i}") for i in range(10)]


def test_cancel_stops_within_one_chunk(client, run_tasks, chunked):
    file = upload(client, jsonl(chunked)).json()
    batch = create(client, file["id"]).json()
    assert run_tasks(limit=2) == ["batches.validate", "batches.run_chunk"]  # chunk 0 done, 1 and 2 sent
    cancelled = client.post(f"/v1/batches/{batch['id']}/cancel").json()
    assert cancelled["status"] == "cancelling" and cancelled["cancelling_at"]
    run_tasks()
    batch = client.get(f"/v1/batches/{batch['id']}").json()
    assert batch["status"] == "cancelled" and batch["cancelled_at"]
    assert batch["request_counts"] == {"total": 10, "completed": 2, "failed": 0}
    assert {line["custom_id"] for line in content(client, batch["output_file_id"])} == {"c0", "c1"}
    assert UsageRecord.objects.count() == 2
    assert client.post(f"/v1/batches/{batch['id']}/cancel").json()["status"] == "cancelled"


def test_a_finished_batch_cannot_be_cancelled(client, run_tasks):
    batch = run_batch(client, run_tasks, [request_line("a")])
    assert_error(client.post(f"/v1/batches/{batch['id']}/cancel"), 409, param=None, code="batch_not_cancellable")


def test_a_batch_past_its_window_expires_with_what_completed(client, run_tasks, chunked, settings):
    from batches.services import batches_tick

    settings.BATCH_COMPLETION_WINDOW_SECONDS = 0
    file = upload(client, jsonl(chunked)).json()
    batch = create(client, file["id"]).json()
    run_tasks(limit=2)
    batches_tick()
    run_tasks()
    batch = client.get(f"/v1/batches/{batch['id']}").json()
    assert batch["status"] == "expired" and batch["expired_at"]
    assert batch["request_counts"] == {"total": 10, "completed": 2, "failed": 8}
    assert {line["custom_id"] for line in content(client, batch["output_file_id"])} == {"c0", "c1"}
    errors = content(client, batch["error_file_id"])
    assert {line["custom_id"] for line in errors} == {f"c{i}" for i in range(2, 10)}
    assert all(line["error"]["code"] == "batch_expired" and line["response"] is None for line in errors)


def test_a_quota_that_runs_out_mid_batch_fails_the_rest_with_insufficient_quota(client, run_tasks, chunked,
                                                                                 organization):
    from embeddings.services import tokenizer_for
    from embeddings.models import EmbeddingModel
    from limits.services import limit_set

    tokens = [len(ids) for ids in tokenizer_for(EmbeddingModel.objects.get(name=MODEL)).tokenize(
        [line["body"]["input"] for line in chunked])]
    limit_set(organization=organization, monthly_tokens=sum(tokens[:3]) + 1)  # three lines' worth
    batch = run_batch(client, run_tasks, chunked)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 10, "completed": 3, "failed": 7}
    assert {line["custom_id"] for line in content(client, batch["output_file_id"])} == {"c0", "c1", "c2"}
    errors = content(client, batch["error_file_id"])
    assert len(errors) == 7
    for line in errors:
        assert line["response"]["status_code"] == 429
        assert line["response"]["body"]["error"]["code"] == "insufficient_quota"
    assert sum(UsageRecord.objects.values_list("total_tokens", flat=True)) == sum(tokens[:3])
    assert Batch.objects.get(public_id=batch["id"]).quota_exhausted
