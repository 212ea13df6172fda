"""Key guessing from one address against a real API (the web role's server), with the failed-key throttle
(`accounts.throttling`) on and off.

Usage::

    .venv/bin/python -m bench.auth_throttle [--seconds 5] [--threads 8]

Starts the API as ``make serve`` does (granian, embedded PostgreSQL and Valkey in a temp dir,
`bench._server.api_server`) and sends unknown ``sk-proj-`` keys to ``GET /v1/models`` from
``--threads`` threads for ``--seconds``, twice: with the default throttle
(``API_AUTH_FAILURE_LIMIT``=100 a minute) and with it effectively off (limit 10**9). Prints
requests/s, how many got 401 (each one a database lookup) and 429 (none), and the p50 latency
of a request with a valid key in each run (the throttle's GET on the success path).
"""
from __future__ import annotations

import argparse
import collections
import secrets
import statistics
import threading
import time
import urllib.error
import urllib.request

from bench._server import api_server


def call(base: str, key: str) -> int:
    request = urllib.request.Request(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def run(extra_env: dict, seconds: float, threads: int) -> None:
    with api_server(extra_env) as (base, key):
        valid = []
        for _ in range(200):
            started = time.perf_counter()
            assert call(base, key) == 200
            valid.append(time.perf_counter() - started)
        counts: collections.Counter[int] = collections.Counter()
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def guess():
            while time.monotonic() < stop:
                status = call(base, "sk-proj-" + secrets.token_urlsafe(32))
                with lock:
                    counts[status] += 1

        workers = [threading.Thread(target=guess) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        total = sum(counts.values())
        print(f"  {total / seconds:7.0f} guesses/s   401 (database lookups): {counts[401]:6d}   "
              f"429: {counts[429]:6d}   other: {total - counts[401] - counts[429]}")
        print(f"  valid key, p50 {statistics.median(valid) * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    print("throttle on (API_AUTH_FAILURE_LIMIT=100 per 60 s):")
    run({}, args.seconds, args.threads)
    print("throttle off (API_AUTH_FAILURE_LIMIT=10**9):")
    run({"API_AUTH_FAILURE_LIMIT": str(10**9)}, args.seconds, args.threads)


if __name__ == "__main__":
    main()
