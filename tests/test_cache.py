"""The per-worker cache is bounded by entries and by bytes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

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


@pytest.mark.parametrize("once", [True, False])
def test_a_once_load_is_done_once_while_others_wait_for_it(once: bool) -> None:
    """`once` (a whole-file md5, which lets other requests run while it hashes): requests
    asking for the same key meanwhile wait for the load under way instead of doing it again;
    without `once` each of the four does it."""
    cache = LRUCache()
    release = threading.Event()
    loads: list[int] = []

    def slow() -> Blob:
        loads.append(1)
        release.wait(10)
        return Blob(10)

    got: list[Blob] = []
    asking = [threading.Thread(target=lambda: got.append(cache.get_or_load("md5", slow, once)))
              for _ in range(4)]
    for t in asking:
        t.start()
    deadline = time.monotonic() + 10
    while len(loads) < (1 if once else 4) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the other three are asking by now: waiting (once) or loading
    release.set()
    for t in asking:
        t.join(10)
    assert len(got) == 4 and len(loads) == (1 if once else 4)
    if once:
        assert len({id(g) for g in got}) == 1  # the one value, for all four


def test_a_failed_once_load_leaves_the_next_asker_to_try() -> None:
    cache = LRUCache()
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def failing() -> Blob:
        calls.append("failed")
        started.set()
        release.wait(10)
        raise OSError("storage fault")

    def loading() -> Blob:
        calls.append("loaded")
        return Blob(1)

    errors: list[Exception] = []

    def first_try() -> None:
        try:
            cache.get_or_load("md5", failing, once=True)
        except OSError as err:
            errors.append(err)

    second: list[Blob] = []
    first = threading.Thread(target=first_try)
    first.start()
    started.wait(10)
    waiter = threading.Thread(
        target=lambda: second.append(cache.get_or_load("md5", loading, once=True)))
    waiter.start()
    time.sleep(0.2)  # waiting for the first one's load by now
    release.set()
    first.join(10)
    waiter.join(10)
    assert errors and calls == ["failed", "loaded"] and second == [Blob(1)]
