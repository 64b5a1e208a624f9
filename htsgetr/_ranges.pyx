# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Binning indexes (BAI, CSI, TBI) -> virtual-offset chunks, in C.

This is the per-request hot path. Construction does one bounds-checked C scan over the
index bytes that records where each reference starts; a reference's bins and linear index
are decoded into compact C arrays on the first query that touches it and cached on the
object. The bytes object is kept alive and chunk pairs are read straight out of it.

Query semantics follow htslib's ``hts_itr_query`` (hts.c, htslib 1.21): the same
reg2bins, the same ``min_off`` (bin walk + linear index, including the unmapped-read
adjustment), except that chunks are never clipped to ``min_off`` or ``max_off``: a chunk
whose end is ``<= min_off`` is dropped, every other chunk of an overlapping bin is kept
whole, then chunks are sorted and merged when they overlap or touch, or when the gap
between them lies inside one BGZF block (htslib reads through such a gap, and returns the
records in it that overlap the region).

``tests/ranges_twin.py`` is a plain-Python twin of this module; the tests cross-check them.
"""

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* Index files are little-endian. On x86_64 (little-endian, the deployment target)
       memcpy into a host integer compiles to a single unaligned load; on a big-endian
       host the value is byte-swapped so the module stays correct there too. */
    static inline uint32_t htsr_le32(const unsigned char *p) {
        uint32_t x;
        memcpy(&x, p, 4);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        x = __builtin_bswap32(x);
    #endif
        return x;
    }
    static inline uint64_t htsr_le64(const unsigned char *p) {
        uint64_t x;
        memcpy(&x, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        x = __builtin_bswap64(x);
    #endif
        return x;
    }
    """
    uint32_t htsr_le32(const unsigned char *p) nogil
    uint64_t htsr_le64(const unsigned char *p) nogil


cdef struct BinEntry:
    uint32_t bin
    int32_t n_chunk
    int64_t chunk_pos   # byte offset of this bin's first chunk in the index buffer
    uint64_t loff       # CSI: loffset from the file; BAI/TBI: derived from the linear index


cdef struct Chunk:
    uint64_t beg
    uint64_t end


cdef inline int32_t _i32(const unsigned char *p) noexcept nogil:
    return <int32_t>htsr_le32(p)


cdef inline int64_t _bin_first(int level) noexcept nogil:
    # first bin number of a level: (8**level - 1) / 7
    return ((<int64_t>1 << (3 * level)) - 1) // 7


cdef inline int64_t _meta_bin(int depth) noexcept nogil:
    # The pseudo-bin, as htslib numbers it: ((1 << (3*depth + 3)) - 1) / 7 + 1 (CSIv1). htslib
    # computes it in a 32-bit int, whose shift overflows at depth 10 (x86 takes the count mod
    # 32: 1 << 1), so its CSI files of depth 10 (bcftools index -m 4 on a 2 Gbp contig) hold
    # the pseudo-bin as bin 1, and htslib reads them so. Depth 10 is the deepest CSI we take.
    if depth == 10:
        return 1
    return _bin_first(depth + 1) + 1


cdef inline int64_t _bin_parent(int64_t b) noexcept nogil:
    return (b - 1) >> 3


cdef inline int _bin_level(int64_t b) noexcept nogil:
    cdef int level = 0
    while b > 0:
        level += 1
        b = _bin_parent(b)
    return level


cdef int _cmp_bin(const void *a, const void *b) noexcept nogil:
    cdef uint32_t x = (<const BinEntry *>a).bin
    cdef uint32_t y = (<const BinEntry *>b).bin
    return (x > y) - (x < y)


cdef int _cmp_u32(const void *a, const void *b) noexcept nogil:
    cdef uint32_t x = (<const uint32_t *>a)[0]
    cdef uint32_t y = (<const uint32_t *>b)[0]
    return (x > y) - (x < y)


cdef str _voff(uint64_t v):
    """A virtual offset as "coffset:uoffset" (block offset in the file : offset inside it)."""
    return f"{v >> 16}:{v & 0xffff}"


cdef int _cmp_chunk(const void *a, const void *b) noexcept nogil:
    cdef const Chunk *x = <const Chunk *>a
    cdef const Chunk *y = <const Chunk *>b
    if x.beg != y.beg:
        return 1 if x.beg > y.beg else -1
    return (x.end > y.end) - (x.end < y.end)


cdef inline Py_ssize_t _lower_bound(const BinEntry *bins, Py_ssize_t n, int64_t key) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if <int64_t>bins[mid].bin < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _find_bin(const BinEntry *bins, Py_ssize_t n, int64_t key) noexcept nogil:
    cdef Py_ssize_t i
    if key < 0:
        return -1
    i = _lower_bound(bins, n, key)
    if i < n and <int64_t>bins[i].bin == key:
        return i
    return -1


cdef class _RefData:
    """One reference, decoded: bins sorted by number, the (filled) linear index."""

    cdef BinEntry *bins
    cdef Py_ssize_t n_bins
    cdef uint64_t *ioff
    cdef Py_ssize_t n_intv
    cdef int meta_chunks      # n_chunk of the pseudo-bin, -1 when it is absent
    cdef uint64_t meta[4]     # its two chunks: (u0, v0, u1, v1)

    def __cinit__(self):
        self.bins = NULL
        self.ioff = NULL
        self.n_bins = 0
        self.n_intv = 0
        self.meta_chunks = -1

    def __dealloc__(self):
        free(self.bins)
        free(self.ioff)


