"""CRAM 3.0 / 3.1 (and 2.1) with a CRAI index: record-exact region tickets.

Layout (CRAMv3 sections 6-9): a 26-byte file definition, the header container (whose first
block holds the SAM header text), data containers, and an EOF container. The header is the
file definition plus the header container, whose end is found by parsing the container
header. A region maps to the containers whose CRAI entries overlap it, each running from its
CRAI offset to the next container's start (or the EOF container): those the region covers
are sent as byte ranges, the others re-encoded with only the region's records (see
cram_recode.py; inline or through /data, derived.py). A container that cannot be decoded
(its reference is not available) is sent whole, or refused for a restricted query. The file
structure itself is parsed by cram_layout.py.
"""

from __future__ import annotations

from typing import Iterator, Optional

from ..index.crai import UNMAPPED, Crai
from ..protocol import (
    MAX_COORDINATE,
    UNPLACED,
    Class,
    Format,
    InternalError,
    NotFound,
    Query,
)
from .base import ByteRange, Inline, Piece, Source, missing_index
from .bgzf import DEFAULT_LIMITS, EDGE_BUDGET, Limits, load_or_refuse
from .cram_layout import (
    CONTAINER_HEAD_READ,
    CramFile,
    index_candidates,
    load_cram,
    verify_containers,
)
from .cram_recode import MAX_RECUT_BYTES, derived_recut, exact_body
from .cram_reference import NO_REFERENCES, References
from .derived import DerivedRef


class CramHandler:
    format = Format.CRAM
    extensions = (".cram",)

    def __init__(
        self, limits: Limits = DEFAULT_LIMITS, references: Optional[References] = None,
        reproducible: bool = True, max_recut_bytes: int = MAX_RECUT_BYTES,
    ) -> None:
        self.limits = limits  # max_header_bytes, max_index_bytes
        #: where reference-based containers may find their reference (cram_reference_path)
        self.references = references or NO_REFERENCES
        #: re-cuts sent inline encoded canonically too (cram_reproducible; cram_recode.recode);
        #: else by writers each worker keeps open
        self.reproducible = reproducible
        #: the largest container a re-cut reads (cram_max_recut_bytes): larger ones go whole
        self.max_recut_bytes = max_recut_bytes

    def sidecars(self, key: str) -> list[str]:
        """Files that go with `key`, asked about with it (one listing on S3)."""
        return index_candidates(key)

    def open(self, source: Source) -> CramFile:
        """The parsed header (no index needed: whole-file and header tickets work without)."""
        limits = self.limits
        return load_or_refuse(source, "cram", lambda: load_cram(source, limits))

    def prefetch(self, source: Source, query: Query) -> None:
        """Remote storage: the container heads `verify_containers` reads and the first and
        last container of each bounded region (re-encoded), in one parallel batch (with the
        first read that is not served from a cache)."""
        if not query.regions or query.klass is Class.HEADER:
            return
        cram = self.open(source)

        def plan() -> list[tuple[int, int]]:
            try:
                spans = list(self._spans(cram, query))
                crai = self._index(source)[1]
            except (NotFound, InternalError):
                return []  # pieces() says so
            reads: list[tuple[int, int]] = []
            for ref_id, beg, end in spans:
                offsets = sorted(crai.containers(ref_id, beg, end))
                edges = {offsets[0], offsets[-1]} if offsets and ref_id != UNMAPPED else set()
                for offset in offsets:
                    stop = crai.container_end(offset, cram.data_end)
                    if offset in edges and stop - offset <= EDGE_BUDGET:
                        reads.append((offset, stop))
                    elif offset not in crai.verified:
                        reads.append((offset, min(stop, offset + CONTAINER_HEAD_READ)))
            return reads if sum(b - a for a, b in reads) <= 4 * EDGE_BUDGET else []

        source.read_ahead(plan)

    def reference_names(self, source: Source) -> list[str]:
        """The @SQ names in header order (a name's position is its CRAM reference ID)."""
        return list(self.open(source).names)

    def index(self, source: Source) -> Crai:
        return self._index(source)[1]

    def _index(self, source: Source) -> tuple[str, Crai]:
        """The CRAI's key and its parsed (cached) form."""
        index_key = source.find(index_candidates(source.key))
        if index_key is None:
            raise missing_index(source.key)
        cram = self.open(source)
        limit = self.limits.max_index_bytes

        def load() -> Crai:
            size = source.storage.size(index_key)
            if size > limit:
                raise InternalError(f"{index_key} is larger than max_index_bytes ({limit})")
            crai = Crai.parse(source.storage.read(index_key, 0, size), index_key, limit)
            crai.check_bounds(index_key, cram.header_end, cram.data_end)
            return crai

        return index_key, load_or_refuse(source, "crai", load, index_key)

    def pieces(self, source: Source, query: Query) -> list[Piece]:
        cram = self.open(source)
        header: list[Piece] = [ByteRange(0, cram.header_end, Class.HEADER)]
        if query.klass is Class.HEADER:
            return header + [Inline(cram.eof, Class.HEADER)]
        body: list[Piece]
        if query.regions is None:
            body = [ByteRange(cram.header_end, cram.data_end, Class.BODY)]
        else:
            body = self._exact_body(source, cram, query)
        body = [p for p in body if not isinstance(p, ByteRange) or p.end > p.start]
        return header + body + [Inline(cram.eof, Class.BODY)]

    def _spans(self, cram: CramFile, query: Query) -> Iterator[tuple[int, int, int]]:
        """(reference ID, beg, end) of each region; UNMAPPED for `*`."""
        for region in query.regions or ():
            if region.reference_name == UNPLACED:
                yield UNMAPPED, 0, MAX_COORDINATE
                continue
            ref_id = cram.ref_ids.get(region.reference_name)
            if ref_id is None:
                raise NotFound(f"reference {region.reference_name!r} is not in {query.id}")
            beg = region.start or 0
            yield ref_id, beg, MAX_COORDINATE if region.end is None else region.end

    def _exact_body(self, source: Source, cram: CramFile, query: Query) -> list[Piece]:
        """Exactly the records htslib's region queries return, each once, in file order
        (where a container cannot be re-encoded: the whole container, unless `query.exact`)."""
        from .cram_selection import Selection

        spans = list(self._spans(cram, query))  # unknown references: NotFound first
        if not spans:
            return []
        placed = [s for s in spans if s[0] != UNMAPPED]
        selection = Selection.of(placed, unplaced=len(placed) < len(spans))
        index_key, crai = self._index(source)
        used: set[int] = set()
        for ref_id, beg, end in selection.spans():  # the containers exact_body reads
            used |= crai.containers(ref_id, beg, end)
        verify_containers(source, cram, crai, index_key, used)
        return exact_body(
            source, cram, crai, selection, query.exact, self.references,
            canonical=self.reproducible, max_recut_bytes=self.max_recut_bytes,
        )

    def derived(self, source: Source, ref: DerivedRef) -> bytes:
        """The bytes of a derived block (a re-encoded container a ticket named by url)."""
        cram = self.open(source)
        index_key, crai = self._index(source)
        return derived_recut(
            source, cram, crai, index_key, ref.start, ref.end, ref.token, self.references,
            self.max_recut_bytes,
        )
