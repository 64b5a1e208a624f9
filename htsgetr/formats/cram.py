"""CRAM 3.0 / 3.1 (and 2.1) with a CRAI index: whole-container tickets, no reference needed.

Layout (CRAMv3 sections 6-9): a 26-byte file definition, the header container (whose first
block holds the SAM header text), data containers, and an EOF container. The header is the
file definition plus the header container, whose end is found by parsing the container
header; a region maps to the whole containers whose CRAI entries overlap it, each running
from its CRAI offset to the next container's start (or the EOF container). A record-exact
query (`Query.exact`, authorization rules) re-encodes the containers only partly wanted:
see cram_recode.py.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

from ..index.crai import UNMAPPED, Crai
from ..protocol import (
    MAX_COORDINATE,
    UNPLACED,
    Class,
    Format,
    InternalError,
    NotFound,
    Query,
)
from .base import ByteRange, Inline, Piece, Source, missing_index

T = TypeVar("T")

FILE_DEFINITION_SIZE = 26
#: The EOF container that ends every CRAM 3.x file (CRAMv3 section 9), byte for byte as htslib
#: writes it: an empty container (ref -1, start 0x454f46 "EOF") with an empty compression header.
EOF_CONTAINER_V3 = bytes.fromhex(
    "0f000000" "ffffffff0f" "e0454f46" "00" "00" "00" "00" "01" "00" "05bdd94f"
    "00" "01" "00" "06" "06" "010001000100" "ee63014b"
)
#: CRAM 2.1: the same container without the CRC32 fields.
EOF_CONTAINER_V2 = bytes.fromhex(
    "0b000000" "ffffffff0f" "e0454f46" "00" "00" "00" "00" "01" "00"
    "00" "01" "00" "06" "06" "010001000100"
)

#: First read of the file; grown while the header container needs more.
INITIAL_READ = 64 * 1024

BLOCK_RAW, BLOCK_GZIP, BLOCK_BZIP2, BLOCK_LZMA = 0, 1, 2, 3


class Truncated(Exception):
    """The buffer ended before the structure did: read more and parse again."""


# --------------------------------------------------------------------------- primitives


def _byte(data: bytes, pos: int) -> int:
    if pos >= len(data):
        raise Truncated
    return data[pos]


def read_itf8(data: bytes, pos: int) -> tuple[int, int]:
    """ITF8 (CRAMv3 2.3): a signed 32-bit integer in 1-5 bytes; returns (value, new pos)."""
    b0 = _byte(data, pos)
    if b0 < 0x80:
        return b0, pos + 1
    if b0 < 0xC0:
        value, n = b0 & 0x3F, 1
    elif b0 < 0xE0:
        value, n = b0 & 0x1F, 2
    elif b0 < 0xF0:
        value, n = b0 & 0x0F, 3
    else:
        if pos + 5 > len(data):
            raise Truncated
        b1, b2, b3, b4 = data[pos + 1 : pos + 5]
        value = ((b0 & 0x0F) << 28) | (b1 << 20) | (b2 << 12) | (b3 << 4) | (b4 & 0x0F)
        return (value - (1 << 32) if value >= 1 << 31 else value), pos + 5
    if pos + 1 + n > len(data):
        raise Truncated
    for b in data[pos + 1 : pos + 1 + n]:
        value = (value << 8) | b
    if value >= 1 << 31:
        value -= 1 << 32
    return value, pos + 1 + n


def read_ltf8(data: bytes, pos: int) -> tuple[int, int]:
    """LTF8 (CRAMv3 2.3): a signed 64-bit integer in 1-9 bytes; returns (value, new pos)."""
    b0 = _byte(data, pos)
    n = 0  # leading one bits = bytes that follow
    while n < 8 and b0 & (0x80 >> n):
        n += 1
    if pos + 1 + n > len(data):
        raise Truncated
    value = b0 & (0xFF >> (n + 1)) if n < 8 else 0
    for b in data[pos + 1 : pos + 1 + n]:
        value = (value << 8) | b
    if value >= 1 << 63:
        value -= 1 << 64
    return value, pos + 1 + n


def _int32(data: bytes, pos: int) -> tuple[int, int]:
    if pos + 4 > len(data):
        raise Truncated
    return struct.unpack_from("<i", data, pos)[0], pos + 4


# --------------------------------------------------------------------------- structures


@dataclass(frozen=True)
class ContainerHeader:
    offset: int  # where the container starts in the file
    header_size: int  # bytes of the container header itself
    length: int  # bytes of the blocks that follow it
    ref_seq_id: int
    start: int
    span: int
    n_records: int
    n_blocks: int
    landmarks: tuple[int, ...]

    @property
    def data_start(self) -> int:
        return self.offset + self.header_size

    @property
    def end(self) -> int:
        return self.offset + self.header_size + self.length


def parse_container_header(data: bytes, pos: int, major: int, offset: int) -> ContainerHeader:
    """The container header at `data[pos:]` (file offset `offset`); a CRC32 from 3.0 on."""
    begin = pos
    length, pos = _int32(data, pos)
    ref_seq_id, pos = read_itf8(data, pos)
    start, pos = read_itf8(data, pos)
    span, pos = read_itf8(data, pos)
    n_records, pos = read_itf8(data, pos)
    _counter, pos = read_ltf8(data, pos)
    _bases, pos = read_ltf8(data, pos)
    n_blocks, pos = read_itf8(data, pos)
    n_landmarks, pos = read_itf8(data, pos)
    if length < 0 or n_landmarks < 0 or n_landmarks > len(data):
        raise ValueError("corrupt container header")
    landmarks = []
    for _ in range(n_landmarks):
        mark, pos = read_itf8(data, pos)
        landmarks.append(mark)
    if major >= 3:
        # the CRC32 is skipped, not checked: the bytes are passed on untouched, and htslib
        # itself reads files whose writers got it wrong
        _crc, pos = _int32(data, pos)
    return ContainerHeader(
        offset, pos - begin, length, ref_seq_id, start, span, n_records, n_blocks,
        tuple(landmarks),
    )


def parse_block(data: bytes, pos: int, major: int) -> tuple[int, int, bytes, int]:
    """The block at `data[pos:]`: (method, content type, decompressed data, end position)."""
    method = _byte(data, pos)
    content_type = _byte(data, pos + 1)
    pos += 2
    _content_id, pos = read_itf8(data, pos)
    size, pos = read_itf8(data, pos)
    raw_size, pos = read_itf8(data, pos)
    if size < 0 or raw_size < 0:
        raise ValueError("corrupt block header")
    end = pos + size + (4 if major >= 3 else 0)
    if end > len(data):
        raise Truncated
    payload = data[pos : pos + size]
    try:
        if method == BLOCK_RAW:
            raw = payload
        elif method == BLOCK_GZIP:
            raw = zlib.decompress(payload, 16 + zlib.MAX_WBITS)
        elif method == BLOCK_BZIP2:
            raw = bz2.decompress(payload)
        elif method == BLOCK_LZMA:
            raw = lzma.decompress(payload)
        else:
            raise ValueError(f"cannot decode a header block compressed with method {method}")
    except (zlib.error, OSError, lzma.LZMAError) as exc:
        raise ValueError(f"corrupt header block: {exc}") from None
    return method, content_type, raw, end


def sam_header_text(block_data: bytes) -> bytes:
    """The SAM header text of the file-header block: int32 length, then the text."""
    if len(block_data) < 4:
        raise ValueError("SAM header block too short")
    (l_text,) = struct.unpack_from("<i", block_data, 0)
    if l_text < 0 or 4 + l_text > len(block_data):
        raise ValueError("SAM header length out of range")
    return block_data[4 : 4 + l_text].rstrip(b"\0")


def reference_names(text: bytes) -> list[str]:
    """SN of every @SQ line, in order: a name's position is its CRAM reference ID."""
    names = []
    for line in text.split(b"\n"):
        if not line.startswith(b"@SQ\t"):
            continue
        for tag in line.rstrip(b"\r").split(b"\t")[1:]:
            if tag.startswith(b"SN:"):
                names.append(tag[3:].decode("utf-8", "replace"))
                break
    return names


