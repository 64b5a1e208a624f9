"""Record-exact CRAM bodies (authorization rules): no record outside the wanted intervals.

A container whose CRAI entries all lie inside one wanted interval of their reference holds
only wanted records (every record lies inside its slice's alignment span, and a record
inside an interval overlaps it) and is sent as a byte range. Any other container with wanted
records is re-encoded: its records are decoded with htslib (pysam, imported lazily), the
overlapping ones kept and written as a CRAM of the file's own version with `no_ref`, and that
output's data containers are sent inline. A container that cannot be decoded without a
reference (or without pysam) is refused with 403, never sent whole.

"Overlapping" is htslib's region rule: a record on the interval's reference with
`pos < end` and `endpos > beg`, where `endpos` is `pos` + the CIGAR's reference length, or
`pos + 1` when that is 0 or the read is unmapped (`bam_endpos`).
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..index.crai import MULTI_REF, UNMAPPED, Crai
from ..protocol import Class, PermissionDenied
from .base import ByteRange, Inline, Piece, Source
from .cram import (
    BLOCK_RAW,
    FILE_DEFINITION_SIZE,
    CramFile,
    Truncated,
    parse_container_header,
    parse_header,
)

#: content type of the block holding the SAM header (CRAMv3 section 8.1)
FILE_HEADER = 0
#: @SQ tags that let htslib fetch a reference (EBI by MD5, a path or URL): never followed
REFERENCE_TAGS = (b"M5:", b"UR:")
REFUSED = "this CRAM region cannot be restricted to the record: "

Span = tuple[int, int]


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    """The wanted records: per reference ID, sorted disjoint half-open intervals (an empty
    one, `[a, a)`, wants the records covering `a`, as htslib does), and the unplaced ones."""

    intervals: dict[int, tuple[Span, ...]]
    unplaced: bool
    _ends: dict[int, list[int]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, spans: Iterable[tuple[int, int, int]], unplaced: bool) -> Selection:
        """From (reference ID, beg, end) triples, in any order, overlapping or not."""
        by_ref: dict[int, list[Span]] = {}
        for ref_id, beg, end in spans:
            by_ref.setdefault(ref_id, []).append((beg, max(beg, end)))
        intervals: dict[int, tuple[Span, ...]] = {}
        for ref_id, items in by_ref.items():
            items.sort()
            merged = [items[0]]
            for beg, end in items[1:]:
                # touching intervals merge too: a record overlapping either overlaps the
                # union and vice versa, since a record is never empty
                if beg <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], end))
                else:
                    merged.append((beg, end))
            intervals[ref_id] = tuple(merged)
        return cls(intervals, unplaced, {r: [e for _, e in v] for r, v in intervals.items()})

    def spans(self) -> list[tuple[int, int, int]]:
        out = [(r, b, e) for r, items in self.intervals.items() for b, e in items]
        return out + ([(UNMAPPED, 0, 0)] if self.unplaced else [])

    def wants(self, ref_id: int, pos: int, endpos: int) -> bool:
        """Does a record on `ref_id` covering `[pos, endpos)` overlap a wanted interval?"""
        if ref_id < 0:
            return self.unplaced
        ends = self._ends.get(ref_id)
        if ends is None:
            return False
        i = bisect_right(ends, pos)  # the first interval ending after pos
        return i < len(ends) and self.intervals[ref_id][i][0] < endpos

    def covers(self, ref_id: int, beg: int, end: int) -> bool:
        """Is every record inside `[beg, end)` (a CRAI entry's span) of `ref_id` wanted?"""
        if ref_id == UNMAPPED:
            return self.unplaced
        items = self.intervals.get(ref_id)
        if ref_id == MULTI_REF or not items or end <= beg:
            return False
        i = bisect_right(items, (beg, float("inf"))) - 1
        return i >= 0 and items[i][0] <= beg and end <= items[i][1]

    def key(self, ref_ids: Iterable[int]) -> str:
        """What of the selection can matter to a container holding `ref_ids` (cache key)."""
        refs = sorted(set(ref_ids))
        if MULTI_REF in refs:
            refs = sorted(self.intervals)
        parts = [f"{r}:{self.intervals.get(r, ())}" for r in refs if r >= 0]
        if UNMAPPED in refs or MULTI_REF in refs:
            parts.append(f"*:{self.unplaced}")
        return ";".join(parts)


@dataclass
class ContainerEntries:
    """The CRAI entries of each container: (reference ID, start, end), 0-based, as widened
    by one base on each side by `Crai` (a slice inside them is inside the real span too)."""

    entries: dict[int, list[tuple[int, int, int]]]

    @classmethod
    def of(cls, crai: Crai) -> ContainerEntries:
        entries: dict[int, list[tuple[int, int, int]]] = {}
        for ref_id, refs in crai.refs.items():
            for beg, end, offset in zip(refs.starts, refs.ends, refs.offsets):
                entries.setdefault(offset, []).append((ref_id, beg, end))
        return cls(entries)

    @property
    def nbytes(self) -> int:
        return 200 * sum(len(v) for v in self.entries.values()) + 4096


@dataclass(frozen=True)
class Recoded:
    """The data containers holding the wanted records of one container (maybe none)."""

    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data) + 256


