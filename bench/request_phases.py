"""Where the time of one small ``POST /v1/embeddings`` goes: p50 per phase, in ms.

Usage: ``.venv/bin/python -m bench.request_phases [--requests 300] [--inputs 1]``

Starts the embedded PostgreSQL and Valkey in a temp dir (unless ``DATABASE_URL`` / ``REDIS_URL``
are set), migrates, registers the model and makes a key, then drives the real Django application
in this process (``django.test.Client``: the full middleware, DRF, the view and the services, with
the web role's settings: ``CONN_MAX_AGE`` and torch threads as `config.web.server_env` sets them)
with sequential requests of ``--inputs`` one-sentence inputs. Each phase is timed by wrapping the
function that does it:

* ``auth``: `accounts.authentication.APIKeyAuthentication.authenticate` (throttle check, key
  lookup, ``last_used_at``);
* ``validate``: `embeddings.views.embeddings_request` (project headers, the serializer);
* ``tokenize``: `embeddings.services.tokenize_inputs`;
* ``admit``: `admission_precheck` + `admission_reserve` (the one Lua call that reserves);
* ``encode``: `embeddings.services.encode_inputs` (the process's micro-batcher, inline);
* ``meter``: `metering.services.usage_record_create` (one INSERT, autocommit), or, for a lone
  request (these are), the wait for that INSERT made on the process's metering thread while the
  request encoded (`metering.services.usage_record_written`; ``EMBEDDINGS_METER_ALONGSIDE``);
* (the reservation's settle, the second Lua call, runs on the process's settle thread after the
  response: `limits.admission.Reservation`, so it is no phase of the request);
* ``db_connect``: opening database connections, wherever a phase opened one (inside the above);
* ``rest``: the whole request minus the phases (Django, middleware, rendering).

Prints the p50 of each and of the whole request, and the raw engine's one-text encode p50 in the
same process for comparison (the latency target is engine + 3 ms). In-process, so no HTTP server:
add the server's own cost from ``bench/slow_clients.py`` / ``bench/latency.py``.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._server import embedded_services, prepare  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog."
PHASES = ("auth", "validate", "tokenize", "admit", "encode", "meter")


class Timers:
    """Milliseconds spent per phase in the current request, summed over nested calls."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.samples: dict[str, list[float]] = defaultdict(list)

    def wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[phase] += (time.perf_counter() - started) * 1000

        setattr(owner, name, timed)

    def close_request(self, total_ms: float) -> None:
        for phase in (*PHASES, "db_connect"):
            self.samples[phase].append(self.current.get(phase, 0.0))
        self.samples["rest"].append(total_ms - sum(self.current.get(p, 0.0) for p in PHASES))
        self.samples["total"].append(total_ms)
        self.current.clear()


def instrument(timers: Timers) -> None:
    """Wrap the functions of each phase (see the module)."""
    from django.db.backends.postgresql.base import DatabaseWrapper

    import embeddings.services as services
    import embeddings.views as views
    import metering.services as metering_services
    from accounts.authentication import APIKeyAuthentication

    timers.wrap(APIKeyAuthentication, "authenticate", "auth")
    timers.wrap(views, "embeddings_request", "validate")
    timers.wrap(services, "tokenize_inputs", "tokenize")
    timers.wrap(services, "admission_precheck", "admit")
    timers.wrap(services, "admission_reserve", "admit")
    timers.wrap(services, "encode_inputs", "encode")
    timers.wrap(services, "usage_record_create", "meter")
    timers.wrap(metering_services, "usage_record_written", "meter")  # a lone request's: while it encodes
    timers.wrap(DatabaseWrapper, "connect", "db_connect")


def engine_p50(n: int) -> float:
    """p50 ms of the served engine's own one-text encode (token ids in, vectors out), on the
    all-core session where the engine has one, as a lone request is served (`Engine.has_wide`)."""
    from embeddings.selectors import embedding_model_get
    from embeddings.services import engine_for, tokenizer_for

    model = embedding_model_get(name="all-MiniLM-L6-v2")
    engine, ids = engine_for(model), tokenizer_for(model).tokenize([SENTENCE])
    samples = []
    for i in range(n + 20):
        started = time.perf_counter()
        engine.encode(ids, wide=engine.has_wide)
        if i >= 20:
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--inputs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as var_dir, \
            embedded_services(var_dir, {**os.environ, "VAR_DIR": var_dir}) as env:
        key = prepare(env, 0)
        from config.web import server_env

        os.environ.update({k: v for k, v in env.items() if k in ("DATABASE_URL", "REDIS_URL", "VAR_DIR")})
        os.environ.update(server_env(os.environ))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        import django

        django.setup()
        from django.db import connections
        from django.test import Client

        from embeddings.services import warm_up

        warm_up()
        timers = Timers()
        instrument(timers)
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        body = {"model": "all-MiniLM-L6-v2", "input": [SENTENCE] * args.inputs}
        for i in range(args.requests + 30):
            started = time.perf_counter()
            response = client.post("/v1/embeddings", body, content_type="application/json")
            total = (time.perf_counter() - started) * 1000
            assert response.status_code == 200, response.content[:500]
            # The test client keeps the connection across requests; the web role (ASGI,
            # CONN_MAX_AGE=0 by default) gives it back after each one.
            if not connections["default"].settings_dict.get("CONN_MAX_AGE"):
                connections.close_all()
            if i >= 30:  # warm-up
                timers.close_request(total)
            else:
                timers.current.clear()
        engine = engine_p50(args.requests)
        print(f"{args.requests} sequential requests of {args.inputs} input(s), in-process (p50, ms):")
        for phase in (*PHASES, "db_connect", "rest", "total"):
            print(f"  {phase:<10} {statistics.median(timers.samples[phase]):7.2f}")
        total = statistics.median(timers.samples["total"])
        print(f"  engine alone (one text): {engine:.2f} ms; request - engine = {total - engine:+.2f} ms")


if __name__ == "__main__":
    main()
