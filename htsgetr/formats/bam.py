"""BAM (SAMv1 section 4.2) with a BAI or CSI index."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Optional

from .. import _records
from ..index.binning import check_binning_index, check_no_tabix, load_binning_index
from ..protocol import UNPLACED, Class, Format, NotFound, Query, merge_regions
from . import bgzf
from .base import Piece, Source, missing_index
from .blocks import BgzfLayout, IndexedFile, assemble, load_layout
from .exact import region_runs, unplaced_chunks


def bam_header_length(data: bytes) -> Optional[int]:
    """Length of the BAM header (magic, text, references) or None if `data` is too short."""
    if len(data) < 12:
        return None
    if data[:4] != b"BAM\x01":
        raise ValueError("not a BAM file")
    (l_text,) = struct.unpack_from("<i", data, 4)
    if l_text < 0:
        raise ValueError(f"corrupt BAM header: l_text={l_text}")
    pos: int = 8 + l_text
    if len(data) < pos + 4:
        return None
    (n_ref,) = struct.unpack_from("<i", data, pos)
    if n_ref < 0:
        raise ValueError(f"corrupt BAM header: n_ref={n_ref}")
    pos += 4
    for _ in range(n_ref):
        if len(data) < pos + 4:
            return None
        (l_name,) = struct.unpack_from("<i", data, pos)
        if l_name < 1:
            raise ValueError(f"corrupt BAM header: l_name={l_name}")
        pos += 4 + l_name + 4
        if len(data) < pos:
            return None
    return pos


def bam_reference_names(data: bytes) -> list[str]:
    """Reference names in header order (their position is the reference ID)."""
    (l_text,) = struct.unpack_from("<i", data, 4)
    pos: int = 8 + l_text
    (n_ref,) = struct.unpack_from("<i", data, pos)
    pos += 4
    names = []
    for _ in range(n_ref):
        (l_name,) = struct.unpack_from("<i", data, pos)
        names.append(data[pos + 4 : pos + 4 + l_name].rstrip(b"\0").decode())
        pos += 4 + l_name + 4
    return names


@dataclass
class BamFile(IndexedFile):
    ref_ids: dict[str, int] = field(default_factory=dict)  # header order is the reference ID


def index_candidates(key: str, ext: str, primary: tuple[str, ...]) -> list[str]:
    """`<file>.csi`, `<file>.<primary>`, then `<stem>.<primary>` (e.g. x.bam.bai, x.bai)."""
    stem = key[: -len(ext)] if key.endswith(ext) else key
    out = [f"{key}.csi"] + [f"{key}.{p}" for p in primary] + [f"{stem}.{p}" for p in primary]
    return out


def load_bam(source: Source, index_key: str, limits: bgzf.Limits = bgzf.DEFAULT_LIMITS) -> BamFile:
    """Header, layout and index of one BAM; a bad header, or an index that is corrupt, too
    large or not this file's, is an `InternalError` naming it (see index/binning.py)."""
    bgzf.prefetch_open(source, index_key, limits)  # remote: all of the below in one batch
    prefix, length = bgzf.read_prefix(
        source.storage, source.key, bam_header_length, limits.max_header_bytes
    )
    names = bam_reference_names(prefix.data[:length])
    layout = load_layout(source, prefix, length)
    index, index_size = load_binning_index(
        source.storage, index_key, ("BAI", "CSI"), limits.max_index_bytes
    )
    check_no_tabix(index, index_key)
    check_binning_index(
        index, index_key, source.key, prefix, length, layout.data_end, n_refs=len(names)
    )
    return BamFile(layout, index, index_size, {n: i for i, n in enumerate(names)})


def load_bam_layout(source: Source, limits: bgzf.Limits = bgzf.DEFAULT_LIMITS) -> BgzfLayout:
    """Header and body bounds alone, for a BAM without an index: whole-file and
    class=header tickets need nothing more."""
    bgzf.prefetch_open(source, None, limits)
    prefix, length = bgzf.read_prefix(
        source.storage, source.key, bam_header_length, limits.max_header_bytes
    )
    bam_reference_names(prefix.data[:length])  # a header that does not parse is refused
    return load_layout(source, prefix, length)


class BamHandler:
    format = Format.BAM
    extensions = (".bam",)

    def __init__(self, limits: bgzf.Limits = bgzf.DEFAULT_LIMITS) -> None:
        self.limits = limits  # max_header_bytes, max_index_bytes

    def sidecars(self, key: str) -> list[str]:
        """Files that go with `key`, asked about with it (one listing on S3)."""
        return index_candidates(key, ".bam", ("bai",)) + [key + ".gzi"]

    def open(self, source: Source, region: bool = False) -> BamFile:
        index_key = source.find(index_candidates(source.key, ".bam", ("bai",)))
        if index_key is None:
            raise missing_index(source.key, region)
        return self._open(source, index_key)

    def _open(self, source: Source, index_key: str) -> BamFile:
        limits = self.limits
        return bgzf.load_or_refuse(
            source, "bam", lambda: load_bam(source, index_key, limits), index_key
        )

    def prefetch(self, source: Source, query: Query) -> None:
        """Remote storage: the blocks `pieces` will read, in one parallel batch (with the
        first read that is not served from a cache)."""
        regions = query.regions
        if regions and query.klass is not Class.HEADER:
            bam = self.open(source, region=True)
            bam.read_ahead(source, regions, bam.ref_ids.get)

    def reference_names(self, source: Source) -> list[str]:
        """Reference names in header order: what a rule naming no reference expands to."""
        return list(self.open(source).ref_ids)

    def pieces(self, source: Source, query: Query) -> list[Piece]:
        """Header, the regions' records, EOF: exactly the records htslib returns for the
        regions, each once, in file order (formats/exact.py; `query.exact` changes nothing)."""
        if query.klass is Class.HEADER or query.regions is None:
            index_key = source.find(index_candidates(source.key, ".bam", ("bai",)))
            if index_key is None:  # no index: none needed for these
                limits = self.limits
                layout = bgzf.load_or_refuse(
                    source, "bam-layout", lambda: load_bam_layout(source, limits))
            else:
                layout = self._open(source, index_key).layout
            return assemble(source, layout, None, query.klass is Class.HEADER)
        bam = self.open(source, region=True)
        chunks: list[tuple[int, int]] = []
        for region in merge_regions(query.regions):
            if region.reference_name == UNPLACED:
                chunks.extend(unplaced_chunks(bam))
                continue
            ref_id = bam.ref_ids.get(region.reference_name)
            if ref_id is None:
                raise NotFound(f"reference {region.reference_name!r} is not in {query.id}")
            if ref_id >= bam.index.n_ref:
                continue  # the index lists no data for trailing references
            chunks.extend(region_runs(source, bam, ref_id, region, _records.BAM, ref_id))
        return assemble(source, bam.layout, chunks, False)
