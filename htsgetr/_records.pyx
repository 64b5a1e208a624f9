# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Walk BAM, BCF and VCF records in uncompressed data and find those a region overlaps, in C.

Trimming a region's index chunks to the records that overlap it means looking at every record
from a 16 kbp window's start to the region (thousands at 30x coverage); in Python that cost
milliseconds per ticket. Overlap is decided as htslib decides it: BAM [pos, pos + reference
length of the CIGAR, at least 1); BCF [POS, POS + rlen); VCF [POS-1, POS-1 + len(REF)), or to
INFO/END when present.

``tests/records_twin.py`` is a plain-Python twin; the tests cross-check the two.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t
from libc.string cimport memchr, memcmp, memcpy

cdef enum:
    KIND_BAM = 0
    KIND_BCF = 1
    KIND_VCF = 2
    C_NEED_MORE = 0   # a record runs past the data given: load the next block
    C_PAST = 1        # a record starts past the region: nothing later overlaps
    C_LIMIT = 2       # reached the limit position (the chunk's end)
    C_OPEN_END = 3    # found the first overlapping record of an open-ended region

BAM, BCF, VCF = KIND_BAM, KIND_BCF, KIND_VCF
NEED_MORE, PAST, LIMIT, OPEN_END = C_NEED_MORE, C_PAST, C_LIMIT, C_OPEN_END


cdef inline int32_t _i32(const unsigned char *p) noexcept nogil:
    cdef int32_t x
    memcpy(&x, p, 4)   # little-endian host (x86_64/aarch64), as the formats are
    return x


cdef inline uint32_t _u32(const unsigned char *p) noexcept nogil:
    cdef uint32_t x
    memcpy(&x, p, 4)
    return x


cdef inline uint16_t _u16(const unsigned char *p) noexcept nogil:
    cdef uint16_t x
    memcpy(&x, p, 2)
    return x


cdef inline int64_t _parse_int(const unsigned char *p, Py_ssize_t n, bint *ok) noexcept nogil:
    """Decimal digits (optional sign) filling all n bytes."""
    cdef int64_t v = 0
    cdef Py_ssize_t i = 0
    cdef bint neg = False
    ok[0] = False
    if n > 0 and (p[0] == 43 or p[0] == 45):  # + -
        neg = p[0] == 45
        i = 1
    if i >= n or n - i > 18:
        return 0
    while i < n:
        if p[i] < 48 or p[i] > 57:
            return 0
        v = v * 10 + (p[i] - 48)
        i += 1
    ok[0] = True
    return -v if neg else v


cdef int _vcf_record(const unsigned char *p, Py_ssize_t n, const unsigned char *name,
                     Py_ssize_t name_len, bint *same_ref, int64_t *beg, int64_t *end) noexcept nogil:
    """Parse one VCF line (without its newline). Returns 0 if it is not a record."""
    cdef Py_ssize_t starts[9]
    cdef Py_ssize_t ends[9]
    cdef Py_ssize_t i = 0, f = 0, k
    cdef bint ok
    cdef int64_t v
    starts[0] = 0
    while i < n and f < 8:
        if p[i] == 9:  # tab
            ends[f] = i
            f += 1
            starts[f] = i + 1
        i += 1
    ends[f] = n
    f += 1
    if f < 4:
        return 0
    beg[0] = _parse_int(p + starts[1], ends[1] - starts[1], &ok) - 1
    if not ok:
        return 0
    v = ends[3] - starts[3]
    end[0] = beg[0] + (v if v > 1 else 1)
    if f > 7:
        k = starts[7]
        while k < ends[7]:
            # an item starts here: is it END=?
            if ends[7] - k >= 4 and memcmp(p + k, b"END=", 4) == 0:
                i = k + 4
                while i < ends[7] and p[i] != 59:  # ';'
                    i += 1
                v = _parse_int(p + k + 4, i - k - 4, &ok)
                if ok:
                    end[0] = v if v > beg[0] + 1 else beg[0] + 1
                break
            while k < ends[7] and p[k] != 59:
                k += 1
            k += 1
    same_ref[0] = (ends[0] == name_len and memcmp(p, name, name_len) == 0)
    return 1