# --------------------------------------------------------------------------- file


@dataclass
class CramFile:
    version: tuple[int, int]
    header_end: int  # end of the header container
    data_end: int  # start of the file's own EOF container (or its size, if it has none)
    eof: bytes  # the EOF container this version ends with
    ref_ids: dict[str, int]
    header_text: bytes
    names: tuple[str, ...] = ()  # @SQ names in header order


def _grow(source: Source, size: int, parse: Callable[[bytes], T]) -> T:
    """Call `parse` on a growing prefix of the file until it no longer runs out of data."""
    want = min(INITIAL_READ, size)
    while True:
        data = source.read(0, want)
        try:
            return parse(data)
        except Truncated:
            if want >= size:
                raise InternalError(f"{source.key}: the CRAM header is truncated") from None
            want = min(size, want * 4)


def parse_header(data: bytes) -> tuple[tuple[int, int], ContainerHeader, bytes]:
    """File definition and header container: (version, container header, SAM header text)."""
    if len(data) < FILE_DEFINITION_SIZE:
        raise Truncated
    if data[:4] != b"CRAM":
        raise ValueError("not a CRAM file")
    major, minor = data[4], data[5]
    if major not in (2, 3):
        raise ValueError(f"unsupported CRAM version {major}.{minor}")
    pos = FILE_DEFINITION_SIZE
    container = parse_container_header(data, pos, major, pos)
    if container.n_blocks < 1:
        raise ValueError("the header container has no blocks")
    _method, _ctype, raw, _end = parse_block(data, container.data_start, major)
    return (major, minor), container, sam_header_text(raw)


