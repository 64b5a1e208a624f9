"""Tickets for BGZF-compressed formats (BAM, VCF.gz, BCF): header, body chunks, EOF.

The rules (DESIGN.md): chunks are merged in file order; the bytes of a chunk are its whole
blocks as byte ranges plus, where it starts or ends inside a block, that block's part
re-compressed into a block of its own and sent inline. So the header (which may share a block
with records) is exact for `class=header`, and no record or header line is ever sent twice
or cut in half.
"""

from __future__ import annotations

import struct
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

from .. import _records
from .._ranges import BinningIndex, merge_ranges
from ..protocol import MAX_COORDINATE, Class, InternalError, Region
from . import bgzf
from .base import ByteRange, Inline, Piece, Source

#: how records name their reference: an ID (BAM, BCF) or a name (VCF)
RefKey = Union[int, bytes]

#: decompressed blocks kept per file for re-cutting chunk ends
BLOCK_CACHE = 16
#: uncompressed bytes scanned per chunk when trimming it to a region's records
TRIM_SCAN_BYTES = 1 << 20
#: requests with more (merged) regions than this are not trimmed: still correct, and a POST
#: of thousands of regions cannot make a ticket scan gigabytes
TRIM_MAX_REGIONS = 256
#: exact walks of BAM/BCF regions wider than this many of the index's smallest bins skip
#: their middle (records known to overlap) instead of decompressing it
SKIP_MIN_BINS = 4
#: positions sampled across such a region for record boundaries to skip to
SKIP_SAMPLES = 64


@dataclass
class BgzfLayout:
    """Where the header ends and how to find block ends, for one version of one file."""

    size: int
    header_end: int  # virtual offset of the first byte after the header
    header_block: bytes  # uncompressed data of the block at coffset(header_end)
    header_block_size: int  # its compressed size
    eof_present: bool
    gzi: Optional[bgzf.Gzi] = None
    _block_ends: dict[int, int] = field(default_factory=dict)
    _blocks: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # gthread workers share it

    @property
    def nbytes(self) -> int:
        """Memory this layout may hold: its header block and a full block cache."""
        return len(self.header_block) + BLOCK_CACHE * 0x10000

    @property
    def data_end(self) -> int:
        """Offset where record data stops (the EOF marker, if present, is excluded)."""
        return self.size - len(bgzf.EOF_MARKER) if self.eof_present else self.size

    def block_end(self, source: Source, coff: int) -> int:
        """End of the block starting at `coff`: from the GZI, else from its header (cached)."""
        if coff in self._block_ends:
            return self._block_ends[coff]
        end = self.gzi.block_end(coff) if self.gzi else None
        if end is None:
            head = source.read(coff, coff + bgzf.HEADER_SIZE + 64)
            try:
                end = coff + bgzf.block_size(head)
            except (ValueError, struct.error):
                end = self.data_end  # a corrupt block: send to the end rather than cut short
        self._block_ends[coff] = min(end, self.size)
        return self._block_ends[coff]

    def block_data(self, source: Source, coff: int) -> bytes:
        """Uncompressed data of the block at `coff` (a few recent blocks are kept)."""
        if coff == bgzf.coffset(self.header_end) and self.header_block:
            return self.header_block
        with self._lock:
            if coff in self._blocks:
                self._blocks.move_to_end(coff)
                return self._blocks[coff]
        raw = source.read(coff, self.block_end(source, coff))
        try:
            data = bgzf.decompress_block(raw)
        except (ValueError, struct.error) as exc:
            raise InternalError(f"{source.key}: corrupt BGZF block at {coff}: {exc}") from None
        with self._lock:
            self._blocks[coff] = data
            while len(self._blocks) > BLOCK_CACHE:
                self._blocks.popitem(last=False)
        return data


def load_layout(source: Source, prefix: bgzf.Prefix, header_len: int) -> BgzfLayout:
    """Build the layout from the decompressed prefix that `bgzf.read_prefix` returned."""
    size = source.storage.size(source.key)
    tail = source.read(max(0, size - len(bgzf.EOF_MARKER)), size)
    header_end = prefix.voffset(header_len)
    coff = bgzf.coffset(header_end)
    block, block_size = b"", 0
    if bgzf.uoffset(header_end):
        block = prefix.block_data(coff)
        block_size = next(s for c, s, _ in prefix.blocks if c == coff)
    gzi = None
    gzi_key = source.key + ".gzi"
    if source.storage.exists(gzi_key):
        try:
            gzi = bgzf.Gzi.parse(source.read_all(gzi_key))
        except ValueError:
            gzi = None  # a broken .gzi only costs us block-header reads
    return BgzfLayout(size, header_end, block, block_size, tail == bgzf.EOF_MARKER, gzi)


