"""The Storage protocol every backend implements, and helpers shared by them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional, Protocol, runtime_checkable

from ..protocol import NotFound
from .remote_cache import ObjectMeta


@runtime_checkable
class Storage(Protocol):
    """Where the bytes of a file live. Keys are relative paths like ``cohort/sample.bam``.

    Ranges are half-open ``[start, end)`` byte offsets. Implementations raise
    `protocol.NotFound` for a missing key and `protocol.UpstreamError` (or a subclass status)
    when the backend itself fails, so the engine never sees backend-specific exceptions.
    """

    #: identifies the backend instance in cache keys (e.g. "file:/data", "s3:bucket")
    name: str

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def version(self, key: str) -> str:
        """A token that changes whenever the object changes (mtime+size, ETag)."""
        ...

    def read(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``; shorter only at the end of the object."""
        ...

    def block_url(self, key: str, start: int, end: int) -> tuple[str, Optional[dict[str, str]]]:
        """A URL (and headers) from which a client fetches bytes ``[start, end)``."""
        ...


@runtime_checkable
class Batched(Protocol):
    """An optional capability of remote backends (S3): many questions in one round trip.

    A cold ticket asks which of a file's companions exist (indexes, .gzi, .md5), then reads
    its header, index and EOF, then a few blocks at the region's edges; each is a round trip
    to a remote store. A backend with this capability answers each group at once (a listing,
    requests in parallel) and keeps the answers for the questions that follow (`exists`,
    `size`, `version`, `read`), so the code asking them stays as it is. Use the module
    functions `stat_many` and `read_many`, which fall back to plain calls.
    """

    def stat_many(self, keys: Sequence[str]) -> dict[str, Optional[ObjectMeta]]:
        """Metadata of each key (None: no such object), as `exists`/`size`/`version` would
        answer, in at most a couple of round trips whatever the number of keys."""
        ...

    def read_many(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """Bytes ``[start, end)`` of each ``(key, start, end)``, fetched in parallel."""
        ...

    def prefetch(self, ranges: Sequence[tuple[str, int, int]]) -> None:
        """`read_many` without the answer: the bytes are kept for the `read` calls that
        follow (how a header, an index, the blocks at a region's edges are fetched ahead)."""
        ...


def batched(storage: object) -> bool:
    """Whether `storage` answers `stat_many` / `read_many` in parallel (worth a prefetch)."""
    return getattr(storage, "read_many", None) is not None


def stat_many(storage: Storage, keys: Iterable[str]) -> dict[str, Optional[ObjectMeta]]:
    """`storage.stat_many(keys)`, or the same answers from one `exists` etc. per key."""
    keys = list(dict.fromkeys(keys))
    if batched(storage):
        metas: dict[str, Optional[ObjectMeta]] = storage.stat_many(keys)  # type: ignore[attr-defined]
        return metas
    out: dict[str, Optional[ObjectMeta]] = {}
    for key in keys:
        try:
            found = storage.exists(key)
            out[key] = ObjectMeta(storage.size(key), storage.version(key)) if found else None
        except NotFound:
            out[key] = None
    return out


def read_many(storage: Storage, ranges: Iterable[tuple[str, int, int]]) -> list[bytes]:
    """`storage.read_many(ranges)`, or one `read` per range."""
    ranges = list(ranges)
    if batched(storage):
        data: list[bytes] = storage.read_many(ranges)  # type: ignore[attr-defined]
        return data
    return [storage.read(key, start, end) for key, start, end in ranges]


def prefetch(storage: Storage, ranges: Iterable[tuple[str, int, int]]) -> None:
    """`storage.prefetch(ranges)`; nothing for a storage that reads one range at a time."""
    if batched(storage):
        storage.prefetch(list(ranges))  # type: ignore[attr-defined]


def range_header(start: int, end: int) -> dict[str, str]:
    """The HTTP Range header for half-open ``[start, end)`` (HTTP ranges are inclusive)."""
    return {"Range": f"bytes={start}-{end - 1}"}
