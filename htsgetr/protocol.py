"""htsget 1.3 protocol model: formats, classes, queries, tickets and the error family.

Everything here is plain Python (no Flask): the API layer turns HTTP into a `Query`, the
engine turns a `Query` into a `Ticket`, and errors carry their own status and htsget type.
"""

from __future__ import annotations

import base64
import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Union

#: base64 for inline blocks: a deep region's ticket inlines ~30 KB of re-cut edges, which
#: the standard library encodes at ~1 GB/s (~30 us, 5% of the ticket) and pybase64's vector
#: code ~40x faster; the same characters either way
_b64encode: Callable[[bytes], bytes] = base64.b64encode
try:
    import pybase64

    _b64encode = pybase64.b64encode
except ImportError:  # pragma: no cover - a dependency; the standard library still works
    pass

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
        """The error body the HTTP layer sends."""
        return {"htsget": {"error": self.error, "message": self.message}}


class InvalidAuthentication(HtsgetError):
    """401: a token is missing, expired or not valid."""

    status, error = 401, "InvalidAuthentication"


class PermissionDenied(HtsgetError):
    """403: a valid token without the right to this ID, region or format."""

    status, error = 403, "PermissionDenied"


class NotFound(HtsgetError):
    """404: no such ID, reference, endpoint or format on this server."""

    status, error = 404, "NotFound"


class PayloadTooLarge(HtsgetError):
    """413: a request body (POST) past `max_post_bytes`, or listing more than `max_regions`
    regions."""

    status, error = 413, "PayloadTooLarge"


class UnsupportedFormat(HtsgetError):
    """400: a format htsget does not know, or not served on this endpoint."""

    status, error = 400, "UnsupportedFormat"


class UnsupportedMediaType(HtsgetError):
    """A POST body declared as something other than JSON (RFC 9110 415)."""

    status, error = 415, "UnsupportedMediaType"


class InvalidInput(HtsgetError):
    """400: a parameter that does not parse or does not make sense."""

    status, error = 400, "InvalidInput"


class InvalidRange(HtsgetError):
    """400: start after end (GET), start not before end (POST)."""

    status, error = 400, "InvalidRange"


class InternalError(HtsgetError):
    """500: a data file or index that cannot be read (corrupt, too large)."""

    status, error = 500, "InternalError"


class UpstreamError(HtsgetError):
    """A storage backend failed (502), is unavailable (503) or timed out (504)."""

    status, error = 502, "UpstreamError"


# --------------------------------------------------------------------------- enums


class Endpoint(str, enum.Enum):
    """The three htsget endpoints; a `Query` takes one of these or its string value."""

    READS = "reads"
    VARIANTS = "variants"
    SEQUENCES = "sequences"


class Format(str, enum.Enum):
    """File formats; a `Query` takes one of these or its name in any case ("bam")."""

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
    """`class=header` asks for the header alone; `body` (the default) for the records too."""

    HEADER = "header"
    BODY = "body"


#: SAM fields that `fields` may name (htsget 1.3, reads only).
READ_FIELDS = frozenset(
    "QNAME FLAG RNAME POS MAPQ CIGAR RNEXT PNEXT TLEN SEQ QUAL".split()
)

UNPLACED = "*"


# --------------------------------------------------------------------------- query


@dataclass(frozen=True, init=False)
class Region:
    """A reference name with optional 0-based, half-open bounds, checked as a GET query's
    `referenceName`, `start` and `end` are: `Region("chr1", 20000, 10000)` raises
    InvalidRange, `Region("*", 0, 10)` InvalidInput (start == end is an empty, valid region).
    `reference_name` "*" stands for the unplaced unmapped reads."""

    reference_name: str
    start: Optional[int] = None
    end: Optional[int] = None

    def __init__(
        self, reference_name: str, start: Optional[int] = None, end: Optional[int] = None
    ) -> None:
        if not isinstance(reference_name, str):
            raise InvalidInput("referenceName must be a string")
        _check_text("referenceName", reference_name)
        start_i = None if start is None else _parse_int("start", start)
        end_i = None if end is None else _parse_int("end", end)
        if reference_name == UNPLACED and (start_i is not None or end_i is not None):
            raise InvalidInput("start and end cannot be used with referenceName=*")
        if start_i is not None and end_i is not None and start_i > end_i:
            raise InvalidRange(f"start ({start_i}) must be less than end ({end_i})")
        _set(self, "reference_name", reference_name)
        _set(self, "start", start_i)
        _set(self, "end", end_i)

    @classmethod
    def _of(cls, reference_name: str, start: Optional[int], end: Optional[int]) -> Region:
        """A Region from values already checked (the request parsers, `merge_regions`):
        the hot path pays for no second check."""
        self = _new(cls)
        _set(self, "reference_name", reference_name)
        _set(self, "start", start)
        _set(self, "end", end)
        return self


