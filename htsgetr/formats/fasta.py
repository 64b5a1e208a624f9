"""FASTA and FASTQ on /sequences (our extension), plain or bgzipped, with a `.fai`.

No region: the whole file. A region of a FASTA file gives the record `>name:start+1-end`
whose sequence equals `samtools faidx file name:start+1-end`: the header line is inline and
the line-wrapped sequence bytes are a byte range cut exactly at the requested bases. For a
bgzipped file the payload is BGZF: whole blocks as byte ranges, the partial first and last
blocks (and the header lines) re-compressed inline, one EOF marker at the end. A FASTQ
`.fai` (samtools fqidx) selects one read by name (its record, byte for byte), or a part of
it with start/end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ..index.fai import BlockMap, Fai, FaiEntry, load_block_map
from ..protocol import (
    Class,
    Format,
    InternalError,
    InvalidInput,
    InvalidRange,
    NotFound,
    Query,
    Region,
)
from . import bgzf
from .base import ByteRange, Inline, Piece, Source, missing_index

PLAIN, BGZF, GZIP = "plain", "bgzf", "gzip"
#: Bytes read backwards from a FASTQ sequence to find the start of its `@name` line.
NAME_LINE_READ = 4096


def compression(head: bytes) -> str:
    """PLAIN, BGZF or GZIP (a gzip file that is not BGZF: only whole-file requests)."""
    if head[:2] != b"\x1f\x8b":
        return PLAIN
    try:
        bgzf.block_size(head)
    except ValueError:
        return GZIP
    return BGZF


@dataclass
class SeqFile:
    """A FASTA/FASTQ file with its index, in uncompressed coordinates."""

    key: str
    size: int
    kind: str
    fai: Optional[Fai]
    blocks: Optional[BlockMap]  # BGZF only

    def entry(self, name: str, query: Query) -> FaiEntry:
        if self.fai is None:
            raise missing_index(self.key)
        if self.kind == GZIP:
            raise InvalidInput(
                f"{query.id} is gzip- but not BGZF-compressed: only the whole file can be served"
            )
        entry = self.fai.get(name)
        if entry is None:
            raise NotFound(f"reference {name!r} is not in {query.id}")
        return entry

    def read(self, source: Source, start: int, end: int) -> bytes:
        """Uncompressed bytes [start, end) (shorter at the end of the file)."""
        if self.blocks is None:
            return source.read(start, end)
        blocks, out = self.blocks, []
        end = min(end, blocks.total)
        pos = start
        while pos < end:
            i = blocks.block_at(pos)
            data = _block_data(source, blocks, i)
            out.append(data[pos - blocks.uoffsets[i] : end - blocks.uoffsets[i]])
            pos = blocks.uoffsets[i + 1]
        return b"".join(out)


def _block_data(source: Source, blocks: BlockMap, i: int) -> bytes:
    raw = source.read(blocks.coffsets[i], blocks.coffsets[i + 1])
    try:
        return bgzf.decompress_block(raw) if raw else b""
    except (ValueError, IndexError):
        raise InternalError(f"{source.key}: corrupt BGZF block at {blocks.coffsets[i]}") from None


def load_seqfile(source: Source, fai_key: Optional[str], gzi_key: Optional[str]) -> SeqFile:
    size = source.storage.size(source.key)
    kind = compression(source.read(0, bgzf.HEADER_SIZE + 64))
    fai = Fai(source.read_all(fai_key), fai_key) if fai_key else None
    blocks = None
    if kind == BGZF and fai is not None:
        gzi = source.read_all(gzi_key) if gzi_key else None
        blocks = load_block_map(source.storage, source.key, gzi)
    return SeqFile(source.key, size, kind, fai, blocks)


Part = Union[bytes, tuple[int, int]]


class Payload:
    """What a ticket sends, in uncompressed terms: literal bytes and spans of the file."""

    def __init__(self, seq: SeqFile) -> None:
        self.seq = seq
        self.parts: list[Part] = []

    def literal(self, data: bytes) -> None:
        if data:
            self.parts.append(data)

    def span(self, start: int, end: int) -> None:
        if end > start:
            self.parts.append((start, end))

    def pieces(self, source: Source) -> list[Piece]:
        if self.seq.blocks is None:
            size = self.seq.size  # a stale .fai must not produce ranges past the end
            return _merge([
                Inline(p, Class.BODY) if isinstance(p, bytes)
                else ByteRange(min(p[0], size), min(p[1], size), Class.BODY)
                for p in self.parts
                if isinstance(p, bytes) or p[0] < size
            ])
        # BGZF: spans become whole blocks plus literal cuts of their first and last blocks
        out: list[Union[bytes, ByteRange]] = []
        for part in self.parts:
            if isinstance(part, bytes):
                out.append(part)
            else:
                out.extend(self._bgzf_span(source, *part))
        pieces: list[Piece] = [
            Inline(bgzf.compress_block(item), Class.BODY) if isinstance(item, bytes) else item
            for item in _merge_literals(out)
        ]
        return _merge(pieces + [Inline(bgzf.EOF_MARKER, Class.BODY)])

    def _bgzf_span(self, source: Source, start: int, end: int) -> list[Union[bytes, ByteRange]]:
        blocks = self.seq.blocks
        assert blocks is not None
        end = min(end, blocks.total)
        out: list[Union[bytes, ByteRange]] = []
        i = blocks.block_at(start)
        if start > blocks.uoffsets[i] or end < blocks.uoffsets[i + 1]:  # cut the first block
            data = _block_data(source, blocks, i)
            base = blocks.uoffsets[i]
            out.append(data[start - base : end - base])
            start = blocks.uoffsets[i + 1]
            i += 1
        j = i  # whole blocks i..j-1
        while j < len(blocks.coffsets) - 1 and blocks.uoffsets[j + 1] <= end:
            j += 1
        while j > i and blocks.uoffsets[j - 1] == blocks.uoffsets[j]:
            j -= 1  # never end on empty blocks (the file's own EOF marker)
        if j > i:
            out.append(ByteRange(blocks.coffsets[i], blocks.coffsets[j], Class.BODY))
            start = blocks.uoffsets[j]
        if start < end:  # cut the last block
            out.append(_block_data(source, blocks, j)[: end - blocks.uoffsets[j]])
        return out


def _merge_literals(items: list[Union[bytes, ByteRange]]) -> list[Union[bytes, ByteRange]]:
    out: list[Union[bytes, ByteRange]] = []
    for item in items:
        if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
            out[-1] = out[-1] + item
        elif not (isinstance(item, bytes) and not item):
            out.append(item)
    return out


def _merge(pieces: list[Piece]) -> list[Piece]:
    """Adjacent inline pieces joined, contiguous byte ranges joined."""
    out: list[Piece] = []
    for p in pieces:
        last = out[-1] if out else None
        if isinstance(p, Inline) and isinstance(last, Inline):
            out[-1] = Inline(last.data + p.data, p.klass)
        elif isinstance(p, ByteRange) and isinstance(last, ByteRange) and last.end == p.start:
            out[-1] = ByteRange(last.start, p.end, p.klass)
        else:
            out.append(p)
    return out


def bounds(entry: FaiEntry, region: Region) -> tuple[int, int]:
    """[start, end) of a region on a sequence: defaults to all of it, end clipped."""
    start = region.start or 0
    if region.start is not None and start >= entry.length:
        raise InvalidRange(
            f"start {start} is beyond the end of {entry.name} (length {entry.length})"
        )
    end = entry.length if region.end is None else min(region.end, entry.length)
    return start, max(start, end)


def label(entry: FaiEntry, region: Region) -> bytes:
    """`name` for the whole sequence, else `name:start+1-end` as samtools faidx writes it
    (the requested end, even where the sequence is shorter; missing bounds filled in)."""
    if region.start is None and region.end is None:
        return entry.name.encode()
    start = region.start or 0
    end = entry.length if region.end is None else region.end
    return f"{entry.name}:{start + 1}-{end}".encode()


class _SequenceHandler:
    format: Format
    extensions: tuple[str, ...]

    def open(self, source: Source) -> SeqFile:
        fai_key = source.find([source.key + ".fai"])
        gzi_key = source.find([source.key + ".gzi"])
        extra = tuple(k for k in (fai_key, gzi_key) if k)
        return source.cached(
            self.format.value, lambda: load_seqfile(source, fai_key, gzi_key), *extra
        )

    def pieces(self, source: Source, query: Query) -> list[Piece]:
        if query.klass is Class.HEADER:
            raise InvalidInput(f"{self.format.value} files have no header: class=header")
        if query.regions is None:
            size = source.storage.size(source.key)
            return [ByteRange(0, size, Class.BODY) if size else Inline(b"", Class.BODY)]
        seq = self.open(source)
        payload = Payload(seq)
        for region in query.regions:
            self.add_record(source, seq, payload, seq.entry(region.reference_name, query), region)
        return payload.pieces(source)

    def add_record(
        self, source: Source, seq: SeqFile, payload: Payload, entry: FaiEntry, region: Region
    ) -> None:
        raise NotImplementedError


class FastaHandler(_SequenceHandler):
    format = Format.FASTA
    extensions = (".fa", ".fasta", ".fa.gz", ".fasta.gz")

    def add_record(
        self, source: Source, seq: SeqFile, payload: Payload, entry: FaiEntry, region: Region
    ) -> None:
        start, end = bounds(entry, region)
        payload.literal(b">" + label(entry, region) + b"\n")
        payload.span(*entry.span(start, end))
        payload.literal(b"\n")


class FastqHandler(_SequenceHandler):
    format = Format.FASTQ
    extensions = (".fq", ".fastq", ".fq.gz", ".fastq.gz")

    def add_record(
        self, source: Source, seq: SeqFile, payload: Payload, entry: FaiEntry, region: Region
    ) -> None:
        if entry.qual_offset is None:
            raise InvalidInput(f"{seq.key}.fai is a FASTA index, not a FASTQ (fqidx) one")
        start, end = bounds(entry, region)
        if region.start is None and region.end is None:
            self._whole_record(source, seq, payload, entry)
            return
        payload.literal(b"@" + label(entry, region) + b"\n")
        payload.span(*entry.span(start, end))
        payload.literal(b"\n+\n")
        payload.span(*entry.span(start, end, qualities=True))
        payload.literal(b"\n")

    def _whole_record(
        self, source: Source, seq: SeqFile, payload: Payload, entry: FaiEntry
    ) -> None:
        """The read's own lines: from its `@` line to the end of its qualities line."""
        if entry.offset < 2:
            raise InternalError(f"{seq.key}.fai: bad offset for {entry.name!r}")
        name_end = entry.offset - 1  # the newline ending the @name line
        back = NAME_LINE_READ
        while True:
            lo = max(0, name_end - back)
            text = seq.read(source, lo, name_end)
            nl = text.rfind(b"\n")
            if nl >= 0 or lo == 0:
                record_start = lo + nl + 1
                break
            back *= 4
        _, qual_end = entry.span(0, entry.length, qualities=True)
        after = seq.read(source, qual_end, qual_end + 2)
        if after.startswith(b"\r\n"):
            qual_end += 2
        elif after.startswith(b"\n"):
            qual_end += 1
        payload.span(record_start, qual_end)
        if not after.startswith((b"\n", b"\r\n")):
            payload.literal(b"\n")
