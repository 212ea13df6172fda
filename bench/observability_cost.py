"""p50 cost per request of metrics and structured logs: the live web role with both on against the
same server with both off, requests interleaved in one run.

Usage: ``.venv/bin/python -m bench.observability_cost [--requests 300] [--inputs 1]``

Starts the embedded PostgreSQL and Valkey in a temp dir (unless DATABASE_URL/REDIS_URL are set),
then two web servers as ``make web`` runs them (granian, one process each) on that database:

* **on** (the default configuration): ``METRICS_ENABLED=true`` (django-prometheus's middleware and
  database wrapper, the platform's /v1 series, prometheus_client's multiprocess files), JSON logs;
* **off**: ``METRICS_ENABLED=false``, ``LOG_FORMAT=text`` and no multiprocess directory.

It sends one ``/v1/embeddings`` request of ``--inputs`` short sentences to each in turn (the order
alternating every round) over keep-alive connections and prints p50/p90 of each, the difference of
the p50s and the p50 of the paired differences (ms): what metrics and JSON logs add to a request.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench._server import embedded_services, free_port, prepare, wait_up, web_process

SENTENCE = "The quick brown fox jumps over the lazy dog."


@contextlib.contextmanager
def web(env: dict, log: Path):
    """The web role's server as ``make web`` runs it (`bench._server.web_process`), one process, for
    ``env``; yields its base URL once ``/readyz`` answers 200 (its model loaded)."""
    port = free_port()
    proc = web_process({**env, "WEB_CONCURRENCY": "1"}, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base, proc, log, path="/readyz")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class Client:
    """One keep-alive connection sending the same ``/v1/embeddings`` body."""

    def __init__(self, base: str, key: str, inputs: int):
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.body = json.dumps({"model": "all-MiniLM-L6-v2", "input": [SENTENCE] * inputs})
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def request_ms(self) -> float:
        started = time.perf_counter()
        self.conn.request("POST", "/v1/embeddings", body=self.body, headers=self.headers)
        response = self.conn.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status == 200, payload[:300]
        return elapsed


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests to each server (after 20 warm-up)")
    parser.add_argument("--inputs", type=int, default=1, help="sentences per request (inline below 128 tokens)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-obs-") as var_dir, \
            embedded_services(var_dir, {**os.environ, "VAR_DIR": var_dir}) as env:
        key = prepare(env, free_port())
        metrics_dir = Path(var_dir) / "metrics"
        metrics_dir.mkdir()
        on = {**env, "METRICS_ENABLED": "true", "LOG_FORMAT": "json", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        off = {**env, "METRICS_ENABLED": "false", "LOG_FORMAT": "text"}
        off.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with web(on, Path(var_dir) / "on.log") as base_on, web(off, Path(var_dir) / "off.log") as base_off:
            clients = {"on": Client(base_on, key, args.inputs), "off": Client(base_off, key, args.inputs)}
            for _ in range(20):
                for client in clients.values():
                    client.request_ms()
            times: dict[str, list[float]] = {"on": [], "off": []}
            for i in range(args.requests):
                order = ("on", "off") if i % 2 == 0 else ("off", "on")
                for name in order:
                    times[name].append(clients[name].request_ms())
            lines = {name: (Path(var_dir) / f"{name}.log").read_text().count("\n") for name in clients}
    paired = [a - b for a, b in zip(times["on"], times["off"])]
    cores = os.cpu_count() or 1
    print(f"/v1/embeddings, {args.inputs} input(s), {args.requests} requests to each server, interleaved; "
          f"one granian process each, {cores} cores")
    for name, label in (("off", "metrics off, text logs"), ("on", "metrics on, JSON logs (default)")):
        print(f"  {label:34s} p50={statistics.median(times[name]):7.2f} ms  p90={p(times[name], 0.9):7.2f} ms"
              f"  ({lines[name]} log lines)")
    print(f"  cost of metrics + JSON logs: p50(on) - p50(off) = "
          f"{statistics.median(times['on']) - statistics.median(times['off']):+.2f} ms; "
          f"p50 of paired differences = {statistics.median(paired):+.2f} ms")


if __name__ == "__main__":
    main()
