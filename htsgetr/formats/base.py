"""What every format module shares: the pieces a ticket is made of, and a handle on one file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, TypeVar, Union

from ..cache import LRUCache
from ..protocol import Class, Format, NotFound, Query
from ..storage.base import Storage, batched, prefetch, stat_many

T = TypeVar("T")

Ranges = Iterable[tuple[int, int]]


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``[start, end)`` of the data file."""

    start: int
    end: int
    klass: Class


@dataclass(frozen=True)
class Inline:
    """Bytes sent inline as a ``data:;base64,`` URI (re-cut blocks, EOF markers)."""

    data: bytes
    klass: Class


Piece = Union[ByteRange, Inline]


@dataclass
class Source:
    """One data file in one storage, with per-process caching of what is parsed from it."""

    storage: Storage
    key: str
    cache: LRUCache
    _versions: dict[str, str] = field(default_factory=dict)
    #: `read_ahead`: what to fetch with the first read that reaches the storage
    _plan: Optional[Callable[[], Ranges]] = field(default=None, repr=False)

    def version(self, key: Optional[str] = None) -> str:
        key = key or self.key
        if key not in self._versions:
            self._versions[key] = self.storage.version(key)
        return self._versions[key]

    def find(self, candidates: Iterable[str]) -> Optional[str]:
        """The first candidate key (e.g. index names) that exists in the same storage (a
        remote one is asked about all of them at once, if `Htsget.locate` did not already)."""
        if batched(self.storage):
            keys = list(candidates)
            found = stat_many(self.storage, keys)
            return next((key for key in keys if found.get(key) is not None), None)
        # which one it was, per version of this file: the next ticket stats that one only
        # (the stat `cached` needs for its version anyway), not the missing ones before it
        names = tuple(candidates)
        try:
            memo: Optional[tuple[str, ...]] = (
                "sidecar", self.storage.name, self.key, self.version(), *names)
        except NotFound:
            memo = None
        blocks = self.cache.blocks
        known = blocks.get(memo) if memo is not None else None
        if known is not None:
            try:
                self.version(known)
                return str(known)
            except NotFound:  # gone since: look again
                pass
        for candidate in names:
            if self.storage.exists(candidate):
                if memo is not None:
                    blocks.put(memo, candidate, 100 + len(candidate))
                return candidate
        return None

    @property
    def batched(self) -> bool:
        """Whether reading ahead pays: a remote storage answering many reads at once."""
        return batched(self.storage)

    def read_ahead(self, plan: Callable[[], Ranges]) -> None:
        """On a `batched` (remote) storage: when a read of this ticket first has to reach
        the storage, `plan()` (byte ranges of the file the ticket is about to read: a
        region's edge blocks) is fetched with it, in one parallel batch. A ticket whose reads
        all come from caches (parsed, inflated, re-cut) never asks."""
        if self.batched:
            self._plan = plan
    def prefetch_open(self, head: int, tail: int, whole: Sequence[tuple[Optional[str], int]]
                      ) -> None:
        """What opening a file reads, in one parallel batch on a remote storage: its first
        `head` bytes (header), its last `tail` bytes (EOF marker) and each `(key, limit)` of
        `whole` that exists and is at most `limit` bytes (index, .gzi, .md5). Sizes come from
        what `Htsget.locate` learnt, so nothing waits for anything else."""
        if not self.batched:
            return
        size = self.storage.size(self.key)
        reads = [(self.key, 0, min(size, head))]
        if size > head:
            reads.append((self.key, max(0, size - tail), size))
        found = stat_many(self.storage, [key for key, _ in whole if key])
        for key, limit in whole:
            meta = found.get(key) if key else None
            if key and meta is not None and 0 < meta.size <= limit:
                reads.append((key, 0, meta.size))
        prefetch(self.storage, reads)

    def cached(self, kind: str, load: Callable[[], T], *extra_keys: str, once: bool = False
               ) -> T:
        """Parse once per process per version of the file (and of `extra_keys`, e.g. indexes);
        `once`: see `LRUCache.get_or_load`."""
        cache_key = (
            self.storage.name,
            self.key,
            self.version(),
            kind,
            *((k, self.version(k)) for k in extra_keys),
        )
        return self.cache.get_or_load(cache_key, load, once)

    def read(self, start: int, end: int, key: Optional[str] = None) -> bytes:
        if self._plan is not None:
            plan, self._plan = self._plan, None
            ranges = [(self.key, a, b) for a, b in plan() if b > a]
            prefetch(self.storage, ranges + [(key or self.key, start, end)])
        return self.storage.read(key or self.key, start, end)

    def read_all(self, key: str) -> bytes:
        return self.storage.read(key, 0, self.storage.size(key))


class FormatHandler(Protocol):
    """A format module: which files it reads and how a query becomes pieces of them."""

    @property
    def format(self) -> Format: ...

    @property
    def extensions(self) -> tuple[str, ...]:
        """Suffixes appended to the resolved ID, tried in order (".bam"; ".fa", ".fa.gz")."""
        ...

    def pieces(self, source: Source, query: Query) -> list[Piece]: ...


#: optional handler method `sidecars(key) -> list[str]`: the companions (index candidates,
#: .gzi) of a data file, asked about with the file itself (one listing on S3)
def companions(handler: object, keys: Sequence[str]) -> list[str]:
    """The data keys, each followed by its handler's sidecars and its `.md5`."""
    sidecars: Optional[Callable[[str], list[str]]] = getattr(handler, "sidecars", None)
    out: list[str] = []
    for key in keys:
        out.append(key)
        out.extend(sidecars(key) if sidecars is not None else ())
        out.append(key + ".md5")
    return out


def missing_index(key: str, region: bool = False) -> NotFound:
    """`region`: the query asks for a region, which only an index can find (whole-file and
    class=header tickets need none)."""
    if region:
        return NotFound(f"no index found for {key}: a region needs one (whole-file and"
                        " class=header tickets do not)")
    return NotFound(f"no index found for {key}")
