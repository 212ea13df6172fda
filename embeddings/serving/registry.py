"""`ProcessRegistry`: the one way this process keeps objects that must exist once per key
(engines, their batchers, tokenizers): created on first use, exactly once, under a lock."""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ProcessRegistry(Generic[V]):
    """A process-wide ``key -> value`` map whose values are built by a factory once per key.

    Reads of an existing key take no lock; a missing key is built under the registry's lock
    (double-checked), so two threads never build the same (expensive: a model's weights) value.
    """

    def __init__(self) -> None:
        self._items: dict[Hashable, V] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, factory: Callable[[], V]) -> V:
        """The value of ``key``, built by ``factory()`` if this process has none yet."""
        value = self._items.get(key)
        if value is None:
            with self._lock:
                value = self._items.get(key)
                if value is None:
                    value = self._items[key] = factory()
        return value

    def values(self) -> list[V]:
        """Every value built so far."""
        return list(self._items.values())