cdef class BinningIndex:
    """A parsed BAI, CSI or TBI index; build one with parse_bai, parse_csi or parse_tbi."""

    cdef readonly str kind
    cdef readonly int min_shift
    cdef readonly int depth
    cdef readonly int n_ref
    cdef readonly object n_no_coor
    cdef readonly bytes aux
    cdef readonly int fmt
    cdef readonly int col_seq
    cdef readonly int col_beg
    cdef readonly int col_end
    cdef readonly int meta
    cdef readonly int skip
    cdef readonly list names

    cdef object _data               # the buffer's owner (bytes, bytearray, ...)
    cdef const unsigned char[::1] _view   # holds the buffer export while the index lives
    cdef const unsigned char *_buf
    cdef int64_t _len
    cdef bint _csi
    cdef int64_t _n_bins        # number of real bins: (8**(depth+1) - 1) / 7
    cdef int64_t _meta_bin      # the pseudo-bin: _n_bins + 1 (htslib's: see _meta_bin)
    cdef int64_t _max_bin       # the largest bin number allowed: max(_n_bins - 1, _meta_bin)
    cdef int64_t _max_coord     # 1 << (min_shift + 3 * depth)
    cdef int64_t *_ref_pos      # byte offset of each reference's n_bin field
    cdef int32_t *_ref_nbin
    cdef list _refs
    cdef uint64_t _last_end
    # gathered by _scan for validate(): a bin outside the scheme, a bin twice or a reversed
    # chunk seen; whether bins could not be checked for repeats (scheme too large for the
    # bitmap); the largest chunk end, CSI loffset or linear-index entry; the smallest start
    # of a non-empty chunk (all-ones: none)
    cdef bint _suspect
    cdef bint _dups_unknown
    cdef uint64_t _max_off
    cdef uint64_t _first

    def __cinit__(self):
        self.kind = ""
        self.min_shift = 14
        self.depth = 5
        self.n_ref = 0
        self.n_no_coor = None
        self.aux = b""
        self.fmt = -1
        self.col_seq = self.col_beg = self.col_end = self.meta = self.skip = 0
        self.names = []
        self._data = None
        self._buf = NULL
        self._len = 0
        self._ref_pos = NULL
        self._ref_nbin = NULL
        self._refs = []
        self._last_end = 0
        self._suspect = False
        self._dups_unknown = False
        self._max_off = 0
        self._first = 0xffffffffffffffffu

    def __dealloc__(self):
        free(self._ref_pos)
        free(self._ref_nbin)

    def __repr__(self):
        return (f"<BinningIndex {self.kind} n_ref={self.n_ref} "
                f"min_shift={self.min_shift} depth={self.depth}>")

    # -- construction -----------------------------------------------------------------

    cdef inline bint _fits(self, int64_t pos, int64_t n) noexcept:
        return 0 <= n and pos <= self._len and n <= self._len - pos

    cdef int _magic(self, bytes magic) except -1:
        if self._len < 4:
            raise ValueError(f"not a {self.kind} index: only {self._len} bytes")
        if self._slice(0, 4) != magic:
            raise ValueError(f"not a {self.kind} index: bad magic {self._slice(0, 4)!r}")
        return 0

    cdef bytes _slice(self, int64_t a, int64_t b):
        """Bytes [a, b) of the buffer (the caller checked the bounds)."""
        return (<const char *>self._buf)[a:b]

    cdef int _need(self, int64_t pos, int64_t n, str what) except -1:
        if not self._fits(pos, n):
            self._truncated(what)
        return 0

    cdef int _truncated(self, str what) except -1:
        raise ValueError(f"truncated {self.kind} index: {what} runs past the end "
                         f"of the data ({self._len} bytes)")

    cdef int _setup(self, str kind, object data, int min_shift, int depth) except -1:
        self.kind = kind
        self._data = data
        self._view = data
        self._len = self._view.shape[0]
        self._buf = &self._view[0] if self._len > 0 else NULL
        self._csi = kind == "CSI"
        return self._scheme(min_shift, depth)

    cdef int _scheme(self, int min_shift, int depth) except -1:
        self.min_shift = min_shift
        self.depth = depth
        self._n_bins = _bin_first(depth + 1)
        self._meta_bin = _meta_bin(depth)
        self._max_bin = max(self._n_bins - 1, self._meta_bin)
        self._max_coord = <int64_t>1 << (min_shift + 3 * depth)
        return 0

    cdef int _scan(self, int64_t n_ref_pos, int64_t pos) except -1:
        """Read n_ref, record where each reference starts (from pos), validate all bounds."""
        cdef int64_t n_ref, i, j, k, n_bin, n_chunk, n_intv, head, min_ref, p, bitmap_bytes
        cdef int64_t n_used, meta_bin = self._meta_bin
        cdef uint32_t b
        cdef uint64_t u, v, last = 0, first = 0xffffffffffffffffu, max_off = 0
        cdef const unsigned char *c
        cdef bint bad = False
        cdef unsigned char *seen = NULL
        self._need(n_ref_pos, 4, "n_ref")
        n_ref = _i32(self._buf + n_ref_pos)
        if pos == n_ref_pos:
            pos += 4
        if n_ref < 0:
            raise ValueError(f"corrupt {self.kind} index: negative n_ref ({n_ref})")
        min_ref = 4 if self._csi else 8
        if n_ref > (self._len - pos) // min_ref:
            raise ValueError(f"truncated {self.kind} index: n_ref={n_ref} does not fit "
                             f"in {self._len} bytes")
        self._ref_pos = <int64_t *>malloc((n_ref + 1) * sizeof(int64_t))
        self._ref_nbin = <int32_t *>malloc((n_ref + 1) * sizeof(int32_t))
        if self._ref_pos == NULL or self._ref_nbin == NULL:
            raise MemoryError()
        head = 16 if self._csi else 8   # bin, [loffset,] n_chunk
        # Besides the bounds, gather what validate() compares with the data file, in the
        # same pass (the index is read from memory once): see the fields' comment.
        bitmap_bytes = (self._max_bin >> 3) + 1
        if self._max_bin < (1 << 22):
            seen = <unsigned char *>calloc(bitmap_bytes, 1)
            if seen == NULL:
                raise MemoryError()
        else:
            self._dups_unknown = True
        try:
            for i in range(n_ref):
                self._ref_pos[i] = pos
                if not self._fits(pos, 4):
                    self._truncated(f"n_bin of reference {i}")
                n_bin = _i32(self._buf + pos)
                pos += 4
                if n_bin < 0:
                    raise ValueError(f"corrupt {self.kind} index: reference {i} has "
                                     f"negative n_bin ({n_bin})")
                self._ref_nbin[i] = <int32_t>n_bin
                for j in range(n_bin):
                    if not self._fits(pos, head):
                        self._truncated(f"bin {j} of reference {i}")
                    n_chunk = _i32(self._buf + pos + head - 4)
                    if n_chunk < 0:
                        raise ValueError(f"corrupt {self.kind} index: bin {j} of reference "
                                         f"{i} has negative n_chunk ({n_chunk})")
                    if not self._fits(pos + head, n_chunk * 16):
                        self._truncated(f"chunks of bin {j} of reference {i}")
                    # what validate() needs (see the fields' comment), gathered in locals
                    b = htsr_le32(self._buf + pos)
                    if <int64_t>b >= self._n_bins and <int64_t>b != self._meta_bin:
                        bad = True
                    elif seen != NULL:
                        if seen[b >> 3] & (1 << (b & 7)):
                            bad = True
                        seen[b >> 3] |= <unsigned char>(1 << (b & 7))
                    if self._csi:
                        v = htsr_le64(self._buf + pos + 4)
                        max_off = v if v > max_off else max_off
                    c = self._buf + pos + head
                    n_used = n_chunk
                    if <int64_t>b == meta_bin and n_used > 1:
                        n_used = 1   # the pseudo-bin's second "chunk" holds read counts
                    for k in range(n_used):   # branch-free: the trip count is branch enough
                        u = htsr_le64(c + 16 * k)
                        v = htsr_le64(c + 16 * k + 8)
                        bad |= u > v
                        last = v if v > last else last
                        u = u if u < v else 0xffffffffffffffffu
                        first = u if u < first else first
                    pos += head + n_chunk * 16
                if seen != NULL:
                    if n_bin * 8 > bitmap_bytes:
                        memset(seen, 0, bitmap_bytes)
                    else:
                        p = self._ref_pos[i] + 4
                        for j in range(n_bin):
                            b = htsr_le32(self._buf + p)
                            if <int64_t>b <= self._max_bin:
                                seen[b >> 3] = 0
                            p += head + <int64_t>_i32(self._buf + p + head - 4) * 16
                if not self._csi:
                    if not self._fits(pos, 4):
                        self._truncated(f"n_intv of reference {i}")
                    n_intv = _i32(self._buf + pos)
                    pos += 4
                    if n_intv < 0:
                        raise ValueError(f"corrupt {self.kind} index: reference {i} has "
                                         f"negative n_intv ({n_intv})")
                    if not self._fits(pos, n_intv * 8):
                        self._truncated(f"linear index of reference {i}")
                    for j in range(n_intv):
                        v = htsr_le64(self._buf + pos + 8 * j)
                        if v > max_off and v != 0xffffffffffffffffu:
                            max_off = v
                    pos += n_intv * 8
        finally:
            free(seen)
        self._suspect = bad
        self._last_end = last
        self._first = first
        self._max_off = max_off if max_off > last else last
        self.n_ref = <int>n_ref
        self._refs = [None] * n_ref
        # Optional trailing n_no_coor; fewer than 8 trailing bytes are ignored, as htslib does.
        if self._len - pos >= 8:
            self.n_no_coor = htsr_le64(self._buf + pos)
        return 0

    cdef int _tabix_meta(self, bytes meta) except -1:
        """format, col_seq, col_beg, col_end, meta, skip, l_nm, names (28 + l_nm bytes)."""
        cdef const unsigned char *p = <const unsigned char *>meta
        cdef int32_t l_nm = _i32(p + 24)
        if l_nm < 0 or l_nm > len(meta) - 28:
            return 0
        self.fmt = _i32(p)
        self.col_seq = _i32(p + 4)
        self.col_beg = _i32(p + 8)
        self.col_end = _i32(p + 12)
        self.meta = _i32(p + 16)
        self.skip = _i32(p + 20)
        self.names = _split_names(meta[28:28 + l_nm], self.kind)
        return 0

    # -- per-reference decoding ---------------------------------------------------------

    cdef _RefData _ref(self, int i):
        cdef _RefData r = <_RefData>self._refs[i]
        if r is not None:
            return r
        r = _RefData()
        self._decode_ref(r, i)
        self._refs[i] = r
        return r

    cdef int _decode_ref(self, _RefData r, int ref) except -1:
        cdef const unsigned char *buf = self._buf
        cdef int64_t pos = self._ref_pos[ref]
        cdef int64_t n_bin = self._ref_nbin[ref]
        cdef int64_t j, k, n_intv, bot
        cdef BinEntry *e
        cdef uint64_t *ioff
        pos += 4
        r.bins = <BinEntry *>malloc((n_bin + 1) * sizeof(BinEntry))
        if r.bins == NULL:
            raise MemoryError()
        r.n_bins = n_bin
        for j in range(n_bin):
            e = &r.bins[j]
            e.bin = htsr_le32(buf + pos)
            pos += 4
            if self._csi:
                e.loff = htsr_le64(buf + pos)
                pos += 8
            else:
                e.loff = 0
            e.n_chunk = _i32(buf + pos)
            pos += 4
            e.chunk_pos = pos
            pos += <int64_t>e.n_chunk * 16
            if <int64_t>e.bin == self._meta_bin:
                r.meta_chunks = e.n_chunk
                for k in range(min(e.n_chunk, 2)):
                    r.meta[2 * k] = htsr_le64(buf + e.chunk_pos + 16 * k)
                    r.meta[2 * k + 1] = htsr_le64(buf + e.chunk_pos + 16 * k + 8)
        if n_bin > 1:
            qsort(r.bins, n_bin, sizeof(BinEntry), _cmp_bin)
            for j in range(1, n_bin):
                if r.bins[j].bin == r.bins[j - 1].bin:
                    raise ValueError(f"corrupt {self.kind} index: reference {ref} has "
                                     f"bin {r.bins[j].bin} twice")
        if self._csi:
            return 0
        # Linear index, filled the way htslib's idx_read_core + update_loff do: zero slots
        # after the first non-zero one take the next value to their right; (uint64)-1 slots
        # take the value to their right. Each bin's loff is then the slot of its first window.
        n_intv = _i32(buf + pos)
        pos += 4
        ioff = <uint64_t *>malloc((n_intv + 1) * sizeof(uint64_t))
        if ioff == NULL:
            raise MemoryError()
        r.ioff = ioff
        r.n_intv = n_intv
        for j in range(n_intv):
            ioff[j] = htsr_le64(buf + pos + 8 * j)
        k = 0
        while k < n_intv and ioff[k] == 0:
            k += 1
        j = n_intv - 1
        while j > k:
            if ioff[j - 1] == 0:
                ioff[j - 1] = ioff[j]
            j -= 1
        j = n_intv - 2
        while j >= 0:
            if ioff[j] == <uint64_t>-1:
                ioff[j] = ioff[j + 1]
            j -= 1
        for j in range(n_bin):
            e = &r.bins[j]
            if <int64_t>e.bin < self._n_bins:
                bot = self._bin_bot(e.bin)
                e.loff = ioff[bot] if bot < n_intv else 0
        return 0

    cdef inline int64_t _bin_bot(self, int64_t b) noexcept nogil:
        cdef int level = _bin_level(b)
        return (b - _bin_first(level)) << (3 * (self.depth - level))

    # -- queries ----------------------------------------------------------------------

    cdef int _check_ref(self, object ref_id) except -1:
        if not (0 <= ref_id < self.n_ref):
            raise IndexError(f"reference id {ref_id} out of range (n_ref={self.n_ref})")
        return 0

    cdef uint64_t _min_off(self, _RefData r, int64_t beg) noexcept:
        cdef int64_t rel_off = beg >> self.min_shift
        cdef int64_t b = _bin_first(self.depth) + rel_off
        cdef int64_t first, t
        cdef Py_ssize_t k
        cdef uint64_t min_off, loff_k = 0
        cdef bint unmapped
        # htslib: lowest-level bin holding beg; if absent, its left siblings, then parents
        # (the loop looks bin 0 up last, when it gets there).
        while True:
            k = _find_bin(r.bins, r.n_bins, b)
            if k >= 0 or b <= 0:
                break
            first = (_bin_parent(b) << 3) + 1
            if b > first:
                b -= 1
            else:
                b = _bin_parent(b)
        if k >= 0:
            loff_k = r.bins[k].loff
        min_off = loff_k
        if r.meta_chunks >= 2:
            unmapped = (r.meta[3] & 0xffffffffu) != 0   # htslib keeps it in a uint32_t
        else:
            unmapped = True
        if rel_off < r.n_intv:
            if min_off < r.ioff[rel_off]:
                min_off = r.ioff[rel_off]
            if unmapped:
                # placed unmapped reads may be missing from the linear index (older
                # indexers): look further left, but never below the walked bin's loff
                t = rel_off - 1
                while t >= 0:
                    if r.ioff[t] < min_off:
                        min_off = r.ioff[t]
                        break
                    t -= 1
                if k >= 0 and (min_off < loff_k or t < 0):
                    min_off = loff_k
        return min_off

    cdef list _query(self, _RefData r, int64_t beg, int64_t end):
        cdef uint64_t min_off
        cdef int level, s
        cdef int64_t t, lo, hi, n_out = 0, n_all = 0, j, w
        cdef Py_ssize_t i
        cdef const BinEntry *e
        cdef const unsigned char *p
        cdef Chunk *out
        cdef Chunk cur
        cdef list result
        if r.n_bins == 0:
            return []
        min_off = self._min_off(r, beg)
        # first pass: count chunks of the overlapping bins
        for level in range(self.depth + 1):
            s = self.min_shift + 3 * (self.depth - level)
            t = _bin_first(level)
            lo = t + (beg >> s)
            hi = t + ((end - 1) >> s)
            i = _lower_bound(r.bins, r.n_bins, lo)
            while i < r.n_bins and <int64_t>r.bins[i].bin <= hi:
                n_all += r.bins[i].n_chunk
                i += 1
        if n_all == 0:
            return []
        out = <Chunk *>malloc(n_all * sizeof(Chunk))
        if out == NULL:
            raise MemoryError()
        try:
            for level in range(self.depth + 1):
                s = self.min_shift + 3 * (self.depth - level)
                t = _bin_first(level)
                lo = t + (beg >> s)
                hi = t + ((end - 1) >> s)
                i = _lower_bound(r.bins, r.n_bins, lo)
                while i < r.n_bins and <int64_t>r.bins[i].bin <= hi:
                    e = &r.bins[i]
                    if <int64_t>e.bin != self._meta_bin:
                        p = self._buf + e.chunk_pos
                        for j in range(e.n_chunk):
                            cur.end = htsr_le64(p + 16 * j + 8)
                            if cur.end > min_off:
                                cur.beg = htsr_le64(p + 16 * j)
                                out[n_out] = cur
                                n_out += 1
                    i += 1
            if n_out == 0:
                return []
            qsort(out, n_out, sizeof(Chunk), _cmp_chunk)
            result = []
            cur = out[0]
            for w in range(1, n_out):
                # htslib merges chunks that overlap or touch, and also those whose gap lies
                # inside one BGZF block (it reads through it rather than seek)
                if cur.end >= out[w].beg or (cur.end >> 16) == (out[w].beg >> 16):
                    if out[w].end > cur.end:
                        cur.end = out[w].end
                else:
                    result.append((cur.beg, cur.end))
                    cur = out[w]
            result.append((cur.beg, cur.end))
            return result
        finally:
            free(out)

    def query(self, ref_id, beg, end):
        """Merged (vbeg, vend) chunks that may hold records overlapping [beg, end)."""
        self._check_ref(ref_id)
        if beg < 0:
            beg = 0
        if end > self._max_coord:
            end = self._max_coord
        if beg >= end:
            return []
        return self._query(self._ref(ref_id), beg, end)

    def bounds(self, ref_id, beg, end):
        """htslib's (min_off, max_off) for [beg, end): no record before min_off overlaps
        the region, none at or after max_off starts before its end (all-ones: none)."""
        cdef _RefData r
        cdef int64_t b
        cdef Py_ssize_t k
        cdef uint64_t lo = 0, hi = 0xffffffffffffffffu
        self._check_ref(ref_id)
        beg = max(beg, 0)
        end = min(end, self._max_coord)
        r = self._ref(ref_id)
        if r.n_bins == 0 or beg >= end:
            return lo, hi
        lo = self._min_off(r, beg)
        # hts_itr_query: the first chunk of the nearest bin to the right of end, moving up
        # to the parent at a first child (falling off the right goes up to bin 0: none)
        b = _bin_first(self.depth) + ((end - 1) >> self.min_shift) + 1
        if b >= self._n_bins:
            b = 0
        while True:
            while b % 8 == 1:
                b = _bin_parent(b)
            if b == 0:
                break
            k = _find_bin(r.bins, r.n_bins, b)
            if k >= 0 and r.bins[k].n_chunk > 0:
                hi = htsr_le64(self._buf + r.bins[k].chunk_pos)
                break
            b += 1
        return lo, hi

    def ref_meta(self, ref_id):
        """(unmapped_beg, unmapped_end, n_mapped, n_unmapped) from the pseudo-bin, or None."""
        cdef _RefData r
        self._check_ref(ref_id)
        r = self._ref(ref_id)
        if r.meta_chunks < 2:
            return None
        return (r.meta[0], r.meta[1], r.meta[2], r.meta[3])

    def has_data(self, ref_id):
        """True when the reference has any bins."""
        self._check_ref(ref_id)
        return self._ref_nbin[<int>ref_id] > 0

    def last_end(self):
        """Largest chunk end over all bins of all references (pseudo-bin: its first chunk)."""
        return self._last_end   # found by the construction scan

    def validate(self, data_end):
        """Check the index against the data file it is used for, as a whole, once per load.

        `data_end` is the virtual offset where the data file's records end (the start of
        its EOF block). Refused, with a ValueError naming the first offence in file order:
        a bin number that is neither a bin of this min_shift/depth nor the pseudo-bin; a
        bin twice in one reference; a chunk whose end precedes its start; a chunk, CSI
        loffset or linear-index entry past `data_end` (the linear index may hold 0 and
        all-ones, which mean "none"). The pseudo-bin's first chunk is checked like any
        chunk; its second holds read counts. (A uoffset is 16 bits, so below 65536 by
        construction; whether it lies inside its block needs the data, not the index.)
        Cheap: the construction scan gathered what this compares.

        Returns the smallest start of a non-empty chunk (for an index of this file: its
        first record, which must sit where the header ends), or None when there is none.
        """
        cdef uint64_t hi
        cdef uint64_t first = 0xffffffffffffffffu, u, v
        cdef bint have_first = False
        cdef int64_t i, j, k, pos, n_bin, n_chunk, n_used, n_intv, head, n_bits, w
        cdef uint32_t b
        cdef unsigned char *seen = NULL
        cdef uint32_t *sorted_bins = NULL
        cdef bint use_bitmap
        if not 0 <= data_end < (1 << 64):
            raise ValueError(f"data_end out of range: {data_end}")
        hi = data_end
        if not self._suspect and not self._dups_unknown and self._max_off <= hi:
            return self._first if self._first != 0xffffffffffffffffu else None
        # something is wrong (or the scheme is too large for the scan's bitmap): walk again
        # to name the first offence
        head = 16 if self._csi else 8
        n_bits = self._max_bin + 1
        use_bitmap = n_bits <= (1 << 23)   # 1 MiB at most; larger schemes sort instead
        if use_bitmap:
            seen = <unsigned char *>calloc((n_bits + 7) >> 3, 1)
            if seen == NULL:
                raise MemoryError()
        try:
            for i in range(self.n_ref):
                pos = self._ref_pos[i] + 4
                n_bin = self._ref_nbin[i]
                if not use_bitmap and n_bin > 1:
                    sorted_bins = <uint32_t *>malloc(n_bin * sizeof(uint32_t))
                    if sorted_bins == NULL:
                        raise MemoryError()
                for j in range(n_bin):
                    b = htsr_le32(self._buf + pos)
                    n_chunk = _i32(self._buf + pos + head - 4)
                    if <int64_t>b >= self._n_bins and <int64_t>b != self._meta_bin:
                        raise ValueError(
                            f"reference {i}: bin {b} is not a bin of a min_shift="
                            f"{self.min_shift}, depth={self.depth} index")
                    if use_bitmap:
                        if seen[b >> 3] & (1 << (b & 7)):
                            raise ValueError(f"reference {i} has bin {b} twice")
                        seen[b >> 3] |= <unsigned char>(1 << (b & 7))
                    elif sorted_bins != NULL:
                        sorted_bins[j] = b
                    if self._csi:
                        v = htsr_le64(self._buf + pos + 4)
                        if v > hi:
                            raise ValueError(
                                f"reference {i}, bin {b}: loffset {_voff(v)} is past the "
                                f"end of the data ({_voff(hi)})")
                    pos += head
                    n_used = n_chunk
                    if <int64_t>b == self._meta_bin and n_used > 1:
                        n_used = 1
                    for k in range(n_used):
                        u = htsr_le64(self._buf + pos + 16 * k)
                        v = htsr_le64(self._buf + pos + 16 * k + 8)
                        if u > v:
                            raise ValueError(
                                f"reference {i}, bin {b}: chunk {k} ends before it starts "
                                f"({_voff(u)} > {_voff(v)})")
                        if v > hi:
                            raise ValueError(
                                f"reference {i}, bin {b}: chunk {k} ends past the end of "
                                f"the data ({_voff(v)} > {_voff(hi)})")
                        if u < v and (not have_first or u < first):
                            first = u
                            have_first = True
                    pos += n_chunk * 16
                if use_bitmap:
                    pos = self._ref_pos[i] + 4
                    for j in range(n_bin):
                        b = htsr_le32(self._buf + pos)
                        seen[b >> 3] = 0
                        pos += head + <int64_t>_i32(self._buf + pos + head - 4) * 16
                elif sorted_bins != NULL:
                    qsort(sorted_bins, n_bin, sizeof(uint32_t), _cmp_u32)
                    for j in range(1, n_bin):
                        if sorted_bins[j] == sorted_bins[j - 1]:
                            raise ValueError(f"reference {i} has bin {sorted_bins[j]} twice")
                    free(sorted_bins)
                    sorted_bins = NULL
                if not self._csi:
                    n_intv = _i32(self._buf + pos)
                    pos += 4
                    for w in range(n_intv):
                        v = htsr_le64(self._buf + pos + 8 * w)
                        if v > hi and v != 0xffffffffffffffffu:
                            raise ValueError(
                                f"reference {i}: linear index entry {w} is past the end "
                                f"of the data ({_voff(v)} > {_voff(hi)})")
        finally:
            free(seen)
            free(sorted_bins)
        return first if have_first else None