@dataclass(frozen=True)
class Target:
    """A region in the file's own terms: reference ID (BAM/BCF) or name (VCF), [beg, end)."""

    ref: RefKey
    beg: int
    end: int


def trim_chunk(
    source: Source,
    layout: BgzfLayout,
    vbeg: int,
    vend: int,
    kind: int,
    target: Target,
) -> Optional[tuple[int, int]]:
    """Narrow a chunk to [first record overlapping `target`, end of the last one), or None.

    Records in a chunk are in coordinate order, so the walk (in C, `_records.scan`) stops at
    the first record past the region. At most `TRIM_SCAN_BYTES` are decompressed per chunk;
    past that, the chunk keeps its end (its start is still trimmed to where the walk got).
    """
    coff, uoff = bgzf.coffset(vbeg), bgzf.uoffset(vbeg)
    end_coff, end_uoff = bgzf.coffset(vend), bgzf.uoffset(vend)
    buf = layout.block_data(source, coff)[uoff:]
    # per loaded block: (stream position of its first byte here, offset, uoffset there, length)
    spans = [(0, coff, uoff, uoff + len(buf))]
    base = 0  # stream position of buf[0]; consumed records are dropped from buf
    next_coff = layout.block_end(source, coff)

    def voffset(p: int) -> int:
        i = bisect_right([s[0] for s in spans], p) - 1
        start, c, u, length = spans[i]
        u += p - start
        if u >= length:  # exactly at a block end: the next block's start
            return bgzf.make_voffset(layout.block_end(source, c), 0)
        return bgzf.make_voffset(c, u)

    def limit() -> int:
        """Buffer position of vend, or -1 while it lies past the loaded blocks."""
        for start, c, u, _ in spans:
            if c == end_coff:
                return start + end_uoff - u - base
        if end_uoff == 0 and next_coff == end_coff:
            return len(buf)  # the chunk ends with the last loaded block
        return -1

    ref_name = target.ref if isinstance(target.ref, bytes) else b""
    ref_id = -1 if isinstance(target.ref, bytes) else target.ref
    open_end = target.end >= MAX_COORDINATE
    pos, first, last = 0, -1, -1
    scanned = len(buf)
    while True:
        outcome, pos, f, l_ = _records.scan(
            buf, pos, limit(), kind, ref_id, ref_name, target.beg, target.end, open_end
        )
        if f >= 0 and first < 0:
            first = base + f
        if l_ >= 0:
            last = base + l_
        if outcome == _records.OPEN_END:
            return voffset(first), vend
        if outcome != _records.NEED_MORE:
            break
        if scanned > TRIM_SCAN_BYTES or next_coff > end_coff or next_coff >= layout.data_end:
            # out of budget, or a record runs past the chunk (an index at odds with the
            # data): keep the chunk's end rather than guess
            return voffset(first if first >= 0 else base + pos), vend
        data = layout.block_data(source, next_coff)
        base, buf = base + pos, buf[pos:] + data
        spans.append((base + len(buf) - len(data), next_coff, 0, len(data)))
        scanned += len(data)
        pos = 0
        next_coff = layout.block_end(source, next_coff)
    if first < 0:
        return None
    return voffset(first), voffset(last)


def region_chunks(
    source: Source,
    layout: BgzfLayout,
    chunks: Sequence[tuple[int, int]],
    kind: int,
    target: Target,
) -> list[tuple[int, int]]:
    """Index chunks for one region, each trimmed to the records that overlap it."""
    out = []
    for vbeg, vend in chunks:
        vbeg = max(vbeg, layout.header_end)
        trimmed = trim_chunk(source, layout, vbeg, vend, kind, target) if vend > vbeg else None
        if trimmed is not None:
            out.append(trimmed)
    return out


#: `_ExactWalk.chunk` outcome: the walk skipped to a record boundary, to go on from there
SKIPPED = -1


