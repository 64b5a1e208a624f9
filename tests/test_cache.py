"""The per-worker cache is bounded by entries and by bytes."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from htsgetr.cache import LRUCache


@dataclass
class Blob:
    nbytes: int


def test_bounded_by_bytes_and_entries() -> None:
    cache = LRUCache(max_entries=10, max_bytes=1000)
    for i in range(5):
        cache.get_or_load(i, lambda: Blob(300))
    assert len(cache) == 3 and cache.nbytes == 900  # the oldest two went for the budget
    cache.get_or_load(2, lambda: Blob(1))  # a hit moves 2 to the front; nothing loads
    cache.get_or_load("big", lambda: Blob(5000))  # bigger than the budget: kept alone
    assert len(cache) == 1 and cache.nbytes == 5000
    small = LRUCache(max_entries=2)
    for i in range(4):
        small.get_or_load(i, lambda: object())
    assert len(small) == 2


def test_loads_once_per_key_and_counts() -> None:
    cache = LRUCache()
    calls = []
    for _ in range(3):
        cache.get_or_load("k", lambda: calls.append(1) or Blob(10))
    assert calls == [1] and cache.hits == 2 and cache.misses == 1


def test_threads_share_it_safely() -> None:
    cache = LRUCache(max_entries=50, max_bytes=10_000)

    def work(n: int) -> None:
        for i in range(2000):
            cache.get_or_load((n + i) % 120, lambda: Blob(100))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) <= 50 and cache.nbytes == 100 * len(cache)
