"""Region tickets for BAM, VCF and BCF hold exactly the records htslib's region query returns.

For each region the walk does what `hts_itr_query` + `hts_itr_next` do, and cuts the file
where they would skip: chunks of the region's bins, clamped to [min_off, max_off) as htslib
clamps them (`BinningIndex.bounds`: the linear index or bin loffset on the left, the first
record of the nearest bin right of the region on the right); inside them, every record is
looked at (in C, `_records.runs`) until the first one of another reference or starting at
or after the region's end, and the runs of records that overlap are kept: never a record
beside them, each once, in file order.

What keeps that cheap:
- Records starting inside the region all overlap it. So an open-ended region takes the rest
  of its chunks whole from its first such record, and a bounded one walks on to the end of
  the block at hand (a narrow region ends there) and then skips to the furthest record
  boundary known to start inside the region (learned by earlier walks, formats/waypoints.py,
  or the index entries nearest its end, found by bisection, one record head per probe):
  only its edges are decompressed, never its middle.
- Blocks come through the layout's block cache (`BgzfLayout.block_data`), so the edge blocks
  the walk read are not inflated again when they are re-cut (`blocks.chunk_pieces`).
- A scan guard for pathological files only: past `WALK_GUARD_BYTES` decompressed for one
  region (htslib would read as much; a record spanning megabases puts the linear index that
  far back) the walk stops, logs a warning naming the file, and keeps the rest of the
  region's clamped chunks whole: a superset holding every wanted record. Data with 100 kbp
  reads walks a few MB at most.

VCF: a body holds records only, as bgzip/bcftools/GATK write it, so the skipped middle and
the whole-chunk rest of an open-ended region are taken on trust; lines tabix does not read
as records ('#' lines, which htslib skips) are left out wherever the walk looks, and one
such line seen in a file logs a warning and turns skipping off for it (its bounded regions
are then walked line by line, under the guard).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Union

from .. import _records, turns
from .._ranges import merge_ranges
from ..protocol import MAX_COORDINATE, InternalError, Region
from . import bgzf
from .base import Source
from .blocks import IndexedFile

log = logging.getLogger(__name__)

#: how records name their reference: an ID (BAM, BCF) or a name (VCF)
RefKey = Union[int, bytes]

#: decompressed bytes one region's walk may read before it gives up being exact (logged)
WALK_GUARD_BYTES = 256 << 20
#: at most this many positions across a wide region are asked of the index for boundaries
SKIP_SAMPLES = 64
#: bounds() for "no bin to the right": every offset is below it
NO_MAX = (1 << 64) - 1

#: `_Walk.chunk` outcomes besides `_records`' own
SKIPPED = -1  # skipped to a record boundary near the end: go on from there
GUARDED = -2  # the scan guard stopped the walk: keep the rest whole


@dataclass(frozen=True)
class Target:
    """A region in the file's own terms: reference ID (BAM/BCF) or name (VCF), [beg, end)."""

    ref: RefKey
    beg: int
    end: int


def region_runs(
    source: Source,
    indexed: IndexedFile,
    ref_id: int,
    region: Region,
    kind: int,
    target_ref: RefKey,
) -> list[tuple[int, int]]:
    """Virtual-offset runs holding exactly the records of index reference `ref_id` that
    htslib returns for `region` (`target_ref`: how the records name that reference)."""
    beg = region.start or 0
    end = MAX_COORDINATE if region.end is None else region.end
    index = indexed.index
    found = index.query(ref_id, beg, end)
    if not found:
        return []
    min_off, max_off = index.bounds(ref_id, beg, end)
    layout = indexed.layout
    lo = max(min_off, layout.header_end)
    hi = min(max_off, layout.data_end << 16)
    todo = merge_ranges([(max(u, lo), min(v, hi)) for u, v in found if min(v, hi) > max(u, lo)])
    target = Target(target_ref, beg, end)
    walk = _Walk(source, indexed, kind, target, ref_id, max_off, region.reference_name)
    return walk.run(todo, indexed.waypoints.start(ref_id, lo, beg))


