"""Tokenization with the served model's own tokenizer, without loading its weights.

The API process tokenizes every request (exact counts before admission and
inference) even when it never runs the model (workers do), so this module loads
only the tokenizer files.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


class ModelTokenizer:
    """The fast (Rust) tokenizer of the model at ``path``, with truncation and padding off.

    (A model's ``tokenizer.json`` may carry truncation/padding settings, e.g.
    all-MiniLM-L6-v2's says 128, that would silently cut inputs; counts must be
    exact, so a private copy has them off.)

    Attributes:
        vocab_size: token ids must lie in ``[0, vocab_size)`` (BERT WordPiece: 30,522).
        pad_token_id: id used to pad rows of a batch.
        input_names: the model's input tensors, e.g. ``["input_ids", "token_type_ids", "attention_mask"]``.
        prefix, suffix: special-token ids put around every input (BERT: ``[CLS]``, ``[SEP]``).
    """

    def __init__(self, path: str):
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.vocab_size = int(self.tokenizer.get_vocab_size(with_added_tokens=True))
        self.pad_token_id = int(hf_tokenizer.pad_token_id or 0)
        self.input_names = list(getattr(hf_tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
        self.prefix, self.suffix = self._special_tokens()

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        with_special = self.tokenizer.encode("a", add_special_tokens=True).ids
        bare = self.tokenizer.encode("a", add_special_tokens=False).ids
        for start in range(len(with_special) - len(bare) + 1):
            if with_special[start:start + len(bare)] == bare:
                return with_special[:start], with_special[start + len(bare):]
        return [], []

    @property
    def special_token_count(self) -> int:
        """Tokens added to every input (BERT: 2)."""
        return len(self.prefix) + len(self.suffix)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, special tokens included, never truncated."""
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

    def add_special_tokens(self, ids: Sequence[int]) -> list[int]:
        """Wrap bare ids (as ``encode(text, add_special_tokens=False)`` gives) in the special tokens,
        so that a token array embeds exactly as the text it came from."""
        return [*self.prefix, *ids, *self.suffix]

    def truncate(self, ids: list[int], max_tokens: int) -> list[int]:
        """Cut a wrapped sequence to ``max_tokens``, keeping its trailing special tokens."""
        if len(ids) <= max_tokens:
            return ids
        if not self.suffix:
            return ids[:max_tokens]
        return ids[: max_tokens - len(self.suffix)] + list(self.suffix)


_tokenizers: dict[str, ModelTokenizer] = {}
_lock = threading.Lock()


def get_tokenizer(path: str) -> ModelTokenizer:
    """The process-wide `ModelTokenizer` for the model at ``path`` (loaded once)."""
    path = str(path)
    tokenizer = _tokenizers.get(path)
    if tokenizer is None:
        with _lock:
            tokenizer = _tokenizers.get(path)
            if tokenizer is None:
                tokenizer = _tokenizers[path] = ModelTokenizer(path)
    return tokenizer
