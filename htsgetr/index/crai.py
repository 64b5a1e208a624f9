"""CRAI (CRAMv3 section 12): the gzipped text index of a CRAM file.

One line per slice (and per reference inside a multi-reference slice), six tab-separated
integers: reference ID (-1: unplaced unmapped reads), alignment start (1-based), alignment
span, container offset (from the start of the file), slice offset (from the end of the
container header) and slice size. Tickets need only the containers, never the slices.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Optional

from ..formats.bgzf import TooLarge, inflate
from ..protocol import InternalError

UNMAPPED = -1
#: A multi-reference slice indexed as one line (older htsjdk): it may hold any reference.
MULTI_REF = -2


def _gunzip_or_plain(data: bytes, limit: Optional[int] = None, name: str = "index") -> bytes:
    """CRAI files are gzip-compressed (possibly multi-member); accept plain text too. More
    than `limit` bytes of text (config max_index_bytes) is refused while inflating."""
    if data[:2] != b"\x1f\x8b":
        if limit is not None and len(data) > limit:
            raise TooLarge(f"{name} is more than {limit} bytes")
        return data
    return bytes(inflate(data, limit, name))


@dataclass(frozen=True)
class Slice:
    """One CRAI line, as written: what the container at `container` must agree with."""

    ref: int
    start: int  # 1-based alignment start
    container: int  # container offset
    offset: int  # slice offset, from the end of the container header (a landmark)
    size: int  # slice size


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
    #: the lines of each container, to check against the container header (cram.py)
    slices: dict[int, list[Slice]] = field(default_factory=dict)
    #: containers whose header was found to agree with their lines, and where each ends by
    #: its header (a ticket checks the ones it uses once; the parsed CRAI is cached per
    #: version of the CRAM and CRAI)
    verified: dict[int, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        """For the cache budget: about 300 bytes of Python objects per line."""
        return 4096 + 300 * sum(len(v) for v in self.slices.values())

    @classmethod
    def parse(cls, data: bytes, name: str = "index", limit: Optional[int] = None) -> Crai:
        try:
            text = _gunzip_or_plain(data, limit, name)
        except TooLarge:
            raise InternalError(f"{name} is larger than max_index_bytes ({limit})") from None
        except ValueError as exc:
            raise InternalError(f"{name} is corrupt: {exc}") from None
        refs: dict[int, _RefEntries] = {}
        slices: dict[int, list[Slice]] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                if len(fields) != 6:
                    raise ValueError
                ref, aln_start, span, coff, soff, ssize = (int(f) for f in fields)
            except ValueError:
                raise InternalError(f"{name} is not a CRAI index (line {lineno})") from None
            if coff < 0 or soff < 0 or ssize < 0 or ref < MULTI_REF:
                raise InternalError(f"{name} is corrupt: a negative field (line {lineno})")
            entries = refs.setdefault(ref, _RefEntries())
            # 1-based start; be generous by one base on both sides (placed unmapped reads
            # and zero spans), since an extra container costs little and a missing one is wrong
            beg = max(0, aln_start - 1)
            entries.starts.append(max(0, beg - 1))
            entries.ends.append(beg + max(span, 1) + 1)
            entries.offsets.append(coff)
            slices.setdefault(coff, []).append(Slice(ref, aln_start, coff, soff, ssize))
        for entries in refs.values():
            entries.finish()
        return cls(refs, sorted(slices), slices)

    def check_bounds(self, name: str, header_end: int, data_end: int) -> None:
        """Every container offset lies among the CRAM's data containers: after its header
        container, before its EOF container."""
        offsets = self.container_offsets
        if offsets and (offsets[0] < header_end or offsets[-1] >= data_end):
            bad = offsets[0] if offsets[0] < header_end else offsets[-1]
            raise InternalError(
                f"{name} does not index this CRAM: a container offset ({bad}) lies outside "
                f"its data containers ({header_end} to {data_end})"
            )

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

    def container_end(self, offset: int, default: int) -> int:
        """Where the container at `offset` ends: by its header once verified (the CRAMv3
        extent: a container's length), else where the next one starts (`default` after the
        last). The two agree on a file whose containers follow one another; where bytes lie
        between them, only the container itself is read or sent."""
        end = self.verified.get(offset)
        return end if end is not None else min(self.next_container(offset, default), default)
