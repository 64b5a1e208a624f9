"""Plain-Python twin of htsgetr._records: record walks over uncompressed BAM, BCF, VCF data.

A parser reads one record at `pos` and returns `(next_pos, ref, beg, end)` — 0-based
half-open, `ref` an ID (BAM/BCF) or name (VCF) — or None when the record runs past the data
it was given. `scan` walks records exactly as the C version does; tests cross-check them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Optional, Union

RefKey = Union[int, bytes]
Parsed = Optional[tuple[int, RefKey, int, int]]
RecordParser = Callable[[bytes, int], Parsed]

_I32 = struct.Struct("<i")
_BAM_CORE = struct.Struct("<iiiBBHHHi")  # block_size, refID, pos, l_read_name, mapq, bin,
#                                          n_cigar_op, flag, l_seq
_BCF_CORE = struct.Struct("<IIiii")  # l_shared, l_indiv, CHROM, POS, rlen
#: CIGAR operations that consume the reference: M D N = X (SAMv1 1.4.6)
_REF_OPS = frozenset((0, 2, 3, 7, 8))
_BAM_FUNMAP = 4


def parse_bam(data: bytes, pos: int) -> Parsed:
    """One BAM alignment: covers [pos, pos + reference length), at least one base (htslib)."""
    if pos + 36 > len(data):
        return None
    block_size, ref, beg, l_name, _, _, n_cigar, flag, _ = _BAM_CORE.unpack_from(data, pos)
    nxt = pos + 4 + block_size
    if nxt > len(data):
        return None
    rlen = 0
    if n_cigar and not flag & _BAM_FUNMAP:
        cigar = struct.unpack_from(f"<{n_cigar}I", data, pos + 36 + l_name)
        rlen = sum(op >> 4 for op in cigar if op & 0xF in _REF_OPS)
    return nxt, ref, beg, beg + max(rlen, 1)


def parse_bcf(data: bytes, pos: int) -> Parsed:
    """One BCF record: CHROM, 0-based POS and rlen from its shared part."""
    if pos + 20 > len(data):
        return None
    l_shared, l_indiv, chrom, beg, rlen = _BCF_CORE.unpack_from(data, pos)
    nxt = pos + 8 + l_shared + l_indiv
    if nxt > len(data):
        return None
    return nxt, chrom, beg, beg + max(rlen, 1)


def _int(text: bytes) -> Optional[int]:
    """Decimal digits with an optional sign, as the C parser accepts them."""
    digits = text[1:] if text[:1] in (b"+", b"-") else text
    if not digits or len(digits) > 18 or not digits.isdigit():
        return None
    return -int(digits) if text[:1] == b"-" else int(digits)


def parse_vcf(data: bytes, pos: int) -> Parsed:
    """One VCF line: [POS-1, POS-1+len(REF)), or to INFO/END when present (as tabix does)."""
    nl = data.find(b"\n", pos)
    if nl < 0:
        return None
    fields = data[pos:nl].split(b"\t", 8)
    if len(fields) < 4:
        return nl + 1, b"", -1, -1  # not a record line (blank): overlaps nothing
    pos_value = _int(fields[1])
    if pos_value is None:
        return nl + 1, b"", -1, -1
    beg = pos_value - 1
    end = beg + max(len(fields[3]), 1)
    if len(fields) > 7:
        for item in fields[7].split(b";"):
            if item.startswith(b"END="):
                value = _int(item[4:])
                if value is not None:
                    end = max(value, beg + 1)
                break
    return nl + 1, fields[0], beg, end


NEED_MORE, PAST, LIMIT, OPEN_END = 0, 1, 2, 3


def scan(
    buf: bytes,
    pos: int,
    limit: int,
    parse: RecordParser,
    ref: RefKey,
    beg: int,
    end: int,
    open_end: bool,
) -> tuple[int, int, int, int]:
    """The same walk as `htsgetr._records.scan`, one record at a time in Python."""
    first = last = -1
    while True:
        if 0 <= limit <= pos:
            return LIMIT, pos, first, last
        if pos >= len(buf):
            return NEED_MORE, pos, first, last
        rec = parse(buf, pos)
        if rec is None:
            return NEED_MORE, pos, first, last
        nxt, rec_ref, rec_beg, rec_end = rec
        if rec_ref == ref and rec_beg >= end:
            return PAST, pos, first, last
        if rec_ref == ref and rec_end > beg:
            if first < 0:
                first = pos
                if open_end:
                    return OPEN_END, pos, first, nxt
            last = nxt
        pos = nxt
