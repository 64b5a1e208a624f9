"""An htsget client: ticket -> fetch every block -> one file, checked as it is written.

`fetch("https://host/reads/ID?referenceName=chr1", "out.bam")` works against any htsget 1.x
server. Each block's length is checked against its Range, 5xx answers are retried with
backoff, and a ticket's md5 (whole files) is verified.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import IO, Any, Optional, Union

import requests

from .protocol import CONTENT_TYPE

RETRIES = 3


class ClientError(Exception):
    """The server refused the ticket, a block failed, or the payload does not check out."""


def get_ticket(
    url: str,
    session: Optional[requests.Session] = None,
    headers: Optional[dict[str, str]] = None,
    body: Optional[dict[str, Any]] = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """GET (or, with `body`, POST) a ticket; htsget errors become `ClientError`."""
    http = session or requests.Session()
    send = {"Accept": f"{CONTENT_TYPE}, application/json", **(headers or {})}
    if body is None:
        resp = http.get(url, headers=send, timeout=timeout)
    else:
        resp = http.post(url, json=body, headers=send, timeout=timeout)
    try:
        doc = resp.json()
    except ValueError:
        raise ClientError(f"{url}: HTTP {resp.status_code}, not JSON") from None
    if resp.status_code != 200 or "htsget" not in doc or "urls" not in doc.get("htsget", {}):
        err = doc.get("htsget", {}) if isinstance(doc, dict) else {}
        raise ClientError(
            f"{url}: HTTP {resp.status_code} {err.get('error', '')}: {err.get('message', doc)}"
        )
    ticket: dict[str, Any] = doc["htsget"]
    return ticket


def _expected_length(headers: dict[str, str]) -> Optional[int]:
    rng = {k.lower(): v for k, v in headers.items()}.get("range", "")
    if rng.startswith("bytes=") and "," not in rng:
        first, _, last = rng[6:].partition("-")
        if first.isdigit() and last.isdigit():
            return int(last) - int(first) + 1
    return None


def fetch_block(block: dict[str, Any], session: requests.Session, timeout: float = 60.0) -> bytes:
    """One url of a ticket: inline data, or an HTTP GET with the block's headers."""
    url: str = block["url"]
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        if not head.endswith(";base64"):
            raise ClientError("inline block is not base64")
        return base64.b64decode(payload)
    headers = dict(block.get("headers") or {})
    want = _expected_length(headers)
    for attempt in range(RETRIES + 1):
        try:
            resp = session.get(url, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            error = f"{url}: {exc}"
        else:
            if resp.status_code < 500:
                break
            error = f"{url}: HTTP {resp.status_code}"
        if attempt == RETRIES:
            raise ClientError(error)
        time.sleep(0.2 * 2**attempt)
    if resp.status_code not in (200, 206):
        raise ClientError(f"{url}: HTTP {resp.status_code}")
    data = resp.content
    if want is not None and len(data) != want:
        raise ClientError(f"{url}: {len(data)} bytes for a {want}-byte range")
    return data


def fetch(
    ticket_or_url: Union[str, dict[str, Any]],
    out: Union[str, IO[bytes]],
    headers: Optional[dict[str, str]] = None,
    body: Optional[dict[str, Any]] = None,
    timeout: float = 60.0,
) -> int:
    """Write the reassembled payload of a ticket (or a ticket URL) to `out`; returns its size."""
    with requests.Session() as session:
        if isinstance(ticket_or_url, str):
            ticket = get_ticket(ticket_or_url, session, headers, body, timeout)
        else:
            ticket = ticket_or_url.get("htsget", ticket_or_url)
        digest, size = hashlib.md5(), 0
        sink = open(out, "wb") if isinstance(out, str) else out
        try:
            for block in ticket["urls"]:
                data = fetch_block(block, session, timeout)
                sink.write(data)
                digest.update(data)
                size += len(data)
        finally:
            if isinstance(out, str):
                sink.close()
    if ticket.get("md5") and ticket["md5"] != digest.hexdigest():
        raise ClientError(f"md5 mismatch: ticket {ticket['md5']}, payload {digest.hexdigest()}")
    return size
