"""htsget 1.3 protocol model: formats, classes, queries, tickets and the error family.

Everything here is plain Python (no Flask): the API layer turns HTTP into a `Query`, the
engine turns a `Query` into a `Ticket`, and errors carry their own status and htsget type.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

CONTENT_TYPE = "application/vnd.ga4gh.htsget.v1.3.0+json"
PROTOCOL_VERSION = "1.3.0"

# Coordinates beyond this are clamped: 2^31-1 is the largest BAM/VCF position.
MAX_COORDINATE = (1 << 31) - 1


# --------------------------------------------------------------------------- errors


class HtsgetError(Exception):
    """An error the client is told about, as `{"htsget": {"error", "message"}}`."""

    status = 500
    error = "InternalError"

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, Any]:
        return {"htsget": {"error": self.error, "message": self.message}}


class InvalidAuthentication(HtsgetError):
    status, error = 401, "InvalidAuthentication"


class PermissionDenied(HtsgetError):
    status, error = 403, "PermissionDenied"


class NotFound(HtsgetError):
    status, error = 404, "NotFound"


class PayloadTooLarge(HtsgetError):
    status, error = 413, "PayloadTooLarge"


class UnsupportedFormat(HtsgetError):
    status, error = 400, "UnsupportedFormat"


class InvalidInput(HtsgetError):
    status, error = 400, "InvalidInput"


class InvalidRange(HtsgetError):
    status, error = 400, "InvalidRange"


class InternalError(HtsgetError):
    status, error = 500, "InternalError"


class UpstreamError(HtsgetError):
    """A storage backend failed (502), is unavailable (503) or timed out (504)."""

    status, error = 502, "UpstreamError"


# --------------------------------------------------------------------------- enums


class Endpoint(str, enum.Enum):
    READS = "reads"
    VARIANTS = "variants"
    SEQUENCES = "sequences"


class Format(str, enum.Enum):
    BAM = "BAM"
    CRAM = "CRAM"
    VCF = "VCF"
    BCF = "BCF"
    FASTA = "FASTA"
    FASTQ = "FASTQ"


#: Formats each endpoint serves; the first is the default when `format` is absent.
ENDPOINT_FORMATS: dict[Endpoint, tuple[Format, ...]] = {
    Endpoint.READS: (Format.BAM, Format.CRAM),
    Endpoint.VARIANTS: (Format.VCF, Format.BCF),
    Endpoint.SEQUENCES: (Format.FASTA, Format.FASTQ),
}


class Class(str, enum.Enum):
    HEADER = "header"
    BODY = "body"


#: SAM fields that `fields` may name (htsget 1.3, reads only).
READ_FIELDS = frozenset(
    "QNAME FLAG RNAME POS MAPQ CIGAR RNEXT PNEXT TLEN SEQ QUAL".split()
)

UNPLACED = "*"


# --------------------------------------------------------------------------- query


@dataclass(frozen=True)
class Region:
    """A reference name with optional 0-based half-open bounds."""

    reference_name: str
    start: Optional[int] = None
    end: Optional[int] = None


def merge_regions(regions: tuple[Region, ...]) -> list[Region]:
    """The same records with fewer regions: per reference, overlapping or touching
    intervals become their union (order: first appearance of each reference)."""
    by_ref: dict[str, list[tuple[int, int]]] = {}
    for r in regions:
        end = MAX_COORDINATE + 1 if r.end is None else r.end
        by_ref.setdefault(r.reference_name, []).append((r.start or 0, end))
    out = []
    for name, spans in by_ref.items():
        spans.sort()
        merged = [spans[0]]
        for beg, end in spans[1:]:
            if beg <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((beg, end))
        for beg, end in merged:
            whole = beg == 0 and end > MAX_COORDINATE
            out.append(Region(name, None if whole else beg,
                              None if end > MAX_COORDINATE else end))
    return out


@dataclass(frozen=True)
class Query:
    endpoint: Endpoint
    id: str
    format: Format
    klass: Optional[Class] = None
    regions: Optional[tuple[Region, ...]] = None  # None: the whole file
    fields: Optional[tuple[str, ...]] = None
    tags: Optional[tuple[str, ...]] = None
    notags: Optional[tuple[str, ...]] = None
    #: authorization: records outside these may not be sent (None: no restriction). A
    #: region whose reference_name is "" stands for every reference of the file.
    allowed: Optional[tuple[Region, ...]] = None
    #: the ticket must hold exactly the records overlapping `regions`, none beside them
    #: (set by the engine for restricted queries)
    exact: bool = False


def parse_format(endpoint: Endpoint, value: Optional[str]) -> Format:
    """`format` is case-insensitive: the spec's own POST example sends "bam"."""
    allowed = ENDPOINT_FORMATS[endpoint]
    if value is None or value == "":
        return allowed[0]
    try:
        fmt = Format(str(value).upper())
    except ValueError:
        raise UnsupportedFormat(f"format {value!r} is not supported") from None
    if fmt not in allowed:
        names = ", ".join(f.value for f in allowed)
        raise UnsupportedFormat(f"format {fmt.value} is not served on /{endpoint.value} ({names})")
    return fmt


def _parse_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"{name} must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise InvalidInput(f"{name} must be a non-negative integer, got {value!r}")
    if number < 0 or number > MAX_COORDINATE:
        raise InvalidInput(f"{name} must be between 0 and {MAX_COORDINATE}")
    return number


def _parse_class(value: Optional[str]) -> Optional[Class]:
    if value is None:
        return None
    if value == Class.HEADER.value:
        return Class.HEADER
    if value == Class.BODY.value:
        return None
    raise InvalidInput(f"class must be 'header', got {value!r}")