cdef list _split_names(bytes raw, str kind):
    if raw.endswith(b"\0"):
        raw = raw[:len(raw) - 1]
    if not raw:
        return []
    try:
        return [n.decode("utf-8") for n in raw.split(b"\0")]
    except UnicodeDecodeError:
        raise ValueError(f"corrupt {kind} index: sequence names are not UTF-8") from None


def parse_bai(data):
    """Parse BAI bytes (a BAI file is not compressed). Any buffer; it is kept, not copied."""
    cdef BinningIndex idx = BinningIndex.__new__(BinningIndex)
    idx._setup("BAI", data, 14, 5)
    idx._magic(b"BAI\1")
    idx._scan(4, 4)
    return idx


def parse_tbi(data):
    """Parse TBI bytes, already decompressed from BGZF."""
    cdef BinningIndex idx = BinningIndex.__new__(BinningIndex)
    cdef int32_t l_nm
    idx._setup("TBI", data, 14, 5)
    idx._magic(b"TBI\1")
    idx._need(4, 32, "header")
    l_nm = _i32(idx._buf + 32)
    if l_nm < 0:
        raise ValueError(f"corrupt TBI index: negative l_nm ({l_nm})")
    idx._need(36, l_nm, "sequence names")
    idx._tabix_meta(idx._slice(8, 36 + <int64_t>l_nm))
    idx._scan(4, 36 + <int64_t>l_nm)
    return idx


