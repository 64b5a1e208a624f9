"""The Storage protocol every backend implements, and helpers shared by them."""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable


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


def range_header(start: int, end: int) -> dict[str, str]:
    """The HTTP Range header for half-open ``[start, end)`` (HTTP ranges are inclusive)."""
    return {"Range": f"bytes={start}-{end - 1}"}
