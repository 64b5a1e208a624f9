"""Tickets for BGZF-compressed formats (BAM, VCF.gz, BCF): header, body chunks, EOF.

The rules (DESIGN.md): a chunk needs its last block whole when uoffset(vend) > 0; ranges are
merged in file order; where the header shares a block with records, the header's part of that
block and the body's part are each re-compressed into blocks of their own and sent inline, so
`class=header` is exact and no record or header line is ever sent twice.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..protocol import Class
from . import bgzf
from .base import ByteRange, Inline, Piece, Source


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

    @property
    def data_end(self) -> int:
        """Offset where record data stops (the EOF marker, if present, is excluded)."""
        return self.size - len(bgzf.EOF_MARKER) if self.eof_present else self.size

    @property
    def body_start(self) -> int:
        return self.header_end

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


def header_pieces(layout: BgzfLayout) -> list[Piece]:
    coff, uoff = bgzf.coffset(layout.header_end), bgzf.uoffset(layout.header_end)
    pieces: list[Piece] = []
    if coff > 0:
        pieces.append(ByteRange(0, coff, Class.HEADER))
    if uoff:
        pieces.append(Inline(bgzf.compress_block(layout.header_block[:uoff]), Class.HEADER))
    return pieces


def body_pieces(
    source: Source, layout: BgzfLayout, chunks: Sequence[tuple[int, int]]
) -> list[Piece]:
    """Pieces for the body: chunks -> whole-block byte ranges, merged, header block re-cut."""
    hcoff, huoff = bgzf.coffset(layout.header_end), bgzf.uoffset(layout.header_end)
    clipped = []
    for vbeg, vend in chunks:
        vbeg = max(vbeg, layout.header_end)
        vend = min(vend, layout.data_end << 16)
        if vend > vbeg:
            clipped.append((vbeg, vend))
    ranges = bgzf.merged_byte_ranges(clipped, lambda c: layout.block_end(source, c))
    pieces: list[Piece] = []
    for start, end in ranges:
        end = min(end, layout.data_end)
        if huoff and start == hcoff:
            pieces.append(Inline(bgzf.compress_block(layout.header_block[huoff:]), Class.BODY))
            start = hcoff + layout.header_block_size
        if end > start:
            pieces.append(ByteRange(start, end, Class.BODY))
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
