"""The ticket request: a URL and the region options -> GET or POST -> the ticket.

Regions are htsget's (0-based, half-open); `parse_region` reads the samtools notation the
command line takes (`chr1:1-1000` is 1-based, inclusive: htsget start 0, end 1000).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from ..protocol import CONTENT_TYPE, HtsgetError, Region
from .errors import ClientError, InvalidRequest, describe
from .retry import send

#: a region as the API takes it: a Region, ("chr1", start, end) 0-based, or "chr1:1-1000"
RegionLike = Union[Region, Sequence[Any], str]

_SAMTOOLS = re.compile(r"^(?P<name>.+?)(?::(?P<beg>[\d,]+)?(?:-(?P<end>[\d,]*))?)?$")


def parse_region(text: str) -> Region:
    """`chr1`, `chr1:1001`, `chr1:1001-2000` (1-based, inclusive, commas allowed) or `*`
    (unplaced reads) as an htsget Region (0-based, half-open)."""
    match = _SAMTOOLS.match(text.strip())
    if not text.strip() or match is None:
        raise InvalidRequest(f"region {text!r} is not NAME[:BEGIN[-END]]")
    name, beg, end = match["name"], match["beg"], match["end"]
    if beg is None and ":" in text and not end:
        name = text  # a name with a colon (HLA-A*01:01): taken whole
    start = int(beg.replace(",", "")) - 1 if beg else None
    stop = int(end.replace(",", "")) if end else None
    if start is not None and start < 0:
        raise InvalidRequest(f"region {text!r}: positions start at 1")
    try:
        return Region(name, start or None, stop)
    except HtsgetError as err:  # InvalidRange / InvalidInput, as a server would answer
        raise InvalidRequest(f"region {text!r}: {err.message}") from None


def to_region(value: RegionLike) -> Region:
    if isinstance(value, Region):
        return value
    if isinstance(value, str):
        return parse_region(value)
    items = list(value)
    if not items or len(items) > 3:
        raise InvalidRequest(f"a region is (name, start, end), got {value!r}")
    try:
        return Region(*items)
    except HtsgetError as err:
        raise InvalidRequest(f"region {value!r}: {err.message}") from None


def check_url(url: str) -> None:
    """An http(s) URL with a host, else `InvalidRequest` (a usage error)."""
    if not isinstance(url, str):
        raise InvalidRequest(f"a ticket URL is a string, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequest(
            f"{url!r} is not an http(s) URL (e.g. https://host/reads/ID)")


def build_request(
    url: str,
    *,
    reference_name: Optional[str] = None,
    start: Optional[int] = None,
    end: Optional[int] = None,
    format: Optional[str] = None,
    regions: Optional[Iterable[RegionLike]] = None,
    klass: Optional[str] = None,
) -> tuple[str, Optional[dict[str, Any]]]:
    """(url, None) for a GET with the options in the query string, or (url, body) for a
    POST when several regions are asked for (htsget's only way to ask for several)."""
    check_url(url)
    listed = [to_region(r) for r in regions] if regions is not None else None
    if listed is not None and not listed:
        raise InvalidRequest("regions is empty (None asks for the whole file)")
    if listed is not None and reference_name is not None:
        raise InvalidRequest("give either regions or reference_name/start/end")
    if reference_name is None and (start is not None or end is not None):
        raise InvalidRequest("start and end need a reference_name")
    if reference_name is not None:
        listed = [to_region((reference_name, start, end))]
    klass_value = getattr(klass, "value", klass)
    format_value = getattr(format, "value", format)
    if listed is not None and len(listed) > 1:
        parts = urlsplit(url)
        if parts.query:
            raise InvalidRequest("several regions are sent in a POST body: the ticket URL"
                                 f" cannot have a query string ({parts.query!r})")
        body: dict[str, Any] = {"regions": [_region_json(r) for r in listed]}
        if format_value:
            body["format"] = format_value
        if klass_value:
            body["class"] = klass_value
        return url, body
    params: list[tuple[str, str]] = []
    if format_value:
        params.append(("format", str(format_value)))
    if klass_value:
        params.append(("class", str(klass_value)))
    if listed:
        params += [(k, str(v)) for k, v in _region_json(listed[0]).items()]
    return _with_params(url, params), None


def _region_json(region: Region) -> dict[str, Any]:
    out: dict[str, Any] = {"referenceName": region.reference_name}
    if region.start is not None:
        out["start"] = region.start
    if region.end is not None:
        out["end"] = region.end
    return out


def _with_params(url: str, params: list[tuple[str, str]]) -> str:
    if not params:
        return url
    parts = urlsplit(url)
    have = parse_qsl(parts.query, keep_blank_values=True)
    twice = sorted({k for k, _ in params} & {k for k, _ in have})
    if twice:
        raise InvalidRequest(f"{', '.join(twice)} given both in the URL and as an option")
    query = urlencode(have + params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def get_ticket(
    url: str,
    session: Optional[requests.Session] = None,
    headers: Optional[dict[str, str]] = None,
    body: Optional[dict[str, Any]] = None,
    timeout: float = 60.0,
    retries: int = 3,
) -> dict[str, Any]:
    """GET (or, with `body`, POST) a ticket and return what is under its "htsget" key;
    connection errors and 5xx are retried, htsget errors become `ClientError` naming them."""
    check_url(url)
    http = session or requests.Session()
    send_headers = {"Accept": f"{CONTENT_TYPE}, application/json", **(headers or {})}
    method = "GET" if body is None else "POST"
    resp = send(http, method, url, send_headers, timeout, retries, json=body)
    with resp:
        try:
            doc = resp.json()
        except ValueError:
            raise ClientError(f"{url}: HTTP {resp.status_code}, not a JSON ticket") from None
    ticket = doc.get("htsget") if isinstance(doc, dict) else None
    if resp.status_code != 200 or not isinstance(ticket, dict) or "urls" not in ticket:
        err = ticket if isinstance(ticket, dict) else {}
        what = err.get("error") or "not a ticket"
        message = err.get("message") or describe_doc(doc)
        raise ClientError(f"{url}: HTTP {resp.status_code} {what}: {message}")
    if not isinstance(ticket["urls"], list) or not all(
        isinstance(b, dict) and isinstance(b.get("url"), str) for b in ticket["urls"]
    ):
        raise ClientError(f"{url}: the ticket's urls are not a list of {{\"url\": ...}}")
    return ticket


def describe_doc(doc: Any) -> str:
    text = str(doc)
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = ["RegionLike", "build_request", "check_url", "describe", "get_ticket",
           "parse_region", "to_region"]
