"""What every format module shares: the pieces a ticket is made of, and a handle on one file."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, TypeVar, Union

from ..cache import LRUCache
from ..protocol import Class, Format, NotFound, Query
from ..storage.base import Storage

T = TypeVar("T")


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

    def version(self, key: Optional[str] = None) -> str:
        key = key or self.key
        if key not in self._versions:
            self._versions[key] = self.storage.version(key)
        return self._versions[key]

    def find(self, candidates: Iterable[str]) -> Optional[str]:
        """The first candidate key (e.g. index names) that exists in the same storage."""
        for candidate in candidates:
            if self.storage.exists(candidate):
                return candidate
        return None

    def cached(self, kind: str, load: Callable[[], T], *extra_keys: str) -> T:
        """Parse once per process per version of the file (and of `extra_keys`, e.g. indexes)."""
        cache_key = (
            self.storage.name,
            self.key,
            self.version(),
            kind,
            *((k, self.version(k)) for k in extra_keys),
        )
        return self.cache.get_or_load(cache_key, load)

    def read(self, start: int, end: int, key: Optional[str] = None) -> bytes:
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


def missing_index(key: str) -> NotFound:
    return NotFound(f"no index found for {key}")
