"""Errors raised before the view answer in OpenAI's envelope under /v1 (issue 11, item 13).

Where Django sees the fault (a ``Host`` outside ``ALLOWED_HOSTS``, other ``SuspiciousOperation``s,
403s, 404s, 500s) its handlers answer with the envelope under ``/v1``. Oversized request lines
and headers never reach Python: the HTTP server (hyper, under granian) answers them itself with
an empty body: 414 for a request line over 64 KiB, 431 for headers over its buffer
(``WEB_MAX_HEADER_BYTES``, 64 KiB, plus a read's worth). Those are asserted here as the
documented behaviour.
"""
from __future__ import annotations

import socket

import pytest
from django.core.exceptions import SuspiciousOperation
from django.test import Client

from tests.conftest import assert_error


def test_a_disallowed_host_on_v1_is_a_400_envelope(db):
    response = Client().get("/v1/models", HTTP_HOST="attacker.example")
    error = assert_error(response, 400, param=None, code="invalid_host")
    assert "attacker.example" not in error["message"]


def test_a_disallowed_host_elsewhere_keeps_django_s_page(db):
    response = Client().get("/console/", HTTP_HOST="attacker.example")
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")


def test_a_suspicious_operation_before_the_view_is_a_400_envelope(db, monkeypatch):
    from django.middleware.common import CommonMiddleware

    def suspicious(self, request):
        raise SuspiciousOperation("too many fields")

    monkeypatch.setattr(CommonMiddleware, "process_request", suspicious)
    assert_error(Client().get("/v1/models"), 400, param=None, code="bad_request")


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(4096)


@pytest.mark.runtime
def test_oversized_headers_and_request_lines_are_refused_by_the_server(live_web):
    big_header = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 256 * 1024 + b"\r\n\r\n"
    assert raw(live_web.port, big_header).startswith(b"HTTP/1.1 431 ")
    long_path = b"GET /v1/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    assert raw(live_web.port, long_path).startswith(b"HTTP/1.1 414 ")
    # Below the server's limits a long path reaches the application: the envelope.
    reply = raw(live_web.port, b"GET /v1/" + b"a" * 8_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404 ") and b"content-type: application/json" in reply
