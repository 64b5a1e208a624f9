"""A small thread-safe LRU for parsed indexes and headers, one per worker process.

Keys include the object's version (mtime/size, ETag), so a changed file is re-read; workers
never share state, so scaling out needs no coordination.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, TypeVar

from . import turns

T = TypeVar("T")


def weight(value: Any) -> int:
    """Approximate bytes a cached value holds: its `nbytes` if it says, else a small guess."""
    return int(getattr(value, "nbytes", 4096))


#: bytes an entry of the block cache costs besides its value (key tuple, dict slot, object)
ENTRY_OVERHEAD = 160


class BlockCache:
    """Inflated BGZF blocks and re-cut (compressed) block edges, bounded by bytes only.

    One per worker process (beside the parsed-index `LRUCache`, config `block_cache_bytes`),
    shared by every file: keys begin with a token unique to one version of one file, so a
    changed file never meets its old blocks, which age out. Lookups are a dict hit under a
    lock; values are computed outside it (two threads may both inflate one block once).
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any:
        """The value kept for `key` (now the most recent), or None. No lock: each step is
        one atomic operation on the dict, and an entry evicted meanwhile is simply a hit
        that is not moved (the counters are statistics, not exact under threads)."""
        hit = self._data.get(key)
        if hit is None:
            self.misses += 1
            return None
        try:
            self._data.move_to_end(key)
        except KeyError:
            pass
        self.hits += 1
        return hit[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        """Keep `value` (weighing `nbytes` plus the entry's overhead), dropping the least
        recently used entries past the budget; a value larger than the budget is not kept."""
        size = nbytes + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._data.popitem(last=False)
                self._bytes -= dropped

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)


class LRUCache:
    """Bounded by entry count and by total `weight` (a 30x human BAI alone is ~9 MB).

    `blocks` is the worker's `BlockCache` (`block_bytes`: config `block_cache_bytes`).
    """

    def __init__(
        self, max_entries: int = 256, max_bytes: int = 512 << 20, block_bytes: int = 64 << 20
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.blocks = BlockCache(block_bytes)
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        #: `once` loads under way: their key -> set when done (or failed)
        self._loading: dict[Hashable, threading.Event] = {}
        self.hits = 0
        self.misses = 0

    def get_or_load(self, key: Hashable, load: Callable[[], T], once: bool = False) -> T:
        """The value for `key`, loaded (outside the lock: loads may do I/O) when missing.
        `once`: a long load that lets other requests run meanwhile (a whole-file md5, which
        pauses: turns.py) is done once, the requests asking for it meanwhile wait for it
        instead of doing it again; one that fails leaves the next of them to try. Only for
        loads that ask for no other `once` value (waiting could then go round in a circle)."""
        hit = self._data.get(key)  # the usual answer, without the lock (as BlockCache.get)
        if hit is not None:
            try:
                self._data.move_to_end(key)
            except KeyError:  # evicted meanwhile: still the value asked for
                pass
            self.hits += 1
            found: T = hit[0]
            return found
        while True:
            with self._lock:
                if key in self._data:
                    self._data.move_to_end(key)
                    self.hits += 1
                    value: T = self._data[key][0]
                    return value
                under_way = self._loading.get(key) if once else None
                if under_way is None:
                    self.misses += 1
                    if once:
                        self._loading[key] = threading.Event()
                    break
            # a long request gives its slot back while it waits: the loader may need one
            turns.step_aside()
            under_way.wait()  # then look again: there, or failed (and this one tries)
        try:
            value = load()
            self._keep(key, value)
        finally:
            if once:
                with self._lock:
                    done = self._loading.pop(key)
                done.set()
        return value

    def _keep(self, key: Hashable, value: Any) -> None:
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

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0
        self.blocks.clear()

    def __len__(self) -> int:
        return len(self._data)
