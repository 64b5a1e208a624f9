"""Per-process caches shared by the remote backends (S3, HTTP): object metadata and small reads.

A ticket asks its storage the same questions several times (does ``x.bam`` exist, its size,
its version; does ``x.bam.csi`` exist, then ``x.bam.bai``...). Remote answers cost a round
trip each, so:

- `MetaCache` keeps HEAD results, found *and* not found, for ``ttl`` seconds. Within the TTL a
  warm ticket makes no upstream call at all. With ``ttl <= 0`` every ticket revalidates, but
  answers are still reused for `COALESCE_SECONDS`, which folds the repeated questions of one
  ticket into one HEAD per object.
- `RangeCache` serves small reads (BGZF block headers, the partial blocks at chunk ends, EOF
  checks) from aligned windows keyed by the object's version, so neighbouring small reads cost
  one ranged GET. A changed object has a new version and never hits old windows.

Nothing here is shared between workers: scaling out needs no coordination (DESIGN.md).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Optional, TypeVar, Union

from ..protocol import NotFound, UpstreamError

#: With ``cache_ttl = 0`` metadata is still reused this long (one ticket's worth of lookups).
COALESCE_SECONDS = 1.0
#: Reads up to this size go through the window cache; windows are aligned to it.
WINDOW = 128 * 1024
#: Window-cache budget per storage instance (per worker process).
WINDOW_BUDGET = 32 * 1024 * 1024


@dataclass(frozen=True)
class ObjectMeta:
    """What a HEAD tells us about one object."""

    size: int
    #: changes whenever the object changes (ETag, else Last-Modified + size)
    version: str
    #: the raw ETag as the upstream sent it (quotes included), if any
    etag: Optional[str] = None
    #: set when the object exists but cannot be read now (e.g. S3 "GLACIER" not restored)
    archived: Optional[str] = None
    #: the whole object's MD5 (hex), when the upstream vouches for it
    md5: Optional[str] = None


T = TypeVar("T")

_Entry = tuple[float, Union[ObjectMeta, NotFound]]


class MetaCache:
    """TTL cache of `ObjectMeta` (and of NotFound answers), thread-safe, bounded."""

    def __init__(
        self,
        ttl: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl if ttl > 0 else COALESCE_SECONDS
        self.max_entries = max_entries
        self.clock = clock
        self._data: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, load: Callable[[], ObjectMeta]) -> ObjectMeta:
        """The cached metadata of `key`, or `load()` it. A cached NotFound is raised again.

        Only NotFound is remembered among errors: an upstream failure is retried next time.
        """
        now = self.clock()
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and entry[0] > now:
                self._data.move_to_end(key)
                self.hits += 1
                value = entry[1]
                if isinstance(value, NotFound):
                    raise NotFound(value.message)
                return value
            self.misses += 1
        try:
            value = load()
        except NotFound as exc:
            self._put(key, NotFound(exc.message))
            raise
        self._put(key, value)
        return value

    def _put(self, key: Hashable, value: Union[ObjectMeta, NotFound]) -> None:
        with self._lock:
            self._data[key] = (self.clock() + self.ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def invalidate(self, key: Hashable) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class RangeCache:
    """Aligned windows of object bytes, LRU by total size; keyed by (object, version)."""

    def __init__(self, window: int = WINDOW, budget: int = WINDOW_BUDGET) -> None:
        self.window = window
        self.budget = budget
        self._data: OrderedDict[tuple[Hashable, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def read(
        self,
        obj: Hashable,
        size: int,
        start: int,
        end: int,
        fetch: Callable[[int, int], bytes],
    ) -> bytes:
        """Bytes ``[start, end)`` of an object of `size` bytes; `fetch(a, b)` reads upstream.

        `obj` must identify the object *and its version*. Missing windows are fetched with one
        ranged read covering all of them.
        """
        end = min(end, size)
        if start >= end:
            return b""
        w = self.window
        first, last = start // w, (end - 1) // w
        parts: dict[int, bytes] = {}
        with self._lock:
            for i in range(first, last + 1):
                data = self._data.get((obj, i))
                if data is not None:
                    self._data.move_to_end((obj, i))
                    parts[i] = data
        missing = [i for i in range(first, last + 1) if i not in parts]
        if missing:
            self.misses += 1
            lo, hi = missing[0] * w, min((missing[-1] + 1) * w, size)
            data = fetch(lo, hi)
            if len(data) != hi - lo:
                raise UpstreamError(f"upstream returned {len(data)} of {hi - lo} bytes")
            for i in range(missing[0], missing[-1] + 1):
                chunk = data[i * w - lo : (i + 1) * w - lo]
                parts[i] = chunk
                self._put((obj, i), chunk)
        else:
            self.hits += 1
        joined = b"".join(parts[i] for i in range(first, last + 1))
        return joined[start - first * w : end - first * w]

    def _put(self, key: tuple[Hashable, int], data: bytes) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._data[key] = data
            self._bytes += len(data)
            while self._bytes > self.budget and self._data:
                _, dropped = self._data.popitem(last=False)
                self._bytes -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


class ProcessLocal(Generic[T]):
    """A lazily built object (boto3 client, requests.Session) rebuilt after a fork.

    gunicorn may build the app before forking workers; sockets and pools must not cross the
    fork, so the object is keyed by the process id.
    """

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: Optional[T] = None
        self._pid: Optional[int] = None
        self._lock = threading.Lock()

    def get(self) -> T:
        pid = os.getpid()
        value = self._value
        if self._pid != pid or value is None:
            with self._lock:
                if self._pid != pid or self._value is None:
                    self._value = self._build()
                    self._pid = pid
                value = self._value
        return value


class CircuitBreaker:
    """Fail fast while a backend is down, so waiting on it cannot tie up a worker's threads.

    After `threshold` consecutive failures that mean "unreachable or hanging" (connection
    refused, timeouts; never 4xx answers) the backend is marked down for `cooldown` seconds:
    calls fail at once with 503. After the cooldown one call goes through (half-open); a
    success closes the circuit, a failure opens it again.
    """

    def __init__(self, name: str, threshold: int = 3, cooldown: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.open_until = 0.0
        self._lock = threading.Lock()

    def check(self) -> None:
        with self._lock:
            if self.failures < self.threshold:
                return
            now = self.clock()
            if now < self.open_until:
                left = self.open_until - now
                raise UpstreamError(
                    f"the storage backend is failing; not retried for another {left:.1f} s", 503)
            # half-open: let this call through, hold the others back for another cooldown
            self.open_until = now + self.cooldown

    def success(self) -> None:
        if self.failures:
            with self._lock:
                self.failures = 0
                self.open_until = 0.0

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.failures >= self.threshold:
                self.open_until = self.clock() + self.cooldown
