"""CRAI (CRAMv3 section 12): the gzipped text index of a CRAM file.

One line per slice (and per reference inside a multi-reference slice), six tab-separated
integers: reference ID (-1: unplaced unmapped reads), alignment start (1-based), alignment
span, container offset (from the start of the file), slice offset (from the end of the
container header) and slice size. Tickets need only the containers, never the slices.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from ..protocol import InternalError

UNMAPPED = -1
#: A multi-reference slice indexed as one line (older htsjdk): it may hold any reference.
MULTI_REF = -2


def _gunzip_or_plain(data: bytes) -> bytes:
    """CRAI files are gzip-compressed (possibly multi-member); accept plain text too."""
    if data[:2] != b"\x1f\x8b":
        return data
    out = []
    while data[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out.append(d.decompress(data))
        if not d.eof:
            raise ValueError("truncated gzip stream")
        data = d.unused_data
    return b"".join(out)


@dataclass
class _RefEntries:
    """The entries of one reference, sorted by start, with a running maximum of their ends."""

    starts: list[int] = field(default_factory=list)  # 0-based
    ends: list[int] = field(default_factory=list)  # 0-based, exclusive
    offsets: list[int] = field(default_factory=list)  # container offsets
    max_ends: list[int] = field(default_factory=list)  # max(ends[:i + 1]), non-decreasing

    def finish(self) -> None:
        order = sorted(range(len(self.starts)), key=lambda i: (self.starts[i], self.offsets[i]))
        self.starts = [self.starts[i] for i in order]
        self.ends = [self.ends[i] for i in order]
        self.offsets = [self.offsets[i] for i in order]
        running, self.max_ends = -1, []
        for end in self.ends:
            running = max(running, end)
            self.max_ends.append(running)

    def overlapping(self, beg: int, end: int) -> set[int]:
        """Container offsets of entries overlapping the 0-based half-open `[beg, end)`."""
        out: set[int] = set()
        # entries before `first` all end at or before `beg` (max_ends is non-decreasing)
        first = bisect_right(self.max_ends, beg)
        for i in range(first, bisect_left(self.starts, end)):
            if self.ends[i] > beg:
                out.add(self.offsets[i])
        return out


@dataclass
class Crai:
    """A parsed CRAI: container offsets by reference, and every container start in order."""

    refs: dict[int, _RefEntries]
    container_offsets: list[int]  # sorted, distinct

    @classmethod
    def parse(cls, data: bytes, name: str = "index") -> Crai:
        try:
            text = _gunzip_or_plain(data)
        except (ValueError, zlib.error) as exc:
            raise InternalError(f"{name} is corrupt: {exc}") from None
        refs: dict[int, _RefEntries] = {}
        offsets: set[int] = set()
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                if len(fields) != 6:
                    raise ValueError
                ref, aln_start, span, coff, _soff, _ssize = (int(f) for f in fields)
            except ValueError:
                raise InternalError(f"{name} is not a CRAI index (line {lineno})") from None
            if coff < 0:
                raise InternalError(f"{name}: negative container offset (line {lineno})")
            entries = refs.setdefault(ref, _RefEntries())
            # 1-based start; be generous by one base on both sides (placed unmapped reads
            # and zero spans), since an extra container costs little and a missing one is wrong
            beg = max(0, aln_start - 1)
            entries.starts.append(max(0, beg - 1))
            entries.ends.append(beg + max(span, 1) + 1)
            entries.offsets.append(coff)
            offsets.add(coff)
        for entries in refs.values():
            entries.finish()
        return cls(refs, sorted(offsets))

    def containers(self, ref_id: int, beg: int, end: int) -> set[int]:
        """Offsets of the containers holding records of `ref_id` that may overlap [beg, end)."""
        multi = self.refs.get(MULTI_REF)
        out = set(multi.offsets) if multi is not None else set()
        entries = self.refs.get(ref_id)
        if entries is None:
            return out
        if ref_id == UNMAPPED:
            return out | set(entries.offsets)
        return out | entries.overlapping(beg, end)

    def next_container(self, offset: int, default: int) -> int:
        """The start of the container after the one at `offset` (`default` after the last)."""
        i = bisect_right(self.container_offsets, offset)
        return self.container_offsets[i] if i < len(self.container_offsets) else default
