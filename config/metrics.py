"""Prometheus metrics: the platform's own series, the ``/metrics`` endpoint and who may read it.

Libraries, not a hand-written exporter: prometheus_client (multiprocess mode) and django-prometheus
(HTTP and database series, ``django_http_*`` / ``django_db_*``). Each host serves one ``/metrics``
covering all its processes: every platform process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (set per run by `config.run`, under ``VAR_DIR/metrics``), and the view
reads them all (`metrics_registry`). A host running only workers serves the same page on
``METRICS_PORT`` (`serve_metrics_port`). Unset (tests, ``manage.py``), each process has its own.

Units are the field's: seconds, tokens, bytes. No label carries a tenant id (cardinality).

Series defined here (besides the engine's and batcher's in `embeddings.serving.metrics`):

* ``embeddings_api_requests_total{endpoint,status,code}``: every ``/v1`` response; ``code`` is the
  error envelope's code (``""`` on success);
* ``embeddings_request_duration_seconds``: ``/v1/embeddings`` latency, arrival to response;
  ``embeddings_request_phase_seconds{phase}``: its phases, `PHASES` (``encode`` excludes
  ``queue_wait``: the time its work waited in a batcher, and for dispatched requests on the broker);
* ``embeddings_tokens_total{model,service_tier}``, ``embeddings_inputs_total{model,service_tier}``:
  tokens (the billed count) and inputs of successful requests;
* ``embeddings_admission_decisions_total{outcome}``: `ADMISSION_OUTCOMES`;
* ``embeddings_usage_records_written_total``; ``embeddings_usage_rollup_duration_seconds``;
* workers: ``embeddings_worker_chunks_total{worker}``, ``embeddings_worker_encode_seconds_total{worker}``,
  ``embeddings_worker_chunks_in_progress{worker}`` (0 = idle), ``embeddings_worker_info{worker,device}``;
* read when scraped (`PlatformStateCollector`, from `config.platform_state`):
  ``embeddings_queue_depth{queue}``, ``embeddings_queue_oldest_message_age_seconds{queue}``,
  ``embeddings_workers_alive{queue}``, ``embeddings_beat_alive``,
  ``embeddings_usage_rollup_lag_seconds``, ``embeddings_usage_rollup_last_run_timestamp_seconds``,
  ``embeddings_platform_state_up``.
"""
from __future__ import annotations

import contextvars
import hmac
import ipaddress
import logging
import os
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: from a 1 ms inline query to the 60 s dispatch deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# The phases of one /v1/embeddings request, in order (ARCHITECTURE.md, "One request").
PHASES = ("auth", "validation", "tokenization", "admission", "queue_wait", "encode", "metering")
# Admission outcomes: admitted; each 429 reason (RPM, TPM, monthly quota); 503 (store down, policy closed).
ADMISSION_OUTCOMES = ("admitted", "rate_limited_requests", "rate_limited_tokens", "insufficient_quota",
                      "unavailable")

API_REQUESTS = Counter("embeddings_api_requests_total", "Responses of the /v1 API by endpoint (route), "
                       "HTTP status and error code ('' on success).", ["endpoint", "status", "code"])
REQUEST_DURATION = Histogram("embeddings_request_duration_seconds",
                             "Latency of POST /v1/embeddings, from arrival to response (seconds).",
                             buckets=LATENCY_BUCKETS)
REQUEST_PHASE = Histogram("embeddings_request_phase_seconds",
                          "Seconds POST /v1/embeddings spent in each phase (encode excludes queue_wait).",
                          ["phase"], buckets=LATENCY_BUCKETS)
TOKENS = Counter("embeddings_tokens_total", "Tokens embedded by successful requests (the billed count, special "
                 "tokens included).", ["model", "service_tier"])
INPUTS = Counter("embeddings_inputs_total", "Inputs embedded by successful requests.", ["model", "service_tier"])
ADMISSION = Counter("embeddings_admission_decisions_total", "Admission decisions on /v1/embeddings by outcome.",
                    ["outcome"])
USAGE_RECORDS = Counter("embeddings_usage_records_written_total", "Usage records written (one per successful "
                        "request).")
ROLLUP_DURATION = Histogram("embeddings_usage_rollup_duration_seconds", "Seconds one usage rollup run took.",
                            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0))
WORKER_CHUNKS = Counter("embeddings_worker_chunks_total", "Chunks a worker finished (encoded and returned).",
                        ["worker"])
WORKER_ENCODE_SECONDS = Counter("embeddings_worker_encode_seconds_total",
                                "Seconds of forward passes of the batches a worker's chunks ran in.", ["worker"])
WORKER_IN_PROGRESS = Gauge("embeddings_worker_chunks_in_progress", "Chunks a worker holds now (0: idle).",
                           ["worker"], multiprocess_mode="livesum")
