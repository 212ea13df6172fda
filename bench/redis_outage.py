"""What a Redis outage writes to the log of a real API (the web role's server) under load.

Usage::

    .venv/bin/python -m bench.redis_outage [--outage 10] [--threads 4]

Starts the API as ``make serve`` does (granian, embedded PostgreSQL and Valkey in a temp dir),
sends ``POST /v1/embeddings`` with a valid key and with an unknown one from ``--threads``
threads, stops the Valkey for ``--outage`` seconds and starts it again on the same socket.
Prints the responses by status and the log lines written meanwhile: tracebacks, ERROR and
WARNING lines (`config.redis_outage` writes one at an outage's start and one at its end, per
process), and the WARNING lines themselves. The access log's lines are counted apart.
"""
from __future__ import annotations

import argparse
import collections
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench._server import api_server


def call(base: str, key: str) -> int | str:
    request = urllib.request.Request(
        f"{base}/v1/embeddings", data=json.dumps({"model": "all-MiniLM-L6-v2", "input": "hi"}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return type(exc).__name__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=10.0, help="seconds Redis is down")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    from config.embedded import EmbeddedValkey

    with api_server() as running:
        (base, key), log = running, running.log
        assert call(base, key) == 200
        before = len(log.read_text().splitlines())
        statuses: collections.Counter = collections.Counter()
        stop = threading.Event()

        def load():
            while not stop.is_set():
                statuses[call(base, key)] += 1
                statuses[call(base, "sk-proj-" + "Q" * 43)] += 1

        threads = [threading.Thread(target=load) for _ in range(args.threads)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        valkey = EmbeddedValkey(Path(running.var_dir))
        valkey.stop()
        down = time.monotonic()
        time.sleep(args.outage)
        valkey.start()
        print(f"Redis down for {time.monotonic() - down:.1f} s")
        time.sleep(3)
        stop.set()
        for thread in threads:
            thread.join()
        lines = log.read_text().splitlines()[before:]
        access = [line for line in lines if '"POST /v1/' in line or '"GET /' in line]
        print("responses:", dict(sorted(statuses.items(), key=str)))
        print(f"log lines: {len(lines)} ({len(access)} access), tracebacks "
              f"{sum('Traceback' in line for line in lines)}, ERROR {sum(' ERROR ' in line for line in lines)}, "
              f"WARNING {sum(' WARNING ' in line for line in lines)}")
        for line in lines:
            if " WARNING " in line:
                print("  ", line)


if __name__ == "__main__":
    main()