class _Walk:
    """One region's walk over its clamped chunks, collecting the runs of records that
    overlap it. Memory stays bounded: the buffer holds the block being walked plus the part
    of a record carried over from the blocks before it, never the whole chunk."""

    __slots__ = ("source", "indexed", "layout", "kind", "ref_id", "ref_name", "beg", "end",
                 "open_end", "index_ref", "max_off", "may_skip", "walked", "reach",
                 "learning", "frontier", "inside", "label", "out", "spans")

    def __init__(
        self,
        source: Source,
        indexed: IndexedFile,
        kind: int,
        target: Target,
        index_ref: int,
        max_off: int,
        name: str = "",
    ) -> None:
        self.source, self.indexed, self.layout, self.kind = source, indexed, indexed.layout, kind
        self.ref_id = -1 if isinstance(target.ref, bytes) else target.ref
        self.ref_name = target.ref if isinstance(target.ref, bytes) else b""
        self.beg, self.end = target.beg, target.end
        self.open_end = target.end >= MAX_COORDINATE
        self.index_ref, self.max_off = index_ref, max_off
        # bounded regions skip their middle, from the first record starting inside
        self.may_skip = not self.open_end and not indexed.odd_lines
        self.walked = 0  # decompressed bytes read, for the guard
        # every record walked past, and every one before the walk's start, ends by `reach`
        # (formats/waypoints.py), until the walk skips records it does not read
        self.reach, self.learning = target.beg, True
        self.frontier = -1  # where the walk may go on learning: its start, until a gap
        self.inside = False  # a record starting inside the (bounded) region was walked
        self.label = f"{name}:{target.beg}-{target.end}"  # for the guard's warning
        self.out: list[tuple[int, int]] = []
        # per block in the buffer: (buffer position, offset, uoffset there, length, next block)
        self.spans: list[tuple[int, int, int, int, int]] = []

    def run(self, todo: list[tuple[int, int]], start: int = 0) -> list[tuple[int, int]]:
        """The runs, walking `todo` (the clamped chunks) from virtual offset `start` on
        (the index's lower bound, or a waypoint past it: every record before it ends by the
        region's start)."""
        i, resume = 0, start
        self.frontier = start
        while i < len(todo):
            vbeg, vend = todo[i]
            if vend <= resume:
                i += 1
                continue
            outcome, stopped = self.chunk(max(vbeg, resume), vend)
            if outcome == SKIPPED:
                resume = stopped  # walk on from there, in the chunk that holds it or the next
                continue
            if outcome == _records.PAST:
                break
            if outcome in (_records.OPEN_END, GUARDED):
                self.add(stopped, vend)
                for rest in todo[i + 1 :]:
                    self.add(*rest)
                break
            i += 1
        return self.out

    def add(self, vbeg: int, vend: int) -> None:
        """Append a run, merged with the previous one when they touch (file order)."""
        if vend <= vbeg:
            return
        if self.out and self.out[-1][1] >= vbeg:
            self.out[-1] = (self.out[-1][0], max(self.out[-1][1], vend))
        else:
            self.out.append((vbeg, vend))

    def voffset(self, p: int) -> int:
        """Virtual offset of buffer position `p`; a block's end is the next block's start."""
        for start, coff, uoff, length, _ in self.spans:
            if start <= p < start + length:
                return bgzf.make_voffset(coff, uoff + p - start)
        return bgzf.make_voffset(self.spans[-1][4], 0)

    def _runs(self, buf: Union[bytearray, memoryview], pos: int, limit: int, stop_inside: bool
              ) -> tuple[int, int]:
        outcome, pos, found, odd, reach = _records.runs(
            buf, pos, limit, self.kind, self.ref_id, self.ref_name, self.beg, self.end,
            stop_inside,
        )
        if reach > self.reach:
            self.reach = reach
        for start, stop in found:
            self.add(self.voffset(start), self.voffset(stop))
        if odd and not self.indexed.odd_lines:
            self.indexed.odd_lines = True
            self.may_skip = False
            log.warning(
                "%s: the VCF body holds lines that are not records ('#' lines, which htslib "
                "skips): they are left out where tickets walk, but regions no longer skip "
                "their middle in this file", self.source.key,
            )
        return outcome, pos

    def chunk(self, vbeg: int, vend: int) -> tuple[int, int]:
        """Walk the records starting in [vbeg, vend), and the one running past vend to its
        end (htslib reads it whole too). Returns (outcome, voffset where the walk stopped)."""
        layout, source = self.layout, self.source
        if vbeg != self.frontier:
            # records were passed over unread: those between the region's chunks lie in bins
            # the region does not overlap, before it or after it, so how far they reach is
            # unknown (a long record's chunk may come after short ones past the region)
            self.learning = False
        self.frontier = -1  # the next chunk starts past a gap (merged chunks never touch)
        coff, uoff = bgzf.coffset(vbeg), bgzf.uoffset(vbeg)
        end_coff, end_uoff = bgzf.coffset(vend), bgzf.uoffset(vend)
        buf: Union[bytearray, memoryview] = memoryview(b"")
        pos, limit, pending, grown = 0, -1, -1, 0
        stop_inside = self.open_end or self.may_skip
        self.spans = []
        while True:
            turns.pause()  # a block a step: a long walk lets the worker's other requests in
            if coff >= layout.data_end:
                return self._data_end(buf, pos, limit)
            if self.walked > WALK_GUARD_BYTES:
                if not self.spans:
                    return GUARDED, vbeg
                log.warning(
                    "%s: walked %d MiB of records for region %s without reaching its end "
                    "(WALK_GUARD_BYTES); its remaining index chunks are sent whole (a "
                    "superset of its records)", source.key, self.walked >> 20, self.label,
                )
                return GUARDED, self.voffset(pos)
            block = layout.block_data(source, coff)
            data = memoryview(block)[uoff:]
            nxt = layout.block_end(source, coff)
            self.walked += len(block)
            carried: Union[bytearray, memoryview] = buf
            if pos:  # drop the records already walked
                kept = []
                for start, c, u, length, after in self.spans:
                    if start + length > pos:
                        cut = max(0, pos - start)
                        kept.append((start + cut - pos, c, u + cut, length - cut, after))
                self.spans = kept
                limit = limit - pos if limit >= 0 else -1
                carried, pos = buf[pos:], 0
            if len(carried):  # a record runs on into this block
                grown = len(carried)  # it has no VCF newline before this
                if carried is buf and isinstance(buf, bytearray):
                    buf += data  # in place: a record over many blocks is copied once
                else:
                    buf = bytearray(carried)
                    buf += data
            else:  # walked where it lies, not copied
                buf = data
            self.spans.append((len(buf) - len(data), coff, uoff, len(data), nxt))
            if pending >= 0:  # where the record at the last waypoint starts
                state, rbeg = _records.head(buf, pos, self.kind, self.ref_id, self.ref_name)
                if state == 1:
                    self.indexed.waypoints.learn_head(self.index_ref, pending, rbeg)
                pending = -1
            if limit < 0:
                if coff == end_coff:
                    limit = len(buf) - len(data) + max(0, end_uoff - uoff)
                elif end_uoff == 0 and nxt == end_coff:
                    limit = len(buf)
            coff, uoff = nxt, 0
            if len(carried) and _records.record_end(buf, pos, self.kind, grown) < 0:
                continue  # it runs on past this block too: nothing new to walk (NEED_MORE)
            outcome, pos = self._runs(buf, pos, limit, stop_inside)
            if outcome == _records.OPEN_END and not self.open_end:
                # the first record starting inside the bounded region: the rest of the block
                # at hand overlaps it too; walked, it may hold the region's end (no skip)
                self.inside, stop_inside = True, False
                outcome, pos = self._runs(buf, pos, limit, False)
            if outcome != _records.NEED_MORE:
                return outcome, self.voffset(pos)
            # the block ran out inside the walk: a waypoint for later walks
            pending = self.voffset(pos)
            if self.learning:
                self.indexed.waypoints.learn(self.index_ref, pending, self.reach)
            if self.inside and self.may_skip:  # skip to near the region's end
                self.may_skip = False
                resume = self._skip_target(pending)
                if resume is not None:
                    self.add(pending, resume)
                    self.learning = False
                    return SKIPPED, resume

    def _skip_target(self, start: int) -> Optional[int]:
        """The furthest record boundary after `start` (a record boundary at or after the
        first record starting inside the region) whose record still starts inside the
        region, or None.

        Exact because the chunk starts and ends of a binning index are record boundaries
        and an indexed file is sorted: every record from `start` to that boundary starts
        inside the region, so it overlaps it, and need not be decompressed. The boundaries
        are the furthest one earlier walks learned (formats/waypoints.py) and those of
        index queries at the region's last base (and, when no walk learned one, at its
        window starts, sampled when many), kept below max_off (records there start past the
        end) and below where the reference's data ends (the pseudo-bin says; a record there
        is another reference's, never read: htslib stops there too) and past `start`'s block
        (nearer ones save nothing); a bisection over the index's reads one record head per
        probe.
        """
        upper = min(self.max_off, self.layout.data_end << 16)
        meta = self.indexed.index.ref_meta(self.index_ref)
        if meta is not None and meta[1] > meta[0]:
            upper = min(upper, meta[1])
        # a boundary in start's block saves nothing: it is inflated either way
        after = ((bgzf.coffset(start) + 1) << 16) - 1
        known = self.indexed.waypoints.last_inside(
            self.index_ref, self.beg, self.end, after, upper)
        index = self.indexed.index
        shift = index.min_shift
        first, last = (self.beg >> shift) + 1, (self.end - 1) >> shift
        where = {self.end - 1}
        if known is not None:  # beyond it: the index boundaries nearest the end, if any
            after = known
        elif last >= first:
            n = last - first + 1
            step = max(1, n // SKIP_SAMPLES)
            where.update((w << shift) for w in range(first, last + 1, step))
            where.add(last << shift)
        found: set[int] = set()
        for x in where:
            for u, v in index.query(self.index_ref, x, x + 1):
                found.update((u, v))
        cands = sorted(c for c in found if after < c < upper)
        lo, hi, best = 0, len(cands) - 1, known
        while lo <= hi:
            mid = (lo + hi) // 2
            if self._starts_inside(cands[mid]):
                best, lo = cands[mid], mid + 1
            else:
                hi = mid - 1
        return best

    def _starts_inside(self, voff: int) -> bool:
        """True when the record at `voff` is on the reference and starts inside the region
        (after its start: then it overlaps it, whatever its length)."""
        waypoints = self.indexed.waypoints
        known = waypoints.head(self.index_ref, voff)
        if known is not None:
            return self.beg < known < self.end
        coff, uoff = bgzf.coffset(voff), bgzf.uoffset(voff)
        head = b""
        while coff < self.layout.data_end:
            data = self.layout.block_data(self.source, coff)[uoff:]
            self.walked += len(data)
            head += data
            state, pos = _records.head(head, 0, self.kind, self.ref_id, self.ref_name)
            if state >= 0:
                if state == 1:
                    waypoints.learn_head(self.index_ref, voff, pos)
                return bool(state == 1 and self.beg < pos < self.end)
            if len(head) > 1 << 20:  # a VCF CHROM or POS field this long is no record
                return False
            coff, uoff = self.layout.block_end(self.source, coff), 0
        return False

    def _data_end(self, buf: Union[bytearray, memoryview], pos: int, limit: int
                  ) -> tuple[int, int]:
        """The file's data ended inside the chunk: a VCF's last line may lack its newline
        (htslib reads it all the same); any other partial record is a truncated file."""
        end = bgzf.make_voffset(self.layout.data_end, 0)
        if pos >= len(buf):
            return _records.LIMIT, end
        if self.kind != _records.VCF:
            raise InternalError(f"{self.source.key}: the data ends inside a record")
        outcome, stop, found, _, _ = _records.runs(
            bytes(buf) + b"\n", pos, limit, self.kind, self.ref_id, self.ref_name, self.beg,
            self.end, self.open_end,
        )
        for start, run_end in found:
            self.add(self.voffset(start), self.voffset(min(run_end, len(buf))))
        if outcome == _records.OPEN_END:  # the last line starts the open-ended rest
            self.add(self.voffset(stop), end)
        return _records.LIMIT, end


def unplaced_chunks(indexed: IndexedFile) -> list[tuple[int, int]]:
    """BAM `referenceName=*`: the unplaced unmapped reads, which follow the last placed
    record (the largest chunk end of the index) to the end of the data."""
    start = max(indexed.index.last_end(), indexed.layout.header_end)
    return [(start, indexed.layout.data_end << 16)]