# --------------------------------------------------------------------------- body


def exact_body(
    source: Source, cram: CramFile, crai: Crai, index_key: str, selection: Selection
) -> list[Piece]:
    """Body pieces holding exactly the selected records, in file order, each once."""
    by_container = source.cached("crai-containers", lambda: ContainerEntries.of(crai), index_key)
    offsets: set[int] = set()
    for ref_id, beg, end in selection.spans():
        offsets |= crai.containers(ref_id, beg, end)
    pieces: list[Piece] = []
    for offset in sorted(offsets):
        start = max(offset, cram.header_end)
        end = min(crai.next_container(offset, cram.data_end), cram.data_end)
        if end <= start:
            continue
        entries = by_container.entries.get(offset, [])
        last = pieces[-1] if pieces else None
        if entries and all(selection.covers(*entry) for entry in entries):
            if isinstance(last, ByteRange) and last.end >= start:
                pieces[-1] = ByteRange(last.start, max(last.end, end), Class.BODY)
            else:
                pieces.append(ByteRange(start, end, Class.BODY))
            continue
        kind = f"cram-exact:{start}-{end}:{selection.key(e[0] for e in entries)}"
        recoded = source.cached(kind, _recoder(source, cram, start, end, selection))
        if not recoded.data:
            continue
        if isinstance(last, Inline):  # adjacent re-encoded containers: one inline block
            pieces[-1] = Inline(last.data + recoded.data, Class.BODY)
        else:
            pieces.append(Inline(recoded.data, Class.BODY))
    return pieces


def _recoder(
    source: Source, cram: CramFile, start: int, end: int, selection: Selection
) -> Callable[[], Recoded]:
    return lambda: Recoded(recode(cram, source.read(start, end), selection))


# --------------------------------------------------------------------------- re-encoding