def parse_csi(data):
    """Parse CSI bytes, already decompressed from BGZF."""
    cdef BinningIndex idx = BinningIndex.__new__(BinningIndex)
    cdef int32_t min_shift, depth, l_aux
    idx._setup("CSI", data, 14, 5)
    idx._magic(b"CSI\1")
    if idx._len < 16:
        raise ValueError(f"truncated CSI index: header runs past the end "
                         f"of the data ({idx._len} bytes)")
    min_shift = _i32(idx._buf + 4)
    depth = _i32(idx._buf + 8)
    l_aux = _i32(idx._buf + 12)
    # (each bounded first: their sum in 32 bits would wrap past the check)
    if min_shift < 0 or min_shift > 62 or depth < 0 or depth > 10 \
            or min_shift + 3 * depth > 62:
        raise ValueError(f"corrupt CSI index: unsupported min_shift={min_shift}, "
                         f"depth={depth}")
    if l_aux < 0:
        raise ValueError(f"corrupt CSI index: negative l_aux ({l_aux})")
    idx._scheme(min_shift, depth)
    idx._need(16, l_aux, "auxiliary data")
    idx.aux = idx._slice(16, 16 + <int64_t>l_aux)
    if l_aux >= 28:
        idx._tabix_meta(idx.aux)
    idx._scan(16 + <int64_t>l_aux, 16 + <int64_t>l_aux)
    return idx