def load_cram(source: Source) -> CramFile:
    size = source.storage.size(source.key)
    try:
        version, container, text = _grow(source, size, parse_header)
    except ValueError as exc:
        raise InternalError(f"{source.key}: {exc}") from None
    if container.end > size:
        raise InternalError(f"{source.key}: the CRAM header container is truncated")
    eof = EOF_CONTAINER_V3 if version[0] >= 3 else EOF_CONTAINER_V2
    data_end = size
    if size - len(eof) >= container.end and source.read(size - len(eof), size) == eof:
        data_end = size - len(eof)
    names = reference_names(text)
    return CramFile(
        version, container.end, data_end, eof, {n: i for i, n in enumerate(names)}, text,
        tuple(names),
    )


def index_candidates(key: str) -> list[str]:
    """`<file>.crai`, then `<stem>.crai` (x.cram.crai, x.crai)."""
    out = [f"{key}.crai"]
    if key.endswith(".cram"):
        out.append(key[: -len(".cram")] + ".crai")
    return out


class CramHandler:
    format = Format.CRAM
    extensions = (".cram",)

    def open(self, source: Source) -> CramFile:
        """The parsed header (no index needed: whole-file and header tickets work without)."""
        return source.cached("cram", lambda: load_cram(source))

    def reference_names(self, source: Source) -> list[str]:
        """The @SQ names in header order (a name's position is its CRAM reference ID)."""
        return list(self.open(source).names)

    def index(self, source: Source) -> Crai:
        return self._index(source)[1]

    def _index(self, source: Source) -> tuple[str, Crai]:
        """The CRAI's key and its parsed (cached) form."""
        index_key = source.find(index_candidates(source.key))
        if index_key is None:
            raise missing_index(source.key)
        return index_key, source.cached(
            "crai", lambda: Crai.parse(source.read_all(index_key), index_key), index_key
        )

    def pieces(self, source: Source, query: Query) -> list[Piece]:
        cram = self.open(source)
        header: list[Piece] = [ByteRange(0, cram.header_end, Class.HEADER)]
        if query.klass is Class.HEADER:
            return header + [Inline(cram.eof, Class.HEADER)]
        body: list[Piece]
        if query.regions is None:
            body = [ByteRange(cram.header_end, cram.data_end, Class.BODY)]
        elif query.exact:
            body = self._exact_body(source, cram, query)
        else:
            ranges = self._container_ranges(cram, self.index(source), query)
            body = [ByteRange(s, e, Class.BODY) for s, e in ranges]
        body = [p for p in body if not isinstance(p, ByteRange) or p.end > p.start]
        return header + body + [Inline(cram.eof, Class.BODY)]

    def _spans(self, cram: CramFile, query: Query) -> Iterator[tuple[int, int, int]]:
        """(reference ID, beg, end) of each region; UNMAPPED for `*`."""
        for region in query.regions or ():
            if region.reference_name == UNPLACED:
                yield UNMAPPED, 0, MAX_COORDINATE
                continue
            ref_id = cram.ref_ids.get(region.reference_name)
            if ref_id is None:
                raise NotFound(f"reference {region.reference_name!r} is not in {query.id}")
            beg = region.start or 0
            yield ref_id, beg, MAX_COORDINATE if region.end is None else region.end

    def _exact_body(self, source: Source, cram: CramFile, query: Query) -> list[Piece]:
        """Exactly the records htslib's region queries return, each once, in file order."""
        from .cram_recode import Selection, exact_body  # imports this module

        spans = list(self._spans(cram, query))  # unknown references: NotFound first
        if not spans:
            return []
        placed = [s for s in spans if s[0] != UNMAPPED]
        selection = Selection.of(placed, unplaced=len(placed) < len(spans))
        index_key, crai = self._index(source)
        return exact_body(source, cram, crai, index_key, selection)

    def _container_ranges(
        self, cram: CramFile, crai: Crai, query: Query
    ) -> list[tuple[int, int]]:
        """Whole containers overlapping any region, in file order, merged, each byte once."""
        offsets: set[int] = set()
        for ref_id, beg, end in self._spans(cram, query):
            if ref_id == UNMAPPED:
                offsets |= crai.containers(UNMAPPED, 0, MAX_COORDINATE)
            elif end > beg:
                offsets |= crai.containers(ref_id, beg, end)
        ranges: list[tuple[int, int]] = []
        for offset in sorted(offsets):
            start = max(offset, cram.header_end)
            end = min(crai.next_container(offset, cram.data_end), cram.data_end)
            if end <= start:
                continue
            if ranges and ranges[-1][1] >= start:
                ranges[-1] = (ranges[-1][0], max(ranges[-1][1], end))
            else:
                ranges.append((start, end))
        return ranges
