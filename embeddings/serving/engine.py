"""The inference engine: loads a sentence-transformers model and encodes token ids.

Knows nothing about HTTP, tenants or Django. One `Engine` per model per process
(`get_engine`); thread-safe for concurrent `encode` calls.

Backends: ``torch`` runs the whole sentence-transformers pipeline in PyTorch (fp16 on CUDA);
``onnx`` runs the transformer in ONNX Runtime from an fp32 export made once per model and kept
in ``cache_dir``, then the model's own pooling and normalization modules on its output (in numpy
when they are mean pooling and normalization: `mean_pool_normalize`) (vectors
within 1e-6 of torch's; the export is exact, no quantization). ``auto`` = torch on CUDA, onnx on
CPU when ONNX Runtime is installed (``bench/engine_vs_raw.py --backend`` compares them), and is
the platform's default (``EMBEDDINGS_BACKEND``). The release step registers the models, which
loads each once and so makes its export before any server or worker starts; a host that finds no
export makes it once, under a file lock its other processes wait on.

Beside the export, every full load on CPU keeps a manifest (``<model_stamp>.json``: dimensions,
context length, pooling, vocabulary size) and the model's tokenizer (`ModelTokenizer`): a model
that is the export plus mean pooling then loads from those three files alone, without importing
torch, sentence-transformers or transformers (all-MiniLM-L6-v2 in a new process: 1.5 s and
312 MB of peak memory instead of 11.6 s and 874 MB on 2 cores; ``Engine.without_torch``).
"""
from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .registry import ProcessRegistry
from .tokenization import TEMPORARY_PREFIX, get_tokenizer, model_stamp, read_cached, write_cached

logger = logging.getLogger(__name__)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


# Files of the GPU drivers torch's CUDA can use (NVIDIA's, Jetson's; AMD's ROCm; WSL 2's).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/nvhost-ctrl-gpu", "/dev/kfd", "/dev/dxg")


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other values pass through.
    On a host with none of `GPU_DEVICE_FILES` torch could see no GPU: ``"cpu"`` without importing it."""
    if device != "auto":
        return device
    if not any(os.path.exists(name) for name in GPU_DEVICE_FILES):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def mean_pool_normalize(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean pooling over the unmasked tokens, then L2 normalization: ``hidden`` ``(n, w, d)``
    float32 token embeddings, ``attention_mask`` ``(n, w)`` of 0/1 -> ``(n, d)`` float32. The
    arithmetic of sentence-transformers' ``Pooling(pooling_mode="mean")`` (token count clamped at
    1e-9) and ``Normalize`` (norm clamped at 1e-12), in numpy: ~0.5 ms less per call than running
    those torch modules on 2 cores (``bench/request_phases.py``)."""
    mask = attention_mask.astype(np.float32)
    summed = np.einsum("nw,nwd->nd", mask, hidden)
    vectors = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def pools_by_mean(modules) -> bool:
    """Whether the modules after a model's transformer are sentence-transformers' mean ``Pooling``
    (prompt tokens included), alone or followed by ``Normalize``: what `mean_pool_normalize` does."""
    names = [type(module).__name__ for module in modules]
    if names not in (["Pooling"], ["Pooling", "Normalize"]):
        return False
    pooling = modules[0]
    mode = getattr(pooling, "pooling_mode", None)
    return mode in ("mean", ("mean",), ["mean"]) and getattr(pooling, "include_prompt", True)


