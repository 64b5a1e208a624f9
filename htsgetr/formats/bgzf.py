"""BGZF (SAMv1 section 4.1): block headers, the EOF marker, block compression and reading.

Virtual offset = (compressed block offset << 16) | offset inside the uncompressed block.
"""

from __future__ import annotations

import struct
import zlib
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

from ..protocol import MAX_COORDINATE, UNPLACED, InternalError, Region, merge_regions
from ..storage.base import Storage
from .base import Source

T = TypeVar("T")

#: The 28-byte empty block that ends every BGZF file (SAMv1 4.1.2).
EOF_MARKER = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")

HEADER_SIZE = 18
#: Largest uncompressed payload per block; htslib uses 0xff00 so that a block never exceeds 64 KiB.
MAX_BLOCK_DATA = 0xFF00
#: Largest payload a block may inflate to (SAMv1 4.1: ISIZE is at most 65536).
MAX_BLOCK_PAYLOAD = 0x10000
#: Bytes fetched per storage read while walking blocks (a few blocks at a time).
READ_AHEAD = 256 * 1024

# Inflating, checking and deflating blocks (bench/run.py `bench_codecs` has the numbers).
# On 64 KiB BGZF blocks of a deep BAM, against zlib: ISA-L (PyPI `isal`) inflates ~2.5x and
# deflates re-cut edges (its level 1, about zlib 6's size on BAM) ~19x faster, libdeflate
# (PyPI `deflate`) inflates ~2.2x, CRC32s ~13x and deflates (level 1) ~10x faster. But ISA-L's
# CRC32 and deflate leave the CPU's upper vector state dirty (no vzeroupper), which slowed
# every later instruction of the process by ~10% (a warm ticket: 66 -> 75 us). So the
# default pairs ISA-L's inflate and deflate with libdeflate's CRC32, whose vector code ends
# with vzeroupper: a CRC32 follows every ISA-L call (`_clean_vector_state` where no CRC32
# is due), which restores the full speed.
_libdeflate: Any = None
_isal: Any = None
try:
    import deflate

    _libdeflate = deflate
except ImportError:  # pragma: no cover - zlib then
    pass
try:
    from isal import isal_zlib

    _isal = isal_zlib
except ImportError:  # pragma: no cover - zlib then
    pass

_CLEAN = bytes(256)


def _clean_vector_state() -> None:
    """After an ISA-L call: a libdeflate CRC32 of a few bytes (vector code, then vzeroupper)."""
    if _libdeflate is not None:
        _libdeflate.crc32(_CLEAN)


def _inflate_zlib(payload: Any, isize: int) -> bytes:
    return zlib.decompressobj(-15).decompress(payload, isize + 1)


def _inflate_isal(payload: Any, isize: int) -> bytes:
    return bytes(_isal.decompressobj(-15).decompress(payload, isize + 1))


def _inflate_libdeflate(payload: Any, isize: int) -> bytes:
    return bytes(_libdeflate.deflate_decompress(payload, isize))


def _deflate_zlib(data: Any, level: int) -> bytes:
    comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    return comp.compress(data) + comp.flush()


def _deflate_isal(data: Any, level: int) -> bytes:
    out = bytes(_isal.compress(data, min(level, 3), -15))
    _clean_vector_state()
    return out


def _deflate_libdeflate(data: Any, level: int) -> bytes:
    return bytes(_libdeflate.deflate_compress(data, level))


@dataclass(frozen=True)
class Codec:
    """One way to inflate (a raw DEFLATE payload and its ISIZE: at most ISIZE + 1 bytes out),
    CRC32 and deflate BGZF blocks; `level` is the re-cut blocks' compression level."""

    name: str
    inflate: Callable[[Any, int], bytes]
    crc32: Callable[[Any], int]
    deflate: Callable[[Any, int], bytes]
    level: int
    errors: tuple[Any, ...]


def codecs() -> dict[str, Codec]:
    """The codecs this installation can use, the default first."""
    out = {}
    if _libdeflate is not None:
        errors: tuple[Any, ...] = (zlib.error, _libdeflate.DeflateError)
        if _isal is not None:
            out["isal+libdeflate"] = Codec(
                "isal+libdeflate", _inflate_isal, _libdeflate.crc32, _deflate_isal, 1,
                errors + (_isal.error,),
            )
        out["libdeflate"] = Codec(
            "libdeflate", _inflate_libdeflate, _libdeflate.crc32, _deflate_libdeflate, 1, errors
        )
    out["zlib"] = Codec("zlib", _inflate_zlib, zlib.crc32, _deflate_zlib, 6, (zlib.error,))
    return out


