"""Record-exact CRAM bodies: every region ticket holds exactly htslib's records, no others.

A container whose CRAI entries all lie inside one wanted interval of their reference holds
only wanted records (every record lies inside its slice's alignment span, and a record
inside an interval overlaps it) and is sent as a byte range. Any other container with wanted
records is re-encoded: its records are decoded with htslib (pysam, imported lazily), the
overlapping ones kept and written as a CRAM of the file's own version with `no_ref`, and that
output's data containers are sent (inline, or as a derived block through /data: derived.py).
The re-cut depends only on the file's version, the container and the wanted intervals as
they bear on that container (`Selection.clip`), so it is cached per region edge.

A container that cannot be decoded — a reference-based one whose reference is not found in
the configured directories (cram_reference.py), or no pysam — is sent whole for an ordinary
query (wider, still valid; logged), and refused with 403 for a restricted one (`Query.exact`,
authorization rules): never sent whole there.

"Overlapping" is htslib's region rule: a record on the interval's reference with
`pos < end` and `endpos > beg`, where `endpos` is `pos` + the CIGAR's reference length, or
`pos + 1` when that is 0 or the read is unmapped (`bam_endpos`).
"""

from __future__ import annotations

import logging
import operator
import struct
import zlib
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from .. import turns
from ..index.crai import Crai
from ..protocol import Class, InternalError, NotFound, PermissionDenied
from .base import ByteRange, Piece, Source
from .cram_encoder import EncodingFailed, scratch, write_checked
from .cram_layout import (
    BLOCK_RAW,
    FILE_DEFINITION_SIZE,
    CramFile,
    count_records,
    verify_containers,
)
from .cram_reference import NO_REFERENCES, Decoding, References, coding_header
from .cram_selection import Selection
from .derived import REFUSED, Deferred, Recut

#: content type of the block holding the SAM header (CRAMv3 section 8.1)
FILE_HEADER = 0
#: containers one ticket re-encodes (each is a decode and an encode of up to ~10,000
#: records): past it, the rest are derived blocks, each re-encoded when its url is fetched
#: (`derived.Deferred`), so a POST of many regions stays exact and its ticket quick
MAX_RECUTS = 256
#: records decoded between two pauses (turns.py) of a container's re-encoding
PAUSE_RECORDS = 1024
#: the largest container a re-cut reads into memory, by default (`cram_max_recut_bytes`).
#: htslib's containers are a few MB (10,000 records, at most ~5 Mbases a slice); one larger
#: is sent whole (refused under restrictions), so a crafted header and CRAI agreeing on a
#: huge container cost no memory
MAX_RECUT_BYTES = 256 << 20

log = logging.getLogger("htsgetr")

# --------------------------------------------------------------------------- body


@dataclass(frozen=True)
class Recoded:
    """The data containers holding the wanted records of one container (maybe none), or
    why it cannot be re-encoded (`refused`)."""

    data: bytes
    refused: Optional[str] = None

    @property
    def nbytes(self) -> int:
        return len(self.data) + 256


class CannotRecode(Exception):
    """A container this server cannot decode (no reference, no pysam, unreadable)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def exact_body(
    source: Source,
    cram: CramFile,
    crai: Crai,
    selection: Selection,
    strict: bool = True,
    references: References = NO_REFERENCES,
    canonical: bool = True,
    max_recut_bytes: int = MAX_RECUT_BYTES,
) -> list[Piece]:
    """Body pieces holding exactly the selected records, in file order, each once: byte
    ranges for covered containers, a `Recut` per re-encoded one (past `MAX_RECUTS`, a
    `Deferred` one). A container that cannot be re-encoded, or is larger than
    `max_recut_bytes`, is refused (403) when `strict`, else sent whole. `canonical`:
    `recode`'s, for the re-cuts made here."""
    offsets: set[int] = set()
    for ref_id, beg, end in selection.spans():
        offsets |= crai.containers(ref_id, beg, end)
    pieces: list[Piece] = []
    recuts = 0
    for offset in sorted(offsets):
        start = max(offset, cram.header_end)
        end = crai.container_end(offset, cram.data_end)  # verified: by its header
        if end <= start:
            continue
        entries = crai.entries(offset)
        if entries and all(selection.covers(*entry) for entry in entries):
            _append_range(pieces, start, end)
            continue
        wanted = selection.clip(entries)
        if wanted.empty:
            continue
        recuts += 1
        refs = {entry[0] for entry in entries}

        def recut(start: int = start, end: int = end, wanted: Selection = wanted,
                  refs: set[int] = refs) -> Optional[Piece]:
            # computed for the ticket, sent inline: a kept writer's encoding will do unless
            # `canonical` (a re-cut past the inline budget is served as a derived block, its
            # canonical encoding computed then: `derived_recut`)
            recoded = _recoded(source, cram, start, end, wanted, refs, references, canonical,
                               max_recut_bytes)
            if recoded.refused is not None:
                if strict:
                    raise PermissionDenied(REFUSED + recoded.refused)
                log.info(
                    "%s: the CRAM container at %d is sent whole (not re-cut to the region): "
                    "%s", source.key, start, recoded.refused,
                )
                return ByteRange(start, end, Class.BODY)
            if recoded.data:
                return Recut(recoded.data, Class.BODY, start, end, wanted.token())
            return None

        if recuts > MAX_RECUTS:
            whole = None if strict else ByteRange(start, end, Class.BODY)
            pieces.append(Deferred(b"", Class.BODY, start, end, wanted.token(), compute=recut,
                                   whole=whole))
            continue
        turns.pause()  # each re-encoding is ~10-35 ms: the worker's other requests go between
        made = recut()
        if isinstance(made, ByteRange):
            _append_range(pieces, start, end)
        elif made is not None:
            pieces.append(made)
    return pieces


