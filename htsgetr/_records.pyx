# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Walk BAM, BCF and VCF records in uncompressed data and find those a region overlaps, in C.

Every BAM, VCF and BCF region ticket holds exactly the records htslib's region query returns
(formats/exact.py), so every record from the linear index's offset to the region's end may
be looked at (thousands at 30x coverage); in Python that cost milliseconds per ticket.

``runs`` reports the runs of consecutive overlapping records, with overlap exactly as
htslib 1.24 decides it (see the section below); ``head`` reads where one record starts.

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


# --------------------------------------------------------------------------- exact runs
#
# Tickets must hold exactly the records htslib's region query returns, so `runs` decides
# overlap as htslib 1.24 itself does: a BAM record spans [pos, pos + reference length of
# its CIGAR), at least one base; a BCF record [POS, POS + rlen) with no one-base minimum;
# a VCF line is measured by tabix's own rules (tbx_parse1): REF length, INFO/END (strtoll,
# base 0; ignored when <= POS-1), SVLEN of <DEL>/<DUP>/<CNV>/<INV> alleles, FORMAT/LEN of
# gVCF <*>/<NON_REF> blocks.

from libc.stdlib cimport strtoll


cdef inline int64_t _c_strtoll(const unsigned char *p, Py_ssize_t n, int base,
                               bint *ok) noexcept nogil:
    """strtoll on at most 63 bytes of `p` (fields are not NUL-terminated in the buffer)."""
    cdef char tmp[64]
    cdef char *stop
    cdef Py_ssize_t k = n if n < 63 else 63
    cdef int64_t v
    if k > 0:
        memcpy(tmp, p, k)
    tmp[k] = 0
    v = strtoll(tmp, &stop, base)
    ok[0] = stop != tmp
    return v


cdef inline Py_ssize_t _find(const unsigned char *p, Py_ssize_t n, const char *needle,
                             Py_ssize_t m) noexcept nogil:
    """Offset of the first `needle` in p[:n], or -1 (strstr on a field)."""
    cdef Py_ssize_t i = 0
    while i + m <= n:
        if p[i] == <unsigned char>needle[0] and memcmp(p + i, needle, m) == 0:
            return i
        i += 1
    return -1


cdef inline Py_ssize_t _info_value(const unsigned char *p, Py_ssize_t n, const char *key,
                                   Py_ssize_t m) noexcept nogil:
    """Where the value of INFO key `key` ("END=") starts, found as tabix finds it: at the
    start of INFO, else after the first ";key"; -1 when absent."""
    cdef char semi[16]
    cdef Py_ssize_t at = _find(p, n, key, m)
    if at < 0:
        return -1
    if at == 0:
        return m
    semi[0] = 59  # ';'
    memcpy(semi + 1, key, m)
    at = _find(p, n, semi, m + 1)
    return at + m + 1 if at >= 0 else -1


cdef inline bint _svlen_alt(const unsigned char *a, Py_ssize_t n) noexcept nogil:
    """htslib's svlen_on_ref_for_vcf_alt: <CNV>, <DEL>, <DUP>, <INV> and their subtypes."""
    if n < 5 or a[0] != 60 or (a[4] != 62 and a[4] != 58):  # '<' ... '>' or ':'
        return False
    if (memcmp(a, b"<CNV", 4) != 0 and memcmp(a, b"<DEL", 4) != 0
            and memcmp(a, b"<DUP", 4) != 0 and memcmp(a, b"<INV", 4) != 0):
        return False
    return a[n - 1] == 62


