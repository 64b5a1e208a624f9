"""FAI (samtools faidx / fqidx) and the uncompressed<->compressed block map of a BGZF file.

A FASTA `.fai` line: name, length, offset, linebases, linewidth; a FASTQ `.fai` adds the
offset of the qualities. Offsets are positions in the *uncompressed* file, so a bgzipped
file also needs the map from uncompressed offsets to BGZF blocks (from its `.gzi`, or from
walking the block headers when there is none).
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass
from typing import Optional

from ..formats import bgzf
from ..protocol import InternalError
from ..storage.base import Storage


@dataclass(frozen=True)
class FaiEntry:
    name: str
    length: int
    offset: int  # of the first base
    line_bases: int
    line_width: int  # bytes per line, terminator included
    qual_offset: Optional[int] = None  # FASTQ only: of the first quality

    def position(self, i: int, start: Optional[int] = None) -> int:
        """Offset of base (or quality) `i`, counted from the line layout."""
        base = self.offset if start is None else start
        if self.line_bases <= 0:
            return base + i
        return base + (i // self.line_bases) * self.line_width + i % self.line_bases

    def span(self, beg: int, end: int, qualities: bool = False) -> tuple[int, int]:
        """Bytes [first, last) holding bases (or qualities) [beg, end), line breaks inside."""
        start = self.qual_offset if qualities else self.offset
        first = self.position(beg, start)
        if end <= beg:
            return first, first
        return first, self.position(end - 1, start) + 1


class Fai:
    """A parsed-on-demand `.fai`: the raw text is kept, lines are looked up by name.

    FASTQ indexes have a line per read; keeping the text (not millions of objects) keeps
    a cached index small, and `bytes.find` makes a lookup fast.
    """

    def __init__(self, data: bytes, name: str = "index") -> None:
        self.data = b"\n" + data.replace(b"\r\n", b"\n")
        self.name = name

    def get(self, seq_name: str) -> Optional[FaiEntry]:
        needle = b"\n" + seq_name.encode() + b"\t"
        pos = self.data.find(needle)
        if pos < 0:
            return None
        end = self.data.find(b"\n", pos + 1)
        line = self.data[pos + 1 : end if end >= 0 else len(self.data)]
        return self.parse_line(line)

    def parse_line(self, line: bytes) -> FaiEntry:
        fields = line.split(b"\t")
        try:
            if len(fields) not in (5, 6):
                raise ValueError
            nums = [int(f) for f in fields[1:]]
        except ValueError:
            raise InternalError(f"{self.name} is not a FASTA/FASTQ index") from None
        if any(n < 0 for n in nums):
            raise InternalError(f"{self.name}: negative value in {fields[0]!r}")
        qual = nums[4] if len(nums) == 5 else None
        return FaiEntry(fields[0].decode(), nums[0], nums[1], nums[2], nums[3], qual)


# --------------------------------------------------------------------------- BGZF blocks


@dataclass(frozen=True)
class BlockMap:
    """Every BGZF block of a file: `coffsets[i]`, `uoffsets[i]` where block i starts; the
    last element of each is the end (compressed: the file size, uncompressed: the total)."""

    coffsets: tuple[int, ...]
    uoffsets: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.uoffsets[-1]

    def block_at(self, upos: int) -> int:
        """Index of the block holding uncompressed offset `upos` (< total)."""
        # bisect_right skips empty blocks that start at the same offset as a non-empty one
        return bisect_right(self.uoffsets, upos, 0, len(self.uoffsets) - 1) - 1


def parse_gzi(data: bytes, name: str = "index") -> list[tuple[int, int]]:
    """A `.gzi`: (compressed, uncompressed) offsets of every block start, block 0 included."""
    if len(data) < 8:
        raise InternalError(f"{name} is truncated")
    (n,) = struct.unpack_from("<Q", data, 0)
    if len(data) < 8 + 16 * n:
        raise InternalError(f"{name} is truncated")
    pairs = struct.unpack_from(f"<{2 * n}Q", data, 8)
    return [(0, 0)] + list(zip(pairs[0::2], pairs[1::2]))


def walk_blocks(
    storage: Storage, key: str, start: int, size: int
) -> list[tuple[int, int]]:
    """(coffset, uncompressed size) of every block from `start` to `size`, read from the block
    headers and ISIZE trailers without decompressing anything."""
    out: list[tuple[int, int]] = []
    pos, buf, buf_start = start, b"", start
    while pos < size:
        off = pos - buf_start
        if off + bgzf.HEADER_SIZE + 64 > len(buf) and buf_start + len(buf) < size:
            buf = storage.read(key, pos, min(size, pos + bgzf.READ_AHEAD))
            buf_start, off = pos, 0
        try:
            bsize = bgzf.block_size(buf[off : off + bgzf.HEADER_SIZE + 64])
        except (ValueError, struct.error):
            raise InternalError(f"{key}: not a BGZF file at offset {pos}") from None
        if off + bsize > len(buf):
            buf = storage.read(key, pos, min(size, pos + max(bsize, bgzf.READ_AHEAD)))
            buf_start, off = pos, 0
            if bsize > len(buf):
                raise InternalError(f"{key}: truncated BGZF block at offset {pos}")
        (isize,) = struct.unpack_from("<I", buf, off + bsize - 4)
        out.append((pos, isize))
        pos += bsize
    return out


def load_block_map(storage: Storage, key: str, gzi: Optional[bytes]) -> BlockMap:
    """The block map from a `.gzi` (the blocks after its last entry are walked) or, without
    one, from walking every block header of the file."""
    size = storage.size(key)
    starts = parse_gzi(gzi, key + ".gzi") if gzi is not None else [(0, 0)]
    coffs = [c for c, _ in starts[:-1]]
    uoffs = [u for _, u in starts[:-1]]
    last_c, last_u = starts[-1]
    for coff, usize in walk_blocks(storage, key, last_c, size):
        coffs.append(coff)
        uoffs.append(last_u)
        last_u += usize
    coffs.append(size)
    uoffs.append(last_u)
    if any(b < a for a, b in zip(coffs, coffs[1:])) or any(b < a for a, b in zip(uoffs, uoffs[1:])):
        raise InternalError(f"{key}.gzi does not match {key}")
    return BlockMap(tuple(coffs), tuple(uoffs))