class _ExactWalk:
    """Walks index chunks record by record, with no scan budget, collecting the virtual-offset
    runs of records that overlap one target (see `exact_chunks`).

    Memory stays bounded: the buffer holds the block being walked plus the part of a record
    carried over from the blocks before it, never the whole chunk.
    """

    def __init__(
        self,
        source: Source,
        layout: BgzfLayout,
        kind: int,
        target: Target,
        index: Optional[BinningIndex] = None,
        index_ref: int = -1,
    ) -> None:
        self.source, self.layout, self.kind = source, layout, kind
        self.ref_id = -1 if isinstance(target.ref, bytes) else target.ref
        self.ref_name = target.ref if isinstance(target.ref, bytes) else b""
        self.beg, self.end = target.beg, target.end
        self.open_end = target.end >= MAX_COORDINATE
        self.index, self.index_ref = index, index_ref
        # skip the middle of wide bounded regions, in binary formats (a VCF body may hold
        # lines tabix skips, so every VCF line is looked at)
        self.may_skip = (
            index is not None
            and kind in (_records.BAM, _records.BCF)
            and not self.open_end
            and target.end - target.beg > SKIP_MIN_BINS << index.min_shift
        )
        self.out: list[tuple[int, int]] = []
        # per block in the buffer: (buffer position, offset, uoffset there, length, next block)
        self.spans: list[tuple[int, int, int, int, int]] = []

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

    def chunk(self, vbeg: int, vend: int) -> tuple[int, int]:
        """Walk the records starting in [vbeg, vend), and the one running past vend to its
        end (htslib reads it whole too). Returns (outcome, voffset where the walk stopped)."""
        coff, uoff = bgzf.coffset(vbeg), bgzf.uoffset(vbeg)
        end_coff, end_uoff = bgzf.coffset(vend), bgzf.uoffset(vend)
        layout = self.layout
        blocks = bgzf.iter_blocks(self.source.storage, self.source.key, coff, layout.data_end)
        buf, pos, limit, first, load = b"", 0, -1, True, True
        self.spans = []
        while True:
            if not load:  # the same data again, without stopping for the region's middle
                outcome, pos, found = _records.runs(
                    buf, pos, limit, self.kind, self.ref_id, self.ref_name, self.beg,
                    self.end, False,
                )
                for start, stop in found:
                    self.add(self.voffset(start), self.voffset(stop))
                if outcome != _records.NEED_MORE:
                    return outcome, self.voffset(pos)
                load = True
            try:
                block = next(blocks, None)
            except ValueError as exc:
                raise InternalError(f"{self.source.key}: corrupt BGZF data: {exc}") from None
            if block is None:
                return self._data_end(buf, pos, limit)
            start_u, first = (uoff if first else 0), False
            data = block.data[start_u:]
            if pos:  # drop the records already walked
                buf = buf[pos:]
                kept = []
                for start, c, u, length, nxt in self.spans:
                    if start + length > pos:
                        cut = max(0, pos - start)
                        kept.append((start + cut - pos, c, u + cut, length - cut, nxt))
                self.spans = kept
                limit = limit - pos if limit >= 0 else -1
                pos = 0
            self.spans.append((len(buf), block.coffset, start_u, len(data),
                               block.coffset + block.size))
            if limit < 0:
                if block.coffset == end_coff:
                    limit = len(buf) + max(0, end_uoff - start_u)
                elif end_uoff == 0 and block.coffset + block.size == end_coff:
                    limit = len(buf) + len(data)
            buf += data
            outcome, pos, found = _records.runs(
                buf, pos, limit, self.kind, self.ref_id, self.ref_name, self.beg, self.end,
                self.open_end or self.may_skip,
            )
            for start, stop in found:
                self.add(self.voffset(start), self.voffset(stop))
            if outcome == _records.OPEN_END and not self.open_end:
                # the first record starting inside the bounded region: skip to near its end
                self.may_skip = False
                here = self.voffset(pos)
                resume = self._skip_target(here)
                if resume is not None:
                    self.add(here, resume)
                    return SKIPPED, resume
                load = False
                continue
            if outcome != _records.NEED_MORE:
                return outcome, self.voffset(pos)

    def _skip_target(self, start: int) -> Optional[int]:
        """The furthest record boundary after `start` (the first record starting inside the
        region) whose record still starts inside the region, or None.

        Exact because the chunk starts and ends of a binning index are record boundaries and
        an indexed file is sorted: every record from `start` to that boundary starts inside
        the region, so it overlaps it, and need not be decompressed. The boundaries come from
        index queries at positions sampled across the region and packed before its end; a
        bisection over them reads one record head per probe.
        """
        assert self.index is not None
        step = 1 << self.index.min_shift
        width = self.end - self.beg
        where = {self.beg + width * k // SKIP_SAMPLES for k in range(1, SKIP_SAMPLES)}
        where.update(self.end - 1 - step * k for k in range(SKIP_MIN_BINS))
        found: set[int] = set()
        for x in where:
            if self.beg < x < self.end:
                for u, v in self.index.query(self.index_ref, x, x + 1):
                    found.update((u, v))
        data_end = self.layout.data_end << 16
        cands = sorted(c for c in found if start < c < data_end)
        lo, hi, best = 0, len(cands) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            if self._starts_inside(cands[mid]):
                best, lo = cands[mid], mid + 1
            else:
                hi = mid - 1
        return best

    def _starts_inside(self, voff: int) -> bool:
        """True when the record at `voff` is on the reference and starts inside the region."""
        want = 36 if self.kind == _records.BAM else 20
        coff, uoff = bgzf.coffset(voff), bgzf.uoffset(voff)
        head = b""
        while len(head) < want:
            if coff >= self.layout.data_end:
                return False
            head += self.layout.block_data(self.source, coff)[uoff:]
            coff, uoff = self.layout.block_end(self.source, coff), 0
        at = 4 if self.kind == _records.BAM else 8
        ref, pos = struct.unpack_from("<ii", head, at)
        return bool(ref == self.ref_id and self.beg < pos < self.end)

    def _data_end(self, buf: bytes, pos: int, limit: int) -> tuple[int, int]:
        """The file's data ended inside the chunk: a VCF's last line may lack its newline
        (htslib reads it all the same); any other partial record is a truncated file."""
        if pos >= len(buf):
            return _records.LIMIT, bgzf.make_voffset(self.layout.data_end, 0)
        if self.kind != _records.VCF:
            raise InternalError(f"{self.source.key}: the data ends inside a record")
        outcome, stop, found = _records.runs(
            buf + b"\n", pos, limit, self.kind, self.ref_id, self.ref_name, self.beg,
            self.end, self.open_end,
        )
        for start, run_end in found:
            self.add(self.voffset(start), self.voffset(min(run_end, len(buf))))
        if outcome == _records.OPEN_END:  # the last line starts the open-ended rest
            self.add(self.voffset(stop), bgzf.make_voffset(self.layout.data_end, 0))
        return _records.LIMIT, bgzf.make_voffset(self.layout.data_end, 0)


def exact_chunks(
    source: Source,
    layout: BgzfLayout,
    chunks: Sequence[tuple[int, int]],
    kind: int,
    target: Target,
    index: Optional[BinningIndex] = None,
    index_ref: int = -1,
) -> list[tuple[int, int]]:
    """Virtual-offset runs holding exactly the records htslib's region query returns for
    `target` from these index chunks: each record overlapping the target, none beside it.

    For restricted tickets (authorization rules), where `trim_chunk`'s budget and its
    keeping of non-overlapping records between overlapping ones would leak records. Every
    record is looked at, as htslib looks at it: the walk stops at the first record of another
    reference or starting at or after the end. Records starting after the region's start all
    overlap it, so an open-ended region takes the rest of its chunks whole from the first
    of them, and (given `index`, see `_ExactWalk._skip_target`) a wide BAM or BCF region
    skips from there to a record boundary near its end.
    """
    starts = [(max(vbeg, layout.header_end), vend) for vbeg, vend in chunks]
    todo = merge_ranges([(vbeg, vend) for vbeg, vend in starts if vend > vbeg])
    walk = _ExactWalk(source, layout, kind, target, index, index_ref)
    i, resume = 0, 0
    while i < len(todo):
        vbeg, vend = todo[i]
        if vend <= resume:
            i += 1
            continue
        outcome, stopped = walk.chunk(max(vbeg, resume), vend)
        if outcome == SKIPPED:
            resume = stopped  # walk on from there, in the chunk that holds it or the next
            continue
        if outcome == _records.PAST:
            break
        if outcome == _records.OPEN_END:
            walk.add(stopped, vend)
            for rest in todo[i + 1 :]:
                walk.add(*rest)
            break
        i += 1
    return walk.out


@dataclass
class IndexedFile:
    """A BGZF file's layout with its binning index (BAI, CSI or TBI), as cached per worker."""

    layout: BgzfLayout
    index: BinningIndex
    index_size: int  # bytes the parsed index keeps

    @property
    def nbytes(self) -> int:
        """For the cache budget: the index bytes the parser keeps, plus the layout."""
        return self.index_size + self.layout.nbytes

    def region_chunks(
        self, source: Source, ref_id: int, region: Region, kind: int, target_ref: RefKey, trim: bool
    ) -> list[tuple[int, int]]:
        """Chunks holding `region`'s records on reference `ref_id`, trimmed to them when the
        region has bounds and `trim` allows (`target_ref` is how records name the reference)."""
        beg = region.start or 0
        end = MAX_COORDINATE if region.end is None else region.end
        found = self.index.query(ref_id, beg, end)
        if trim and (region.start is not None or region.end is not None):
            found = region_chunks(source, self.layout, found, kind, Target(target_ref, beg, end))
        return found

    def exact_chunks(
        self, source: Source, ref_id: int, region: Region, kind: int, target_ref: RefKey
    ) -> list[tuple[int, int]]:
        """Runs of exactly the records of reference `ref_id` that htslib returns for
        `region` (restricted tickets: no record beside them, whatever the cost of the walk)."""
        beg = region.start or 0
        end = MAX_COORDINATE if region.end is None else region.end
        found = self.index.query(ref_id, beg, end)
        target = Target(target_ref, beg, end)
        return exact_chunks(source, self.layout, found, kind, target, self.index, ref_id)


def header_pieces(layout: BgzfLayout) -> list[Piece]:
    coff, uoff = bgzf.coffset(layout.header_end), bgzf.uoffset(layout.header_end)
    pieces: list[Piece] = []
    if coff > 0:
        pieces.append(ByteRange(0, coff, Class.HEADER))
    if uoff:
        pieces.append(Inline(bgzf.compress_block(layout.header_block[:uoff]), Class.HEADER))
    return pieces


def chunk_pieces(source: Source, layout: BgzfLayout, vbeg: int, vend: int) -> list[Piece]:
    """Exactly the bytes of virtual range [vbeg, vend): whole blocks as a byte range, and the
    partial blocks at either end re-compressed inline.

    Blocks need not start at record boundaries (bgzip cuts VCF text every 64 KiB, and long BAM
    records span blocks), so sending the whole first or last block could hand a client half a
    record; re-cutting costs at most two small blocks per merged chunk.
    """
    cb, ub = bgzf.coffset(vbeg), bgzf.uoffset(vbeg)
    ce, ue = bgzf.coffset(vend), bgzf.uoffset(vend)
    if cb == ce:
        data = layout.block_data(source, cb)[ub:ue]
        return [Inline(bgzf.compress_block(data), Class.BODY)] if data else []
    pieces: list[Piece] = []
    start = cb
    if ub:
        head = layout.block_data(source, cb)[ub:]
        if head:
            pieces.append(Inline(bgzf.compress_block(head), Class.BODY))
        start = layout.block_end(source, cb)
    if ce > start:
        pieces.append(ByteRange(start, ce, Class.BODY))
    if ue:
        tail = layout.block_data(source, ce)[:ue]
        pieces.append(Inline(bgzf.compress_block(tail), Class.BODY))
    return pieces


def body_pieces(
    source: Source, layout: BgzfLayout, chunks: Sequence[tuple[int, int]]
) -> list[Piece]:
    """Pieces for the body: chunks clipped to the body, merged in file order, cut exactly."""
    clipped = []
    for vbeg, vend in chunks:
        if bgzf.coffset(vend) > layout.size:
            raise InternalError(
                f"{source.key}: the index points past the end of the file (stale index?)"
            )
        vbeg = max(vbeg, layout.header_end)
        vend = min(vend, layout.data_end << 16)
        if vend > vbeg:
            clipped.append((vbeg, vend))
    pieces: list[Piece] = []
    for vbeg, vend in merge_ranges(clipped):
        for piece in chunk_pieces(source, layout, vbeg, vend):
            last = pieces[-1] if pieces else None
            touching = isinstance(last, ByteRange) and last.end == getattr(piece, "start", -1)
            if isinstance(piece, ByteRange) and isinstance(last, ByteRange) and touching:
                pieces[-1] = ByteRange(last.start, piece.end, Class.BODY)
            else:
                pieces.append(piece)
    return pieces


def eof_piece(klass: Class) -> Piece:
    return Inline(bgzf.EOF_MARKER, klass)


def assemble(
    source: Source,
    layout: BgzfLayout,
    chunks: Optional[Sequence[tuple[int, int]]],
    header_only: bool,
) -> list[Piece]:
    """Header, then body chunks (None: the whole body), then the EOF marker."""
    pieces = header_pieces(layout)
    if header_only:
        return pieces + [eof_piece(Class.HEADER)]
    if chunks is None:
        chunks = [(layout.header_end, layout.data_end << 16)]
    return pieces + body_pieces(source, layout, chunks) + [eof_piece(Class.BODY)]