cdef int _vcf_span(const unsigned char *p, Py_ssize_t n, const unsigned char *name,
                   Py_ssize_t name_len, bint *same_ref, int64_t *beg, int64_t *end) noexcept nogil:
    """One VCF line (no newline) measured as htslib's tbx_parse1 (VCF preset) measures it.
    Returns 0 when tabix would not read it as a record (comment, blank or unparsable)."""
    cdef Py_ssize_t i, b = 0, k, q, fstart, fend, e
    cdef int fid = 1
    cdef bint ok, getlen = False, use_svlen = False, have_pos = False
    cdef int64_t v, reflen = 0, svlen = 0, fmtlen = 0, tmp, rbeg = -1, rend = -1
    cdef Py_ssize_t alcnt = 0, d, lenpos = -1
    cdef unsigned char flags[8192]
    if n > 0 and p[n - 1] == 13:  # bgzf_getline drops a trailing '\r'
        n -= 1
    if n > 0 and p[0] == 35:  # '#': tbx_readrec skips meta lines
        return 0
    same_ref[0] = False
    i = 0
    while i <= n:
        if i == n or p[i] == 9:
            if fid == 1:
                same_ref[0] = (i == name_len and memcmp(p, name, name_len) == 0)
            elif fid == 2:
                v = _c_strtoll(p + b, i - b, 0, &ok)
                if not ok:
                    return 0
                rbeg = v - 1
                if rbeg < 0:
                    rbeg = 0
                rend = 1
                have_pos = True
            elif fid == 4:
                if b < i:
                    rend = rbeg + (i - b)
                alcnt += 1
                reflen = i - b
            elif fid == 5:
                k = b
                while True:
                    q = k
                    while q < i and p[q] != 44:  # ','
                        q += 1
                    if alcnt < 65536:
                        if _svlen_alt(p + k, q - k):
                            flags[alcnt >> 3] |= <unsigned char>(1 << (alcnt & 7))
                            use_svlen = True
                        else:
                            flags[alcnt >> 3] &= <unsigned char>~(1 << (alcnt & 7))
                            if ((q - k == 3 and memcmp(p + k, b"<*>", 3) == 0)
                                    or (q - k == 9 and memcmp(p + k, b"<NON_REF>", 9) == 0)):
                                getlen = True
                    alcnt += 1
                    if q >= i or alcnt >= 65536:
                        break
                    k = q + 1
            elif fid == 8:
                k = _info_value(p + b, i - b, b"END=", 4)
                if k >= 0 and not (b + k < i and p[b + k] == 46):  # '.'
                    v = _c_strtoll(p + b + k, i - b - k, 0, &ok)
                    if v > rbeg:
                        rend = v
                k = _info_value(p + b, i - b, b"SVLEN=", 6)
                d = 1
                while k >= 0 and d < alcnt:
                    q = b + k
                    while q < i and p[q] != 44:  # ','
                        q += 1
                    if use_svlen and d < 65536 and flags[d >> 3] & (1 << (d & 7)):
                        tmp = _c_strtoll(p + b + k, i - b - k, 10, &ok)
                        if tmp < 0:
                            tmp = -tmp
                    else:
                        tmp = 1
                    if tmp > svlen:
                        svlen = tmp
                    k = q + 1 - b if q < i else -1
                    d += 1
            elif fid == 9 and getlen:
                k = b
                d = 0
                while True:
                    q = k
                    while q < i and p[q] != 58:  # ':'
                        q += 1
                    if q - k == 3 and memcmp(p + k, b"LEN", 3) == 0:
                        lenpos = d
                        break
                    if q >= i:
                        break
                    k = q + 1
                    d += 1
                if lenpos < 0:
                    break
            elif fid > 9 and getlen and lenpos >= 0:
                k = b
                d = 0
                tmp = 0
                while True:
                    if d == lenpos:
                        tmp = _c_strtoll(p + k, i - k, 10, &ok)
                        break
                    while k < i and p[k] != 58:
                        k += 1
                    if k >= i:
                        break
                    k += 1
                    d += 1
                if tmp > fmtlen:
                    fmtlen = tmp
            b = i + 1
            fid += 1
        i += 1
    if not have_pos:
        return 0
    tmp = reflen
    if svlen > tmp:
        tmp = svlen
    if fmtlen > tmp:
        tmp = fmtlen
    tmp += rbeg
    if tmp > rend:
        rend = tmp
    beg[0] = rbeg
    end[0] = rend
    return 1


def runs(const unsigned char[:] buf, Py_ssize_t pos, Py_ssize_t limit, int kind,
         int64_t ref_id, bytes ref_name, int64_t beg, int64_t end, bint open_end):
    """Walk records from `pos` while they start before `limit` (-1: the chunk goes on past
    the data given) and report maximal runs of consecutive records overlapping [beg, end).

    Returns (outcome, pos, runs, odd, reach): `runs` a list of (start, end) buffer positions,
    a run's end being the start of the record after it; `pos` where the walk stopped (a
    record start); `odd` the number of VCF lines walked that tabix does not read as records
    ('#' lines, which htslib skips; blank or unparsable ones, where it fails), never in a
    run; `reach` the furthest end of the records walked past (-1 for none): every record
    before `pos` that the walk saw ends there or before (formats/waypoints.py).
    PAST: a record of another reference, or starting at or after `end` (htslib stops there
    too). OPEN_END (only when `open_end`): the record at `pos` starts after `beg`, so it and
    every later record of the reference overlap [beg, end).
    """
    cdef Py_ssize_t n = buf.shape[0]
    cdef const unsigned char *p = NULL
    cdef Py_ssize_t nxt, l_name, n_cigar, j, run_start = -1, odd = 0
    cdef int64_t rbeg = 0, rend = 0, rlen, reach = -1
    cdef int32_t rec_ref
    cdef uint32_t op, flag
    cdef bint same = False, record
    cdef const unsigned char *name = ref_name
    cdef Py_ssize_t name_len = len(ref_name)
    cdef const unsigned char *nl
    cdef int outcome = C_NEED_MORE
    cdef list found = []
    if n > 0:
        p = &buf[0]
    with nogil:
        while True:
            if limit >= 0 and pos >= limit:
                outcome = C_LIMIT
                break
            if pos >= n:
                outcome = C_NEED_MORE
                break
            record = True
            nxt = -1
            if kind == KIND_BAM:
                if pos + 36 <= n:
                    nxt = pos + 4 + <Py_ssize_t>_u32(p + pos)
                if nxt >= 0 and nxt <= n:
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
                if pos + 20 <= n:
                    nxt = pos + 8 + <Py_ssize_t>_u32(p + pos) + <Py_ssize_t>_u32(p + pos + 4)
                if nxt >= 0 and nxt <= n:
                    rec_ref = _i32(p + pos + 8)
                    rbeg = _i32(p + pos + 12)
                    rend = rbeg + _i32(p + pos + 16)  # htslib: pos + rlen, no minimum
                    same = rec_ref == ref_id
            else:
                nl = <const unsigned char *>memchr(p + pos, 10, n - pos)
                if nl != NULL:
                    nxt = (nl - p) + 1
                    record = _vcf_span(p + pos, nxt - 1 - pos, name, name_len, &same,
                                       &rbeg, &rend) != 0
            if nxt < 0 or nxt > n:
                outcome = C_NEED_MORE
                break
            if not record:
                odd += 1
            if record and (not same or rbeg >= end):
                outcome = C_PAST
                break
            if record and open_end and rbeg > beg:
                outcome = C_OPEN_END
                break
            if record and rend > beg:
                if run_start < 0:
                    run_start = pos
            elif run_start >= 0:
                with gil:
                    found.append((run_start, pos))
                run_start = -1
            if record and rend > reach:
                reach = rend
            pos = nxt
    if run_start >= 0:
        found.append((run_start, pos))
    return outcome, pos, found, odd, reach