WORKER_INFO = Gauge("embeddings_worker_info", "1 per live worker process: its Celery name and device.",
                    ["worker", "device"], multiprocess_mode="livemax")


# --- Phases of a request ----------------------------------------------------------------------

class PhaseTimer:
    """Seconds one ``/v1/embeddings`` request spent in each of `PHASES`.

    ``with timer.phase("tokenization"): ...`` adds the block's duration (a phase entered twice
    adds up); `add` records a duration measured elsewhere (``queue_wait``). ``failed`` names the
    phase that raised, if one did."""

    __slots__ = ("seconds", "failed")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.failed: str | None = None

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.failed = name
            raise
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def completed(self, name: str) -> bool:
        """Whether phase ``name`` ran and did not raise."""
        return name in self.seconds and self.failed != name

    def observe(self) -> None:
        """Record every phase that ran in ``embeddings_request_phase_seconds`` (``encode`` less the
        ``queue_wait`` it contained)."""
        seconds = dict(self.seconds)
        if "encode" in seconds and "queue_wait" in seconds:
            seconds["encode"] = max(0.0, seconds["encode"] - seconds["queue_wait"])
        for name, value in seconds.items():
            REQUEST_PHASE.labels(name).observe(value)


_phases: contextvars.ContextVar[PhaseTimer | None] = contextvars.ContextVar("request_phases", default=None)


def phase(name: str):
    """Context manager timing phase ``name`` of the request being served (`PhaseTimer.phase`);
    does nothing outside one (a worker, a test calling a service directly)."""
    timer = _phases.get()
    return timer.phase(name) if timer is not None else nullcontext()


def phase_add(name: str, seconds: float) -> None:
    """Add ``seconds`` to phase ``name`` of the request being served (nothing outside one)."""
    timer = _phases.get()
    if timer is not None:
        timer.add(name, seconds)


def phases_start() -> tuple[PhaseTimer, contextvars.Token]:
    """A new `PhaseTimer`, current for this request (`ObservabilityMiddleware`)."""
    timer = PhaseTimer()
    return timer, _phases.set(timer)


def phases_rerun() -> None:
    """The request being served runs again from the start (`embeddings.views.EmbeddingsView`: its
    key changed): a phase that raised in the first run no longer counts as failed; the seconds of
    both runs stay counted (they were spent)."""
    timer = _phases.get()
    if timer is not None:
        timer.failed = None


def phases_end(token: contextvars.Token) -> None:
    _phases.reset(token)


def embeddings_served(*, model: str, service_tier: str, inputs: int, tokens: int) -> None:
    """Count a successful ``/v1/embeddings`` request's ``tokens`` and ``inputs``."""
    TOKENS.labels(model, service_tier).inc(tokens)
    INPUTS.labels(model, service_tier).inc(inputs)


def admission_outcome(*, timer: PhaseTimer, status: int, error_type: str | None, code: str | None) -> str | None:
    """The admission outcome of a finished ``/v1/embeddings`` request (one of `ADMISSION_OUTCOMES`),
    or None when it never reached a decision (refused before: 400, 401, 404...). A 429 is
    admission's whether it came from the reservation, the pre-check of a key known to be at its
    RPM limit, or the RPM charge of a refused body; 503 only when admission itself raised it."""
    if timer.completed("admission"):
        return "admitted"
    if status == 429 and code == "insufficient_quota":
        return "insufficient_quota"
    if status == 429 and code == "rate_limit_exceeded":
        return "rate_limited_tokens" if error_type == "tokens" else "rate_limited_requests"
    if status == 503 and timer.failed == "admission":
        return "unavailable"
    return None


# --- Who may read /metrics ---------------------------------------------------------------------

def metrics_access_allowed(meta: dict) -> bool:
    """Whether a request (Django's ``request.META`` or a WSGI environ) may read the metrics.

    With an ``Authorization`` header: only ``Bearer <METRICS_TOKEN>`` (constant-time compare), and
    only when a token is configured; any other credential, a tenant's API key included, is refused
    wherever it comes from. Without one: only a loopback client address, as
    `config.client_address.client_ip` reads it (``X-Forwarded-For`` believed from
    ``TRUSTED_PROXIES`` alone), so a request relayed by a proxy on this host is judged by the
    client behind it."""
    from types import SimpleNamespace

    from django.conf import settings

    from .client_address import client_ip

    authorization = meta.get("HTTP_AUTHORIZATION", "")
    if authorization:
        token = settings.METRICS_TOKEN
        return bool(token) and hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())
    try:
        return ipaddress.ip_address(client_ip(SimpleNamespace(META=meta))).is_loopback
    except ValueError:
        return False


