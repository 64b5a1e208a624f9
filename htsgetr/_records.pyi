"""Type stub for the Cython extension htsgetr._records (record walks that trim chunks)."""

#: record kinds
BAM: int
BCF: int
VCF: int
#: scan outcomes
NEED_MORE: int
PAST: int
LIMIT: int
OPEN_END: int

def scan(
    buf: bytes,
    pos: int,
    limit: int,
    kind: int,
    ref_id: int,
    ref_name: bytes,
    beg: int,
    end: int,
    open_end: bool,
) -> tuple[int, int, int, int]:
    """Walk records from `pos` while they start before `limit` (-1: no limit in `buf`).

    Returns (outcome, pos, first, last): where the walk stopped (a record start), the start of
    the first record overlapping [beg, end) on the reference and the end of the last one
    (-1 when none). Overlap as htslib decides it.
    """

def runs(
    buf: bytes,
    pos: int,
    limit: int,
    kind: int,
    ref_id: int,
    ref_name: bytes,
    beg: int,
    end: int,
    open_end: bool,
) -> tuple[int, int, list[tuple[int, int]]]:
    """Walk records from `pos` while they start before `limit` (-1: no limit in `buf`) and
    report maximal runs of consecutive records overlapping [beg, end), overlap exactly as
    htslib 1.24 decides it (BCF: POS + rlen; VCF: tabix's REF / END / SVLEN / LEN rules).

    Returns (outcome, pos, runs): `runs` as (start, end) buffer positions, `pos` where the
    walk stopped. PAST: a record of another reference or at/after `end`; OPEN_END (only with
    `open_end`): the record at `pos` and all later ones of the reference overlap.
    """