def scan(const unsigned char[:] buf, Py_ssize_t pos, Py_ssize_t limit, int kind,
         int64_t ref_id, bytes ref_name, int64_t beg, int64_t end, bint open_end):
    """Walk records from `pos` while they start before `limit` (-1: the chunk goes on past
    the data given).

    Returns (outcome, pos, first, last): `pos` where the walk stopped (a record start), `first`
    the start of the first record overlapping [beg, end) on the reference (ref_id for BAM/BCF,
    ref_name for VCF) and `last` the end of the last one, both -1 when none was seen.
    """
    cdef Py_ssize_t n = buf.shape[0]
    cdef const unsigned char *p
    cdef Py_ssize_t first = -1, last = -1, nxt, l_name, n_cigar, j
    cdef int64_t rbeg, rend, rlen
    cdef int32_t rec_ref
    cdef uint32_t op, flag
    cdef bint same
    cdef const unsigned char *name = ref_name
    cdef Py_ssize_t name_len = len(ref_name)
    cdef const unsigned char *nl
    cdef int outcome = C_NEED_MORE
    if limit >= 0 and pos >= limit:
        return C_LIMIT, pos, first, last
    if pos >= n:
        return C_NEED_MORE, pos, first, last
    p = &buf[0]
    with nogil:
        while True:
            if limit >= 0 and pos >= limit:
                outcome = C_LIMIT
                break
            if pos >= n:
                outcome = C_NEED_MORE
                break
            if kind == KIND_BAM:
                if pos + 36 > n:
                    outcome = C_NEED_MORE
                    break
                nxt = pos + 4 + <Py_ssize_t>_u32(p + pos)
                if nxt > n:
                    outcome = C_NEED_MORE
                    break
                rec_ref = _i32(p + pos + 4)
                rbeg = _i32(p + pos + 8)
                l_name = p[pos + 12]
                n_cigar = _u16(p + pos + 16)
                flag = _u16(p + pos + 18)
                rlen = 0
                if n_cigar and not (flag & 4) and pos + 36 + l_name + 4 * n_cigar <= nxt:
                    for j in range(n_cigar):
                        op = _u32(p + pos + 36 + l_name + 4 * j)
                        if (op & 0xF) in (0, 2, 3, 7, 8):
                            rlen += op >> 4
                rend = rbeg + (rlen if rlen > 0 else 1)
                same = rec_ref == ref_id
            elif kind == KIND_BCF:
                if pos + 20 > n:
                    outcome = C_NEED_MORE
                    break
                nxt = pos + 8 + <Py_ssize_t>_u32(p + pos) + <Py_ssize_t>_u32(p + pos + 4)
                if nxt > n:
                    outcome = C_NEED_MORE
                    break
                rec_ref = _i32(p + pos + 8)
                rbeg = _i32(p + pos + 12)
                rlen = _i32(p + pos + 16)
                rend = rbeg + (rlen if rlen > 0 else 1)
                same = rec_ref == ref_id
            else:
                nl = <const unsigned char *>memchr(p + pos, 10, n - pos)
                if nl == NULL:
                    outcome = C_NEED_MORE
                    break
                nxt = (nl - p) + 1
                if not _vcf_record(p + pos, nxt - 1 - pos, name, name_len, &same, &rbeg, &rend):
                    pos = nxt
                    continue
            if same and rbeg >= end:
                outcome = C_PAST
                break
            if same and rend > beg:
                if first < 0:
                    first = pos
                    if open_end:
                        last = nxt
                        outcome = C_OPEN_END
                        break
                last = nxt
            pos = nxt
    return outcome, pos, first, last
