"""Type stub for the Cython extension htsgetr._ranges (binning indexes -> chunks)."""

from array import array
from collections.abc import Iterable
from typing import Union

#: what the parsers read: kept (not copied) for as long as the index lives
Buffer = Union[bytes, bytearray, memoryview]

class BinningIndex:
    """A parsed BAI, CSI or TBI index; build one with parse_bai, parse_csi or parse_tbi.

    References are decoded lazily, on the first query that touches them, and cached.
    """

    @property
    def kind(self) -> str:
        """"BAI", "CSI" or "TBI"."""
    @property
    def min_shift(self) -> int:
        """log2 of the smallest bin's width (14 for BAI/TBI)."""
    @property
    def depth(self) -> int:
        """Number of levels below bin 0 (5 for BAI/TBI)."""
    @property
    def n_ref(self) -> int:
        """Number of references in the index."""
    @property
    def n_no_coor(self) -> int | None:
        """Trailing count of unplaced unmapped records, None when the file omits it."""
    @property
    def aux(self) -> bytes:
        """CSI auxiliary data (b"" when absent, and always for BAI/TBI)."""
    @property
    def fmt(self) -> int:
        """Tabix format (0 generic, 1 SAM, 2 VCF, | 0x10000 zero-based); -1 without meta."""
    @property
    def col_seq(self) -> int:
        """Tabix: 1-based column of the sequence name."""
    @property
    def col_beg(self) -> int:
        """Tabix: 1-based column of the start position."""
    @property
    def col_end(self) -> int:
        """Tabix: 1-based column of the end position (0: none)."""
    @property
    def meta(self) -> int:
        """Tabix: character code of comment lines (e.g. ord("#"))."""
    @property
    def skip(self) -> int:
        """Tabix: number of header lines to skip."""
    @property
    def names(self) -> list[str]:
        """Tabix: sequence names, in reference-id order ([] without tabix meta)."""
    def query(self, ref_id: int, beg: int, end: int) -> list[tuple[int, int]]:
        """Sorted, merged (vbeg, vend) virtual-offset chunks that may hold records
        overlapping the 0-based half-open [beg, end) of reference ref_id. Chunks merge when
        they overlap or touch, or when the gap between them lies inside one BGZF block (as
        htslib reads through it).

        Raises IndexError for a ref_id outside [0, n_ref).
        """
    def bounds(self, ref_id: int, beg: int, end: int) -> tuple[int, int]:
        """htslib's (min_off, max_off) for the 0-based half-open [beg, end) of ref_id, as
        hts_itr_query computes them: no record before min_off overlaps the region (linear
        index / bin loffset, with the unmapped-read adjustment), and every record at or
        after max_off (the first chunk of the nearest bin right of end) starts at or after
        end; max_off is 2**64 - 1 when there is no such bin. (0, 2**64 - 1) for a
        reference without bins or an empty region. Raises IndexError like query."""
    def ref_meta(self, ref_id: int) -> tuple[int, int, int, int] | None:
        """(unmapped_beg_voffset, unmapped_end_voffset, n_mapped, n_unmapped) from the
        reference's pseudo-bin, or None when it has none."""
    def last_end(self) -> int:
        """Largest chunk end over all bins of all references (0 if none): unplaced
        unmapped records start at or after it."""
    def has_data(self, ref_id: int) -> bool:
        """True when the reference has any bins."""
    def validate(self, data_end: int) -> int | None:
        """Check the index against the data file it is used for; `data_end` is the virtual
        offset where that file's records end (the start of its EOF block).

        Raises ValueError naming the first offence in file order: a bin number outside the
        index's min_shift/depth (other than the pseudo-bin), a bin twice in a reference, a
        chunk that ends before it starts, a chunk, CSI loffset or linear-index entry past
        `data_end` (linear entries 0 and all-ones mean "none"). Cheap: the construction
        scan gathered what it compares. Returns the smallest start of a non-empty chunk
        (an index of this file puts its first record there), or None without chunks.
        """

def parse_bai(data: Buffer) -> BinningIndex:
    """Parse a BAI file's bytes. Raises ValueError when truncated or corrupt."""

def parse_csi(data: Buffer) -> BinningIndex:
    """Parse CSI bytes, already decompressed from BGZF. Raises ValueError when invalid."""

def parse_tbi(data: Buffer) -> BinningIndex:
    """Parse TBI bytes, already decompressed from BGZF. Raises ValueError when invalid."""

def reg2bins(beg: int, end: int, min_shift: int, depth: int) -> list[int]:
    """Bins, level by level, that may hold records overlapping [beg, end) (CSIv1)."""

def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort (start, end) byte ranges and merge overlapping or touching ones.

    Empty ranges are dropped; start > end raises ValueError.
    """

def parse_crai_lines(text: Buffer) -> tuple[array[int], ...]:
    """The six integer columns of CRAI text (reference ID, 1-based start, span, container
    offset, slice offset, slice size), one entry per non-blank line; ValueError("line N:
    ...") for the first malformed line."""

def crai_offsets(coffs: array[int]) -> list[int] | None:
    """The distinct container offsets, in order; None when the lines are not in file
    order."""

def crai_bounds(starts: array[int], spans: array[int]) -> tuple[array[int], array[int]]:
    """The lines' entries: 0-based [beg, end), one base wider on both sides."""

def crai_entries(
    refs: array[int], los: array[int], his: array[int], coffs: array[int]
) -> dict[int, tuple[list[int], list[int], list[int], list[int]]]:
    """Per reference ID: (starts, ends, container offsets, running max of ends), sorted by
    (start, offset)."""
