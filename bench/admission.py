"""Added latency of admission (quotas + RPM/TPM) per request.

Usage (against the servers a running ``make serve`` started, or those the URLs name)::

    [DATABASE_URL=postgres://... REDIS_URL=redis://...] .venv/bin/python -m bench.admission [--n 2000] [--requests 300]

Prints:

1. The admission step alone in a tight loop (`admission_reserve` + `Reservation.settle`, what
   one request adds), for a key with every limit kind set on all three scopes (organization:
   monthly + RPM + TPM; project: monthly + RPM + TPM; key: RPM + TPM), on the Redis store
   (``ADMISSION_REDIS_URL``, default ``REDIS_URL``). Also, for scale, the
   limits read from the database (what a process does after a limit change) and one Redis PING.
2. Whole ``POST /v1/embeddings`` requests (one sentence, real model, Django's in-process test
   client, no network) with admission on vs. patched out, interleaved in the same run: p50 of
   each and the difference.

Limits are set far above what the bench uses, so nothing is rejected. Uses the database of
``DATABASE_URL`` (migrates it; creates an organization "bench-admission").
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402

from accounts.selectors import api_key_resolve  # noqa: E402
from embeddings import services  # noqa: E402
from limits import admission, store  # noqa: E402
from limits.selectors import limits_for_key  # noqa: E402
from accounts.services import api_key_create, organization_get_or_create, project_get_or_create  # noqa: E402
from limits.services import limit_set  # noqa: E402

BIG = 10**9  # far above what the bench uses (RPM fits an integer column)


def summary(samples_s: list[float], unit: float = 1e6) -> str:
    ordered = sorted(samples_s)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * unit  # noqa: E731
    return f"p50 {statistics.median(ordered) * unit:8.1f}  p90 {pick(0.9):8.1f}  p99 {pick(0.99):8.1f}"


def loop(fn, n: int) -> list[float]:
    for _ in range(min(50, n)):
        fn()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="admission calls per backend")
    parser.add_argument("--requests", type=int, default=300, help="API requests per variant")
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    from embeddings.services import embedding_model_register_default, warm_up

    embedding_model_register_default()
    org = organization_get_or_create(name="bench-admission")
    project = project_get_or_create(organization=org, name="bench")
    created = api_key_create(project=project, name="bench")
    limit_set(organization=org, monthly_tokens=BIG, rpm=BIG, tpm=BIG)
    limit_set(organization=org, project=project, monthly_tokens=BIG, rpm=BIG, tpm=BIG)
    limit_set(organization=org, api_key=created.api_key, rpm=BIG, tpm=BIG)
    key = api_key_resolve(plaintext=created.plaintext)

    print(f"admission store: {settings.ADMISSION_REDIS_URL}; {args.n} calls each; microseconds per call")

    def admit():
        admission.admission_reserve(key=key, tokens=12, service_tier="default").settle()

    print(f"  admission (reserve + settle), redis      {summary(loop(admit, args.n))}")
    print(f"  limits read from the database (a miss) {summary(loop(lambda: limits_for_key(key=key), args.n))}")
    client = store.admission_backend().client
    print(f"  one Redis PING round trip              {summary(loop(client.ping, args.n))}")

    # Whole requests, admission on vs. patched out, interleaved.
    warm_up()
    http = Client(HTTP_AUTHORIZATION=f"Bearer {created.plaintext}")
    body = {"model": "all-MiniLM-L6-v2", "input": "The quick brown fox jumps over the lazy dog."}

    real = services.admission_reserve

    def no_admission(**kwargs):
        return admission.Reservation([], [], [], {}, reserved=False)

    samples = {"with admission": [], "admission patched out": []}
    for i in range(args.requests + 20):
        for label, fn in (("with admission", real), ("admission patched out", no_admission)):
            services.admission_reserve = fn
            started = time.perf_counter()
            response = http.post("/v1/embeddings", body, content_type="application/json")
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.content
            if i >= 20:
                samples[label].append(elapsed)
    services.admission_reserve = real
    print(f"POST /v1/embeddings, one sentence, in-process client, {args.requests} each (interleaved); ms")
    for label, values in samples.items():
        print(f"  {label:<24} {summary(values, unit=1e3)}")
    delta = statistics.median(samples["with admission"]) - statistics.median(samples["admission patched out"])
    print(f"  added p50 latency of admission per request: {delta * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
