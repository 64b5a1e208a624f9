"""Record boundaries earlier region walks passed, so that later walks start nearer.

A region's walk (formats/exact.py) starts where htslib's does, at the index's lower bound for
the region's start (the linear index's offset for its 16 kbp window, or a CSI bin's loffset),
and reads every record from there to the first one that overlaps. On deep data that is
several blocks to inflate per region, mostly of records that end before it.

On its way the walk learns facts that hold for every later region of the same reference. At
`v`, the start of the record it was reading when a block ran out, every record of the
reference before `v` ends at or before `reach`, the larger of

- the start of the region walked: records before the walk's start end before it (the index's
  lower bound means that, and htslib's own skipping relies on it; a waypoint says so too);
- the furthest end of the records the walk stepped over (`_records.runs` reports it).

That holds only while the walk has read every record since its start: once it passes over
records unread (a gap between the region's chunks holds records of bins the region does not
overlap, before it or after it, so how far they reach is unknown; or the middle it skips)
it learns no more of these. A later region of that reference starting at or after `reach`
overlaps none of the records before `v`, so its walk may start at `v`: it skips only records
htslib would read and drop.

Walks (and the probes of their skips) also learn where the record at `v` starts. A bounded
region skips from its first record starting inside it to the furthest record boundary known
to start inside it too (every record between overlaps): with the starts learned, that is
the last block before the region's end, not the index's nearest chunk boundary a window
away, and no probe inflates a block to read it.

So the walks of one deep window leave a waypoint per block, and later regions there inflate
the blocks they cut (their edges), not the half windows before and inside them.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Optional

#: waypoints one file version keeps at most, however large; past its capacity a table
#: starts again (bounded memory)
MAX_WAYPOINTS = 1 << 15
#: ... and at least
MIN_WAYPOINTS = 64
#: bytes one waypoint costs, for the cache budget (a list slot, a dict entry, two ints)
WAYPOINT_BYTES = 120
#: waypoints one lookup looks at, at most (each is one comparison; a long-read file's lower
#: bound may lie megabases back)
MAX_LOOK = 4096


class _Ref:
    """One reference's waypoints: offsets in file order with what is known there."""

    __slots__ = ("offsets", "reaches", "starts", "heads")

    def __init__(self) -> None:
        self.offsets: list[int] = []  # waypoints with a reach, sorted
        self.reaches: dict[int, int] = {}  # offset -> reach
        self.starts: list[tuple[int, int]] = []  # (record start, offset), sorted
        self.heads: dict[int, int] = {}  # offset -> record start


class Waypoints:
    """Per index reference: record boundaries `v` (virtual offsets) with `reach`, the end at
    or before which every record of the reference before `v` ends, and where the record at
    `v` starts (0-based).

    Threads (gthread workers) may learn and look at once: each step is one list or dict
    operation, atomic under the GIL, and a table that fills up is replaced, never emptied in
    place.
    """

    def __init__(self, capacity: int = MAX_WAYPOINTS) -> None:
        self.capacity = max(MIN_WAYPOINTS, min(MAX_WAYPOINTS, capacity))
        self._refs: dict[int, _Ref] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """What a full table may hold, for the cache budget."""
        return self.capacity * WAYPOINT_BYTES

    def _table(self, ref: int) -> _Ref:
        """The reference's table, with room for one more fact."""
        if self._count >= self.capacity:
            self._refs, self._count = {}, 0
        table = self._refs.get(ref)
        if table is None:
            table = self._refs.setdefault(ref, _Ref())
        return table

    def learn(self, ref: int, v: int, reach: int) -> None:
        """Every record of `ref` before virtual offset `v` ends at or before `reach`."""
        table = self._refs.get(ref)
        known = None if table is None else table.reaches.get(v)
        if known is None:
            table = self._table(ref)
            insort(table.offsets, v)
            table.reaches[v] = reach
            self._count += 1
        elif table is not None and reach < known:  # both hold: keep the tighter
            table.reaches[v] = reach

    def learn_head(self, ref: int, v: int, start: int) -> None:
        """The record of `ref` at virtual offset `v` starts at 0-based `start`."""
        table = self._refs.get(ref)
        if table is not None and v in table.heads:
            return
        table = self._table(ref)
        insort(table.starts, (start, v))
        table.heads[v] = start
        self._count += 1

    def head(self, ref: int, v: int) -> Optional[int]:
        """Where the record of `ref` at `v` starts, when a walk or probe saw it."""
        table = self._refs.get(ref)
        return None if table is None else table.heads.get(v)

    def start(self, ref: int, lower: int, beg: int) -> int:
        """Where a walk for a region of `ref` starting at `beg` may begin: the furthest
        waypoint at or after `lower` (the index's bound) before which no record reaches past
        `beg`, else `lower`."""
        table = self._refs.get(ref)
        if table is None:
            return lower
        offsets, reaches = table.offsets, table.reaches
        best = lower
        i = bisect_left(offsets, lower)
        stop = min(len(offsets), i + MAX_LOOK)
        while i < stop:
            v = offsets[i]
            if reaches.get(v, beg + 1) > beg:
                break  # reaches only grow along the file (give or take a loose one)
            best, i = v, i + 1
        return best

    def last_inside(self, ref: int, beg: int, end: int, after: int, upper: int) -> Optional[int]:
        """The furthest known record boundary in (`after`, `upper`) whose record starts
        inside (`beg`, `end`), or None. Records start in file order, so the furthest such
        boundary is the one of the last start before `end`."""
        table = self._refs.get(ref)
        if table is None:
            return None
        starts = table.starts
        i = bisect_left(starts, (end, -1)) - 1
        while i >= 0:
            start, v = starts[i]
            if start <= beg or v <= after:
                return None
            if v < upper:
                return v
            i -= 1
        return None