def record_end(const unsigned char[:] buf, Py_ssize_t pos, int kind, Py_ssize_t scanned):
    """Where the record at `pos` ends, or -1 while it runs past the data given: exactly when
    `runs` would stop at `pos` asking for more (NEED_MORE). `scanned`: a VCF line has no
    newline before it (a record growing block by block is searched once, not per block)."""
    cdef Py_ssize_t n = buf.shape[0]
    cdef const unsigned char *p = NULL
    cdef const unsigned char *nl
    cdef Py_ssize_t nxt = -1
    if n > 0:
        p = &buf[0]
    if kind == KIND_BAM:
        if pos + 36 <= n:
            nxt = pos + 4 + <Py_ssize_t>_u32(p + pos)
    elif kind == KIND_BCF:
        if pos + 20 <= n:
            nxt = pos + 8 + <Py_ssize_t>_u32(p + pos) + <Py_ssize_t>_u32(p + pos + 4)
    else:
        if scanned < pos:
            scanned = pos
        if scanned < n:
            nl = <const unsigned char *>memchr(p + scanned, 10, n - scanned)
            if nl != NULL:
                nxt = (nl - p) + 1
    return nxt if 0 <= nxt <= n else -1


def head(const unsigned char[:] buf, Py_ssize_t pos, int kind, int64_t ref_id,
         bytes ref_name):
    """Where the record at `pos` starts: (state, beg). State -1: `buf` ends before that is
    known (BAM needs 36 bytes, BCF 20, VCF the line up to its third field); 0: not a record
    (a '#' line, a POS tabix cannot read) or a record of another reference; 1: a record of
    the reference (ref_id for BAM/BCF, ref_name for VCF), starting at 0-based `beg`."""
    cdef Py_ssize_t n = buf.shape[0], i, tab1 = -1, tab2 = -1
    cdef const unsigned char *p
    cdef const unsigned char *name = ref_name
    cdef Py_ssize_t name_len = len(ref_name)
    cdef int64_t rbeg
    cdef bint ok
    if pos >= n:
        return -1, 0
    p = &buf[0] + pos
    n -= pos
    if kind == KIND_BAM:
        if n < 36:
            return -1, 0
        return (1 if _i32(p + 4) == ref_id else 0), _i32(p + 8)
    if kind == KIND_BCF:
        if n < 20:
            return -1, 0
        return (1 if _i32(p + 8) == ref_id else 0), _i32(p + 12)
    if p[0] == 35:  # '#'
        return 0, 0
    i = 0
    while i < n and p[i] != 10:
        if p[i] == 9:
            if tab1 < 0:
                tab1 = i
            else:
                tab2 = i
                break
        i += 1
    if tab2 < 0 and i >= n:
        return -1, 0  # the second field may go on
    if tab1 < 0:
        return 0, 0
    if tab2 < 0:
        tab2 = i  # the line ends after POS
        if tab2 > tab1 + 1 and p[tab2 - 1] == 13:  # bgzf_getline drops a trailing '\r'
            tab2 -= 1
    rbeg = _c_strtoll(p + tab1 + 1, tab2 - tab1 - 1, 0, &ok) - 1
    if not ok:
        return 0, 0
    if rbeg < 0:
        rbeg = 0
    return (1 if tab1 == name_len and memcmp(p, name, name_len) == 0 else 0), rbeg
