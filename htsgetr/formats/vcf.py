"""VCF (bgzipped, with TBI or CSI) and BCF (with CSI): variant tickets.

Reference IDs differ: a VCF index carries the contig names itself (tabix meta); a BCF index
does not, its IDs follow the BCF header's contig dictionary (IDX= where present).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional

from .. import _records
from ..index.binning import (
    check_binning_index,
    check_no_tabix,
    check_tabix,
    load_binning_index,
)
from ..protocol import Class, Format, NotFound, Query, merge_regions
from . import bgzf
from .bam import index_candidates
from .base import Piece, Source, missing_index
from .blocks import BgzfLayout, IndexedFile, assemble, load_layout
from .exact import region_runs

_CONTIG = re.compile(rb"^##contig=<(.*)>\s*$", re.MULTILINE)
_ID = re.compile(rb"(?:^|,)ID=([^,>]+)")
_IDX = re.compile(rb"(?:^|,)IDX=(\d+)")


def vcf_header_length(data: bytes) -> Optional[int]:
    """Length of the `#` lines at the start of `data`, or None if they may continue."""
    pos = 0
    while pos < len(data):
        if data[pos] != 0x23:  # '#'
            return pos
        nl = data.find(b"\n", pos)
        if nl < 0:
            return None
        pos = nl + 1
    return None


def bcf_header_length(data: bytes) -> Optional[int]:
    """BCF: magic 'BCF\\2\\x', l_text, text."""
    if len(data) < 9:
        return None
    if data[:3] != b"BCF" or data[3] != 2:
        raise ValueError("not a BCF 2 file")
    (l_text,) = struct.unpack_from("<I", data, 5)
    return 9 + l_text if len(data) >= 9 + l_text else None


def header_contigs(text: bytes) -> dict[str, int]:
    """Contig names of a VCF/BCF header with their dictionary index (IDX= wins)."""
    contigs: dict[str, int] = {}
    for i, match in enumerate(_CONTIG.finditer(text)):
        ident = _ID.search(match.group(1))
        if not ident:
            continue
        idx = _IDX.search(match.group(1))
        contigs[ident.group(1).decode()] = int(idx.group(1)) if idx else i
    return contigs


@dataclass
class VariantFile(IndexedFile):
    header_names: frozenset[str] = frozenset()  # contigs of the header and of the index
    ref_ids: dict[str, int] = field(default_factory=dict)  # contig -> index reference ID
    names: tuple[str, ...] = ()  # header order (BCF: by IDX), then names only the index has


def _load(
    source: Source,
    index_key: str,
    header_length: Callable[[bytes], Optional[int]],
    is_bcf: bool,
    limits: bgzf.Limits = bgzf.DEFAULT_LIMITS,
) -> VariantFile:
    """Header, layout and index; a bad header, or an index that is corrupt, too large or
    not this file's, is an `InternalError` naming it (see index/binning.py)."""
    bgzf.prefetch_open(source, index_key, limits)  # remote: all of the below in one batch
    prefix, length = bgzf.read_prefix(
        source.storage, source.key, header_length, limits.max_header_bytes
    )
    text = prefix.data[:length]
    layout = load_layout(source, prefix, length)
    kinds = ("CSI",) if is_bcf else ("TBI", "CSI")
    index, index_size = load_binning_index(source.storage, index_key, kinds, limits.max_index_bytes)
    contigs = header_contigs(text)
    if is_bcf:
        # bcftools indexes every contig of the header (htslib's bcf_index: nids)
        check_no_tabix(index, index_key)
        n_refs: Optional[int] = len(contigs)
    else:
        # tabix lists the contigs it saw, which the header need not declare
        check_tabix(index, index_key, source.key, contigs)
        n_refs = None
    check_binning_index(index, index_key, source.key, prefix, length, layout.data_end, n_refs)
    if is_bcf:
        ref_ids = dict(contigs)
    else:
        ref_ids = {name: i for i, name in enumerate(index.names)}
    ordered = sorted(contigs, key=contigs.__getitem__) if is_bcf else list(contigs)
    names = tuple(ordered + [n for n in ref_ids if n not in contigs])
    return VariantFile(
        layout, index, index_size, frozenset(contigs) | frozenset(ref_ids), ref_ids, names
    )