def reg2bins(beg, end, int min_shift, int depth):
    """Bins that may hold records overlapping [beg, end) (CSIv1 reg2bins, all levels)."""
    cdef int64_t b, e, t, max_coord
    cdef int level, s
    cdef list bins = []
    if min_shift < 0 or min_shift > 62 or depth < 0 or depth > 20 \
            or min_shift + 3 * depth > 62:
        raise ValueError(f"unsupported min_shift={min_shift}, depth={depth}")
    max_coord = <int64_t>1 << (min_shift + 3 * depth)
    if beg < 0:
        beg = 0
    if end > max_coord:
        end = max_coord
    if beg >= end:
        return bins
    b = beg
    e = end - 1
    for level in range(depth + 1):
        s = min_shift + 3 * (depth - level)
        t = _bin_first(level)
        bins.extend(range(t + (b >> s), t + (e >> s) + 1))
    return bins


def merge_ranges(ranges):
    """Sort (start, end) byte ranges; merge overlapping or touching ones; drop empty ones."""
    cdef list items = sorted([(int(s), int(e)) for s, e in ranges])
    cdef list out = []
    cdef int64_t s, e, cs = 0, ce = 0
    cdef bint have = False
    for item in items:
        s, e = item
        if s > e:
            raise ValueError(f"invalid byte range ({s}, {e}): start > end")
        if s == e:
            continue
        if have and ce >= s:
            if e > ce:
                ce = e
        else:
            if have:
                out.append((cs, ce))
            cs, ce = s, e
            have = True
    if have:
        out.append((cs, ce))
    return out