_new = object.__new__
_set = object.__setattr__
#: a Region, or ("chr1", start, end) / ("chr1",) as its arguments
RegionLike = Union[Region, tuple[Any, ...]]


def merge_regions(regions: tuple[Region, ...]) -> list[Region]:
    """The same records with fewer regions: per reference, overlapping or touching
    intervals become their union (order: first appearance of each reference)."""
    if len(regions) == 1:  # the usual GET: a bounded region is its own union
        only = regions[0]
        if only.start and only.end is not None and only.end <= MAX_COORDINATE:
            return [only]
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
            out.append(Region._of(name, None if whole else beg,
                                  None if end > MAX_COORDINATE else end))
    return out


@dataclass(frozen=True, init=False)
class Query:
    """One ticket request, as the HTTP layer hands it to `Htsget.ticket`.

    Strings or enums alike, checked exactly as a GET or POST request is, with the same
    errors and messages: `Query("reads", "NA12878", format="bam", reference_name="chr1",
    start=0, end=10000)`, or several regions with `regions=[Region("chr1", 0, 100), ...]`.
    `format` defaults to the endpoint's first (BAM, VCF, FASTA); `klass="header"` asks for
    the header alone; `fields`, `tags` and `notags` take lists or comma-separated strings;
    `regions` takes Regions or ("chr1", start, end) tuples.
    """

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

    def __init__(
        self,
        endpoint: Union[Endpoint, str],
        id: str,
        format: Union[Format, str, None] = None,
        klass: Union[Class, str, None] = None,
        regions: Union[Iterable[RegionLike], Region, None] = None,
        fields: Union[Iterable[str], str, None] = None,
        tags: Union[Iterable[str], str, None] = None,
        notags: Union[Iterable[str], str, None] = None,
        allowed: Optional[Iterable[Region]] = None,
        exact: bool = False,
        *,
        reference_name: Optional[str] = None,
        start: Optional[int] = None,
        end: Optional[int] = None,
    ) -> None:
        ep = _endpoint(endpoint)
        if not isinstance(id, str) or not id:
            raise InvalidInput("the ID must be a non-empty string")
        check_id(id)
        fmt = format if type(format) is Format else parse_format(ep, format)
        if fmt not in ENDPOINT_FORMATS[ep]:
            parse_format(ep, fmt.value)  # raises, naming the formats of the endpoint
        cls = klass if klass is None or type(klass) is Class else _parse_class(klass)
        if cls is Class.BODY:
            cls = None
        if reference_name is not None or start is not None or end is not None:
            if regions is not None:
                raise InvalidInput("give either regions or reference_name/start/end")
            regions = (_region(reference_name, start, end, post=False),)
        regs = _regions("regions", regions)
        if regs is not None:
            if cls is Class.HEADER:
                raise InvalidInput("class=header cannot be combined with a region")
            if not regs and not exact:
                raise InvalidInput("regions must be a non-empty list")
            for r in regs:
                if not r.reference_name:
                    raise InvalidInput("a region needs a referenceName")
        fields_t = _split_list("fields", _listed(fields))
        tags_t = _split_list("tags", _listed(tags))
        notags_t = _split_list("notags", _listed(notags))
        _check_fields_tags(ep, fields_t, tags_t, notags_t)
        for name, value in (("endpoint", ep), ("id", id), ("format", fmt), ("klass", cls),
                            ("regions", regs), ("fields", fields_t), ("tags", tags_t),
                            ("notags", notags_t), ("allowed", _regions("allowed", allowed)),
                            ("exact", bool(exact))):
            _set(self, name, value)

    @classmethod
    def _of(
        cls,
        endpoint: Endpoint,
        id: str,
        format: Format,
        klass: Optional[Class],
        regions: Optional[tuple[Region, ...]],
        fields: Optional[tuple[str, ...]],
        tags: Optional[tuple[str, ...]],
        notags: Optional[tuple[str, ...]],
    ) -> Query:
        """A Query from values the request parsers already checked (the hot path)."""
        self = _new(cls)
        _set(self, "endpoint", endpoint)
        _set(self, "id", id)
        _set(self, "format", format)
        _set(self, "klass", klass)
        _set(self, "regions", regions)
        _set(self, "fields", fields)
        _set(self, "tags", tags)
        _set(self, "notags", notags)
        _set(self, "allowed", None)
        _set(self, "exact", False)
        return self


