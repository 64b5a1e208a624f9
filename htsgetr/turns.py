"""Taking turns: long ticket work lets the worker's other requests run between its steps.

A gevent worker runs every connection in one thread, and switches only where a greenlet
waits on a socket. Ticket work on local files never waits: a CRAM POST re-encoding dozens of
containers (~20-35 ms each), a deep BAM POST of hundreds of regions, a whole-file md5 of a
GB would hold every other connection of its worker for its whole length (measured: 20 CRAM
regions in one POST held a light ticket on the same worker for ~360 ms). So work that may be
long calls `pause()` between its steps (each container, block, chunk, MiB hashed; every 64
url entries: `paced`); past `TURN_SECONDS` since the request began or last paused, the
request lets the others go first (the worker installs how: `install`), and then goes on.
Nothing pauses while holding a lock (a thread lock would block the whole worker): a CRAM
container's re-encoding pauses while it decodes and between encoding and checking, except
when it decodes with a reference, under `Decoding.environment`'s lock: then it is one step.
A request that pauses once is a long one; at most `LONG_AT_ONCE` of them go on at a time in
a worker (the rest wait their turn before going on), so that taking turns does not also let
a hundred heavy POSTs hold their partial results in one worker's memory at once. A long
request that waits for another (a load the other is doing,
`LRUCache.get_or_load(once=True)`) gives its slot back first (`step_aside`): the other may
need one to go on, and the two would wait for each other for good.

Elsewhere — thread workers (preempted anyway), AWS Lambda, the CLI, the Python API — `pause`
does nothing. A request that ends within its turn never pauses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, TypeVar, Union

T = TypeVar("T")

#: seconds of work a request does at most before the worker's other requests get a turn
TURN_SECONDS = 0.005
#: long requests (that paused once) going on at a time in one worker
LONG_AT_ONCE = 2


class Turns(Protocol):
    def begin(self) -> None:
        """This request's work starts now."""

    def pause(self) -> None:
        """Let the others go first if this request has worked for a whole turn."""

    def end(self) -> None:
        """This request's work is done (or failed)."""

    def step_aside(self) -> None:
        """This request is about to wait for another one (a load it is doing): it gives
        back its long-request slot meanwhile, since the other may need one to go on."""


class _Alone:
    """No one to take turns with (the default)."""

    def begin(self) -> None:
        pass

    def pause(self) -> None:
        pass

    def end(self) -> None:
        pass

    def step_aside(self) -> None:
        pass


_turns: Turns = _Alone()


def install(turns: Turns) -> None:
    """How this process's requests take turns (gevent workers install theirs)."""
    global _turns
    _turns = turns


def begin() -> None:
    _turns.begin()


def pause() -> None:
    _turns.pause()


def end() -> None:
    _turns.end()


def step_aside() -> None:
    _turns.step_aside()


def paced(items: Sequence[T], every: int = 64) -> Union[Sequence[T], Iterator[T]]:
    """`items`, with a `pause` before every `every`-th one when there are more than that
    (a ticket's thousands of entries); a short sequence comes back as it is."""
    if len(items) <= every:
        return items
    return _paced(items, every)


def _paced(items: Iterable[T], every: int) -> Iterator[T]:
    for i, item in enumerate(items):
        if not i % every:
            pause()
        yield item