# --- What a scrape reads -----------------------------------------------------------------------

class PlatformStateCollector:
    """Series read when scraped, from Redis and the broker (`config.platform_state.platform_state`):
    queues, workers alive, beat, the usage rollup. ``embeddings_platform_state_up`` is 0 when any
    of it could not be read (what could is still exported)."""

    def collect(self):
        from .platform_state import platform_state

        state = platform_state()
        up = GaugeMetricFamily("embeddings_platform_state_up",
                               "1 when the queues, workers and rollup state could all be read.")
        up.add_metric([], 1.0 if state.ok else 0.0)
        yield up
        if state.queues is not None:
            depth = GaugeMetricFamily("embeddings_queue_depth", "Messages waiting in a queue.", labels=["queue"])
            age = GaugeMetricFamily("embeddings_queue_oldest_message_age_seconds",
                                    "Age of the oldest message waiting in a queue (0 when empty).", labels=["queue"])
            for queue, queue_state in state.queues.items():
                depth.add_metric([queue], queue_state.depth)
                age.add_metric([queue], queue_state.oldest_age_s)
            yield depth
            yield age
        if state.workers_per_queue is not None:
            alive = GaugeMetricFamily("embeddings_workers_alive", "Worker processes alive (by heartbeat) "
                                      "consuming a queue.", labels=["queue"])
            for queue, count in state.workers_per_queue.items():
                alive.add_metric([queue], count)
            yield alive
        if state.beat_alive is not None:
            yield GaugeMetricFamily("embeddings_beat_alive", "1 while beat's heartbeat is fresh.",
                                    value=1.0 if state.beat_alive else 0.0)
        if state.rollup_lag_s is not None:
            yield GaugeMetricFamily("embeddings_usage_rollup_lag_seconds", "Now minus the newest instant the "
                                    "usage rollups cover (the start of the last run).", value=state.rollup_lag_s)
            yield GaugeMetricFamily("embeddings_usage_rollup_last_run_timestamp_seconds",
                                    "Unix time the last usage rollup run finished.", value=state.rollup_last_run)


class _ThisProcess:
    """The default registry's collectors (one process: no multiprocess directory)."""

    def collect(self):
        return REGISTRY.collect()


def _forget_dead_processes(path: str) -> None:
    """Remove the live-mode gauge files of processes of this host that exited (prometheus_client's
    ``mark_process_dead``): granian and Celery have no hook for it. Counters stay (they are summed)."""
    for file in Path(path).glob("gauge_live*_*.db"):
        try:
            pid = int(file.stem.rsplit("_", 1)[1])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)
        except PermissionError:
            continue


def metrics_registry() -> CollectorRegistry:
    """A registry with every sample this host exports: with ``PROMETHEUS_MULTIPROC_DIR`` the files
    of all its processes (prometheus_client's ``MultiProcessCollector``), else this process's
    default registry; plus `PlatformStateCollector`."""
    registry = CollectorRegistry()
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        _forget_dead_processes(path)
        multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry.register(_ThisProcess())
    registry.register(PlatformStateCollector())
    return registry


def metrics_text() -> bytes:
    """The Prometheus text exposition of `metrics_registry`."""
    return generate_latest(metrics_registry())


def metrics_view(request):
    """``GET /metrics``: Prometheus text format, for loopback or ``Bearer <METRICS_TOKEN>`` only
    (`metrics_access_allowed`); 403 otherwise."""
    from django.http import HttpResponse

    if not metrics_access_allowed(request.META):
        return HttpResponse("Forbidden: /metrics is for the platform's monitoring.\n", status=403,
                            content_type="text/plain; charset=utf-8")
    return HttpResponse(metrics_text(), content_type=CONTENT_TYPE_LATEST)


def metrics_wsgi_app(environ, start_response):
    """The same page as `metrics_view` as a WSGI application, for `serve_metrics_port`."""
    if environ.get("PATH_INFO", "/") not in ("/metrics", "/metrics/", "/"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"Not found.\n"]
    if not metrics_access_allowed(environ):
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"Forbidden: /metrics is for the platform's monitoring.\n"]
    body = metrics_text()
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
    return [body]


def serve_metrics_port(port: int, address: str = "127.0.0.1"):
    """Serve `metrics_wsgi_app` on ``address:port`` from a daemon thread (prometheus_client's
    threaded WSGI server); for hosts that run workers but no web role (``METRICS_PORT``).
    Returns the server (``shutdown()`` stops it). Raises ``OSError`` when the port is taken."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - scrapes are not news
            pass

    server = make_server(address, port, metrics_wsgi_app, ThreadingWSGIServer, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-port", daemon=True).start()
    logger.info("Serving /metrics on %s:%s", address, server.server_port)
    return server
