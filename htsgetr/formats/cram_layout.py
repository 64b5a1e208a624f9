"""CRAM 3.0 / 3.1 (and 2.1) file structure (CRAMv3 sections 2, 6-9): ITF8/LTF8 integers,
the 26-byte file definition, container headers, blocks and the header container holding the
SAM header text; loading what tickets need (`CramFile`) and checking a CRAI's container
offsets against the containers really there.

Parsing only: which containers a region needs and how they are sent is cram.py's.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, TypeVar, Union

from ..index.crai import Crai
from ..protocol import InternalError
from .base import Source
from .bgzf import DEFAULT_LIMITS, Limits

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
#: Bytes read beyond max_header_bytes for the file definition, container and block headers.
HEADER_SLACK = 64 * 1024

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


def parse_block(
    data: bytes, pos: int, major: int, limit: Optional[int] = None
) -> tuple[int, int, bytes, int]:
    """The block at `data[pos:]`: (method, content type, decompressed data, end position).

    A block that would decompress to more than `limit` bytes is refused as soon as it has
    (a small block can inflate to gigabytes)."""
    method = _byte(data, pos)
    content_type = _byte(data, pos + 1)
    pos += 2
    _content_id, pos = read_itf8(data, pos)
    size, pos = read_itf8(data, pos)
    raw_size, pos = read_itf8(data, pos)
    if size < 0 or raw_size < 0:
        raise ValueError("corrupt block header")
    if limit is not None and raw_size > limit:
        raise ValueError(f"a header block of {raw_size} bytes: more than {limit}")
    end = pos + size + (4 if major >= 3 else 0)
    if end > len(data):
        raise Truncated
    payload = data[pos : pos + size]
    most = -1 if limit is None else limit + 1
    try:
        if method == BLOCK_RAW:
            raw, done = payload, True
        elif method == BLOCK_GZIP:
            z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            raw = z.decompress(payload, max(most, 0))
            done = z.eof
        elif method == BLOCK_BZIP2:
            b = bz2.BZ2Decompressor()
            raw = b.decompress(payload, most)
            done = b.eof
        elif method == BLOCK_LZMA:
            x = lzma.LZMADecompressor()
            raw = x.decompress(payload, most)
            done = x.eof
        else:
            raise ValueError(f"cannot decode a header block compressed with method {method}")
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as exc:
        raise ValueError(f"corrupt header block: {exc}") from None
    if limit is not None and len(raw) > limit:
        raise ValueError(f"a header block inflating to more than {limit} bytes")
    if not done:
        raise ValueError("corrupt header block: its compressed data ends early")
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


def _grow(source: Source, size: int, parse: Callable[[bytes], T], cap: Optional[int] = None) -> T:
    """Call `parse` on a growing prefix of the file until it no longer runs out of data
    (reading at most `cap` bytes)."""
    top = size if cap is None else min(size, cap)
    want = min(INITIAL_READ, top)
    while True:
        data = source.read(0, want)
        try:
            return parse(data)
        except Truncated:
            if want >= size:
                raise InternalError(f"{source.key}: the CRAM header is truncated") from None
            if want >= top:
                raise InternalError(
                    f"{source.key}: the CRAM header is larger than max_header_bytes ({cap})"
                ) from None
            want = min(top, want * 4)


def parse_header(
    data: bytes, limit: Optional[int] = None
) -> tuple[tuple[int, int], ContainerHeader, bytes]:
    """File definition and header container: (version, container header, SAM header text).
    A SAM header block inflating to more than `limit` bytes is refused."""
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
    _method, _ctype, raw, _end = parse_block(data, container.data_start, major, limit)
    return (major, minor), container, sam_header_text(raw)


def load_cram(source: Source, limits: Limits = DEFAULT_LIMITS) -> CramFile:
    size = source.storage.size(source.key)
    # remote: header, EOF container, CRAI and .md5 in one batch (the CRAI is loaded next)
    source.prefetch_open(4 * INITIAL_READ, len(EOF_CONTAINER_V3), [
        (source.find(index_candidates(source.key)), limits.max_index_bytes),
        (source.key + ".md5", 4096)])
    limit = limits.max_header_bytes
    try:
        # the header container's first block holds the SAM header: reading the limit and a
        # little more (definition, container header, block header) decides it
        version, container, text = _grow(
            source, size, lambda data: parse_header(data, limit), limit + HEADER_SLACK
        )
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


# --------------------------------------------------------------------------- index checks

#: bytes read at a container offset for its header (read more when its landmarks need it)
CONTAINER_HEAD_READ = 1024
#: container ref_seq_id of a multi-reference container (CRAMv3 section 7)
MULTI_REF_CONTAINER = -2


def verify_containers(
    source: Source, cram: CramFile, crai: Crai, index_key: str, offsets: Iterable[int]
) -> None:
    """Refuse a CRAI whose container offsets, among `offsets` (those a ticket uses), do not
    hold a container header that agrees with the CRAI's lines there (a shifted or foreign
    CRAI would hand out bytes no decoder can read). Each container is checked once per
    cached CRAI."""
    for offset in sorted(offsets):
        if offset in crai.verified:
            continue
        end = read_container_end(source, cram, crai, offset)
        if isinstance(end, str):
            raise InternalError(f"{index_key} does not match {source.key}: {end}")
        crai.verified[offset] = end


def read_container_end(source: Source, cram: CramFile, crai: Crai, offset: int
                       ) -> Union[int, str]:
    """Where the container at `offset` ends by its header, or (a str) what is wrong with it
    by its CRAI lines: its header must parse, end by the next indexed container, hold each
    line's reference (or be a multi-reference container), and have each line's slice offset
    among its landmarks, its slice inside it and its start inside its span."""
    stop = crai.next_container(offset, cram.data_end)
    want = min(stop, offset + CONTAINER_HEAD_READ)
    while True:
        data = source.read(offset, want)
        try:
            head = parse_container_header(data, 0, cram.version[0], offset)
            break
        except Truncated:
            if want >= stop:
                return f"no container header at offset {offset}"
            want = min(stop, offset + 4 * (want - offset))
        except ValueError:
            return f"no container header at offset {offset}"
    if head.end > stop:
        return f"the container at {offset} ends at {head.end}, past the next one ({stop})"
    for line in crai.slices(offset):
        if head.ref_seq_id != MULTI_REF_CONTAINER and line.ref != head.ref_seq_id:
            return (
                f"the container at {offset} holds reference {head.ref_seq_id}, "
                f"the index says {line.ref}"
            )
        if line.offset not in head.landmarks:
            return f"no slice at {line.offset} in the container at {offset}"
        if line.offset + line.size > head.length:
            return f"a slice runs past the end of the container at {offset}"
        if head.ref_seq_id >= 0 and not head.start <= line.start <= head.start + head.span:
            return f"a slice start ({line.start}) outside the container at {offset}"
    return head.end


def count_records(data: bytes, start: int, end: int, major: int) -> int:
    """Records in the containers of `data[start:end]`; ValueError unless they tile it."""
    records, pos = 0, start
    while pos < end:
        try:
            c = parse_container_header(data, pos, major, pos)
        except Truncated:
            raise ValueError("a container is cut short") from None
        records, pos = records + c.n_records, c.end
    if pos != end:
        raise ValueError("containers do not end where expected")
    return records
