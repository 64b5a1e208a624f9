"""Pure-Python twin of htsgetr._ranges, written for clarity, used to cross-check it.

Same API names. Everything is parsed eagerly with `struct` into plain dicts and lists;
the query follows htslib's hts_itr_query for min_off, keeps whole chunks and merges.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

U64_MAX = (1 << 64) - 1


def bin_first(level: int) -> int:
    return ((1 << (3 * level)) - 1) // 7


def bin_parent(b: int) -> int:
    return (b - 1) >> 3


def bin_level(b: int) -> int:
    level = 0
    while b > 0:
        level += 1
        b = bin_parent(b)
    return level


def reg2bins(beg: int, end: int, min_shift: int, depth: int) -> list[int]:
    if min_shift < 0 or depth < 0 or min_shift + 3 * depth > 62:
        raise ValueError("unsupported min_shift/depth")
    beg = max(beg, 0)
    end = min(end, 1 << (min_shift + 3 * depth))
    if beg >= end:
        return []
    bins: list[int] = []
    for level in range(depth + 1):
        shift = min_shift + 3 * (depth - level)
        first = bin_first(level)
        bins.extend(range(first + (beg >> shift), first + ((end - 1) >> shift) + 1))
    return bins


def merge_ranges(ranges) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted((int(s), int(e)) for s, e in ranges):
        if start > end:
            raise ValueError("start > end")
        if start == end:
            continue
        if out and out[-1][1] >= start:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


@dataclass
class Ref:
    # bin number -> (loff, [(vbeg, vend), ...]); BAI/TBI loff derived from the linear index
    bins: dict[int, tuple[int, list[tuple[int, int]]]] = field(default_factory=dict)
    ioff: list[int] = field(default_factory=list)
    raw_ioff: list[int] = field(default_factory=list)  # the linear index as stored


class Reader:
    def __init__(self, data: bytes, kind: str):
        self.data = data
        self.pos = 0
        self.kind = kind

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"truncated {self.kind} index")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def i32(self) -> int:
        return struct.unpack("<i", self.take(4))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]


class BinningIndex:
    def __init__(self, kind: str, min_shift: int, depth: int):
        self.kind = kind
        self.min_shift = min_shift
        self.depth = depth
        self.n_ref = 0
        self.n_no_coor: int | None = None
        self.aux = b""
        self.fmt = -1
        self.col_seq = self.col_beg = self.col_end = self.meta = self.skip = 0
        self.names: list[str] = []
        self.refs: list[Ref] = []
        self.n_bins = bin_first(depth + 1)
        # htslib's 32-bit arithmetic numbers the pseudo-bin 1 at depth 10 (see _ranges.pyx)
        self.meta_bin = 1 if depth == 10 else self.n_bins + 1
        self.max_coord = 1 << (min_shift + 3 * depth)

    # -- parsing ------------------------------------------------------------------------

    def read_refs(self, r: Reader) -> None:
        n_ref = r.i32()
        if n_ref < 0:
            raise ValueError("negative n_ref")
        self.read_ref_records(r, n_ref)

    def read_ref_records(self, r: Reader, n_ref: int) -> None:
        csi = self.kind == "CSI"
        for _ in range(n_ref):
            ref = Ref()
            n_bin = r.i32()
            if n_bin < 0:
                raise ValueError("negative n_bin")
            for _ in range(n_bin):
                b = r.u32()
                loff = r.u64() if csi else 0
                n_chunk = r.i32()
                if n_chunk < 0:
                    raise ValueError("negative n_chunk")
                chunks = [(r.u64(), r.u64()) for _ in range(n_chunk)]
                if b in ref.bins:
                    raise ValueError("duplicate bin")
                ref.bins[b] = (loff, chunks)
            if not csi:
                n_intv = r.i32()
                if n_intv < 0:
                    raise ValueError("negative n_intv")
                ref.raw_ioff = [r.u64() for _ in range(n_intv)]
                ref.ioff = fill_linear_index(ref.raw_ioff)
                for b, (_, chunks) in ref.bins.items():
                    loff = 0
                    if b < self.n_bins:
                        bot = (b - bin_first(bin_level(b))) << (3 * (self.depth - bin_level(b)))
                        loff = ref.ioff[bot] if bot < len(ref.ioff) else 0
                    ref.bins[b] = (loff, chunks)
            self.refs.append(ref)
        self.n_ref = n_ref
        if len(r.data) - r.pos >= 8:
            self.n_no_coor = r.u64()

    def read_tabix_meta(self, meta: bytes) -> None:
        fmt, col_seq, col_beg, col_end, meta_char, skip, l_nm = struct.unpack("<7i", meta[:28])
        if l_nm < 0 or l_nm > len(meta) - 28:
            return
        self.fmt, self.col_seq, self.col_beg, self.col_end = fmt, col_seq, col_beg, col_end
        self.meta, self.skip = meta_char, skip
        raw = meta[28 : 28 + l_nm]
        if raw.endswith(b"\0"):
            raw = raw[:-1]
        try:
            self.names = [n.decode("utf-8") for n in raw.split(b"\0")] if raw else []
        except UnicodeDecodeError:
            raise ValueError("names are not UTF-8") from None

    # -- queries ------------------------------------------------------------------------

    def check_ref(self, ref_id: int) -> Ref:
        if not 0 <= ref_id < self.n_ref:
            raise IndexError("reference id out of range")
        return self.refs[ref_id]

    def min_off(self, ref: Ref, beg: int) -> int:
        rel_off = beg >> self.min_shift
        b = bin_first(self.depth) + rel_off
        # lowest-level bin holding beg; if absent, walk to left siblings, then to parents
        while b not in ref.bins and b > 0:
            first = (bin_parent(b) << 3) + 1
            b = b - 1 if b > first else bin_parent(b)
        found = b in ref.bins
        loff = ref.bins[b][0] if found else 0
        min_off = loff
        meta = ref.bins.get(self.meta_bin)
        unmapped = (meta[1][1][1] & 0xFFFFFFFF) != 0 if meta and len(meta[1]) >= 2 else True
        if rel_off < len(ref.ioff):
            min_off = max(min_off, ref.ioff[rel_off])
            if unmapped:
                # placed unmapped reads are not in the linear index: look further left
                t = rel_off - 1
                while t >= 0 and ref.ioff[t] >= min_off:
                    t -= 1
                if t >= 0:
                    min_off = ref.ioff[t]
                if found and (min_off < loff or t < 0):
                    min_off = loff
        return min_off

    def bin_overlaps(self, b: int, beg: int, end: int) -> bool:
        """Does bin b cover part of [beg, end)? (What reg2bins lists, asked the other way.)"""
        if b >= self.n_bins or b == self.meta_bin:  # the pseudo-bin and out-of-range numbers
            # cover nothing
            return False
        level = bin_level(b)
        shift = self.min_shift + 3 * (self.depth - level)
        start = (b - bin_first(level)) << shift
        return start < end and start + (1 << shift) > beg

    def query(self, ref_id: int, beg: int, end: int) -> list[tuple[int, int]]:
        ref = self.check_ref(ref_id)
        beg = max(beg, 0)
        end = min(end, self.max_coord)
        if beg >= end or not ref.bins:
            return []
        min_off = self.min_off(ref, beg)
        chunks: list[tuple[int, int]] = []
        for b, (_, bin_chunks) in ref.bins.items():
            if self.bin_overlaps(b, beg, end):
                chunks.extend(c for c in bin_chunks if c[1] > min_off)
        merged: list[tuple[int, int]] = []
        for vbeg, vend in sorted(chunks):
            # overlapping, touching, or with the gap inside one BGZF block (htslib reads it)
            if merged and (merged[-1][1] >= vbeg or merged[-1][1] >> 16 == vbeg >> 16):
                merged[-1] = (merged[-1][0], max(merged[-1][1], vend))
            else:
                merged.append((vbeg, vend))
        return merged

    def ref_meta(self, ref_id: int) -> tuple[int, int, int, int] | None:
        meta = self.check_ref(ref_id).bins.get(self.meta_bin)
        if meta is None or len(meta[1]) < 2:
            return None
        (u0, v0), (u1, v1) = meta[1][:2]
        return (u0, v0, u1, v1)

    def last_end(self) -> int:
        best = 0
        for ref in self.refs:
            for b, (_, chunks) in ref.bins.items():
                used = chunks[:1] if b == self.meta_bin else chunks
                for _, vend in used:
                    best = max(best, vend)
        return best

    def has_data(self, ref_id: int) -> bool:
        return bool(self.check_ref(ref_id).bins)

    def validate(self, data_end: int) -> int | None:
        """Bins inside the scheme (or the pseudo-bin), no chunk reversed, nothing past
        data_end (the linear index may hold 0 and all-ones); the smallest non-empty chunk
        start, or None. (Repeated bins were refused by the parser already.)"""
        if not 0 <= data_end <= U64_MAX:
            raise ValueError("data_end out of range")
        starts = []
        for i, ref in enumerate(self.refs):
            for b, (loff, chunks) in ref.bins.items():  # file order
                if b >= self.n_bins and b != self.meta_bin:
                    raise ValueError(f"reference {i}: bin {b} is outside the scheme")
                if self.kind == "CSI" and loff > data_end:
                    raise ValueError(f"reference {i}, bin {b}: loffset past the end")
                for u, v in chunks[:1] if b == self.meta_bin else chunks:
                    if u > v:
                        raise ValueError(f"reference {i}, bin {b}: reversed chunk")
                    if v > data_end:
                        raise ValueError(f"reference {i}, bin {b}: chunk past the end")
                    if u < v:
                        starts.append(u)
            if any(data_end < v < U64_MAX for v in ref.raw_ioff):
                raise ValueError(f"reference {i}: linear index entry past the end")
        return min(starts) if starts else None


def fill_linear_index(ioff: list[int]) -> list[int]:
    """htslib (idx_read_core + update_loff): zeros after the first non-zero slot and
    all-ones slots take the value of the next slot to their right."""
    ioff = list(ioff)
    k = 0
    while k < len(ioff) and ioff[k] == 0:
        k += 1
    for j in range(len(ioff) - 1, k, -1):
        if ioff[j - 1] == 0:
            ioff[j - 1] = ioff[j]
    for j in range(len(ioff) - 2, -1, -1):
        if ioff[j] == U64_MAX:
            ioff[j] = ioff[j + 1]
    return ioff


def check_magic(data: bytes, magic: bytes) -> None:
    if data[:4] != magic:
        raise ValueError(f"bad magic, expected {magic!r}")


def parse_bai(data: bytes) -> BinningIndex:
    check_magic(data, b"BAI\1")
    idx = BinningIndex("BAI", 14, 5)
    r = Reader(bytes(data), "BAI")
    r.take(4)
    idx.read_refs(r)
    return idx


def parse_tbi(data: bytes) -> BinningIndex:
    check_magic(data, b"TBI\1")
    idx = BinningIndex("TBI", 14, 5)
    r = Reader(bytes(data), "TBI")
    r.take(4)
    n_ref = r.i32()
    head = r.take(28)
    l_nm = struct.unpack("<i", head[24:28])[0]
    if l_nm < 0:
        raise ValueError("negative l_nm")
    idx.read_tabix_meta(head + r.take(l_nm))
    if n_ref < 0:
        raise ValueError("negative n_ref")
    idx.read_ref_records(r, n_ref)
    return idx


def parse_csi(data: bytes) -> BinningIndex:
    check_magic(data, b"CSI\1")
    r = Reader(bytes(data), "CSI")
    r.take(4)
    min_shift, depth, l_aux = r.i32(), r.i32(), r.i32()
    if min_shift < 0 or depth < 0 or depth > 10 or min_shift + 3 * depth > 62:
        raise ValueError("unsupported min_shift/depth")
    if l_aux < 0:
        raise ValueError("negative l_aux")
    idx = BinningIndex("CSI", min_shift, depth)
    idx.aux = r.take(l_aux)
    if l_aux >= 28:
        idx.read_tabix_meta(idx.aux)
    idx.read_refs(r)
    return idx


def fields(data: bytes) -> list[tuple[str, int, int]]:
    """(name, offset, size) of every field of a well-formed BAI, CSI or TBI (decompressed),
    in file order, for field-aware fuzzing. Names: magic, min_shift, depth, l_aux, aux,
    n_ref, tbx (the 7 tabix ints), names, n_bin, bin, loffset, n_chunk, chunk_beg,
    chunk_end, n_intv, ioff, n_no_coor."""
    out: list[tuple[str, int, int]] = []
    r = Reader(bytes(data), "index")

    def take(name: str, n: int) -> bytes:
        out.append((name, r.pos, n))
        return r.take(n)

    magic = take("magic", 4)
    csi = magic == b"CSI\1"
    if csi:
        take("min_shift", 4)
        take("depth", 4)
        (l_aux,) = struct.unpack("<i", take("l_aux", 4))
        if l_aux:
            take("aux", l_aux)
    (n_ref,) = struct.unpack("<i", take("n_ref", 4))
    if magic == b"TBI\1":
        for _ in range(6):
            take("tbx", 4)
        (l_nm,) = struct.unpack("<i", take("l_nm", 4))
        if l_nm:
            take("names", l_nm)
    for _ in range(n_ref):
        (n_bin,) = struct.unpack("<i", take("n_bin", 4))
        for _ in range(n_bin):
            take("bin", 4)
            if csi:
                take("loffset", 8)
            (n_chunk,) = struct.unpack("<i", take("n_chunk", 4))
            for _ in range(n_chunk):
                take("chunk_beg", 8)
                take("chunk_end", 8)
        if not csi:
            (n_intv,) = struct.unpack("<i", take("n_intv", 4))
            for _ in range(n_intv):
                take("ioff", 8)
    if len(r.data) - r.pos >= 8:
        take("n_no_coor", 8)
    return out


#: field groups field-aware mutations pick from, weighted towards offsets and counts
_GROUPS = [
    ("chunk_beg", "chunk_end"), ("chunk_beg", "chunk_end"), ("chunk_end",), ("ioff", "loffset"),
    ("bin",), ("n_chunk", "n_bin", "n_intv"), ("n_ref",), ("min_shift", "depth", "l_aux", "l_nm"),
    ("tbx", "n_no_coor"),
]  # fmt: skip


def mutate(data: bytes, pick) -> tuple[bytes, str]:
    """One mutation of a well-formed (decompressed) index. `pick(lo, hi)` draws an integer
    in [lo, hi] (hypothesis' data.draw or random.randint). Returns the bytes and a label
    for hypothesis.event(). Mostly field-aware (a count, bin number or offset given a
    neighbouring, extreme or borrowed value; a chunk reversed), so that a good share still
    parses and exercises the checks; else a bit flip, byte replacement, insertion or
    deletion anywhere."""
    raw = bytearray(data)
    try:
        fs = fields(data)
    except (ValueError, struct.error):  # an earlier mutation broke the structure
        fs = []
    how = pick(0, 9)
    if how < 6 and fs:
        for _ in range(4):  # a group the index has
            group = _GROUPS[pick(0, len(_GROUPS) - 1)]
            cands = [f for f in fs if f[0] in group]
            if cands:
                break
        else:
            cands = [f for f in fs if f[0] != "magic"] or fs
        name, pos, size = cands[pick(0, len(cands) - 1)]
        if name in ("aux", "names"):
            raw[pos + pick(0, size - 1)] ^= 1 << pick(0, 7)
            return bytes(raw), f"field {name}: bit"
        fmt = "<Q" if size == 8 else "<i"
        bits = 64 if size == 8 else 32
        (value,) = struct.unpack_from(fmt, raw, pos)
        same = [f for f in fs if f[0] == name]
        other = struct.unpack_from(fmt, raw, same[pick(0, len(same) - 1)][1])[0]
        op = pick(0, 9)
        delta = [1, 1 << 16, 8, 1 << 32][pick(0, 3)]
        if op == 0 and name == "chunk_beg":  # reverse the chunk: swap with its end
            end = struct.unpack_from("<Q", raw, pos + 8)[0]
            struct.pack_into("<QQ", raw, pos, end, value)
            return bytes(raw), "field chunk: reversed"
        new = [
            value + delta, value - delta, 0, -1, other, value ^ (1 << pick(0, bits - 1)),
            value + delta, value - delta, (1 << (bits - 1)) - 1, value * 2,
        ][op]  # fmt: skip
        new &= (1 << bits) - 1
        if size == 4 and new >= 1 << 31:
            new -= 1 << 32
        struct.pack_into(fmt, raw, pos, new)
        return bytes(raw), f"field {name}: op {op}"
    pos = pick(0, len(raw) - 1)
    if how == 6:
        raw[pos] ^= 1 << pick(0, 7)
        return bytes(raw), "bit flip"
    if how == 7:
        raw[pos] = [0, 1, 0x7F, 0x80, 0xFF][pick(0, 4)]
        return bytes(raw), "byte"
    n = pick(1, 8)
    if how == 8:
        return bytes(raw[:pos] + bytes(pick(0, 255) for _ in range(n)) + raw[pos:]), "insert"
    return bytes(raw[:pos] + raw[pos + n :]), "delete"


# --------------------------------------------------------------------------- CRAI


def parse_crai(text: bytes) -> tuple[dict[int, tuple[list[int], ...]], list[int],
                                     dict[int, list[tuple[int, ...]]]]:
    """CRAI text (inflated) -> ({ref: (starts, ends, offsets, max_ends)}, distinct
    container offsets, {container offset: [(ref, start, offset, slice offset, size)]}),
    as htsgetr.index.crai reads it: 0-based entries one base wider on both sides, sorted
    by (start, offset). ValueError("line N: ...") for the first malformed line."""
    refs: dict[int, list[list[int]]] = {}
    slices: dict[int, list[tuple[int, ...]]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 6 or any(len(f.lstrip(b"+-")) > 18 for f in fields):
                raise ValueError
            if any(not f.lstrip(b"+-").isdigit() or len(f) - len(f.lstrip(b"+-")) > 1
                   for f in fields):
                raise ValueError
            ref, aln_start, span, coff, soff, ssize = (int(f) for f in fields)
        except ValueError:
            raise ValueError(f"line {lineno}: not six integers") from None
        if coff < 0 or soff < 0 or ssize < 0 or ref < -2:
            raise ValueError(f"line {lineno}: a negative field")
        starts, ends, offsets = refs.setdefault(ref, [[], [], []])
        beg = max(0, aln_start - 1)
        starts.append(max(0, beg - 1))
        ends.append(beg + max(span, 1) + 1)
        offsets.append(coff)
        slices.setdefault(coff, []).append((ref, aln_start, coff, soff, ssize))
    out = {}
    for ref, (starts, ends, offsets) in refs.items():
        order = sorted(range(len(starts)), key=lambda i: (starts[i], offsets[i]))
        s = [starts[i] for i in order]
        e = [ends[i] for i in order]
        o = [offsets[i] for i in order]
        running, max_ends = -1, []
        for end in e:
            running = max(running, end)
            max_ends.append(running)
        out[ref] = (s, e, o, max_ends)
    return out, sorted(slices), slices
