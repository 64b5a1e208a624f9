"""Plain-Python twin of htsgetr._records: record walks over uncompressed BAM, BCF, VCF data.

A parser reads one record at `pos` and returns `(next_pos, ref, beg, end)` — 0-based
half-open, `ref` an ID (BAM/BCF) or name (VCF), None for a line tabix does not read as a
record — or None when the record runs past the data it was given. `runs` and `head` walk
records exactly as the C versions do; tests cross-check them.
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


NEED_MORE, PAST, LIMIT, OPEN_END = 0, 1, 2, 3


# --------------------------------------------------------------------------- exact runs
#
# `htsgetr._records.runs` measures records as htslib 1.24 does (bam_endpos, tbx_parse1,
# bcf_readrec); these parsers return ref None for a line tabix would not read as a record.

ExactParsed = Optional[tuple[int, Optional[RefKey], int, int]]
ExactParser = Callable[[bytes, int], ExactParsed]

_WS = b" \t\n\v\f\r"
_LLONG_MAX, _LLONG_MIN = (1 << 63) - 1, -(1 << 63)
_DIGITS = {8: b"01234567", 10: b"0123456789", 16: b"0123456789abcdefABCDEF"}


def strtoll(text: bytes, base: int) -> tuple[int, bool]:
    """C strtoll on the first 63 bytes of `text` (as the C helper copies them): the value
    and whether any digits were read."""
    text = text[:63].split(b"\0", 1)[0]
    i = 0
    while i < len(text) and text[i] in _WS:
        i += 1
    neg = text[i : i + 1] == b"-"
    if text[i : i + 1] in (b"+", b"-"):
        i += 1
    if base == 0:
        if text[i : i + 2] in (b"0x", b"0X") and text[i + 2 : i + 3] and \
                text[i + 2] in _DIGITS[16]:
            base, i = 16, i + 2
        else:
            base = 8 if text[i : i + 1] == b"0" else 10
    j = i
    while j < len(text) and text[j] in _DIGITS[base]:
        j += 1
    if j == i:
        return 0, False
    value = -int(text[i:j], base) if neg else int(text[i:j], base)
    return max(_LLONG_MIN, min(_LLONG_MAX, value)), True


def _info_value(info: bytes, key: bytes) -> int:
    """Where `key`'s value starts in INFO, found as tabix finds it (at the start, else after
    the first ';key'), or -1."""
    at = info.find(key)
    if at < 0:
        return -1
    if at == 0:
        return len(key)
    at = info.find(b";" + key)
    return at + 1 + len(key) if at >= 0 else -1


def _svlen_alt(alt: bytes) -> bool:
    return (len(alt) >= 5 and alt[:1] == b"<" and alt[4:5] in (b">", b":")
            and alt[:4] in (b"<CNV", b"<DEL", b"<DUP", b"<INV") and alt[-1:] == b">")


def vcf_span(line: bytes) -> Optional[tuple[bytes, int, int]]:
    """(CHROM, beg, end) of one VCF line as htslib's tbx_parse1 reads it, or None."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if line.startswith(b"#"):
        return None
    fields = line.split(b"\t")
    if len(fields) < 2:
        return None
    pos, ok = strtoll(fields[1], 0)
    if not ok:
        return None
    beg, end = max(pos - 1, 0), 1
    reflen = svlen = fmtlen = 0
    flagged: set[int] = set()
    use_svlen = getlen = False
    alcnt = 0
    lenpos = -1
    for fid, field in enumerate(fields[2:], start=3):
        if fid == 4:
            if field:
                end = beg + len(field)
            alcnt += 1
            reflen = len(field)
        elif fid == 5:
            for alt in field.split(b","):
                if _svlen_alt(alt):
                    flagged.add(alcnt)
                    use_svlen = True
                elif alt in (b"<*>", b"<NON_REF>"):
                    getlen = True
                alcnt += 1
                if alcnt >= 65536:
                    break
        elif fid == 8:
            at = _info_value(field, b"END=")
            if at >= 0 and field[at : at + 1] != b".":
                value, _ = strtoll(field[at:], 0)
                if value > beg:
                    end = value
            at = _info_value(field, b"SVLEN=")
            d = 1
            while at >= 0 and d < alcnt:
                if use_svlen and d in flagged:
                    tmp, _ = strtoll(field[at:], 10)
                    tmp = -tmp if tmp < 0 and tmp != _LLONG_MIN else tmp
                else:
                    tmp = 1
                svlen = max(svlen, tmp)
                comma = field.find(b",", at)
                at = comma + 1 if comma >= 0 else -1
                d += 1
        elif fid == 9 and getlen:
            keys = field.split(b":")
            if b"LEN" not in keys:
                break
            lenpos = keys.index(b"LEN")
        elif fid > 9 and getlen and lenpos >= 0:
            values = field.split(b":")
            # C's strtoll reads from the value to the sample's end (and stops at a ':')
            tmp = strtoll(b":".join(values[lenpos:]), 10)[0] if lenpos < len(values) else 0
            fmtlen = max(fmtlen, tmp)
    return fields[0], beg, max(end, beg + max(reflen, svlen, fmtlen))


