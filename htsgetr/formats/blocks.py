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
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from .._ranges import BinningIndex, merge_ranges
from ..protocol import Class, InternalError
from . import bgzf
from .base import ByteRange, Inline, Piece, Source

#: decompressed blocks kept per file for re-cutting chunk ends
BLOCK_CACHE = 16


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


@dataclass
class IndexedFile:
    """A BGZF file's layout with its binning index (BAI, CSI or TBI), as cached per worker."""

    layout: BgzfLayout
    index: BinningIndex
    index_size: int  # bytes the parsed index keeps
    #: a VCF body line that is no record was seen (formats/exact.py)
    odd_lines: bool = field(default=False, kw_only=True)

    @property
    def nbytes(self) -> int:
        """For the cache budget: the index bytes the parser keeps, plus the layout."""
        return self.index_size + self.layout.nbytes


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