class HostSlot:
    """One slot per host, shared by the processes that open the same ``path``: `try_acquire` takes
    it without waiting (an exclusive ``flock``, a few microseconds), `release` gives it back; the
    kernel frees it when its process dies. The API processes take it for an all-core forward pass
    (`Engine.encode` with ``wide=True``), so no two of them run one at once: two 2-thread passes on
    2 cores would make each pass's threads wait on each other at every layer."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        # flock excludes other open files, not threads sharing this one: they take this lock first.
        self._threads = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # e.g. a read-only directory: this process never takes the slot
            logger.warning("No wide forward passes in this process: cannot open %s (%s)", self.path, exc)
            self._fd = None

    def try_acquire(self) -> bool:
        """Take the slot if no process holds it; whether it was taken (never, when its file could
        not be opened)."""
        if self._fd is None or not self._threads.acquire(blocking=False):
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._threads.release()
            return False
        return True

    def release(self) -> None:
        """Give the slot back (after `try_acquire` returned True)."""
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()


def resolve_backend(backend: str, device: str) -> str:
    """``"auto"`` -> ``"torch"`` on CUDA (fp16), else ``"onnx"`` when ``onnxruntime`` imports,
    else ``"torch"``; ``"torch"``/``"onnx"`` pass through. Raises `ValueError` for anything else."""
    if backend not in ("auto", "torch", "onnx"):
        raise ValueError(f"unknown engine backend {backend!r} (auto, torch or onnx)")
    if backend != "auto":
        return backend
    if device.startswith("cuda"):
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnx"


def _token_embeddings_module(transformer):
    """The first module of a sentence-transformers model as a function of token tensors, for the
    ONNX export: ``(input_ids, attention_mask[, token_type_ids])`` ``(n, t)`` int64 -> token
    embeddings ``(n, t, h)`` float32 (keyword arguments, as transformers >= 5 requires)."""
    import torch

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = transformer.auto_model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state

    return TokenEmbeddings().eval()


def onnx_export(model, source: str | os.PathLike, input_names: list[str], cache_dir: str | os.PathLike,
                stamp: str | None = None) -> Path:
    """The fp32 ONNX export of ``model``'s transformer (first module; ``model`` loaded from the
    directory ``source``), made once and kept as
    ``cache_dir/<stamp>.onnx`` (``stamp``: `embeddings.serving.tokenization.model_stamp` of
    ``source``, computed here when not given); written to a temporary file and renamed, so
    concurrent processes never read a partial file, and made under an exclusive lock
    (``<name>.lock`` beside it, ``flock``), so the processes of one host that start together export
    it once: the others wait, then read it.

    Inputs ``input_names`` (``input_ids``, ``attention_mask`` and, for BERT, ``token_type_ids``),
    ``(batch, seq)`` int64, dynamic; output ``last_hidden_state`` ``(batch, seq, hidden)``. Export
    takes ~4 s for all-MiniLM-L6-v2 on 2 cores.
    """
    target = Path(cache_dir) / f"{stamp or model_stamp(source)}.onnx"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        if not target.exists():  # another process made it while this one waited
            _export(model, source, input_names, target)
    return target


def _export(model, source: Path, input_names: list[str], target: Path) -> None:
    import torch

    example = {name: torch.ones((2, 8), dtype=torch.int64) for name in input_names}
    started = time.perf_counter()
    # The tracer warns about Python-level branches it freezes (e.g. "is_causal" with a mask given):
    # constants for an encoder, and the vectors are checked against torch's by the test suite.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=TEMPORARY_PREFIX) as scratch, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        partial = Path(scratch) / "model.onnx"
        torch.onnx.export(_token_embeddings_module(model[0]), tuple(example[n] for n in input_names), str(partial),
                          input_names=input_names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in [*input_names, "last_hidden_state"]},
                          opset_version=17, dynamo=False)
        os.replace(partial, target)
    logger.info("Exported %s to ONNX (%s) in %.1f s", source, target, time.perf_counter() - started)


# Padded tokens per forward pass by device kind, when none is configured (``batch_tokens=0``). On
# CPU, passes of ~2,048 padded tokens (e.g. 48 rows of 40 tokens) ran 1.2-1.45x the texts/s of
# 16,384-token passes for calls of 64-512 texts (all-MiniLM-L6-v2, ONNX Runtime, 2 threads:
# ``bench/pass_tokens.py``), and keep a pass short enough for small requests to get in between. On
# CUDA a pass's time is the host's kernel launches, not the GPU's arithmetic (an H200 ran kernels ~3%
# of the time under a saturated worker): 65,536-token passes served 1.13-1.18x the tokens/s of
# 16,384-token ones at K=16, C=64-256 (``bench/gpu_worker.py``); for all-MiniLM-L6-v2 such a pass
# holds ~0.5 GB of activations, and a larger model on a smaller card lowers EMBEDDINGS_BATCH_TOKENS.
DEFAULT_PASS_TOKENS = {"cpu": 2048, "cuda": 65536}


def default_pass_tokens(device: str) -> int:
    """`DEFAULT_PASS_TOKENS` for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``; others: CPU's)."""
    return DEFAULT_PASS_TOKENS["cuda" if device.startswith("cuda") else "cpu"]


# Calls of more rows than this are cut greedily (`_fill_passes`): planning holds the GIL, ~2-3 ms
# for 1,024 rows of 11-76 tokens, ~30-40 ms for 16,384; in so many sorted rows each greedy pass
# already spans few lengths (K=512: 1.06x from planning).
PLAN_MAX_ROWS = 1024