#: the codec in use (`use_codec` changes it, e.g. to compare them in tests and benchmarks)
CODEC: Codec = next(iter(codecs().values()))


def use_codec(name: str) -> Codec:
    """Switch to the codec called `name` (see `codecs`); returns the previous one."""
    global CODEC
    previous, CODEC = CODEC, codecs()[name]
    return previous


def coffset(voffset: int) -> int:
    return voffset >> 16


def uoffset(voffset: int) -> int:
    return voffset & 0xFFFF


def make_voffset(coff: int, uoff: int) -> int:
    return (coff << 16) | uoff


@dataclass(frozen=True)
class Limits:
    """What loading a file may inflate, bytes (top-level config keys of the same names)."""

    max_index_bytes: int = 1 << 30
    max_header_bytes: int = 64 << 20

    @classmethod
    def of(cls, config: Any) -> Limits:
        """The limits of a `Config` (anything with the two attributes)."""
        return cls(config.max_index_bytes, config.max_header_bytes)


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Refused:
    """A file refused as corrupt, cached like a parsed one (per version) so that asking
    again answers at once instead of inflating and checking it again."""

    message: str
    nbytes: int = 512


def load_or_refuse(source: Source, kind: str, load: Callable[[], T], *extra_keys: str) -> T:
    """`source.cached(kind, load, *extra_keys)`, remembering an `InternalError` (corrupt
    data: the verdict holds until the file or its index changes) but not a storage fault."""

    def attempt() -> Union[T, Refused]:
        try:
            return load()
        except InternalError as exc:
            return Refused(exc.message)

    value = source.cached(kind, attempt, *extra_keys)
    if isinstance(value, Refused):
        raise InternalError(value.message)
    return value


def prefetch_open(source: Source, index_key: Optional[str], limits: Limits) -> None:
    """On a remote storage, what loading a BGZF file reads, in one parallel batch: the
    header's first blocks (`read_prefix`'s first read), the EOF block, the whole index, the
    .gzi and the .md5 (see `Source.prefetch_open`)."""
    source.prefetch_open(
        READ_AHEAD,
        len(EOF_MARKER),
        [(index_key, limits.max_index_bytes), (source.key + ".gzi", limits.max_index_bytes),
         (source.key + ".md5", 4096)],
    )


#: `edge_reads`: compressed bytes read ahead per ticket at most, and the widest region span
#: read ahead whole (wider ones: their first and last EDGE_SPAN / 2 bytes, and the blocks
#: their walk may probe in between)
EDGE_BUDGET = 8 << 20
EDGE_SPAN = 1 << 20
#: a block's compressed size at most (SAMv1 4.1: BSIZE fits 16 bits)
MAX_BLOCK_SIZE = 0x10000
#: positions across a wide region whose index entries may be probed (formats/exact.py)
_PROBE_SAMPLES = 64


