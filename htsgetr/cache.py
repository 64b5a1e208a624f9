"""A small thread-safe LRU for parsed indexes and headers, one per worker process.

Keys include the object's version (mtime/size, ETag), so a changed file is re-read; workers
never share state, so scaling out needs no coordination.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")


def weight(value: Any) -> int:
    """Approximate bytes a cached value holds: its `nbytes` if it says, else a small guess."""
    return int(getattr(value, "nbytes", 4096))


class LRUCache:
    """Bounded by entry count and by total `weight` (a 30x human BAI alone is ~9 MB)."""

    def __init__(self, max_entries: int = 256, max_bytes: int = 512 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_load(self, key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key][0]
            self.misses += 1
        value = load()  # outside the lock: loads may do I/O
        size = weight(value)
        with self._lock:
            if key in self._data:
                self._bytes -= self._data[key][1]
            self._data[key] = (value, size)
            self._data.move_to_end(key)
            self._bytes += size
            while len(self._data) > 1 and (
                len(self._data) > self.max_entries or self._bytes > self.max_bytes
            ):
                _, (_, dropped) = self._data.popitem(last=False)
                self._bytes -= dropped
        return value

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)