def derived_recut(
    source: Source,
    cram: CramFile,
    crai: Crai,
    index_key: str,
    start: int,
    end: int,
    token: str,
    references: References = NO_REFERENCES,
    max_recut_bytes: int = MAX_RECUT_BYTES,
) -> bytes:
    """The bytes of the `Recut` that `exact_body` made for container `[start, end)` and the
    selection spelled `token`: the same bytes, recomputed (or cached). NotFound unless the
    container is one the CRAI indexes and `token` the canonical spelling of a selection as
    clipped to it; InternalError if it cannot be re-encoded (any more)."""
    offsets = crai.container_offsets
    i = bisect_left(offsets, start)
    if i == len(offsets) or offsets[i] != start or start < cram.header_end:
        raise NotFound("no such CRAM container: ask the ticket endpoint again")
    verify_containers(source, cram, crai, index_key, {start})
    if end != crai.container_end(start, cram.data_end):
        raise NotFound("no such CRAM container: ask the ticket endpoint again")
    wanted = Selection.parse(token)
    entries = crai.entries(start)
    if wanted is None or wanted.empty or wanted.clip(entries).token() != token:
        raise NotFound("no such selection of this CRAM container")
    refs = {entry[0] for entry in entries}
    recoded = _recoded(source, cram, start, end, wanted, refs, references,
                       max_recut_bytes=max_recut_bytes)
    if recoded.refused is not None:
        raise InternalError(f"this CRAM container cannot be re-encoded: {recoded.refused}")
    return recoded.data


def _append_range(pieces: list[Piece], start: int, end: int) -> None:
    last = pieces[-1] if pieces else None
    if isinstance(last, ByteRange) and last.end >= start:
        pieces[-1] = ByteRange(last.start, max(last.end, end), Class.BODY)
    else:
        pieces.append(ByteRange(start, end, Class.BODY))


def _recoded(
    source: Source, cram: CramFile, start: int, end: int, wanted: Selection,
    refs: set[int], references: References, canonical: bool = True,
    max_recut_bytes: int = MAX_RECUT_BYTES,
) -> Recoded:
    """The re-cut of container `[start, end)` (holding references `refs`) for `wanted`
    (clipped to it), cached per file version, container, selection, configured reference
    directories and encoding (`recode`'s `canonical`). A container larger than
    `max_recut_bytes` is never read (and its refusal not cached: the bound may change on
    reload)."""
    if end - start > max_recut_bytes:
        return Recoded(b"", f"the container is {end - start} bytes, more than a re-cut "
                            f"reads ({max_recut_bytes}, cram_max_recut_bytes)")
    kind = (f"cram-recut:{start}-{end}:{wanted.token()}:{references.fingerprint}"
            f"{'' if canonical else ':kept'}")
    return source.cached(kind, _recoder(source, cram, start, end, wanted, refs, references,
                                        canonical))


def _recoder(
    source: Source, cram: CramFile, start: int, end: int, wanted: Selection,
    refs: set[int], references: References, canonical: bool,
) -> Callable[[], Recoded]:
    def load() -> Recoded:
        chunk = source.read(start, end)
        coding = _coding(source, cram, references)
        if references.dirs:  # (which FASTA: a look through the @SQ lines)
            decoding = source.cached(
                f"cram-decoding:{sorted(refs)}:{references.fingerprint}",
                lambda: references.decoding(cram.header_text, refs, coding.text))
        else:
            decoding = references.decoding(cram.header_text, refs, coding.text)
        try:
            return Recoded(recode(cram, chunk, wanted, decoding, canonical, coding.head))
        except CannotRecode as exc:
            return Recoded(b"", exc.reason)

    return load


@dataclass(frozen=True)
class _Coding:
    """A file's `coding_header` and the file head (`file_head`) holding it: made once per
    file version (~4 ms for a GRCh38 header of 3,366 @SQ lines, ~0.1 s for 200,000)."""

    text: bytes
    head: bytes

    @property
    def nbytes(self) -> int:
        return len(self.text) + len(self.head) + 256