def edge_reads(
    layout: Any, index: Any, regions: Iterable[Region], ref_id: Callable[[str], Optional[int]]
) -> list[tuple[int, int]]:
    """Byte ranges a region ticket will read from a BGZF file (`layout` a BgzfLayout,
    `index` its BinningIndex), so that a remote storage fetches them in one parallel batch
    instead of one step of the record walk (formats/exact.py) at a time: per region, its
    index chunks clamped as htslib clamps them (`index.bounds`), the blocks where they start
    and end (re-cut edges) and, for a bounded region, the span its walk reads: all of it
    when at most EDGE_SPAN, else its ends and the blocks at the index entries the walk may
    probe. Nothing when that passes EDGE_BUDGET (the walk then reads as it goes)."""
    edges: list[tuple[int, int]] = []
    spans: list[tuple[int, int]] = []
    data_end = layout.data_end << 16
    bounds = getattr(index, "bounds", None)
    for region in merge_regions(tuple(regions)):
        if region.reference_name == UNPLACED:
            start = coffset(max(index.last_end(), layout.header_end))
            edges.append((start, start + MAX_BLOCK_SIZE))
            continue
        rid = ref_id(region.reference_name)
        if rid is None or not 0 <= rid < index.n_ref:
            continue
        beg = region.start or 0
        end = MAX_COORDINATE if region.end is None else region.end
        found = index.query(rid, beg, end)
        lo, hi = bounds(rid, beg, end) if bounds is not None and found else (0, data_end)
        lo, hi = max(lo, layout.header_end), min(hi, data_end)
        todo = _merged([(max(u, lo), min(v, hi)) for u, v in found if min(v, hi) > max(u, lo)])
        for u, v in todo:
            edges += [(coffset(u), coffset(u) + MAX_BLOCK_SIZE),
                      (coffset(v), coffset(v) + MAX_BLOCK_SIZE)]
        if not todo or region.end is None:
            continue  # open-ended: the walk stops at its first record inside
        a, b = coffset(todo[0][0]), coffset(todo[-1][1]) + MAX_BLOCK_SIZE
        if b - a <= EDGE_SPAN:
            spans.append((a, b))
            continue
        spans += [(a, a + EDGE_SPAN // 2), (b - EDGE_SPAN // 2, b)]
        shift = index.min_shift
        first, last = (beg >> shift) + 1, (end - 1) >> shift
        where = {end - 1} | {w << shift for w in range(
            first, last + 1, max(1, (last - first + 1) // _PROBE_SAMPLES))}
        for x in where:
            for u, v in index.query(rid, x, x + 1):
                for c in (coffset(u), coffset(v)):
                    if coffset(lo) < c < coffset(hi):
                        spans.append((c, c + MAX_BLOCK_SIZE))
    out = _merged(edges)
    total = sum(b - a for a, b in out)
    if total > EDGE_BUDGET:
        return []
    for span in _merged(spans):
        total += span[1] - span[0]
        if total > EDGE_BUDGET:
            break
        out.append(span)
    return [(a, min(b, layout.size)) for a, b in _merged(out) if a < layout.size]


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def block_size(header: bytes) -> int:
    """Total size of the block whose header (at least 18 bytes, with extra field) is given."""
    if len(header) < HEADER_SIZE or header[:4] != b"\x1f\x8b\x08\x04":
        raise ValueError("not a BGZF block header")
    (xlen,) = struct.unpack_from("<H", header, 10)
    pos, end = 12, 12 + xlen
    if len(header) < end:
        raise ValueError("truncated BGZF extra field")
    while pos + 4 <= end:
        si1, si2, slen = header[pos], header[pos + 1], struct.unpack_from("<H", header, pos + 2)[0]
        if si1 == 66 and si2 == 67 and slen == 2:
            bsize: int = struct.unpack_from("<H", header, pos + 4)[0]
            return bsize + 1
        pos += 4 + slen
    raise ValueError("BGZF block without a BC subfield")


def compress_block(data: Union[bytes, memoryview], level: Optional[int] = None) -> bytes:
    """Compress `data` into one or more BGZF blocks (never the EOF marker for empty data),
    with the `CODEC` in use; `level` defaults to its re-cut level."""
    codec = CODEC
    if level is None:
        level = codec.level
    out = []
    for pos in range(0, len(data), MAX_BLOCK_DATA):
        chunk = data[pos : pos + MAX_BLOCK_DATA]
        deflated = codec.deflate(chunk, level)
        crc = codec.crc32(chunk)
        bsize = HEADER_SIZE + len(deflated) + 8
        out.append(
            struct.pack("<4BIBBHBBHH", 0x1F, 0x8B, 8, 4, 0, 0, 0xFF, 6, 66, 67, 2, bsize - 1)
            + deflated
            + struct.pack("<II", crc & 0xFFFFFFFF, len(chunk))
        )
    return b"".join(out)


def decompress_block(block: Union[bytes, bytearray, memoryview]) -> bytes:
    """The payload of one complete BGZF block, checked against the block's CRC32 and ISIZE
    as htslib checks it; at most 64 KiB, as SAMv1 4.1 requires (a block whose ISIZE says more
    is refused before inflating, and inflating stops one byte past ISIZE)."""
    size = len(block)
    xlen = struct.unpack_from("<H", block, 10)[0]
    if size < 12 + xlen + 8:
        raise ValueError("truncated BGZF block")
    crc, isize = struct.unpack_from("<II", block, size - 8)
    if isize > MAX_BLOCK_PAYLOAD:
        raise ValueError(f"corrupt BGZF block: inflates to more than {MAX_BLOCK_PAYLOAD} bytes")
    codec = CODEC
    try:
        data = codec.inflate(memoryview(block)[12 + xlen : size - 8], isize)
    except codec.errors as exc:
        raise ValueError(f"corrupt BGZF block (ISIZE {isize}): {exc}") from None
    finally:
        if codec.inflate is _inflate_isal:
            _clean_vector_state()
    if len(data) > isize:
        raise ValueError(
            f"corrupt BGZF block: inflates past its ISIZE ({isize}), stopped there (a block "
            f"holds no more than {MAX_BLOCK_PAYLOAD} bytes)"
        )
    if len(data) < isize:
        raise ValueError(f"corrupt BGZF block: inflates to {len(data)} bytes, ISIZE is {isize}")
    if codec.crc32(data) != crc:
        raise ValueError("corrupt BGZF block: CRC32 mismatch")
    return data


class TooLarge(ValueError):
    """Inflated data went past its configured bound (max_index_bytes, max_header_bytes)."""


#: compressed bytes fed to zlib at a time, and uncompressed bytes taken out per call, while
#: inflating: bounds the copies zlib makes of the unconsumed input and the overshoot
_FEED = 64 * 1024
_STEP = 1 << 20


def inflate(
    data: Union[bytes, bytearray], limit: Optional[int] = None, what: str = "the data"
) -> bytearray:
    """Decompress a whole (multi-member) gzip stream, as CSI/TBI/CRAI files are stored,
    refusing with `TooLarge` as soon as the output passes `limit` bytes: memory stays
    within `limit` plus a step, whatever the compression ratio."""
    out = bytearray()
    view = memoryview(data)
    pos, size = 0, len(data)
    fast = _isal is not None and CODEC.inflate is _inflate_isal
    z: Any = _isal if fast else zlib
    errors: tuple[Any, ...] = (zlib.error, _isal.error) if fast else (zlib.error,)
    try:
        while pos < size:
            d = z.decompressobj(16 + zlib.MAX_WBITS)
            while not d.eof:
                if pos >= size:
                    raise ValueError("truncated gzip stream")
                piece = view[pos : pos + _FEED]
                pos += len(piece)
                pending: Union[bytes, memoryview] = piece
                while True:
                    out += d.decompress(pending, _STEP)
                    if limit is not None and len(out) > limit:
                        raise TooLarge(f"{what} inflates to more than {limit} bytes")
                    pending = d.unconsumed_tail
                    if d.eof or not pending:
                        break
            pos -= len(d.unused_data)  # the next member starts right after this one
    except errors as exc:
        raise ValueError(f"corrupt gzip stream: {exc}") from None
    finally:
        if fast:
            _clean_vector_state()
    return out


def gunzip(data: bytes, limit: Optional[int] = None) -> bytes:
    """Decompress a whole (multi-member) gzip stream (see `inflate`)."""
    return bytes(inflate(data, limit))


@dataclass(frozen=True)
class Gzi:
    """A .gzi index: the compressed offsets of block starts (block 0 is implicit)."""

    starts: tuple[int, ...]

    @classmethod
    def parse(cls, data: bytes) -> Gzi:
        if len(data) < 8:
            raise ValueError("truncated GZI")
        (n,) = struct.unpack_from("<Q", data, 0)
        if len(data) < 8 + 16 * n:
            raise ValueError("truncated GZI")
        pairs = struct.unpack_from(f"<{2 * n}Q", data, 8)
        return cls((0,) + tuple(pairs[0::2]))

    def block_end(self, coff: int) -> Optional[int]:
        """Start of the block after the one at `coff`, if the GZI knows it."""
        i = bisect_right(self.starts, coff)
        if i < len(self.starts) and i > 0 and self.starts[i - 1] == coff:
            return self.starts[i]
        return None


@dataclass
class Block:
    coffset: int
    size: int
    data: bytes


def iter_blocks(
    storage: Storage, key: str, start: int = 0, stop: Optional[int] = None
) -> BlockIterator:
    return BlockIterator(storage, key, start, stop)


class BlockIterator:
    """Walks consecutive BGZF blocks from `start`, reading the storage in large pieces."""

    def __init__(self, storage: Storage, key: str, start: int, stop: Optional[int]) -> None:
        self.storage, self.key, self.pos, self.stop = storage, key, start, stop
        self.buf, self.buf_start = b"", start

    def __iter__(self) -> BlockIterator:
        return self

    def _ensure(self, n: int) -> bool:
        have = self.buf_start + len(self.buf) - self.pos
        if have >= n:
            return True
        keep = self.buf[self.pos - self.buf_start :]
        more = self.storage.read(
            self.key, self.pos + len(keep), self.pos + max(n, READ_AHEAD)
        )
        self.buf, self.buf_start = keep + more, self.pos
        return len(self.buf) >= n

    def __next__(self) -> Block:
        if self.stop is not None and self.pos >= self.stop:
            raise StopIteration
        if not self._ensure(HEADER_SIZE):
            if self.buf_start + len(self.buf) == self.pos:
                raise StopIteration
            raise ValueError("truncated BGZF block header")
        off = self.pos - self.buf_start
        hdr_len = HEADER_SIZE + max(0, struct.unpack_from("<H", self.buf, off + 10)[0] - 6)
        self._ensure(hdr_len)
        off = self.pos - self.buf_start
        size = block_size(self.buf[off : off + hdr_len])
        if not self._ensure(size):
            raise ValueError("truncated BGZF block")
        off = self.pos - self.buf_start
        raw = self.buf[off : off + size]
        block = Block(self.pos, size, decompress_block(raw))
        self.pos += size
        return block


@dataclass
class Prefix:
    """The first uncompressed bytes of a BGZF file with the blocks they came from."""

    data: bytes
    blocks: list[tuple[int, int, int]]  # (coffset, size, uncompressed start)

    def voffset(self, upos: int) -> int:
        """Virtual offset of uncompressed position `upos` (must lie in a read block)."""
        i = bisect_right([b[2] for b in self.blocks], upos) - 1
        coff, size, ustart = self.blocks[i]
        if upos - ustart == self._block_len(i) and i + 1 < len(self.blocks):
            # exactly at a block end: the canonical virtual offset is the next block's start
            return make_voffset(self.blocks[i + 1][0], 0)
        if upos - ustart == self._block_len(i):
            return make_voffset(coff + size, 0)
        return make_voffset(coff, upos - ustart)

    def _block_len(self, i: int) -> int:
        end = self.blocks[i + 1][2] if i + 1 < len(self.blocks) else len(self.data)
        return end - self.blocks[i][2]

    def block_data(self, coff: int) -> bytes:
        for i, (c, _size, ustart) in enumerate(self.blocks):
            if c == coff:
                return self.data[ustart : ustart + self._block_len(i)]
        raise KeyError(coff)

    def names_position(self, voffset: int, upos: int) -> bool:
        """Does `voffset` point at uncompressed position `upos` (which the prefix holds, or
        which is its end)? Either spelling of a block boundary counts (the end of one block,
        the start of the next), as an index written by any tool may use either."""
        coff, uoff = coffset(voffset), uoffset(voffset)
        for i, (c, _size, ustart) in enumerate(self.blocks):
            if c == coff:
                return uoff <= self._block_len(i) and ustart + uoff == upos
        if not self.blocks:
            return False
        last_c, last_size, _ = self.blocks[-1]
        # the first block after the prefix, at its start: the position right after the prefix
        return coff == last_c + last_size and uoff == 0 and upos == len(self.data)


#: read_prefix asks `header_length` after every block up to this many bytes, then each time
#: the data has doubled (a header of many blocks is not re-parsed once per block)
_ASK_EVERY_BLOCK = 1 << 20


def read_prefix(
    storage: Storage,
    key: str,
    header_length: Callable[[bytes], Optional[int]],
    limit: Optional[int] = None,
) -> tuple[Prefix, int]:
    """Decompress blocks from the start until `header_length(data)` knows where the header ends.

    `header_length` returns None while it needs more data. Returns the prefix (whole blocks)
    and the uncompressed header length. A header longer than `limit` bytes (config:
    max_header_bytes) is refused as soon as that many have been inflated.
    """
    buf = bytearray()
    blocks: list[tuple[int, int, int]] = []
    ask_at = 0
    try:
        for block in iter_blocks(storage, key):
            blocks.append((block.coffset, block.size, len(buf)))
            buf += block.data
            if not block.data:
                continue
            over = limit is not None and len(buf) > limit
            if len(buf) >= ask_at or over:
                length = header_length(buf)  # type: ignore[arg-type]  # bytes-like will do
                if length is not None:
                    break
                if over:
                    raise TooLarge(f"the header is larger than max_header_bytes ({limit})")
                if len(buf) >= _ASK_EVERY_BLOCK:
                    ask_at = 2 * len(buf)
        else:
            if not buf:  # a zero-byte file, or nothing but empty blocks: no header at all
                raise ValueError("the file holds no data")
            # the last blocks (and a header-only file: give parsers a chance to accept it)
            length = header_length(buf) if ask_at else None  # type: ignore[arg-type]
            if length is None:
                length = header_length(bytes(buf) + b"\0")
                if length is not None and length > len(buf):
                    length = None
    except ValueError as exc:
        raise InternalError(f"cannot read {key}: {exc}") from None
    if length is None:
        raise InternalError(f"cannot read {key}: the header is truncated")
    if limit is not None and length > limit:
        raise InternalError(
            f"cannot read {key}: the header is larger than max_header_bytes ({limit})"
        )
    return Prefix(bytes(buf), blocks), length
