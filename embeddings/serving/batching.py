"""Dynamic batching: coalesce the work of concurrent requests into shared forward passes.

One `MicroBatcher` per loaded engine per process (`get_batcher`), with one thread that
owns the model. Callers (Celery task threads in a worker, request threads in the API)
`submit` token-id sequences and wait on the returned future. The thread:

1. sleeps until work arrives (a caller of `MicroBatcher.encode` that finds the engine idle and
   nothing waiting runs its own batch in its thread instead, and the thread takes what queues
   meanwhile);
2. when it was idle, waits at most ``max_wait_ms`` for others to join (default 0: an idle
   engine starts at once, and batches form while it is busy, as in TEI and Infinity);
3. takes *everything waiting*, up to ``max_batch_tokens`` real tokens: every
   default-tier item first, then flex-tier items in what budget is left, so flex work
   never goes ahead of default work that is waiting (``service_tier`` priority); a
   ``batch``-tier item (the Batch API's, one forward pass each) only runs alone, when
   nothing else waits, so interactive work waits at most for one batch pass;
4. runs one `Engine.encode` over all rows (sorted by length and cut into forward
   passes of the engine's padded-token budget), and resolves each item's future. If
   the batch raises, each item is retried alone, so one bad submission fails only itself.

While the model is busy new items pile up, so the next batch is bigger: batches grow
with load, as TEI's queue does (``core/src/queue.rs``: batching by a token budget).
Chunks from celery-batches were cut by a timer and the prefetch count instead, and
reached 2-6 rows per batch on this machine (issue 3).

Every batch the thread ran is logged (logger ``embeddings.serving.batching``,
``batch model=... items=... inputs=... tokens=... default=... flex=... ms=...``, with the
``request_ids`` its submissions were tagged with; INFO in workers, DEBUG in API processes), kept
in `MicroBatcher.history` (the last 1,000 batches), and counted in Prometheus series
(`embeddings.serving.metrics`: batch sizes, padding, queue wait, forward passes), so coalescing
is observable.

Each submission's future carries, once resolved, ``wait_s`` (seconds from `submit` to the start
of its batch), ``encode_s`` (seconds its batch spent in the engine) and ``share`` (its part of the
batch's real tokens, 0..1). `MicroBatcher.encode` reports ``wait_s`` to `observe_wait`, which the
embeddings app points at the request's phase timer.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .engine import Engine
from .registry import ProcessRegistry

logger = logging.getLogger(__name__)

TIERS = ("default", "flex", "batch")


def _ignore_wait(seconds: float) -> None:
    """The default `observe_wait`: nothing to report to."""


# Called with ``wait_s`` (seconds) in the caller's thread after each `MicroBatcher.encode`; the
# embeddings app sets it (`embeddings.apps`) so a request's queue wait is one of its phases.
observe_wait: Callable[[float], None] = _ignore_wait


@dataclass
class _Item:
    token_ids: Sequence[Sequence[int]]
    tokens: int
    tier: str
    tag: str = ""
    queued_at: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class BatchRecord:
    """One batch the thread ran: ``items`` submissions (chunks/requests), ``inputs`` rows,
    ``tokens`` real tokens, per-tier item counts, and ``ms`` of model time."""

    items: int
    inputs: int
    tokens: int
    default: int
    flex: int
    ms: float
    batch: int = 0


class MicroBatcher:
    """Coalesces concurrent `submit` calls for one `Engine` into shared batches.

    Args:
        engine: the loaded model.
        max_batch_tokens: the most real tokens one batch takes (one submission larger
            than this still runs, alone).
        max_wait_ms: how long an idle batcher waits after the first item for more (ms).
        name: the model's name, for logs.
        log_level: level of the per-batch log line (workers: INFO; API processes: DEBUG).
    """

    def __init__(self, engine: Engine, *, max_batch_tokens: int = 65536, max_wait_ms: float = 0.0,
                 name: str = "", log_level: int = logging.DEBUG):
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000
        self.name = name or engine.path
        self.log_level = log_level
        self.history: collections.deque[BatchRecord] = collections.deque(maxlen=1000)
        self._queues: dict[str, collections.deque[_Item]] = {tier: collections.deque() for tier in TIERS}
        self._waiting_tokens = 0
        self._cond = threading.Condition()
        self._paused = False
        self._busy = False  # a batch is in the engine (run by the thread, or by `encode` itself)
        self._thread = threading.Thread(target=self._run, name=f"batcher:{self.name}", daemon=True)
        self._thread.start()
        metrics.LOAD_SECONDS.labels(self.name, engine.device, engine.backend).set(getattr(engine, "load_seconds", 0.0))

    def submit(self, token_ids: Sequence[Sequence[int]], *, tier: str = "default", tag: str = "") -> Future:
        """Queue token-id sequences (special tokens included) for encoding.

        Returns a `Future` resolving to an ``(n, d)`` float32 array in input order (or
        raising what the engine raised), with ``wait_s``, ``encode_s`` and ``share`` (see the
        module docstring). ``tier``: ``"default"``, ``"flex"`` or ``"batch"``. ``tag``: a request id, named in
        the batch's log line.
        """
        return self._enqueue(self._new_item(token_ids, tier, tag))

    def encode(self, token_ids: Sequence[Sequence[int]], *, tier: str = "default",
               timeout: float | None = None, wide: bool = False) -> np.ndarray:
        """`submit` and wait (``timeout`` seconds; raises `concurrent.futures.TimeoutError`); the
        wait is reported to `observe_wait`.

        When the engine is idle and nothing waits (the batcher neither paused nor set to wait for
        others, ``max_wait_ms`` 0), the caller's thread runs the batch itself (to the end:
        ``timeout`` does not apply), as the batcher's thread would (logged, counted and kept in
        `history` alike), while later submissions queue for the thread: a lone request saves the
        two thread hand-offs (~0.8 ms of a small request on 2 cores, ``bench/request_phases.py``).
        A ``batch``-tier submission always goes through the queue. ``wide``: such a caller-thread
        batch asks the engine for its all-core session (`Engine.encode`); the caller knows its
        process has no other request encoding."""
        item = self._new_item(token_ids, tier)
        if tier != "batch" and token_ids and not self.max_wait_s and self._claim_idle():
            try:
                self._execute([item], wide=wide)
            finally:
                self._release()
        else:
            self._enqueue(item)
        vectors = item.future.result(timeout=timeout)
        observe_wait(item.future.wait_s)
        return vectors

    def _new_item(self, token_ids: Sequence[Sequence[int]], tier: str, tag: str = "") -> _Item:
        """A submission with its future's timings at 0; `ValueError` for an unknown tier."""
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}")
        item = _Item(token_ids=token_ids, tokens=sum(len(ids) for ids in token_ids), tier=tier, tag=tag)
        item.future.wait_s = item.future.encode_s = item.future.share = 0.0
        return item

    def _enqueue(self, item: _Item) -> Future:
        """Queue ``item`` for the thread (an empty one resolves at once); returns its future."""
        if not item.token_ids:
            item.future.set_result(np.empty((0, self.engine.dimensions), dtype=np.float32))
            return item.future
        with self._cond:
            self._queues[item.tier].append(item)
            self._waiting_tokens += item.tokens
            self._cond.notify()
        return item.future

    def _claim_idle(self) -> bool:
        """Mark the engine busy if it is idle with nothing waiting and the batcher not paused;
        whether it was."""
        with self._cond:
            if self._busy or self._paused or any(self._queues.values()):
                return False
            self._busy = True
            return True

    def _release(self) -> None:
        """The batch in the engine is done: the thread may take what waits."""
        with self._cond:
            self._busy = False
            self._cond.notify()

    def pause(self) -> None:
        """Stop taking new batches (the running one finishes). For tests and draining."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        """Take batches again after `pause`."""
        with self._cond:
            self._paused = False
            self._cond.notify()

    def _has_work(self) -> bool:
        return not self._paused and not self._busy and any(self._queues.values())

    def _take(self) -> list[_Item]:
        """Under the lock: default-tier items first, then flex, up to the token budget; one batch
        item, alone, when nothing else waits."""
        taken: list[_Item] = []
        budget = self.max_batch_tokens
        for tier in TIERS:
            queue = self._queues[tier]
            if tier == "batch":
                if queue and not taken:
                    taken.append(queue.popleft())
                break
            while queue and (not taken or queue[0].tokens <= budget):
                item = queue.popleft()
                taken.append(item)
                budget -= item.tokens
            if queue and taken:
                break  # the budget is spent: flex never takes room default work still waits for
        self._waiting_tokens -= sum(item.tokens for item in taken)
        return taken

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._has_work():
                    self._cond.wait()
                # Idle until now: give concurrent submitters a few ms to join this batch.
                deadline = time.monotonic() + self.max_wait_s
                while self._waiting_tokens < self.max_batch_tokens:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = self._take()
                self._busy = True
            try:
                self._execute(batch)
            finally:
                self._release()

    def _execute(self, batch: list[_Item], wide: bool = False) -> None:
        started = time.perf_counter()
        try:
            self._run_batch(batch, wide)
        finally:  # the engine's time in batches: failed ones, and their submissions run alone, too
            metrics.BATCH_SECONDS.labels(self.name).inc(time.perf_counter() - started)

    def _run_batch(self, batch: list[_Item], wide: bool) -> None:
        batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not batch:
            return
        rows = [ids for item in batch for ids in item.token_ids]
        tags = [item.tag for item in batch if item.tag]
        logger.log(self.log_level, "batch started model=%s items=%d inputs=%d", self.name, len(batch), len(rows),
                   extra={"request_ids": tags} if tags else None)
        started = time.perf_counter()
        for item in batch:
            item.future.wait_s = started - item.queued_at
            metrics.BATCH_QUEUE_WAIT.labels(self.name).observe(item.future.wait_s)
        passes = []
        try:
            vectors = self.engine.encode(rows, on_pass=lambda *args: passes.append(args), wide=wide)
        except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
            logger.exception("batch failed model=%s items=%d inputs=%d", self.name, len(batch), len(rows))
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            # One bad submission must not fail the others that shared its batch: run each alone.
            for item in batch:
                try:
                    item.future.set_result(self.engine.encode(item.token_ids))
                except Exception as item_exc:  # noqa: BLE001
                    item.future.set_exception(item_exc)
            return
        ms = (time.perf_counter() - started) * 1000
        tokens = sum(item.tokens for item in batch)
        start = 0
        for item in batch:
            end = start + len(item.token_ids)
            item.future.encode_s, item.future.share = ms / 1000, item.tokens / max(1, tokens)
            item.future.set_result(vectors[start:end])
            start = end
        record = BatchRecord(items=len(batch), inputs=len(rows), tokens=tokens,
                             default=sum(item.tier == "default" for item in batch),
                             flex=sum(item.tier == "flex" for item in batch), ms=ms,
                             batch=sum(item.tier == "batch" for item in batch))
        self.history.append(record)
        self._observe(record, passes)
        logger.log(self.log_level, "batch model=%s items=%d inputs=%d tokens=%d default=%d flex=%d batch=%d ms=%.1f",
                   self.name, record.items, record.inputs, record.tokens, record.default, record.flex, record.batch,
                   record.ms,
                   extra={"request_ids": tags} if tags else None)

    def _observe(self, record: BatchRecord, passes: list[tuple[int, int, int, float]]) -> None:
        """Count a batch and its forward passes (``(rows, width, tokens, seconds)`` each) in the
        Prometheus series of `embeddings.serving.metrics`."""
        padded = sum(rows * width for rows, width, _, _ in passes)
        seconds = sum(pass_[3] for pass_ in passes)
        name = self.name
        metrics.BATCH_INPUTS.labels(name).observe(record.inputs)
        metrics.BATCH_PADDED_TOKENS.labels(name).observe(padded)
        metrics.BATCH_PADDING_EFFICIENCY.labels(name).observe(record.tokens / padded if padded else 1.0)
        metrics.FORWARD_PASSES.labels(name).inc(len(passes))
        metrics.ENGINE_TOKENS.labels(name).inc(record.tokens)
        metrics.ENGINE_PADDED_TOKENS.labels(name).inc(padded)
        metrics.FORWARD_SECONDS.labels(name).inc(seconds)
        if seconds > 0:
            metrics.TOKENS_PER_SECOND.labels(name).set(record.tokens / seconds)


_batchers: ProcessRegistry[MicroBatcher] = ProcessRegistry()


def get_batcher(engine: Engine, *, max_batch_tokens: int = 65536, max_wait_ms: float = 0.0,
                name: str = "", log_level: int = logging.DEBUG) -> MicroBatcher:
    """The process-wide `MicroBatcher` of ``engine`` (created, with its thread, on first use)."""
    return _batchers.get(id(engine), lambda: MicroBatcher(engine, max_batch_tokens=max_batch_tokens,
                                                          max_wait_ms=max_wait_ms, name=name, log_level=log_level))