def _split_list(name: str, value: Any) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    if isinstance(value, str):
        items = [v for v in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise InvalidInput(f"{name} must be a list of strings")
    if any(not item for item in items):
        raise InvalidInput(f"{name} contains an empty entry")
    return tuple(items)


def _check_fields_tags(
    endpoint: Endpoint,
    fields: Optional[tuple[str, ...]],
    tags: Optional[tuple[str, ...]],
    notags: Optional[tuple[str, ...]],
) -> None:
    if fields is not None and endpoint is Endpoint.READS:
        unknown = sorted(set(fields) - READ_FIELDS)
        if unknown:
            raise InvalidInput(f"unknown field(s): {', '.join(unknown)}")
    for name, values in (("tags", tags), ("notags", notags)):
        for tag in values or ():
            if len(tag) != 2 or not tag.isascii() or not tag.isalnum():
                raise InvalidInput(f"{name} entry {tag!r} is not a two-character tag")
    if tags and notags:
        both = sorted(set(tags) & set(notags))
        if both:
            raise InvalidInput(f"tag(s) in both tags and notags: {', '.join(both)}")


def _region(
    reference_name: Any, start: Any, end: Any, strict_end: bool
) -> Region:
    """Validate one region; GET allows start == end, POST requires start < end."""
    if reference_name is None or reference_name == "":
        if start is not None or end is not None:
            raise InvalidInput("start and end require referenceName")
        raise InvalidInput("a region needs a referenceName")
    if not isinstance(reference_name, str):
        raise InvalidInput("referenceName must be a string")
    start_i = None if start is None else _parse_int("start", start)
    end_i = None if end is None else _parse_int("end", end)
    if reference_name == UNPLACED and (start_i is not None or end_i is not None):
        raise InvalidInput("start and end cannot be used with referenceName=*")
    if start_i is not None and end_i is not None:
        if start_i > end_i or (strict_end and start_i == end_i):
            raise InvalidRange(f"start ({start_i}) must be less than end ({end_i})")
    return Region(reference_name, start_i, end_i)


def parse_get(endpoint: Endpoint, id: str, args: Mapping[str, str]) -> Query:
    """A GET ticket request: one optional region from the query string."""
    fmt = parse_format(endpoint, args.get("format"))
    klass = _parse_class(args.get("class"))
    ref, start, end = args.get("referenceName"), args.get("start"), args.get("end")
    regions: Optional[tuple[Region, ...]] = None
    if ref is not None or start is not None or end is not None:
        if klass is Class.HEADER:
            raise InvalidInput("class=header cannot be combined with a region")
        regions = (_region(ref, start, end, strict_end=False),)
    fields = _split_list("fields", args.get("fields"))
    tags = _split_list("tags", args.get("tags"))
    notags = _split_list("notags", args.get("notags"))
    _check_fields_tags(endpoint, fields, tags, notags)
    return Query(endpoint, id, fmt, klass, regions, fields, tags, notags)


POST_KEYS = frozenset({"format", "class", "fields", "tags", "notags", "regions"})


def parse_post(endpoint: Endpoint, id: str, body: bytes, has_query_string: bool) -> Query:
    """A POST ticket request: JSON body, several regions, no query parameters."""
    if has_query_string:
        raise InvalidInput("POST requests take their parameters in the JSON body, not the URL")
    if body.strip():
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("the request body is not valid JSON") from None
    else:
        doc = {}
    if not isinstance(doc, dict):
        raise InvalidInput("the request body must be a JSON object")
    fmt_value = doc.get("format")
    if fmt_value is not None and not isinstance(fmt_value, str):
        raise InvalidInput("format must be a string")
    fmt = parse_format(endpoint, fmt_value)
    klass_value = doc.get("class")
    if klass_value is not None and not isinstance(klass_value, str):
        raise InvalidInput("class must be a string")
    klass = _parse_class(klass_value)
    regions: Optional[tuple[Region, ...]] = None
    if "regions" in doc and doc["regions"] is not None:
        raw = doc["regions"]
        if not isinstance(raw, list) or not raw:
            raise InvalidInput("regions must be a non-empty list")
        if klass is Class.HEADER:
            raise InvalidInput("class=header cannot be combined with regions")
        parsed = []
        for item in raw:
            if not isinstance(item, dict):
                raise InvalidInput("each region must be a JSON object")
            extra = set(item) - {"referenceName", "start", "end"}
            if extra:
                raise InvalidInput(f"unknown region key(s): {', '.join(sorted(extra))}")
            parsed.append(
                _region(item.get("referenceName"), item.get("start"), item.get("end"), True)
            )
        regions = tuple(parsed)
    fields = _split_list("fields", doc.get("fields"))
    tags = _split_list("tags", doc.get("tags"))
    notags = _split_list("notags", doc.get("notags"))
    _check_fields_tags(endpoint, fields, tags, notags)
    return Query(endpoint, id, fmt, klass, regions, fields, tags, notags)


# --------------------------------------------------------------------------- ticket


@dataclass(frozen=True)
class Block:
    """One url of a ticket: a byte range of a stored object, or inline data."""

    url: str
    headers: Optional[dict[str, str]] = None
    klass: Optional[Class] = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        if self.headers:
            out["headers"] = dict(self.headers)
        if self.klass is not None:
            out["class"] = self.klass.value
        return out


@dataclass
class Ticket:
    format: Format
    blocks: list[Block] = field(default_factory=list)
    md5: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "format": self.format.value,
            "urls": [b.to_json() for b in self.blocks],
        }
        if self.md5:
            body["md5"] = self.md5
        return {"htsget": body}