# --------------------------------------------------------------------------- CRAI

cdef inline bint _crai_space(unsigned char c) nogil:
    # what bytes.split() splits a line on (a line holds no \n or \r)
    return c == 32 or c == 9 or c == 11 or c == 12


def parse_crai_lines(const unsigned char[:] text):
    """The six integer columns of CRAI text (CRAMv3 section 12, already inflated): reference
    ID, 1-based alignment start, span, container offset, slice offset and slice size, one
    entry per line that is not blank (lines end at \\n, \\r or \\r\\n; fields are separated
    by spaces or tabs), each column an array('q'). ValueError("line N: ...") for the first
    line that is not six integers (an optional sign and 1-18 digits each), or that has a
    negative container offset, slice offset or slice size, or a reference ID below -2."""
    from array import array
    cdef Py_ssize_t n = text.shape[0], i = 0, line_end, k, cap = 1, rows = 0, col
    cdef const unsigned char *p = NULL
    cdef int64_t *buf
    cdef int64_t vals[6]
    cdef int64_t v
    cdef int nfields, digits
    cdef bint neg, bad
    cdef Py_ssize_t lineno = 0
    if n > 0:
        p = &text[0]
    for k in range(n):  # at most one line per line end, plus the last
        if p[k] == 10 or p[k] == 13:
            cap += 1
    buf = <int64_t *>malloc(6 * cap * sizeof(int64_t))
    if buf == NULL:
        raise MemoryError()
    try:
        while i < n:
            lineno += 1
            line_end = i
            while line_end < n and p[line_end] != 10 and p[line_end] != 13:
                line_end += 1
            nfields = 0
            bad = False
            k = i
            while True:
                while k < line_end and _crai_space(p[k]):
                    k += 1
                if k >= line_end:
                    break
                if nfields == 6:
                    bad = True
                    break
                neg = False
                if p[k] == 45 or p[k] == 43:  # '-' or '+'
                    neg = p[k] == 45
                    k += 1
                v = 0
                digits = 0
                while k < line_end and 48 <= p[k] <= 57:
                    v = v * 10 + (p[k] - 48)
                    digits += 1
                    k += 1
                if digits == 0 or digits > 18 or (k < line_end and not _crai_space(p[k])):
                    bad = True
                    break
                vals[nfields] = -v if neg else v
                nfields += 1
            if nfields or bad:
                if bad or nfields != 6:
                    raise ValueError(f"line {lineno}: not six integers")
                if vals[3] < 0 or vals[4] < 0 or vals[5] < 0 or vals[0] < -2:
                    raise ValueError(f"line {lineno}: a negative field")
                for col in range(6):
                    buf[col * cap + rows] = vals[col]
                rows += 1
            i = line_end
            if i < n and p[i] == 13 and i + 1 < n and p[i + 1] == 10:
                i += 2
            elif i < n:
                i += 1
        cols = []
        for col in range(6):
            column = array("q")
            column.frombytes((<char *>(buf + col * cap))[:rows * sizeof(int64_t)])
            cols.append(column)
        return tuple(cols)
    finally:
        free(buf)


