"""Loading BAI, CSI and TBI indexes (one binning structure, parsed by the Cython core), and
checking them against the data file they are used for.

htslib reads an index and trusts it; a wrong one shows up as missing records, a failed seek
or garbage. Here an index is checked once when it is loaded (the result is cached with it)
and a wrong one is refused with an `InternalError` naming it: never a ticket that silently
lacks records. What is checked, besides the structure the parser checks:

- kind: BAI or CSI for BAM, CSI for BCF (neither with tabix meta), TBI or CSI with tabix
  meta of the VCF kind for VCF;
- bins: every bin number is a bin of the index's min_shift/depth, or the pseudo-bin, and
  appears once per reference;
- chunks: none ends before it starts, none ends (nor any CSI loffset or linear-index entry
  points) past the data file's records, i.e. the start of its EOF block;
- the first record: the smallest chunk start is where the data file's header ends, which
  is where an index written for this file puts it (any other file: almost never);
- references: as many as the header declares (BAM: n_ref; BCF: the contigs), and for tabix
  as many names as references, each once.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Optional, Union

from .._ranges import BinningIndex, parse_bai, parse_csi, parse_tbi
from ..formats.bgzf import Prefix, TooLarge, coffset, inflate, uoffset
from ..protocol import InternalError
from ..storage.base import Storage

#: tabix meta `format` values (low 16 bits; 0x10000 marks zero-based coordinates)
TBX_GENERIC, TBX_SAM, TBX_VCF = 0, 1, 2


def parse_binning_index(
    data: Union[bytes, bytearray], name: str = "index", limit: Optional[int] = None
) -> tuple[BinningIndex, int]:
    """Parse any of BAI (raw), CSI or TBI (both BGZF-compressed), by magic number.

    Returns the index and the bytes it keeps (the parser reads the buffer lazily), which
    the per-worker cache counts against its budget. A compressed index that inflates to
    more than `limit` bytes is refused while inflating.
    """
    try:
        if data[:2] == b"\x1f\x8b":
            data = inflate(data, limit, name)
        magic = bytes(data[:4])
        if magic == b"BAI\x01":
            return parse_bai(data), len(data)
        if magic == b"CSI\x01":
            return parse_csi(data), len(data)
        if magic == b"TBI\x01":
            return parse_tbi(data), len(data)
    except TooLarge:
        raise InternalError(f"{name} is larger than max_index_bytes ({limit})") from None
    except ValueError as exc:
        raise InternalError(f"{name} is corrupt: {exc}") from None
    raise InternalError(f"{name} is not a BAI, CSI or TBI index")


def load_binning_index(
    storage: Storage, key: str, kinds: Collection[str], limit: int
) -> tuple[BinningIndex, int]:
    """Read, inflate (at most `limit` bytes, config max_index_bytes) and parse an index,
    which must be one of `kinds` ("BAI", "CSI", "TBI")."""
    size = storage.size(key)
    if size > limit:
        raise InternalError(f"{key} is larger than max_index_bytes ({limit})")
    index, nbytes = parse_binning_index(storage.read(key, 0, size), key, limit)
    if index.kind not in kinds:
        wanted = " or ".join(sorted(kinds))
        raise InternalError(f"{key} is a {index.kind} index, where {wanted} is needed")
    return index, nbytes


def check_binning_index(
    index: BinningIndex,
    key: str,
    data_key: str,
    prefix: Prefix,
    header_len: int,
    data_end: int,
    n_refs: Optional[int] = None,
) -> None:
    """Refuse an index inconsistent with the data file `data_key`: its header (`prefix`
    holds its first `header_len` bytes), `data_end` (where its records end: the start of its
    EOF block, else its size) and, where the header says, its number of references."""
    try:
        first = index.validate(data_end << 16)
    except ValueError as exc:
        raise InternalError(f"{key} is corrupt: {exc}") from None
    if first is not None and not prefix.names_position(first, header_len):
        raise InternalError(
            f"{key} does not index {data_key}: its first chunk starts at "
            f"{coffset(first)}:{uoffset(first)}, not where the header ends"
        )
    if n_refs is not None and index.n_ref != n_refs:
        raise InternalError(
            f"{key} does not index {data_key}: it has {index.n_ref} references, the header {n_refs}"
        )


def check_no_tabix(index: BinningIndex, key: str) -> None:
    """A BAM or BCF index is not a tabix index (a CSI of those has no tabix meta)."""
    if index.fmt != -1:
        raise InternalError(f"{key} is a tabix index (of a text file), not one for this file")


def check_tabix(index: BinningIndex, key: str, data_key: str, contigs: Collection[str]) -> None:
    """A VCF index: tabix meta of the VCF kind (or generic, columns 1 and 2, which reads a
    VCF the same way), one name per reference, each once; and when both the header and the
    index name contigs, some in common (an index of another file names others)."""
    if index.fmt == -1:
        raise InternalError(f"{key} has no tabix meta: it is not an index of a VCF")
    fmt = index.fmt & 0xFFFF
    generic_vcf = fmt == TBX_GENERIC and index.col_seq == 1 and index.col_beg == 2
    if fmt != TBX_VCF and not generic_vcf:
        raise InternalError(f"{key} is a tabix index of another kind (format {fmt}), not VCF")
    names = index.names
    if len(names) != index.n_ref:
        raise InternalError(
            f"{key} is corrupt: {len(names)} sequence names for {index.n_ref} references"
        )
    if len(set(names)) != len(names):
        raise InternalError(f"{key} is corrupt: a sequence name appears twice")
    if names and contigs and not set(names) & set(contigs):
        raise InternalError(
            f"{key} does not index {data_key}: none of its sequence names is a contig of the header"
        )
