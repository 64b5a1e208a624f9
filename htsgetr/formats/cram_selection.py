"""Which records of a CRAM a ticket wants: per reference, sorted disjoint intervals (htslib's
overlap rule), and the unplaced reads; what of that bears on one container (`clip`), and its
canonical spelling in a derived block's url (`token`, `parse`).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

from ..index.crai import MULTI_REF, UNMAPPED

#: most intervals a selection spelled in a derived url may hold
MAX_TOKEN_INTERVALS = 1024

Span = tuple[int, int]


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    """The wanted records: per reference ID, sorted disjoint half-open intervals (an empty
    one, `[a, a)`, wants the records covering `a`, as htslib does), and the unplaced ones."""

    intervals: dict[int, tuple[Span, ...]]
    unplaced: bool
    _ends: dict[int, list[int]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, spans: Iterable[tuple[int, int, int]], unplaced: bool) -> Selection:
        """From (reference ID, beg, end) triples, in any order, overlapping or not."""
        by_ref: dict[int, list[Span]] = {}
        for ref_id, beg, end in spans:
            by_ref.setdefault(ref_id, []).append((beg, max(beg, end)))
        intervals: dict[int, tuple[Span, ...]] = {}
        for ref_id, items in by_ref.items():
            items.sort()
            merged = [items[0]]
            for beg, end in items[1:]:
                # touching intervals merge too: a record overlapping either overlaps the
                # union and vice versa, since a record is never empty
                if beg <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], end))
                else:
                    merged.append((beg, end))
            intervals[ref_id] = tuple(merged)
        return cls(intervals, unplaced, {r: [e for _, e in v] for r, v in intervals.items()})

    def spans(self) -> list[tuple[int, int, int]]:
        out = [(r, b, e) for r, items in self.intervals.items() for b, e in items]
        return out + ([(UNMAPPED, 0, 0)] if self.unplaced else [])

    def wants(self, ref_id: int, pos: int, endpos: int) -> bool:
        """Does a record on `ref_id` covering `[pos, endpos)` overlap a wanted interval?"""
        if ref_id < 0:
            return self.unplaced
        ends = self._ends.get(ref_id)
        if ends is None:
            return False
        i = bisect_right(ends, pos)  # the first interval ending after pos
        return i < len(ends) and self.intervals[ref_id][i][0] < endpos

    def stop(self) -> Optional[tuple[int, int, int]]:
        """The last wanted interval, as (reference ID, beg, end): a sorted file (by
        reference ID, then position; unplaced last) holds no more wanted records from the
        first record on a later reference, or starting at or after `end` on it (where
        htslib's region iterator stops reading). (-1, 0, 0) when nothing is wanted; None
        while the unplaced reads are wanted."""
        if self.unplaced:
            return None
        wanted = [r for r, items in self.intervals.items() if items]
        if not wanted:
            return (-1, 0, 0)
        last = max(wanted)
        beg, end = self.intervals[last][-1]
        return (last, beg, end)

    def covers(self, ref_id: int, beg: int, end: int) -> bool:
        """Is every record inside `[beg, end)` (a CRAI entry's span) of `ref_id` wanted?"""
        if ref_id == UNMAPPED:
            return self.unplaced
        items = self.intervals.get(ref_id)
        if ref_id == MULTI_REF or not items or end <= beg:
            return False
        i = bisect_right(items, (beg, float("inf"))) - 1
        return i >= 0 and items[i][0] <= beg and end <= items[i][1]

    def key(self, ref_ids: Iterable[int]) -> str:
        """What of the selection can matter to a container holding `ref_ids` (cache key)."""
        refs = sorted(set(ref_ids))
        if MULTI_REF in refs:
            refs = sorted(self.intervals)
        parts = [f"{r}:{self.intervals.get(r, ())}" for r in refs if r >= 0]
        if UNMAPPED in refs or MULTI_REF in refs:
            parts.append(f"*:{self.unplaced}")
        return ";".join(parts)

    @property
    def empty(self) -> bool:
        return not self.unplaced and not any(self.intervals.values())

    def clip(self, entries: Iterable[tuple[int, int, int]]) -> Selection:
        """What of the selection bears on a container with these CRAI entries (reference
        ID, beg, end): per reference, the intervals meeting the entries' hull, cut to it.
        Every record of the container lies inside an entry of its reference, so it is wanted
        by the result exactly when it is wanted by the selection; and regions that share
        their edge inside a container share the result (the re-cut's cache key)."""
        hull: dict[int, tuple[int, int]] = {}
        unplaced = False
        for ref_id, beg, end in entries:
            if ref_id == MULTI_REF:  # may hold anything
                return self
            if ref_id == UNMAPPED:
                unplaced = True
            elif ref_id >= 0:
                lo, hi = hull.get(ref_id, (beg, end))
                hull[ref_id] = (min(lo, beg), max(hi, end))
        spans = []
        for ref_id, (lo, hi) in hull.items():
            for beg, end in self.intervals.get(ref_id, ()):
                if beg == end:  # wants the records covering `beg`: kept as it is
                    if lo <= beg <= hi:
                        spans.append((ref_id, beg, end))
                elif beg < hi and end > lo:
                    spans.append((ref_id, max(beg, lo), min(end, hi)))
        return Selection.of(spans, self.unplaced and unplaced)

    def token(self) -> str:
        """The canonical spelling, e.g. "0:100-310,400-500;3:5-9;*" ("*": unplaced)."""
        parts = [
            f"{r}:" + ",".join(f"{b}-{e}" for b, e in items)
            for r, items in sorted(self.intervals.items())
            if items
        ]
        return ";".join(parts + (["*"] if self.unplaced else []))

    @classmethod
    def parse(cls, token: str) -> Optional[Selection]:
        """The selection `token` spells, or None unless it is a canonical spelling."""
        spans: list[tuple[int, int, int]] = []
        unplaced = False
        for part in token.split(";"):
            if part == "*":
                unplaced = True
                continue
            m = _TOKEN_PART.fullmatch(part)
            if m is None:
                return None
            ref_id = int(m.group(1))
            for item in m.group(2).split(","):
                beg, end = (int(x) for x in item.split("-"))
                spans.append((ref_id, beg, end))
            if len(spans) > MAX_TOKEN_INTERVALS:
                return None
        selection = cls.of(spans, unplaced)
        return selection if selection.token() == token else None


_NUMBER = r"(?:0|[1-9][0-9]{0,14})"
_TOKEN_PART = re.compile(rf"({_NUMBER}):({_NUMBER}-{_NUMBER}(?:,{_NUMBER}-{_NUMBER})*)")
