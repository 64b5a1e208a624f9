"""Type stub for the Cython extension htsgetr._records (record walks for chunk trimming)."""

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
