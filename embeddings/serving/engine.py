"""The inference engine: loads a sentence-transformers model and encodes token ids.

Knows nothing about HTTP, tenants or Django. One `Engine` per model per process
(`get_engine`); thread-safe for concurrent `encode` calls.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from .registry import ProcessRegistry
from .tokenization import get_tokenizer

logger = logging.getLogger(__name__)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Engine:
    """A sentence-transformers model loaded once from a local directory (offline).

    Args:
        path: directory of the model (``modules.json``, weights, ``tokenizer.json``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``. On CUDA the weights
            run in fp16; outputs are always float32.
        batch_tokens: the most padded tokens (rows x longest row) per forward pass.
        torch_threads: torch intra-op threads for this process (``torch.set_num_threads``),
            set once when the engine loads; 0 keeps torch's default (the core count).

    Attributes:
        dimensions: output size ``d`` (all-MiniLM-L6-v2: 384).
        max_input_tokens: the model's ``max_seq_length``, special tokens included (256).
    """

    def __init__(self, path: str, *, device: str = "auto", batch_tokens: int = 16384, torch_threads: int = 0):
        import torch
        from sentence_transformers import SentenceTransformer

        if torch_threads:
            torch.set_num_threads(torch_threads)

        started = time.perf_counter()
        self.path = str(path)
        self.device = resolve_device(device)
        self.model = SentenceTransformer(self.path, device=self.device, local_files_only=True)
        if self.device.startswith("cuda"):
            self.model.half()
        self.model.eval()
        self.batch_tokens = batch_tokens
        dimension_of = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension  # sentence-transformers < 6
        self.dimensions = int(dimension_of())
        self.max_input_tokens = int(self.model.max_seq_length)
        tokenizer = get_tokenizer(self.path)
        self.pad_token_id = tokenizer.pad_token_id
        self.input_names = tokenizer.input_names
        self._torch = torch
        logger.info("Loaded model %s on %s (%s) in %.0f ms", self.path, self.device,
                    "fp16" if self.device.startswith("cuda") else "fp32",
                    (time.perf_counter() - started) * 1000)

    def encode(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed token-id sequences (special tokens included).

        Returns an ``(n, d)`` float32 array, L2-normalized, in input order. Rows are
        sorted by length and cut into forward passes of at most ``batch_tokens``
        padded tokens, so padding stays small.
        """
        n = len(batch)
        out = np.empty((n, self.dimensions), dtype=np.float32)
        if n == 0:
            return out
        order = sorted(range(n), key=lambda i: len(batch[i]))
        start = 0
        while start < n:
            # Grow the pass while rows x longest row fits the token budget.
            end = start + 1
            while end < n and (end + 1 - start) * len(batch[order[end]]) <= self.batch_tokens:
                end += 1
            rows = [batch[i] for i in order[start:end]]
            out[order[start:end]] = self._forward(rows)
            start = end
        return out

    def _forward(self, rows: list[Sequence[int]]) -> np.ndarray:
        torch = self._torch
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = r
            attention_mask[i, : len(r)] = 1
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


_engines: ProcessRegistry[Engine] = ProcessRegistry()


def get_engine(path: str, *, device: str = "auto", batch_tokens: int = 16384, torch_threads: int = 0) -> Engine:
    """The process-wide `Engine` for ``path``; loaded on first use, once, under a lock
    (the other arguments apply to that first load)."""
    return _engines.get((str(path), device), lambda: Engine(path, device=device, batch_tokens=batch_tokens,
                                                            torch_threads=torch_threads))


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
