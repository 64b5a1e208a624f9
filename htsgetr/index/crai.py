"""CRAI (CRAMv3 section 12): the gzipped text index of a CRAM file.

One line per slice (and per reference inside a multi-reference slice), six tab-separated
integers: reference ID (-1: unplaced unmapped reads), alignment start (1-based), alignment
span, container offset (from the start of the file), slice offset (from the end of the
container header) and slice size. Tickets need only the containers, never the slices.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Optional

from .._ranges import crai_bounds, crai_entries, crai_offsets, parse_crai_lines
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
    """The entries of one reference, sorted by (start, container offset), with a running
    maximum of their ends (`_ranges.crai_entries` makes them)."""

    starts: list[int] = field(default_factory=list)  # 0-based
    ends: list[int] = field(default_factory=list)  # 0-based, exclusive
    offsets: list[int] = field(default_factory=list)  # container offsets
    max_ends: list[int] = field(default_factory=list)  # max(ends[:i + 1]), non-decreasing

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
    #: the lines as columns (reference ID, 1-based start, span, container offset, slice
    #: offset, slice size), ordered by container offset (file order among equal ones)
    lines: tuple[array[int], ...] = ()
    #: each line's entry, in the same order: 0-based [beg, end), one base wider on both sides
    #: (`_ranges.crai_bounds`)
    bounds: tuple[array[int], ...] = ()
    #: containers whose header was found to agree with their lines, and where each ends by
    #: its header (a ticket checks the ones it uses once; the parsed CRAI is cached per
    #: version of the CRAM and CRAI)
    verified: dict[int, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        """For the cache budget: the columns (64 bytes a line) and the per-reference lists
        (four Python ints, ~130 bytes a line)."""
        return 4096 + 200 * (len(self.lines[0]) if self.lines else 0)

    def entries(self, offset: int) -> list[tuple[int, int, int]]:
        """The entries of the container at `offset`: (reference ID, start, end), 0-based and
        widened by one base on each side as `refs` are (a slice inside them is inside the
        real span too)."""
        if not self.lines:
            return []
        ref, coff = self.lines[0], self.lines[3]
        lo, hi = self.bounds
        return [(ref[i], lo[i], hi[i])
                for i in range(bisect_left(coff, offset), bisect_right(coff, offset))]

    def slices(self, offset: int) -> list[Slice]:
        """The lines of the container at `offset`, to check against its header."""
        if not self.lines:
            return []
        ref, start, _, coff, soff, ssize = self.lines
        lo, hi = bisect_left(coff, offset), bisect_right(coff, offset)
        return [Slice(ref[i], start[i], coff[i], soff[i], ssize[i]) for i in range(lo, hi)]

    @classmethod
    def parse(cls, data: bytes, name: str = "index", limit: Optional[int] = None) -> Crai:
        """Parsed in C (`_ranges.parse_crai_lines`, `crai_bounds`, `crai_entries`): a whole
        genome's CRAI (~50,000 lines) in ~20 ms, not ~0.3 s."""
        try:
            text = _gunzip_or_plain(data, limit, name)
        except TooLarge:
            raise InternalError(f"{name} is larger than max_index_bytes ({limit})") from None
        except ValueError as exc:
            raise InternalError(f"{name} is corrupt: {exc}") from None
        try:
            lines = parse_crai_lines(text)
        except ValueError as exc:
            line = str(exc).split(":")[0]
            if "negative" in str(exc):
                raise InternalError(f"{name} is corrupt: a negative field ({line})") from None
            raise InternalError(f"{name} is not a CRAI index ({line})") from None
        offsets = crai_offsets(lines[3])
        if offsets is None:  # (htslib writes them in file order)
            order = sorted(range(len(lines[3])), key=lines[3].__getitem__)
            lines = tuple(array("q", (column[i] for i in order)) for column in lines)
            offsets = crai_offsets(lines[3])
            assert offsets is not None
        lo, hi = crai_bounds(lines[1], lines[2])
        refs = {r: _RefEntries(*columns)
                for r, columns in crai_entries(lines[0], lo, hi, lines[3]).items()}
        return cls(refs, offsets, lines, (lo, hi))

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
