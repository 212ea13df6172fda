"""Slow clients, body limits and chunked bodies against the live web role (issue 11, item 1).

200 connections each of slow bodies (a key, ``Content-Length: 100``, 1 byte sent), slow headers
(a byte a second) and idle keep-alives must not hold the server: ``/healthz`` still answers
within 1 s and a normal request still succeeds. gunicorn's gthread workers (2 x 16 threads)
failed this: every thread waited on a slow body. Figures per server: bench/slow_clients.py.
"""
from __future__ import annotations

import json
import socket

import httpx
import pytest

from bench.slow_clients import SlowClients, timed_request

pytestmark = pytest.mark.runtime

EMBEDDINGS_LIMIT = 32 * 1024 * 1024  # settings.REQUEST_BODY_MAX_BYTES["/v1/embeddings"], the default


def body(text: str = "a normal request") -> bytes:
    return json.dumps({"model": "all-MiniLM-L6-v2", "input": text}).encode()


def test_200_slow_bodies_slow_headers_and_idle_keep_alives_do_not_hold_the_server(live_web):
    headers = {"Authorization": f"Bearer {live_web.key}", "Content-Type": "application/json"}
    with SlowClients(live_web.host, live_web.port, 200, key=live_web.key) as slow:
        assert slow.still_open() == {"slow_body": 200, "slow_headers": 200, "keep_alive": 200}
        health = [timed_request(live_web.host, live_web.port, "GET", "/healthz", timeout=1.0) for _ in range(5)]
        normal = timed_request(live_web.host, live_web.port, "POST", "/v1/embeddings", body=body(),
                               headers=headers, timeout=10.0)
        held = slow.still_open()
    assert [status for status, _ in health] == [200] * 5, health  # each within 1 s (the timeout)
    assert normal[0] == 200, normal
    assert held["slow_body"] == 200 and held["slow_headers"] == 200, held  # they were really held


def test_a_chunked_body_from_a_real_client_is_read(live_web):
    """httpx sends a generator body chunked (no Content-Length): DRF used to read it as empty
    ("input: This field is required")."""
    def chunks():
        payload = body("chunked hello")
        yield payload[:10]
        yield payload[10:]

    response = httpx.post(f"{live_web.base}/v1/embeddings", content=chunks(), timeout=30,
                          headers={"Authorization": f"Bearer {live_web.key}", "Content-Type": "application/json"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 384


def test_a_chunked_body_larger_than_memory_spooling_arrives_whole(live_web):
    """A chunked body past `config.asgi.SPOOL_MEMORY_BYTES` (2.5 MiB) is spooled to disk and
    replayed in pieces: Django parses all of it (the 3 MiB field at its end is what it refuses)."""
    payload = json.dumps({"model": "all-MiniLM-L6-v2", "input": "hi", "padding": "x" * 3_000_000}).encode()

    def chunks():
        for start in range(0, len(payload), 100_000):
            yield payload[start:start + 100_000]

    response = httpx.post(f"{live_web.base}/v1/embeddings", content=chunks(), timeout=60,
                          headers={"Authorization": f"Bearer {live_web.key}", "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "padding", response.text


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response with a Content-Length: ``(status, headers, body)``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(rest) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def assert_envelope_413(status: int, headers: dict, payload: bytes) -> None:
    assert status == 413, payload
    error = json.loads(payload)["error"]
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error", error
    assert headers["x-request-id"].startswith("req_")


def test_a_body_over_the_route_limit_is_refused_before_it_is_sent(live_web):
    """Headers announce 32 MiB + 1; no body byte is sent, and the 413 envelope comes anyway."""
    with socket.create_connection((live_web.host, live_web.port), timeout=10) as sock:
        sock.sendall((f"POST /v1/embeddings HTTP/1.1\r\nHost: {live_web.host}\r\n"
                      f"Authorization: Bearer {live_web.key}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {EMBEDDINGS_LIMIT + 1}\r\n\r\n").encode())
        assert_envelope_413(*read_response(sock))


def test_a_chunked_body_over_the_route_limit_is_refused_once_it_passes_it(live_web):
    with socket.create_connection((live_web.host, live_web.port), timeout=30) as sock:
        sock.sendall((f"POST /v1/embeddings HTTP/1.1\r\nHost: {live_web.host}\r\n"
                      f"Authorization: Bearer {live_web.key}\r\nContent-Type: application/json\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"x" * (1024 * 1024)
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        try:
            for _ in range(EMBEDDINGS_LIMIT // len(chunk) + 2):
                sock.sendall(frame)
        except OSError:  # the server answered and closed while we were still sending
            pass
        assert_envelope_413(*read_response(sock))


@pytest.mark.parametrize("path, frames", [
    ("/v1/embeddings", b"zz\r\nabc\r\n0\r\n\r\n"),  # a chunk size that is no hex number
    ("/v1/files", b"5\r\nabc\r\n0\r\n\r\n"),  # a chunk shorter than its size
])
def test_a_malformed_chunked_body_is_a_400_in_the_envelope(live_web, path, frames):
    """The server cannot read such a body: 400 ``invalid_body`` in OpenAI's envelope with a request
    id, and the access log has its status (it was a plain-text 500 from the server, logged as 0)."""
    with socket.create_connection((live_web.host, live_web.port), timeout=30) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {live_web.host}\r\nAuthorization: Bearer {live_web.key}\r\n"
                      "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + frames)
        status, headers, payload = read_response(sock)
    assert status == 400, payload
    error = json.loads(payload)["error"]
    assert (error["code"], error["type"], error["param"]) == ("invalid_body", "invalid_request_error", None), error
    assert headers["x-request-id"].startswith("req_") and headers.get("connection") == "close"
    live_web.platform.wait_log(f'"request_id":"{headers["x-request-id"]}"', timeout=30)  # written after the answer
    access = [r for r in live_web.platform.log_records() if r.get("logger") == "config.access"
              and r.get("request_id") == headers["x-request-id"]]
    assert [r["status"] for r in access] == [400], access


def test_a_body_in_a_content_coding_is_a_415_before_it_is_read(live_web):
    """A gzip upload is refused from its headers (20 MB announced, 10 bytes sent: an answer means the
    server did not wait for the body), and a GET carrying the header (no body) is served."""
    with socket.create_connection((live_web.host, live_web.port), timeout=10) as sock:
        sock.sendall((f"POST /v1/files HTTP/1.1\r\nHost: {live_web.host}\r\nAuthorization: Bearer {live_web.key}\r\n"
                      "Content-Type: multipart/form-data; boundary=x\r\nContent-Encoding: gzip\r\n"
                      f"Content-Length: {20 * 1024 * 1024}\r\n\r\n").encode() + b"\x1f\x8b" + b"\0" * 8)
        status, headers, payload = read_response(sock)
    assert status == 415, payload
    error = json.loads(payload)["error"]
    assert (error["code"], error["param"]) == ("unsupported_content_encoding", None), error
    assert "'gzip'" in error["message"] and headers["x-request-id"].startswith("req_")
    response = httpx.get(f"{live_web.base}/v1/models", headers={"Authorization": f"Bearer {live_web.key}",
                                                                 "Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