def itf8(value: int) -> bytes:
    """ITF8 (CRAMv3 2.3) of a 32-bit integer."""
    v = value & 0xFFFFFFFF
    if v < 0x80:
        return bytes([v])
    if v < 0x4000:
        return bytes([0x80 | v >> 8, v & 0xFF])
    if v < 0x200000:
        return bytes([0xC0 | v >> 16, (v >> 8) & 0xFF, v & 0xFF])
    if v < 0x10000000:
        return bytes([0xE0 | v >> 24, (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF])
    return bytes([0xF0 | v >> 28, (v >> 20) & 0xFF, (v >> 12) & 0xFF, (v >> 4) & 0xFF, v & 0x0F])


def _crc(data: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)


def without_reference_tags(text: bytes) -> bytes:
    """The SAM header without @SQ M5/UR, so htslib never looks a reference up (EBI's MD5
    service, REF_PATH, or whatever path or URL the file names)."""
    lines = []
    for line in text.split(b"\n"):
        if line.startswith(b"@SQ\t"):
            line = b"\t".join(f for f in line.split(b"\t") if f[:3] not in REFERENCE_TAGS)
        lines.append(line)
    return b"\n".join(lines)


def file_head(version: tuple[int, int], text: bytes) -> bytes:
    """File definition + a header container holding `text` in one raw block."""
    major = version[0]
    payload = struct.pack("<i", len(text)) + text
    block = bytes([BLOCK_RAW, FILE_HEADER]) + itf8(0) + itf8(len(payload)) * 2 + payload
    if major >= 3:
        block += _crc(block)
    # length, ref 0, start 0, span 0, 0 records, counter 0, 0 bases, 1 block, no landmarks
    head = struct.pack("<i", len(block)) + bytes(4) + b"\0\0" + itf8(1) + itf8(0)
    if major >= 3:
        head += _crc(head)
    definition = b"CRAM" + bytes(version) + bytes(FILE_DEFINITION_SIZE - 6)
    return definition + head + block


def count_records(data: bytes, start: int, end: int, major: int) -> int:
    """Records in the containers of `data[start:end]`; ValueError unless they tile it."""
    records, pos = 0, start
    while pos < end:
        try:
            c = parse_container_header(data, pos, major, pos)
        except Truncated:
            raise ValueError("a container is cut short") from None
        records, pos = records + c.n_records, c.end
    if pos != end:
        raise ValueError("containers do not end where expected")
    return records


def endpos(record: Any) -> int:
    """htslib's `bam_endpos`: reference end, or pos + 1 when unmapped or of no length."""
    end: Optional[int] = None if record.is_unmapped else record.reference_end
    pos: int = record.reference_start
    return end if end is not None and end > pos else pos + 1


def recode(cram: CramFile, chunk: bytes, selection: Selection) -> bytes:
    """Data containers (CRAM of the file's version, `no_ref`) holding the selected records
    of `chunk` (whole containers of the file), in order; b"" when there are none."""
    try:
        import pysam
    except ImportError:
        raise PermissionDenied(REFUSED + "pysam is not installed on this server") from None
    major, minor = cram.version
    eof = cram.eof
    try:
        expected = count_records(chunk, 0, len(chunk), major)
    except ValueError as exc:
        raise PermissionDenied(REFUSED + f"unreadable container ({exc})") from None
    head = file_head(cram.version, without_reference_tags(cram.header_text))
    # anonymous temporary files, handed to pysam as descriptors (given a name, it would look
    # for an index beside it)
    with tempfile.TemporaryFile() as src, tempfile.TemporaryFile() as dst:
        src.write(head + chunk + eof)
        src.flush()
        src.seek(0)
        try:
            with pysam.AlignmentFile(src.fileno(), "rc", check_sq=False) as reader:
                header = reader.header
                decoded = list(reader.fetch(until_eof=True))
        except (OSError, ValueError) as exc:
            # e.g. a reference-based container: this server never fetches references
            raise PermissionDenied(
                REFUSED + f"its records cannot be decoded without the reference ({exc})"
            ) from None
        if len(decoded) != expected:
            raise PermissionDenied(REFUSED + f"decoded {len(decoded)} of its {expected} records")
        kept = [r for r in decoded if selection.wants(r.reference_id, r.reference_start,
                                                          endpos(r))]
        if not kept:
            return b""
        options = ["no_ref=1", f"version={major}.{minor}"]
        with pysam.AlignmentFile(
            dst.fileno(), "wc", header=header, format_options=options
        ) as writer:
            for record in kept:
                writer.write(record)
        dst.seek(0)
        out = dst.read()
        try:
            start = parse_header(out)[1].end
            if not out.endswith(eof):
                raise ValueError("no EOF container")
            written = count_records(out, start, len(out) - len(eof), major)
            if written != len(kept):
                raise ValueError(f"{written} records written of {len(kept)}")
            dst.seek(0)
            with pysam.AlignmentFile(dst.fileno(), "rc", check_sq=False) as check:
                again = [r.to_string() for r in check.fetch(until_eof=True)]
        except (OSError, ValueError, Truncated) as exc:
            raise PermissionDenied(REFUSED + f"re-encoding failed ({exc})") from None
        if again != [r.to_string() for r in kept]:
            raise PermissionDenied(REFUSED + "re-encoding changed its records")
        return out[start : len(out) - len(eof)]
