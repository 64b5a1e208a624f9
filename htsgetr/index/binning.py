"""Loading BAI, CSI and TBI indexes (one binning structure, parsed by the Cython core)."""

from __future__ import annotations

from .._ranges import BinningIndex, parse_bai, parse_csi, parse_tbi
from ..formats.bgzf import gunzip
from ..protocol import InternalError


def parse_binning_index(data: bytes, name: str = "index") -> tuple[BinningIndex, int]:
    """Parse any of BAI (raw), CSI or TBI (both BGZF-compressed), by magic number.

    Returns the index and the bytes it keeps (the parser reads the buffer lazily), which
    the per-worker cache counts against its budget.
    """
    try:
        if data[:2] == b"\x1f\x8b":
            data = gunzip(data)
        magic = data[:4]
        if magic == b"BAI\x01":
            return parse_bai(data), len(data)
        if magic == b"CSI\x01":
            return parse_csi(data), len(data)
        if magic == b"TBI\x01":
            return parse_tbi(data), len(data)
    except ValueError as exc:
        raise InternalError(f"{name} is corrupt: {exc}") from None
    raise InternalError(f"{name} is not a BAI, CSI or TBI index")