class _VariantHandler:
    format: Format
    extensions: tuple[str, ...]
    _index_exts: tuple[str, ...]
    _header_length: Callable[[bytes], Optional[int]]

    def __init__(self, limits: bgzf.Limits = bgzf.DEFAULT_LIMITS) -> None:
        self.limits = limits  # max_header_bytes, max_index_bytes

    def sidecars(self, key: str) -> list[str]:
        """Files that go with `key`, asked about with it (one listing on S3)."""
        return index_candidates(key, self.extensions[0], self._index_exts) + [key + ".gzi"]

    def open(self, source: Source, region: bool = False) -> VariantFile:
        ext = self.extensions[0]
        index_key = source.find(index_candidates(source.key, ext, self._index_exts))
        if index_key is None:
            raise missing_index(source.key, region)
        return self._open(source, index_key)

    def _open(self, source: Source, index_key: str) -> VariantFile:
        is_bcf = self.format is Format.BCF
        header_length = self._header_length
        limits = self.limits
        return bgzf.load_or_refuse(
            source,
            self.format.value,
            lambda: _load(source, index_key, header_length, is_bcf, limits),
            index_key,
        )

    def _layout(self, source: Source) -> BgzfLayout:
        """Header and body bounds alone, for a file without an index."""
        bgzf.prefetch_open(source, None, self.limits)
        prefix, length = bgzf.read_prefix(
            source.storage, source.key, self._header_length, self.limits.max_header_bytes
        )
        return load_layout(source, prefix, length)

    def prefetch(self, source: Source, query: Query) -> None:
        """Remote storage: the blocks `pieces` will read, in one parallel batch (with the
        first read that is not served from a cache)."""
        regions = query.regions
        if regions and query.klass is not Class.HEADER:
            vf = self.open(source, region=True)
            vf.read_ahead(source, regions, vf.ref_ids.get)

    def reference_names(self, source: Source) -> list[str]:
        """Contig names in header order (BCF: dictionary order), then any the index alone
        knows: what a rule naming no reference expands to."""
        return list(self.open(source).names)

    def pieces(self, source: Source, query: Query) -> list[Piece]:
        """Header, the regions' records, EOF: exactly the records htslib returns for the
        regions, each once, in file order (formats/exact.py; `query.exact` changes nothing)."""
        if query.klass is Class.HEADER or query.regions is None:
            ext = self.extensions[0]
            index_key = source.find(index_candidates(source.key, ext, self._index_exts))
            if index_key is None:  # no index: none needed for these
                layout = bgzf.load_or_refuse(
                    source, f"{self.format.value}-layout", lambda: self._layout(source))
            else:
                layout = self._open(source, index_key).layout
            return assemble(source, layout, None, query.klass is Class.HEADER)
        vf = self.open(source, region=True)
        chunks: list[tuple[int, int]] = []
        is_bcf = self.format is Format.BCF
        kind = _records.BCF if is_bcf else _records.VCF
        for region in merge_regions(query.regions):
            name = region.reference_name
            if name not in vf.header_names:
                raise NotFound(f"reference {name!r} is not in {query.id}")
            ref_id = vf.ref_ids.get(name)
            if ref_id is None or ref_id >= vf.index.n_ref:
                continue  # declared in the header, but no records
            target_ref = ref_id if is_bcf else name.encode()
            chunks.extend(region_runs(source, vf, ref_id, region, kind, target_ref))
        return assemble(source, vf.layout, chunks, False)


class VcfHandler(_VariantHandler):
    format = Format.VCF
    extensions = (".vcf.gz",)
    _index_exts = ("tbi",)
    _header_length = staticmethod(vcf_header_length)


class BcfHandler(_VariantHandler):
    format = Format.BCF
    extensions = (".bcf",)
    _index_exts = ()
    _header_length = staticmethod(bcf_header_length)