def _coding(source: Source, cram: CramFile, references: References) -> _Coding:
    tags = references.coding_tags

    def make() -> _Coding:
        text = coding_header(cram.header_text, tags)
        return _Coding(text, file_head(cram.version, text))

    return source.cached(f"cram-coding:{b','.join(tags).decode()}", make)


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


#: a record's end by its CIGAR, None when unmapped or without one (pysam's `reference_end`)
_reference_end = operator.attrgetter("reference_end")


def endpos(record: Any) -> int:
    """htslib's `bam_endpos`: reference end, or pos + 1 when unmapped or of no length."""
    end: Optional[int] = None if record.is_unmapped else record.reference_end
    pos: int = record.reference_start
    return end if end is not None and end > pos else pos + 1


def recode(cram: CramFile, chunk: bytes, selection: Selection,
           decoding: Optional[Decoding] = None, canonical: bool = True,
           head: Optional[bytes] = None) -> bytes:
    """Data containers (CRAM of the file's version, `no_ref`) holding the selected records
    of `chunk` (whole containers of the file), in order; b"" when there are none. Decoded
    as `decoding` says (default: no reference at all), behind `head` (default: `file_head`
    of its header). CannotRecode when htslib cannot decode them, or the re-encoding does not
    give the same records back.

    `canonical`: encoded by a new writer, so the bytes depend on the records alone: what a
    derived block must be, the same from every worker and every fetch (a client may ask
    for its ranges from different workers). Else by a writer kept open (cram_encoder.py),
    ~2.7x faster, whose bytes depend on what it encoded before: for a ticket's inline data."""
    try:
        import pysam
    except ImportError:
        raise CannotRecode("pysam is not installed on this server") from None
    if decoding is None:
        decoding = Decoding(coding_header(cram.header_text), None, None)
    major, minor = cram.version
    eof = cram.eof
    try:
        expected = count_records(chunk, 0, len(chunk), major)
    except ValueError as exc:
        raise CannotRecode(f"unreadable container ({exc})") from None
    if head is None:
        head = file_head(cram.version, decoding.header_text)
    # the worker's other requests go between its steps (decoding, every PAUSE_RECORDS
    # records; encoding; checking), except while a reference's REF_PATH is set for decoding:
    # that holds a lock, and nothing pauses holding one (turns.py)
    pause = turns.pause if decoding.ref_path is None else None
    # an anonymous file, handed to pysam as a descriptor (given a name, it would look for an
    # index beside it)
    with scratch() as src, decoding.environment():
        src.write(head)
        src.write(chunk)
        src.write(eof)
        src.flush()
        src.seek(0)
        try:
            with pysam.AlignmentFile(
                src.fileno(), "rc", check_sq=False, reference_filename=decoding.fasta
            ) as reader:
                header = reader.header
                decoded, kept = _wanted(reader.fetch(until_eof=True), selection, pause)
        except (OSError, ValueError) as exc:
            # a reference-based container whose reference is not in a configured directory
            raise CannotRecode(
                f"its records cannot be decoded without the reference ({exc})"
            ) from None
    if decoded is not None and decoded != expected:
        raise CannotRecode(f"decoded {decoded} of its {expected} records")
    if not kept:
        return b""
    turns.pause()
    try:
        return write_checked(kept, header, head, cram.version, cram.eof, canonical)
    except EncodingFailed as exc:
        raise CannotRecode(str(exc)) from None


def _wanted(records: Iterable[Any], selection: Selection,
            pause: Optional[Callable[[], None]] = None) -> tuple[Optional[int], list[Any]]:
    """The selected records of a container's, in order, read as htslib's region iterator
    reads a sorted file: up to the first record past the selection (`Selection.stop`).
    Also how many were decoded when all were (None when it stopped early). `pause`: called
    every PAUSE_RECORDS records."""
    stop = selection.stop()
    last_ref, last_beg, last_end = stop if stop is not None else (-2, 0, 0)
    # a single interval (a region's edge container): a record before it is wanted when it
    # reaches into it, which its CIGAR's end alone tells (None: unmapped or no CIGAR, so
    # `endpos` is pos + 1, not past the interval's start); most records of the container
    # are such, so this costs one attribute per record instead of `endpos` and `wants`
    alone = stop is not None and len(selection.spans()) == 1
    wants, reference_end = selection.wants, _reference_end
    kept: list[Any] = []
    decoded = 0
    every = PAUSE_RECORDS
    for record in records:
        decoded += 1
        if not decoded % every and pause is not None:
            pause()
        ref_id, pos = record.reference_id, record.reference_start
        if ref_id == last_ref:
            if pos >= last_end:
                return None, kept
            if pos >= last_beg:  # starts inside the last interval: overlaps it
                kept.append(record)
                continue
            if alone:
                end = reference_end(record)
                if end is not None and end > last_beg:
                    kept.append(record)
                continue
        elif stop is not None and (ref_id < 0 or ref_id > last_ref):
            return None, kept
        elif alone:  # another reference, before the interval's
            continue
        if wants(ref_id, pos, endpos(record)):
            kept.append(record)
    return decoded, kept
