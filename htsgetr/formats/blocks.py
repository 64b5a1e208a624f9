"""Tickets for BGZF-compressed formats (BAM, VCF.gz, BCF): header, body chunks, EOF.

The rules (DESIGN.md): chunks are merged in file order; the bytes of a chunk are its whole
blocks as byte ranges plus, where it starts or ends inside a block, that block's part
re-compressed into a block of its own and sent inline. So the header (which may share a block
with records) is exact for `class=header`, and no record or header line is ever sent twice
or cut in half.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from .. import turns
from .._ranges import BinningIndex, merge_ranges
from ..protocol import Class, InternalError, NotFound, Region
from . import bgzf
from .base import ByteRange, Inline, Piece, Source
from .derived import DerivedRef, Edge
from .waypoints import Waypoints

#: block ends a layout remembers (beside those of the blocks in the worker's block cache);
#: past that many the table starts again, so a layout's memory stays bounded
BLOCK_ENDS = 4096
#: exact re-cuts a layout remembers having made (by hash): one asked for again while
#: remembered is kept in the block cache. Random regions cut blocks at ever other records,
#: and keeping each of those cuts only pushed inflated blocks out of the cache
RECUTS_ASKED = 1024
#: a file keeps a waypoint per this many compressed bytes at most (blocks of records
#: compress to 15-40 KiB; the table's memory follows the file's size)
WAYPOINT_SPACING = 8192
#: a BGZF block's compressed size at most (SAMv1 4.1: BSIZE - 1 fits 16 bits)
_MAX_BSIZE = 0x10000
#: per-process tokens naming one layout (one version of one file) in the block cache
_layout_tokens = itertools.count()


@dataclass
class BgzfLayout:
    """Where the header ends and how to find block ends, for one version of one file.

    Inflated blocks and re-cut block edges go to the worker's `BlockCache`
    (`source.cache.blocks`, bounded by `block_cache_bytes`) under this layout's token.
    """

    size: int
    header_end: int  # virtual offset of the first byte after the header
    header_block: bytes  # uncompressed data of the block at coffset(header_end)
    header_block_size: int  # its compressed size
    eof_present: bool
    gzi: Optional[bgzf.Gzi] = None
    _block_ends: dict[int, int] = field(default_factory=dict)
    _recuts_asked: set[int] = field(default_factory=set)
    _token: int = field(default_factory=lambda: next(_layout_tokens))
    # the block read last: (offset, end, compressed bytes), so that `block_end` and then
    # `block_data` on one block read it once (a tuple: threads replace it whole)
    _raw: Optional[tuple[int, int, Union[bytes, memoryview]]] = None
    #: `header_pieces`, worked out once (the header's part of its last block re-cut)
    _header_pieces: Optional[tuple[Piece, ...]] = None

    @property
    def nbytes(self) -> int:
        """Memory this layout may hold: its header block, that block's re-cut, a full table
        of block ends and the block read last (blocks themselves are in the block cache,
        counted there)."""
        return (2 * len(self.header_block) + self.header_block_size + BLOCK_ENDS * 100
                + RECUTS_ASKED * 70 + _MAX_BSIZE)

    @property
    def data_end(self) -> int:
        """Offset where record data stops (the EOF marker, if present, is excluded)."""
        return self.size - len(bgzf.EOF_MARKER) if self.eof_present else self.size

    def block_end(self, source: Source, coff: int) -> int:
        """End of the block starting at `coff`: from the GZI, else from its header (cached)."""
        end = self._block_ends.get(coff)
        if end is None:
            hit = source.cache.blocks.get((self._token, coff))
            end = hit[1] if hit is not None else self._fetch(source, coff)[0]
        return end

    def _fetch(self, source: Source, coff: int) -> tuple[int, Union[bytes, memoryview]]:
        """End and compressed bytes of the block at `coff` (no bytes when its header is
        corrupt: its end is then the data's end, to send rather than cut short), in one read:
        of the block when its end is known (GZI, an earlier look), else of the most a block
        can take, its header then telling where it ends (one round trip on remote storage)."""
        raw = self._raw
        if raw is not None and raw[0] == coff:
            return raw[1], raw[2]
        end = self._block_ends.get(coff)
        if end is None and self.gzi is not None:
            end = self.gzi.block_end(coff)
        data: Union[bytes, memoryview]
        if end is not None:
            end = min(end, self.size)
            data = source.read(coff, end)
        else:
            data = source.read(coff, min(coff + _MAX_BSIZE, self.size))
            try:
                end = min(coff + bgzf.block_size(data), self.size)
                data = memoryview(data)[: end - coff]
            except (ValueError, struct.error):
                end, data = self.data_end, b""
        if len(self._block_ends) >= BLOCK_ENDS:
            self._block_ends.clear()
        self._block_ends[coff] = end
        self._raw = (coff, end, data)
        return end, data

    def block_data(self, source: Source, coff: int) -> bytes:
        """Uncompressed data of the block at `coff` (kept in the worker's block cache)."""
        if coff == bgzf.coffset(self.header_end) and self.header_block:
            return self.header_block
        blocks = source.cache.blocks
        key = (self._token, coff)
        hit = blocks.get(key)
        if hit is not None:
            cached: bytes = hit[0]
            return cached
        end, raw = self._fetch(source, coff)
        self._raw = None  # inflated: the compressed bytes are not needed again
        try:
            data = bgzf.decompress_block(raw)
        except (ValueError, struct.error) as exc:
            raise InternalError(f"{source.key}: corrupt BGZF block at {coff}: {exc}") from None
        blocks.put(key, (data, end), len(data))
        return data

    def recut(self, source: Source, coff: int, ustart: int, uend: Optional[int] = None) -> bytes:
        """Bytes [ustart, uend) of the block at `coff` compressed as BGZF block(s) of their own
        (b"" for none), kept in the block cache once asked for twice: a popular region's
        edges are deflated twice, not on every ticket; one-off cuts take no cache room."""
        blocks = source.cache.blocks
        key = (self._token, coff, ustart, uend)
        hit = blocks.get(key)
        if hit is None:
            hit = bgzf.compress_block(memoryview(self.block_data(source, coff))[ustart:uend])
            asked, mark = self._recuts_asked, hash(key)
            if mark in asked:
                blocks.put(key, hit, len(hit))
            else:
                if len(asked) >= RECUTS_ASKED:
                    asked.clear()
                asked.add(mark)
        recut: bytes = hit
        return recut

    def edge(
        self, source: Source, coff: int, ustart: int, uend: Optional[int] = None
    ) -> Optional[Edge]:
        """`recut` as a piece that can also be served as a derived block (None for no bytes)."""
        data = self.recut(source, coff, ustart, uend)
        if not data:
            return None
        if uend is None:
            uend = len(self.block_data(source, coff))
        return Edge.of(data, Class.BODY, coff, self.block_end(source, coff), ustart, uend)


def load_layout(source: Source, prefix: bgzf.Prefix, header_len: int) -> BgzfLayout:
    """Build the layout from the decompressed prefix that `bgzf.read_prefix` returned."""
    size = source.storage.size(source.key)
    tail = source.read(max(0, size - len(bgzf.EOF_MARKER)), size)
    header_end = prefix.voffset(header_len)
    if tail == bgzf.EOF_MARKER:  # a file of header only: its end is the EOF block's start
        header_end = min(header_end, bgzf.make_voffset(size - len(bgzf.EOF_MARKER), 0))
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


@dataclass
class IndexedFile:
    """A BGZF file's layout with its binning index (BAI, CSI or TBI), as cached per worker."""

    layout: BgzfLayout
    index: BinningIndex
    index_size: int  # bytes the parsed index keeps
    #: a VCF body line that is no record was seen (formats/exact.py)
    odd_lines: bool = field(default=False, kw_only=True)
    #: record boundaries earlier region walks passed (formats/exact.py), about one per
    #: block at most
    waypoints: Waypoints = field(init=False)

    def __post_init__(self) -> None:
        self.waypoints = Waypoints(self.layout.size // WAYPOINT_SPACING)

    @property
    def nbytes(self) -> int:
        """For the cache budget: the index bytes the parser keeps, the layout, and a full
        table of waypoints."""
        return self.index_size + self.layout.nbytes + self.waypoints.nbytes

    def read_ahead(
        self, source: Source, regions: Sequence[Region], ref_id: Callable[[str], Optional[int]]
    ) -> None:
        """Remote storage: register the blocks a ticket for `regions` will read, fetched in
        one parallel batch with the first read that no cache serves."""
        source.read_ahead(lambda: bgzf.edge_reads(self.layout, self.index, regions, ref_id))


def header_pieces(layout: BgzfLayout) -> list[Piece]:
    """The header's pieces: the blocks before the one it ends in, then its part of that block
    compressed as a block of its own (worked out once per layout: every ticket of the file
    starts with them)."""
    known = layout._header_pieces
    if known is None:
        coff, uoff = bgzf.coffset(layout.header_end), bgzf.uoffset(layout.header_end)
        pieces: list[Piece] = []
        if coff > 0:
            pieces.append(ByteRange(0, coff, Class.HEADER))
        if uoff:
            recut = bgzf.compress_block(layout.header_block[:uoff])
            pieces.append(Inline(recut, Class.HEADER))
        known = layout._header_pieces = tuple(pieces)
    return list(known)


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
        edge = layout.edge(source, cb, ub, ue)
        return [edge] if edge else []
    pieces: list[Piece] = []
    start = cb
    if ub:
        head = layout.edge(source, cb, ub)
        if head:
            pieces.append(head)
        start = layout.block_end(source, cb)
    if ce > start:
        pieces.append(ByteRange(start, ce, Class.BODY))
    if ue:
        tail = layout.edge(source, ce, 0, ue)
        if tail:
            pieces.append(tail)
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
        turns.pause()  # re-cutting a chunk's edges is a step of a long ticket (turns.py)
        for piece in chunk_pieces(source, layout, vbeg, vend):
            last = pieces[-1] if pieces else None
            touching = isinstance(last, ByteRange) and last.end == getattr(piece, "start", -1)
            if isinstance(piece, ByteRange) and isinstance(last, ByteRange) and touching:
                pieces[-1] = ByteRange(last.start, piece.end, Class.BODY)
            else:
                pieces.append(piece)
    return pieces


def derived_edge(source: Source, ref: DerivedRef) -> bytes:
    """The bytes of a derived BGZF edge a ticket named by url: bytes [ubeg, uend) of the
    payload of the block [start, end) of the file, compressed again. NotFound unless
    [start, end) is one whole BGZF block holding that span."""
    raw = source.read(ref.start, ref.end)
    ubeg, uend = ref.payload_span
    try:
        if len(raw) != ref.end - ref.start or bgzf.block_size(raw[:bgzf.HEADER_SIZE]) != len(raw):
            raise ValueError("not one BGZF block")
        payload = bgzf.decompress_block(raw)
    except (ValueError, struct.error):
        raise NotFound(f"{source.key}: no BGZF block at {ref.start}-{ref.end}") from None
    if uend > len(payload):
        raise NotFound(f"{source.key}: the block at {ref.start} holds {len(payload)} bytes")
    return bgzf.compress_block(memoryview(payload)[ubeg:uend])


_EOF_PIECES = {klass: Inline(bgzf.EOF_MARKER, klass) for klass in Class}


def eof_piece(klass: Class) -> Piece:
    return _EOF_PIECES[klass]


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
