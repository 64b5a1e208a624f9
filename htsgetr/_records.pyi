"""Type stub for the Cython extension htsgetr._records (record walks for exact tickets)."""

#: record kinds
BAM: int
BCF: int
VCF: int
#: walk outcomes
NEED_MORE: int
PAST: int
LIMIT: int
OPEN_END: int

def runs(
    buf: bytes | bytearray | memoryview,
    pos: int,
    limit: int,
    kind: int,
    ref_id: int,
    ref_name: bytes,
    beg: int,
    end: int,
    open_end: bool,
) -> tuple[int, int, list[tuple[int, int]], int, int]:
    """Walk records from `pos` while they start before `limit` (-1: no limit in `buf`) and
    report maximal runs of consecutive records overlapping [beg, end), overlap exactly as
    htslib 1.24 decides it (BAM: CIGAR reference length, at least 1; BCF: POS + rlen; VCF:
    tabix's REF / END / SVLEN / LEN rules).

    Returns (outcome, pos, runs, odd, reach): `runs` as (start, end) buffer positions, `pos`
    where the walk stopped, `odd` the VCF lines walked that tabix does not read as records,
    `reach` the furthest end of the records walked past (-1 for none). PAST:
    a record of another reference or at/after `end`; OPEN_END (only with `open_end`): the
    record at `pos` and all later ones of the reference overlap.
    """

def record_end(buf: bytes | bytearray | memoryview, pos: int, kind: int, scanned: int) -> int:
    """Where the record at `pos` ends, or -1 while it runs past `buf` (when `runs` would
    stop there with NEED_MORE); a VCF line is searched for its newline from `scanned` on."""

def head(
    buf: bytes | bytearray | memoryview, pos: int, kind: int, ref_id: int, ref_name: bytes
) -> tuple[int, int]:
    """(state, beg) of the record starting at `pos`: -1 when `buf` is too short to tell,
    0 when it is not a record or is on another reference, 1 when it is on the reference
    (ref_id for BAM/BCF, ref_name for VCF) and starts at 0-based `beg`."""