def _endpoint(value: Union[Endpoint, str]) -> Endpoint:
    if type(value) is Endpoint:
        return value
    try:
        return Endpoint(value)
    except ValueError:
        names = ", ".join(e.value for e in Endpoint)
        raise NotFound(f"no endpoint {_show(value)} ({names})") from None


def _regions(
    name: str, value: Union[Iterable[RegionLike], Region, None]
) -> Optional[tuple[Region, ...]]:
    """A tuple of Regions from a Region, or a list of Regions or (name, start, end) tuples."""
    if value is None:
        return None
    if isinstance(value, Region):
        return (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidInput(f"{name} must be a list of Region")
    out = []
    for r in value:
        if isinstance(r, tuple) and 1 <= len(r) <= 3:
            r = Region(*r)
        if not isinstance(r, Region):
            raise InvalidInput(f"{name} must be a list of Region, got {_show(r)}")
        out.append(r)
    return tuple(out)


def _listed(value: Union[Iterable[str], str, None]) -> Any:
    """`fields`/`tags`/`notags` from Python: a comma-separated string or any iterable."""
    if value is None or isinstance(value, (str, list)):
        return value
    return list(value) if isinstance(value, Iterable) else value


def parse_format(endpoint: Endpoint, value: Optional[str]) -> Format:
    """`format` is case-insensitive: the spec's own POST example sends "bam"."""
    allowed = ENDPOINT_FORMATS[endpoint]
    if value is None or value == "":
        return allowed[0]
    try:
        fmt = Format(str(value).upper())
    except ValueError:
        raise UnsupportedFormat(f"format {_show(value)} is not supported") from None
    if fmt not in allowed:
        names = ", ".join(f.value for f in allowed)
        raise UnsupportedFormat(f"format {fmt.value} is not served on /{endpoint.value} ({names})")
    return fmt


def _show(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: error messages never echo a whole body."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: A query-string number with more significant digits than this is out of range; checked
#: before int(), which refuses strings of more than 4300 digits with a ValueError.
_MAX_DIGITS = 12


def _parse_int(name: str, value: Any, json_types: bool = False) -> int:
    """A coordinate: a JSON integer (POST, `json_types`) or a string of ASCII digits (GET)."""
    if isinstance(value, bool) or (json_types and not isinstance(value, int)):
        raise InvalidInput(f"{name} must be an integer, got {_show(value)}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        significant = value.lstrip("0")  # int() counts leading zeros against its limit
        if len(significant) > _MAX_DIGITS:
            raise InvalidInput(f"{name} must be between 0 and {MAX_COORDINATE}")
        number = int(significant or "0")
    else:
        raise InvalidInput(f"{name} must be a non-negative integer, got {_show(value)}")
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
    raise InvalidInput(f"class must be 'header', got {_show(value)}")


def _split_list(name: str, value: Any, json_types: bool = False) -> Optional[tuple[str, ...]]:
    """A comma-separated string (GET) or a JSON list of strings (POST, `json_types`)."""
    if value is None:
        return None
    if isinstance(value, str) and not json_types:
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
            raise InvalidInput(f"unknown field(s): {_show_all(unknown)}")
    for name, values in (("tags", tags), ("notags", notags)):
        for tag in values or ():
            if len(tag) != 2 or not tag.isascii() or not tag.isalnum():
                raise InvalidInput(f"{name} entry {_show(tag)} is not a two-character tag")
    if tags and notags:
        both = sorted(set(tags) & set(notags))
        if both:
            raise InvalidInput(f"tag(s) in both tags and notags: {', '.join(both)}")


def _region(reference_name: Any, start: Any, end: Any, post: bool) -> Region:
    """Validate one region. GET: numbers are digit strings, start == end is allowed.
    POST: numbers are JSON integers, start < end."""
    if reference_name is None or reference_name == "":
        if start is not None or end is not None:
            raise InvalidInput("start and end require referenceName")
        raise InvalidInput("a region needs a referenceName")
    if not isinstance(reference_name, str):
        raise InvalidInput("referenceName must be a string")
    _check_text("referenceName", reference_name)
    start_i = None if start is None else _parse_int("start", start, json_types=post)
    end_i = None if end is None else _parse_int("end", end, json_types=post)
    if reference_name == UNPLACED and (start_i is not None or end_i is not None):
        raise InvalidInput("start and end cannot be used with referenceName=*")
    if start_i is not None and end_i is not None:
        if start_i > end_i or (post and start_i == end_i):
            raise InvalidRange(f"start ({start_i}) must be less than end ({end_i})")
    return Region._of(reference_name, start_i, end_i)


#: C0 and C1 controls, DEL, and lone surrogates (which no file name or UTF-8 text holds)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _check_text(name: str, value: str) -> None:
    if _CONTROL.search(value):
        raise InvalidInput(f"{name} contains a control character or invalid Unicode")


def check_id(id: str) -> None:
    """An ID is refused (400) when it holds control characters or invalid Unicode: such a
    name could only mislead a regex or a log line (`sample\\n` matching `^(.*)$` as
    `sample`)."""
    _check_text("the ID", id)


def parse_get(endpoint: Endpoint, id: str, args: Mapping[str, str]) -> Query:
    """A GET ticket request: one optional region from the query string. Unknown
    parameters are ignored (the compliance suite sends `encryptionScheme`)."""
    check_id(id)
    fmt = parse_format(endpoint, args.get("format"))
    klass = _parse_class(args.get("class"))
    ref, start, end = args.get("referenceName"), args.get("start"), args.get("end")
    regions: Optional[tuple[Region, ...]] = None
    if ref is not None or start is not None or end is not None:
        if klass is Class.HEADER:
            raise InvalidInput("class=header cannot be combined with a region")
        regions = (_region(ref, start, end, post=False),)
    fields = _split_list("fields", args.get("fields"))
    tags = _split_list("tags", args.get("tags"))
    notags = _split_list("notags", args.get("notags"))
    _check_fields_tags(endpoint, fields, tags, notags)
    return Query._of(endpoint, id, fmt, klass, regions, fields, tags, notags)


#: The keys of a POST body: the spec's six, and `encryptionScheme`, which htsget-rs
#: clients send (accepted as a string and ignored until Crypt4GH claims it). Any other key
#: is refused: a misspelt or GET-style key (`referenceName` at the top) would otherwise
#: silently ask for the whole file.
POST_KEYS = frozenset({"format", "class", "fields", "tags", "notags", "regions",
                       "encryptionScheme"})
REGION_KEYS = frozenset({"referenceName", "start", "end"})


def _show_all(names: Any, limit: int = 5) -> str:
    shown = ", ".join(_show(n, 40) for n in list(names)[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def is_json_media_type(content_type: str) -> bool:
    """`application/json` or `application/<anything>+json`, parameters allowed (RFC 6838)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = mime.partition("/")
    return kind == "application" and (subtype == "json" or (
        subtype.endswith("+json") and len(subtype) > len("+json")))


def check_post_content_type(content_type: Optional[str], body: Optional[bytes] = None) -> None:
    """415 unless the body is JSON. A declared Content-Type must be JSON; with none, only an
    empty body is accepted (it means `{}`: the whole file, as `curl -X POST` sends it).
    `body` None: not read yet, only a declared type is checked."""
    if content_type:
        if not is_json_media_type(content_type):
            raise UnsupportedMediaType(
                f"a POST body must be application/json, not {_show(content_type)}")
    elif body is not None and body.strip():
        raise UnsupportedMediaType("a POST body must be sent with Content-Type: application/json")


def _json_int(text: str) -> int:
    if len(text.lstrip("-0")) > _MAX_DIGITS:  # int() refuses > 4300 digits with ValueError
        raise InvalidInput(f"the number {text[:12]}... in the request body is out of range")
    return int(text)


def _json_constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not valid JSON")


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):  # two readers of one body must not see different values
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidInput(f"duplicate key {_show(key)} in the request body")
            seen.add(key)
    return doc


def load_json(body: bytes) -> Any:
    """Strict JSON (RFC 8259): UTF-8, no NaN/Infinity, no duplicate keys, integers of a
    sane size; a body nested past the recursion limit is InvalidInput, not a 500."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the request body is not UTF-8") from None
    try:
        return json.loads(text, parse_int=_json_int, parse_constant=_json_constant,
                          object_pairs_hook=_json_object)
    except RecursionError:
        raise InvalidInput("the request body is nested too deeply") from None
    except ValueError:
        raise InvalidInput("the request body is not valid JSON") from None


def _optional_str(doc: dict[str, Any], name: str) -> Optional[str]:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    return value


def parse_post(
    endpoint: Endpoint,
    id: str,
    body: bytes,
    has_query_string: bool,
    content_type: Optional[str] = "application/json",
) -> Query:
    """A POST ticket request: JSON body, several regions, no query parameters.

    Every key and every JSON type is checked (unknown key -> InvalidInput naming it);
    `content_type` is the request's header (None: absent), see `check_post_content_type`.
    """
    check_id(id)
    if has_query_string:
        raise InvalidInput("POST requests take their parameters in the JSON body, not the URL")
    check_post_content_type(content_type, body)
    doc = load_json(body) if body.strip() else {}
    if not isinstance(doc, dict):
        raise InvalidInput("the request body must be a JSON object")
    unknown = sorted(set(doc) - POST_KEYS)
    if unknown:
        hint = (" (referenceName, start and end go in a \"regions\" list)"
                if set(unknown) & REGION_KEYS else "")
        raise InvalidInput(f"unknown key(s) in the request body: {_show_all(unknown)}{hint}")
    fmt = parse_format(endpoint, _optional_str(doc, "format"))
    klass = _parse_class(_optional_str(doc, "class"))
    _optional_str(doc, "encryptionScheme")
    regions: Optional[tuple[Region, ...]] = None
    if doc.get("regions") is not None:
        raw = doc["regions"]
        if not isinstance(raw, list) or not raw:
            raise InvalidInput("regions must be a non-empty list")
        if klass is Class.HEADER:
            raise InvalidInput("class=header cannot be combined with regions")
        parsed = []
        for item in raw:
            if not isinstance(item, dict):
                raise InvalidInput("each region must be a JSON object")
            extra = sorted(set(item) - REGION_KEYS)
            if extra:
                raise InvalidInput(f"unknown region key(s): {_show_all(extra)}")
            parsed.append(_region(item.get("referenceName"), item.get("start"),
                                  item.get("end"), post=True))
        regions = tuple(parsed)
    fields = _split_list("fields", doc.get("fields"), json_types=True)
    tags = _split_list("tags", doc.get("tags"), json_types=True)
    notags = _split_list("notags", doc.get("notags"), json_types=True)
    _check_fields_tags(endpoint, fields, tags, notags)
    return Query._of(endpoint, id, fmt, klass, regions, fields, tags, notags)


# --------------------------------------------------------------------------- ticket


def data_uri(data: bytes) -> str:
    """An inline block, written exactly `data:;base64,` (some clients accept nothing else)."""
    return "data:;base64," + _b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Block:
    """One url of a ticket: a byte range of a stored object, or inline data."""

    url: str
    headers: Optional[dict[str, str]] = None
    klass: Optional[Class] = None

    def to_json(self) -> dict[str, Any]:
        """One entry of a ticket's `urls`: url, and headers and class when set."""
        out: dict[str, Any] = {"url": self.url}
        if self.headers:
            out["headers"] = dict(self.headers)
        if self.klass is not None:
            out["class"] = self.klass.value
        return out

    def __getitem__(self, key: str) -> Any:
        """`block["url"]`, `block["headers"]`, `block["class"]`: as its JSON entry reads."""
        return self.to_json()[key]


@dataclass
class Ticket:
    """What `Htsget.ticket` returns: concatenating the payloads of `urls` in order gives
    the file; `md5` is its digest when known (whole files). `to_json()` is the HTTP body."""

    format: Format
    blocks: list[Block] = field(default_factory=list)
    md5: Optional[str] = None

    @property
    def urls(self) -> list[Block]:
        """The blocks, under the name the ticket JSON gives them."""
        return self.blocks

    def to_json(self) -> dict[str, Any]:
        """`{"htsget": {"format", "urls", "md5"?}}`, the ticket the HTTP layer sends."""
        body: dict[str, Any] = {
            "format": self.format.value,
            "urls": [b.to_json() for b in self.blocks],
        }
        if self.md5:
            body["md5"] = self.md5
        return {"htsget": body}