def crai_offsets(coffs):
    """The distinct container offsets of a CRAI's lines, in order, or None when the lines
    are not in file order (then they are sorted first)."""
    cdef const int64_t[:] c = coffs
    cdef Py_ssize_t i, n = c.shape[0]
    cdef list out = []
    for i in range(n):
        if i and c[i] < c[i - 1]:
            return None
        if not i or c[i] != c[i - 1]:
            out.append(c[i])
    return out


def crai_bounds(starts, spans):
    """The lines' entries as CRAI lookups want them: 0-based [beg, end), one base wider on
    both sides (placed unmapped reads and zero spans: an extra container costs little, a
    missing one is wrong), as two array('q') columns."""
    from array import array
    cdef Py_ssize_t i, n = len(starts)
    cdef const int64_t[:] s = starts
    cdef const int64_t[:] sp = spans
    cdef int64_t beg, span
    lo, hi = array("q", bytes(8 * n)), array("q", bytes(8 * n))
    cdef int64_t[:] l = lo
    cdef int64_t[:] h = hi
    for i in range(n):
        beg = s[i] - 1 if s[i] > 0 else 0
        span = sp[i] if sp[i] > 1 else 1
        l[i] = beg - 1 if beg > 0 else 0
        h[i] = beg + span + 1
    return lo, hi