def parse_vcf_exact(data: bytes, pos: int) -> ExactParsed:
    nl = data.find(b"\n", pos)
    if nl < 0:
        return None
    span = vcf_span(data[pos:nl])
    if span is None:
        return nl + 1, None, 0, 0
    return nl + 1, span[0], span[1], span[2]


def parse_bcf_exact(data: bytes, pos: int) -> ExactParsed:
    """BCF as htslib's bcf_readrec: [POS, POS + rlen), no one-base minimum."""
    if pos + 20 > len(data):
        return None
    l_shared, l_indiv, chrom, beg, rlen = _BCF_CORE.unpack_from(data, pos)
    nxt = pos + 8 + l_shared + l_indiv
    if nxt > len(data):
        return None
    return nxt, chrom, beg, beg + rlen


def runs(
    buf: bytes,
    pos: int,
    limit: int,
    parse: ExactParser,
    ref: RefKey,
    beg: int,
    end: int,
    open_end: bool,
) -> tuple[int, int, list[tuple[int, int]], int, int]:
    """The same walk as `htsgetr._records.runs`, one record at a time in Python."""
    found: list[tuple[int, int]] = []
    run_start, odd, reach = -1, 0, -1
    while True:
        if 0 <= limit <= pos:
            outcome = LIMIT
            break
        rec = parse(buf, pos) if pos < len(buf) else None
        if rec is None:
            outcome = NEED_MORE
            break
        nxt, rec_ref, rec_beg, rec_end = rec
        if rec_ref is None:
            odd += 1
        if rec_ref is not None and (rec_ref != ref or rec_beg >= end):
            outcome = PAST
            break
        if rec_ref is not None and open_end and rec_beg > beg:
            outcome = OPEN_END
            break
        if rec_ref is not None and rec_end > beg:
            if run_start < 0:
                run_start = pos
        elif run_start >= 0:
            found.append((run_start, pos))
            run_start = -1
        if rec_ref is not None:
            reach = max(reach, rec_end)
        pos = nxt
    if run_start >= 0:
        found.append((run_start, pos))
    return outcome, pos, found, odd, reach


def head(buf: bytes, pos: int, parse: ExactParser, ref: RefKey) -> tuple[int, int]:
    """What `htsgetr._records.head` says of the record at `pos`: (state, beg), state -1
    when `buf` is too short to tell, 0 for no record or another reference, 1 for `ref`."""
    if isinstance(ref, int):
        need = 36 if parse is parse_bam else 20
        if pos + need > len(buf):
            return -1, 0
        at = 4 if parse is parse_bam else 8
        rec_ref, beg = struct.unpack_from("<ii", buf, pos + at)
        return int(rec_ref == ref), beg
    line = buf[pos:]
    if line[:1] == b"#":
        return 0, 0
    nl = line.find(b"\n")
    fields = (line if nl < 0 else line[:nl]).split(b"\t", 2)
    if len(fields) < 3 and nl < 0:
        return -1, 0  # POS may go on
    if len(fields) < 2:
        return 0, 0
    value = fields[1][:-1] if len(fields) == 2 and fields[1].endswith(b"\r") else fields[1]
    beg, ok = strtoll(value, 0)
    if not ok:
        return 0, 0
    return int(fields[0] == ref), max(beg - 1, 0)