def _fill_passes(lengths: Sequence[int], budget: int) -> list[int]:
    """End indices of passes filled in order while rows x longest row fits ``budget``."""
    ends, start, n = [], 0, len(lengths)
    while start < n:
        end = start + 1
        while end < n and (end + 1 - start) * lengths[end] <= budget:
            end += 1
        ends.append(end)
        start = end
    return ends


def plan_passes(lengths: Sequence[int], budget: int, overhead: float) -> list[int]:
    """Cut rows sorted by length (``lengths`` ascending, tokens) into forward passes at the least
    modelled cost, and return each pass's end index (exclusive; the last is ``len(lengths)``).

    A pass of rows ``i..j-1`` is padded to its longest row and costs ``overhead + (j - i) *
    lengths[j - 1]`` (padded tokens, plus the fixed cost of one pass expressed in tokens,
    `Engine.pass_overhead_tokens`); a pass holds at most ``budget`` padded tokens (a row longer than
    that runs alone). One pass over all rows wastes what padding the short rows get (16 texts of
    11-63 tokens padded to 63: 42% of the pass); one pass per row pays the overhead n times.

    Minimized exactly by dynamic programming over the cut points, for up to `PLAN_MAX_ROWS` rows
    (more are filled greedily). The best pass ending at row ``j`` starts either before the run of
    rows as long as row ``j - 1`` (one suffix minimum per run, in numpy) or inside it (a sliding
    window minimum in Python): one numpy step per distinct length instead of several per row, and
    few releases of the GIL (608 rows of 11-76 tokens: ~1.7-2.0 ms, 3-4x faster than row by row).
    """
    n = len(lengths)
    if n <= 1:
        return [n] if n else []
    if n > PLAN_MAX_ROWS:
        return _fill_passes(lengths, budget)
    widths = [max(int(length), 1) for length in lengths]
    cost = np.zeros(n + 1)  # cost[j]: the least cost of rows 0..j-1
    positions = np.arange(n + 1, dtype=np.float64)
    infinity = float("inf")
    run_start = 0
    while run_start < n:  # rows run_start..run_end-1 have one width; passes ending in them are padded to it
        width = widths[run_start]
        run_end = run_start + 1
        while run_end < n and widths[run_end] == width:
            run_end += 1
        span = max(1, int(budget // width))  # rows per pass at this width
        # Starts before the run: s in [max(0, j - span), run_start], value cost[s] - s * width.
        first = max(0, run_start + 1 - span)
        before = np.minimum.accumulate((cost[first:run_start + 1] - positions[first:run_start + 1] * width)[::-1])
        before = before[::-1].tolist()  # before[i]: the least value over starts first + i..run_start
        window: collections.deque[tuple[float, int]] = collections.deque()  # starts inside the run
        for j in range(run_start + 1, run_end + 1):
            low = max(0, j - span)
            best = before[low - first] if low <= run_start else infinity
            if j - 1 > run_start:
                value = cost[j - 1] - (j - 1) * width
                while window and window[-1][0] >= value:
                    window.pop()
                window.append((value, j - 1))
            while window and window[0][1] < low:
                window.popleft()
            if window and window[0][0] < best:
                best = window[0][0]
            cost[j] = overhead + j * width + best
        run_start = run_end
    ends, j = [], n
    while j > 0:  # back through the cuts: the start each pass's cost came from
        ends.append(j)
        width = widths[j - 1]
        low = max(0, j - max(1, int(budget // width)))
        j = low + int(np.argmin(cost[low:j] + (j - positions[low:j]) * width))
    return ends[::-1]


class Engine:
    """A sentence-transformers model loaded once from a local directory (offline).

    Args:
        path: directory of the model (``modules.json``, weights, ``tokenizer.json``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``. On CUDA the weights
            run in fp16; outputs are always float32.
        batch_tokens: the most padded tokens (rows x longest row) per forward pass; 0: the
            device's `default_pass_tokens` (CPU 2,048, CUDA 65,536).
        torch_threads: torch intra-op threads for this process (``torch.set_num_threads``),
            set once when the engine loads, and ONNX Runtime's intra-op threads; 0 keeps the
            libraries' default (the core count).
        backend: ``"auto"``, ``"torch"`` or ``"onnx"`` (see the module docstring).
        cache_dir: where ONNX exports, their manifests and the tokenizers are kept (default: the
            system's temporary directory).
        pass_overhead_tokens: the fixed cost of one forward pass, in padded tokens of work, with
            which `plan_passes` cuts a call into passes; None measures it once, at load
            (`calibrate_pass_overhead`).
        wide_threads: on the ``onnx`` backend, intra-op threads of a second ONNX Runtime session
            (the same export, ~90 MB more for all-MiniLM-L6-v2) that `encode` runs on when asked
            ``wide`` and ``wide_slot`` is free: an API process with one lone request uses every core
            for it. No second session when it is 0, when ``torch_threads`` is 0 (the libraries'
            default is every core already) or when it is not more than ``torch_threads``.
        wide_slot: the path of the host's `HostSlot` file a wide call must hold (opened when the
            second session loads, as the attribute ``wide_slot``); None: a wide call always runs wide.

    Raises `ValueError` for an unknown backend, `ImportError` for ``"onnx"`` without onnxruntime;
    `encode` raises `IndexError` for a token id outside the vocabulary on either backend.

    Attributes:
        dimensions: output size ``d`` (all-MiniLM-L6-v2: 384).
        max_input_tokens: the model's ``max_seq_length``, special tokens included (256).
        backend: the backend in use, ``"torch"`` or ``"onnx"``.
        pools_prompt: whether the model's pooling reads the tokens of a prompt put before the input
            (sentence-transformers' ``Pooling.include_prompt``, true but for Instructor-style models,
            which pool without them; token ids carry no mark of where a prompt ends).
        load_seconds: how long loading took (seconds).
        pass_overhead_tokens: see the argument (measured: ~7 tokens on 1 CPU thread, ~22 on 2, for
            all-MiniLM-L6-v2 under ONNX Runtime).
        without_torch: whether it loaded from its kept export, manifest and tokenizer alone (the
            ``onnx`` backend on CPU, mean pooling, a full load of the same model files and library
            versions made them before: `model_stamp`); ``model`` is then None.
        model: the loaded ``SentenceTransformer`` (None when ``without_torch``).
    """

    def __init__(self, path: str, *, device: str = "auto", batch_tokens: int = 0, torch_threads: int = 0,
                 backend: str = "torch", cache_dir: str | os.PathLike | None = None,
                 pass_overhead_tokens: float | None = None, wide_threads: int = 0,
                 wide_slot: str | os.PathLike | None = None):
        started = time.perf_counter()
        self.path = str(path)
        self.device = resolve_device(device)
        self.backend = resolve_backend(backend, self.device)
        self.batch_tokens = batch_tokens or default_pass_tokens(self.device)
        cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "embeddings-onnx"
        tokenizer = get_tokenizer(self.path, cache_dir=cache)
        self.pad_token_id = tokenizer.pad_token_id
        self.input_names = tokenizer.input_names
        self._session = self._wide_session = self.wide_slot = None
        self.model = self._torch = None
        stamp = model_stamp(self.path)  # once: the manifest and export this load reads or makes
        manifest_path = cache / f"{stamp}.json"
        manifest = read_cached(manifest_path) if self.backend == "onnx" and self.device == "cpu" else None
        self.without_torch = bool(manifest and manifest.get("mean_pool") and manifest_path.with_suffix(".onnx").exists())
        if self.without_torch:
            # All the model is the export and numpy's pooling: its figures come from the manifest a
            # full load wrote (below), so neither torch nor sentence-transformers is imported.
            self.dimensions = int(manifest["dimensions"])
            self.max_input_tokens = int(manifest["max_input_tokens"])
            self.pools_prompt = bool(manifest["pools_prompt"])
            self._mean_pool = True
            self._vocab_rows = int(manifest["vocab_rows"])
            exported = manifest_path.with_suffix(".onnx")
        else:
            import torch
            from sentence_transformers import SentenceTransformer

            if torch_threads:
                torch.set_num_threads(torch_threads)
            self.model = SentenceTransformer(self.path, device=self.device, local_files_only=True)
            if self.device.startswith("cuda"):
                self.model.half()
            self.model.eval()
            dimension_of = getattr(self.model, "get_embedding_dimension", None) or \
                self.model.get_sentence_embedding_dimension  # sentence-transformers < 6
            self.dimensions = int(dimension_of())
            self.max_input_tokens = int(self.model.max_seq_length)
            self.pools_prompt = all(getattr(module, "include_prompt", True) for module in self.model)
            self._torch = torch
            if self.backend == "onnx":
                self._mean_pool = pools_by_mean(list(self.model)[1:])
                self._vocab_rows = int(self.model[0].auto_model.config.vocab_size)
        if self.backend == "onnx":
            import onnxruntime

            names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in self.input_names]
            if not self.without_torch:
                exported = onnx_export(self.model, self.path, names, cache, stamp)
                kept = {"dimensions": self.dimensions, "max_input_tokens": self.max_input_tokens,
                        "pools_prompt": self.pools_prompt, "mean_pool": self._mean_pool, "vocab_rows": self._vocab_rows}
                if self.device == "cpu" and manifest != kept:  # a model numpy cannot pool finds it already kept
                    write_cached(manifest_path, kept)

            def session(threads: int, spin: bool = False):
                options = onnxruntime.SessionOptions()
                if threads:
                    options.intra_op_num_threads = threads
                # Idle intra-op threads sleep instead of spinning: spinning ones take the cores the
                # process's other threads (Celery's, the request threads) and the host's other
                # processes need between passes (a worker on 2 cores served ~17% more texts/s at
                # C=32, K=16: bench/vs_infinity.py). ``spin``: they spin inside a run and stop when
                # it returns (force_spinning_stop). Without it each of a pass's ~100 parallel
                # sections wakes a sleeping thread; on a host whose other cores idle between
                # requests that cost a one-text pass on 2 threads ~7.2 ms instead of ~5.5 ms, no
                # faster than one thread (~7.8 ms); spinning without the stop went on burning a core
                # for ~45 ms after each run (bench/wide_pass.py).
                options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
                if spin:
                    options.add_session_config_entry("session.force_spinning_stop", "1")
                return onnxruntime.InferenceSession(str(exported), options, providers=["CPUExecutionProvider"])

            self._session = session(torch_threads)
            if wide_threads and torch_threads and wide_threads > torch_threads:
                self._wide_session = session(wide_threads, spin=True)
                self.wide_slot = HostSlot(wide_slot) if wide_slot is not None else None
            self._session_inputs = names
        self.pass_overhead_tokens = (self.calibrate_pass_overhead() if pass_overhead_tokens is None
                                     else float(pass_overhead_tokens))
        self.load_seconds = time.perf_counter() - started
        logger.info("Loaded model %s on %s (%s, %s) in %.0f ms%s; a forward pass costs %.0f tokens more than its "
                    "padded tokens", self.path, self.device, self.backend,
                    "fp16" if self.device.startswith("cuda") else "fp32", self.load_seconds * 1000,
                    " from its kept export, without torch" if self.without_torch else "", self.pass_overhead_tokens)

    def calibrate_pass_overhead(self) -> float:
        """Measure the fixed cost of one forward pass in padded tokens (what `plan_passes` weighs a
        cut against): the time of a 1 x 16-token pass and of a pass of ``batch_tokens / 4`` tokens
        (rows of 64), best of 2 each after a warm-up, fitted as ``a + b * tokens``; returns ``a /
        b``, within ``[0, batch_tokens]``. ~0.4 s on 1 CPU thread. Where a pass's fixed cost is large
        next to its cost per token (a GPU), small calls stay in one pass."""
        width = 64
        rows = max(2, self.batch_tokens // (4 * width))
        small = [[self.pad_token_id] * 16]
        large = [[self.pad_token_id] * width] * rows

        def seconds(batch) -> float:
            self._forward(batch)
            best = float("inf")
            for _ in range(2):
                began = time.perf_counter()
                self._forward(batch)
                best = min(best, time.perf_counter() - began)
            return best

        small_s, large_s = seconds(small), seconds(large)
        per_token = (large_s - small_s) / (rows * width - 16)
        if per_token <= 0:
            return float(self.batch_tokens)
        return float(min(self.batch_tokens, max(0.0, small_s / per_token - 16)))

    @property
    def has_wide(self) -> bool:
        """Whether `encode` can run ``wide`` (a second, all-core session is loaded)."""
        return self._wide_session is not None

    def encode(self, batch: Sequence[Sequence[int]],
               on_pass: Callable[[int, int, int, float], None] | None = None, *,
               wide: bool = False) -> np.ndarray:
        """Embed token-id sequences (special tokens included).

        Returns an ``(n, d)`` float32 array, L2-normalized, in input order. Rows are sorted by
        length and cut into forward passes of at most ``batch_tokens`` padded tokens, where
        padding and the passes' fixed cost are least (`plan_passes`). ``on_pass(rows, width,
        tokens, seconds)`` is called after each forward pass: its rows, longest row (padded
        width), real tokens and duration (the micro-batcher's metrics).

        ``wide``: run on the all-core session (`has_wide`) if the host's ``wide_slot`` is free,
        holding it to the end; otherwise, or without such a session, on the process's own threads.
        The vectors are the same either way (the same export; thread count changes only the order
        of float sums, ~1e-7).
        """
        n = len(batch)
        out = np.empty((n, self.dimensions), dtype=np.float32)
        if n == 0:
            return out
        session = self._session
        slot = None
        if wide and self._wide_session is not None:
            if self.wide_slot is None:
                session = self._wide_session
            elif self.wide_slot.try_acquire():
                session, slot = self._wide_session, self.wide_slot
        try:
            order = sorted(range(n), key=lambda i: len(batch[i]))
            start = 0
            for end in plan_passes([len(batch[i]) for i in order], self.batch_tokens, self.pass_overhead_tokens):
                rows = [batch[i] for i in order[start:end]]
                began = time.perf_counter()
                out[order[start:end]] = self._forward(rows, session)
                if on_pass is not None:
                    on_pass(len(rows), len(rows[-1]), sum(len(r) for r in rows), time.perf_counter() - began)
                start = end
        finally:
            if slot is not None:
                slot.release()
        return out

    def _forward(self, rows: list[Sequence[int]], session=None) -> np.ndarray:
        torch = self._torch
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = r
            attention_mask[i, : len(r)] = 1
        session = session or self._session
        if session is not None:
            if input_ids.min() < 0 or input_ids.max() >= self._vocab_rows:  # as torch's embedding lookup
                raise IndexError(f"token id outside the vocabulary of {self._vocab_rows}")
            arrays = {"input_ids": input_ids, "attention_mask": attention_mask,
                      "token_type_ids": np.zeros_like(input_ids)}
            (hidden,) = session.run(None, {n: arrays[n] for n in self._session_inputs})
            if self._mean_pool:
                return mean_pool_normalize(hidden, attention_mask)
            features = {"token_embeddings": torch.from_numpy(hidden),
                        "attention_mask": torch.from_numpy(attention_mask)}
            with torch.inference_mode():
                for module in list(self.model)[1:]:  # the model's own pooling (and normalization)
                    features = module(features)
                embeddings = features["sentence_embedding"].float()
                embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
            return embeddings.numpy()
        features = {
            "input_ids": torch.from_numpy(input_ids).to(self.device),
            "attention_mask": torch.from_numpy(attention_mask).to(self.device),
        }
        if "token_type_ids" in self.input_names:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        with torch.inference_mode():
            embeddings = self.model.forward(features)["sentence_embedding"].float()
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        return embeddings.cpu().numpy()


def model_prompts(path: str | os.PathLike) -> tuple[dict[str, str], str | None]:
    """The named prompts of the sentence-transformers model at ``path`` and its default prompt's name,
    as its ``config_sentence_transformers.json`` gives them (``prompts``, ``default_prompt_name``):
    e.g. ``({"query": "query: ", "passage": "passage: "}, None)``; ``({}, None)`` when it names none.
    Read from the file itself: the loaded model adds empty ``query``/``document`` prompts of its own."""
    config = Path(path) / "config_sentence_transformers.json"
    data = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    prompts = {str(name): str(text) for name, text in (data.get("prompts") or {}).items() if text is not None}
    return prompts, data.get("default_prompt_name") or None


_engines: ProcessRegistry[Engine] = ProcessRegistry()


def get_engine(path: str, *, device: str = "auto", batch_tokens: int = 0, torch_threads: int = 0,
               backend: str = "torch", cache_dir: str | os.PathLike | None = None, wide_threads: int = 0,
               wide_slot: str | os.PathLike | None = None) -> Engine:
    """The process-wide `Engine` for ``path`` and ``backend``; loaded on first use, once, under a
    lock (the other arguments apply to that first load; ``wide_slot``: the path of the host's
    `HostSlot` file for wide passes, opened only where the engine loads a wide session)."""
    return _engines.get((str(path), device, backend), lambda: Engine(
        path, device=device, batch_tokens=batch_tokens, torch_threads=torch_threads, backend=backend,
        cache_dir=cache_dir, wide_threads=wide_threads, wide_slot=wide_slot))


def loaded_engines() -> list[Engine]:
    """Engines loaded in this process (for health checks and worker logs)."""
    return _engines.values()


def renormalize(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dimensions`` columns of ``(n, d)`` float32
    vectors and L2-normalize each row again. Returns a new C-contiguous ``(n, dimensions)`` array."""
    cut = np.ascontiguousarray(vectors[:, :dimensions], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return cut / norms
