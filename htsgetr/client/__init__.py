"""An htsget client: ticket -> every block, fetched in parallel and checked -> one file.

    from htsgetr.client import fetch
    fetch("https://host/reads/NA12878", "chr1.bam", reference_name="chr1", end=1_000_000)
    fetch("https://host/variants/x", "two.vcf.gz", regions=["chr1:1-1000", ("chr2", 0, 500)])

Works against any htsget 1.x server: one region is a GET, several a POST. Blocks are
fetched `concurrency` at a time; connection errors and 5xx are retried with backoff;
redirects are followed re-sending the block's headers; `data:` blocks are decoded; each
block's length is checked against its Content-Length and Range, and a whole file's md5
against the ticket's. A file is written atomically: a temporary file beside it, renamed
into place at the end, removed on any failure — never a partial file under its name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from functools import partial
from typing import IO, Any, Optional, Union

import requests
from requests.adapters import HTTPAdapter

from .. import protocol
from .blocks import Fetcher, Progress, block_size, decode_data_url, expected_length
from .errors import ClientError, InvalidRequest
from .request import RegionLike, build_request, check_url, get_ticket, parse_region

CONCURRENCY = 4
RETRIES = 3

Ticket = dict[str, Any]
#: a ticket URL, a ticket as JSON (with or without the "htsget" key), or the engine's Ticket
Source = Union[str, Ticket, protocol.Ticket]

__all__ = [
    "ClientError",
    "InvalidRequest",
    "RegionLike",
    "build_request",
    "check_target",
    "decode_data_url",
    "expected_length",
    "fetch",
    "get_ticket",
    "iter_blocks",
    "parse_region",
    "payload_size",
    "request_ticket",
]


def payload_size(ticket: Ticket) -> Optional[int]:
    """The size of the reassembled file when every block tells its own (inline data, a
    Range header), else None. `ticket` is what `get_ticket` returns."""
    total = 0
    for block in ticket["urls"]:
        size = block_size(block)
        if size is None:
            return None
        total += size
    return total


def _session(concurrency: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(concurrency, 4))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def request_ticket(
    url: str,
    *,
    reference_name: Optional[str] = None,
    start: Optional[int] = None,
    end: Optional[int] = None,
    format: Optional[str] = None,
    regions: Optional[Iterable[RegionLike]] = None,
    klass: Optional[str] = None,
    token: Optional[str] = None,
    headers: Optional[dict[str, str]] = None,
    session: Optional[requests.Session] = None,
    timeout: float = 60.0,
    retries: int = RETRIES,
) -> Ticket:
    """The ticket (what is under "htsget") for `url` and the region options: a GET, or a
    POST for several regions. `token` is sent as `Authorization: Bearer`."""
    target, body = build_request(url, reference_name=reference_name, start=start, end=end,
                                 format=format, regions=regions, klass=klass)
    send = dict(headers or {})
    if token:
        send["Authorization"] = f"Bearer {token}"
    return get_ticket(target, session, send, body, timeout, retries)


def _resolve(
    ticket_or_url: Source, body: Optional[dict[str, Any]], session: requests.Session,
    timeout: float, retries: int, headers: Optional[dict[str, str]], options: dict[str, Any],
) -> tuple[Ticket, Optional[str]]:
    """(the ticket, the URL it came from)."""
    if isinstance(ticket_or_url, str):
        token = options.get("token")
        if body is not None:  # a POST body given as is
            check_url(ticket_or_url)
            send = dict(headers or {})
            if token:
                send["Authorization"] = f"Bearer {token}"
            return get_ticket(ticket_or_url, session, send, body, timeout, retries), ticket_or_url
        ticket = request_ticket(ticket_or_url, headers=headers, session=session,
                                timeout=timeout, retries=retries, **options)
        return ticket, ticket_or_url
    if isinstance(ticket_or_url, protocol.Ticket):  # Htsget.ticket(...) in a notebook
        ticket_or_url = ticket_or_url.to_json()
    if not isinstance(ticket_or_url, dict):
        raise InvalidRequest(f"expected a ticket URL or a ticket, got {type(ticket_or_url)}")
    ticket = ticket_or_url.get("htsget", ticket_or_url)
    if not isinstance(ticket, dict) or not isinstance(ticket.get("urls"), list):
        raise InvalidRequest("a ticket is {\"htsget\": {\"urls\": [...]}}")
    return ticket, None


def iter_blocks(
    ticket_or_url: Source,
    *,
    reference_name: Optional[str] = None,
    start: Optional[int] = None,
    end: Optional[int] = None,
    format: Optional[str] = None,
    regions: Optional[Iterable[RegionLike]] = None,
    klass: Optional[str] = None,
    token: Optional[str] = None,
    headers: Optional[dict[str, str]] = None,
    body: Optional[dict[str, Any]] = None,
    concurrency: int = CONCURRENCY,
    timeout: float = 60.0,
    retries: int = RETRIES,
    progress: Optional[Progress] = None,
    spool_dir: Optional[str] = None,
    origin: Optional[str] = None,
) -> Iterator[bytes]:
    """The payload in order, in pieces of at most 1 MiB: concatenated, they are the file.
    Blocks download in parallel ahead of the reader; a failure raises `ClientError` where
    it happens (pieces already yielded stay yielded), an md5 mismatch after the last piece.
    `token` goes to the ticket server, and to blocks on its origin (`origin`: the URL a
    ticket given as a dict came from) that carry no Authorization of their own."""
    with _session(concurrency) as session:
        options = dict(reference_name=reference_name, start=start, end=end, format=format,
                       regions=regions, klass=klass, token=token)
        ticket, url = _resolve(ticket_or_url, body, session, timeout, retries, headers, options)
        fetcher = Fetcher(session, token_origin=url or origin, token=token, timeout=timeout,
                          retries=retries, spool_dir=spool_dir, progress=progress)
        digest = hashlib.md5()
        for spool in fetcher.ordered(ticket["urls"], concurrency):
            for chunk in iter(partial(spool.read, 1 << 20), b""):
                digest.update(chunk)
                yield chunk
        want = ticket.get("md5")
        if want and str(want).lower() != digest.hexdigest():
            raise ClientError(f"md5 mismatch: ticket {want}, payload {digest.hexdigest()}")


def fetch(
    ticket_or_url: Source,
    out: Union[str, os.PathLike[str], IO[bytes]],
    *,
    reference_name: Optional[str] = None,
    start: Optional[int] = None,
    end: Optional[int] = None,
    format: Optional[str] = None,
    regions: Optional[Iterable[RegionLike]] = None,
    klass: Optional[str] = None,
    token: Optional[str] = None,
    headers: Optional[dict[str, str]] = None,
    body: Optional[dict[str, Any]] = None,
    concurrency: int = CONCURRENCY,
    timeout: float = 60.0,
    retries: int = RETRIES,
    progress: Optional[Progress] = None,
    origin: Optional[str] = None,
) -> int:
    """Download a ticket (or the ticket at a URL, for the region options) into `out`, a
    path or a binary file object; returns the payload size. A path is written atomically:
    on any failure nothing is left under its name, nor beside it."""
    kwargs: dict[str, Any] = dict(
        reference_name=reference_name, start=start, end=end, format=format, regions=regions,
        klass=klass, token=token, headers=headers, body=body, concurrency=concurrency,
        timeout=timeout, retries=retries, progress=progress, origin=origin)
    if not isinstance(out, (str, os.PathLike)):
        size = 0
        for chunk in iter_blocks(ticket_or_url, **kwargs):
            out.write(chunk)
            size += len(chunk)
        out.flush()
        return size
    target = check_target(out)
    directory = os.path.dirname(target)
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part",
                                dir=directory)
    try:
        size = 0
        with os.fdopen(fd, "wb") as sink:
            for chunk in iter_blocks(ticket_or_url, spool_dir=directory, **kwargs):
                sink.write(chunk)
                size += len(chunk)
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return size


def check_target(out: Union[str, os.PathLike[str]]) -> str:
    """The absolute path of an output file whose directory exists, else `InvalidRequest`
    (checked before anything is downloaded)."""
    target = os.path.abspath(os.fspath(out))
    directory = os.path.dirname(target)
    if os.path.isdir(target):
        raise InvalidRequest(f"{out}: is a directory")
    if not os.path.isdir(directory):
        raise InvalidRequest(f"{out}: no such directory {directory!r}")
    return target


def _umask() -> int:
    """The process umask (a new file's mode is 0o666 less it, as open() would give)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