def crai_entries(refs, los, his, coffs):
    """Per reference ID, the entries (`crai_bounds`) and container offsets of its lines,
    sorted by (start, offset), with the running maximum of the ends:
    {ref: (starts, ends, offsets, max_ends)}."""
    cdef Py_ssize_t i, j, n = len(refs)
    cdef int64_t running
    cdef const int64_t[:] r = refs
    cdef const int64_t[:] l = los
    cdef const int64_t[:] h = his
    cdef const int64_t[:] c = coffs
    cdef dict out = {}
    cdef list item
    for i in range(n):
        item = out.get(r[i])
        if item is None:
            item = [[], [], []]
            out[r[i]] = item
        (<list>item[0]).append(l[i])
        (<list>item[1]).append(h[i])
        (<list>item[2]).append(c[i])
    result = {}
    for ref, item in out.items():
        st, en, of = item
        ordered = True
        for j in range(1, len(st)):
            if st[j] < st[j - 1] or (st[j] == st[j - 1] and of[j] < of[j - 1]):
                ordered = False
                break
        if not ordered:
            order = sorted(range(len(st)), key=lambda x: (st[x], of[x]))
            st = [st[x] for x in order]
            en = [en[x] for x in order]
            of = [of[x] for x in order]
        max_ends = []
        running = -1
        for j in range(len(en)):
            if en[j] > running:
                running = en[j]
            max_ends.append(running)
        result[ref] = (st, en, of, max_ends)
    return result
