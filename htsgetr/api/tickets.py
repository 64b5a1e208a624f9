"""GET/POST /reads, /variants and /sequences: HTTP <-> protocol.Query / Ticket."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from flask import Blueprint, Response, current_app, g, request
from flask.sansio.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException

from ..auth.signing import UrlSigner
from ..config import Config
from ..crypt4gh import Encryption
from ..engine import Htsget
from ..hosts import HostPolicy, host_policy
from ..observability.keys import QUERY, TICKET
from ..protocol import (
    CONTENT_TYPE,
    Endpoint,
    InvalidInput,
    PayloadTooLarge,
    Ticket,
    check_post_content_type,
    parse_get,
    parse_post,
)
from .auth import authorize, sign_url, signer

bp = Blueprint("tickets", __name__)
_ENDPOINTS = frozenset(e.value for e in Endpoint)
log = logging.getLogger("htsgetr")


#: app.extensions key of the app's `Site`
SITE = "htsgetr.site"


@dataclass(frozen=True)
class Site:
    """What every ticket request of one app shares, computed once when the blueprint is
    registered: the configured /data base url, and the Host policy that may replace it."""

    data_url: str  # config.data_url(): what the engine's /data urls start with
    policy: Optional[HostPolicy]  # None: base_url or a separate data server decides

    @classmethod
    def of(cls, config: Config) -> Site:
        server = config.ticket_server
        if server.base_url or config.data_server.separate:
            return cls(config.data_url(), None)
        policy = host_policy(
            tuple(server.allowed_hosts) if server.allowed_hosts is not None else None,
            server.host,
            server.port,
            bool(server.tls_cert),
            tuple(server.trusted_proxies),
        )
        return cls(config.data_url(), policy)

    def origin(self, environ: Mapping[str, Any]) -> Optional[str]:
        """`scheme://host[:port]` this request's ticket urls may name (see `hosts`); None
        when the configuration decides or no Host was sent. InvalidInput (400) for a Host
        outside `allowed_hosts`."""
        return None if self.policy is None else self.policy.environ_origin(environ)


def ticket_json(ticket: Ticket, site: Site, origin: Optional[str],
                url_signer: Optional[UrlSigner], allowed: Optional[list[Any]] = None) -> str:
    """The ticket's JSON text: /data urls on the address the client reached us at (when no
    base URL is configured: the bind's default is wrong for a client in a container, behind
    a port mapping, on another machine; the Host it sent works for it, when `allowed_hosts`
    lets it), signed when signing is on."""
    base = site.data_url
    if (origin is None or origin == base) and url_signer is None and allowed is None:
        return _dumps_blocks(ticket)  # nothing to change: from the blocks, no dict between
    body = ticket.to_json()
    if origin is not None and origin != base:
        default, here = base + "/data/", origin + "/data/"
        for block in body["htsget"]["urls"]:
            if block["url"].startswith(default):
                block["url"] = here + block["url"][len(default):]
        base = origin
    if url_signer is not None:
        for block in body["htsget"]["urls"]:
            block["url"] = sign_url(url_signer, block["url"], block.get("headers"), base)
    if allowed is not None:
        body["htsget"]["allowed"] = allowed
    return _dumps_ticket(body)


_INLINE = "data:;base64,"
#: characters json.dumps escapes in an ASCII string
_ESCAPED = re.compile(r'[\x00-\x1f"\\\x7f]').search
#: a Range header value as the engine writes it
_RANGE = re.compile(r"bytes=[0-9]{1,20}-[0-9]{1,20}").fullmatch
#: a block's "class" entry, spelled
_CLASS = {"header": '"class": "header"', "body": '"class": "body"'}


def _dumps_ticket(body: dict[str, Any]) -> str:
    """`json.dumps(body)`, character for character, joined once, without running the
    encoder over what needs no escaping: inline blocks (base64, from the engine's
    `data_uri`; a ticket of re-cut edges carries tens of them, ~100 KB in all), plain ASCII
    urls, Range headers and classes as the engine writes them (a ticket of many blocks
    spent most of its HTTP time in json.dumps calls). Anything else goes through
    `json.dumps`."""
    dumps = json.dumps
    out = ['{"htsget": {']
    for i, (key, value) in enumerate(body["htsget"].items()):
        if i:
            out.append(", ")
        if key != "urls":
            out.append(f"{dumps(key)}: {dumps(value)}")
            continue
        out.append('"urls": [')
        for j, block in enumerate(value):
            out.append(", {" if j else "{")
            for k, (name, text) in enumerate(block.items()):
                if k:
                    out.append(", ")
                if name == "url":
                    _url(out, text)
                elif name == "class" and text in _CLASS:
                    out.append(_CLASS[text])
                elif name == "headers":
                    _headers(out, text)
                else:
                    out.append(f"{dumps(name)}: {dumps(text)}")
            out.append("}")
        out.append("]")
    out.append("}}")
    return "".join(out)


def _dumps_blocks(ticket: Ticket) -> str:
    """`json.dumps(ticket.to_json())`, character for character, from the blocks (the
    common ticket: no url to rewrite or sign)."""
    out = ['{"htsget": {"format": ', json.dumps(ticket.format.value), ', "urls": [']
    for j, block in enumerate(ticket.blocks):
        out.append(", {" if j else "{")
        _url(out, block.url)
        if block.headers:
            out.append(", ")
            _headers(out, block.headers)
        if block.klass is not None:
            name = block.klass.value
            out += (", ", _CLASS[name] if name in _CLASS else f'"class": {json.dumps(name)}')
        out.append("}")
    out.append("]")
    if ticket.md5:
        out += (', "md5": ', json.dumps(ticket.md5))
    out.append("}}")
    return "".join(out)


def _url(out: list[str], text: str) -> None:
    if text.isascii() and ('"' not in text and "\\" not in text if text.startswith(_INLINE)
                           else not _ESCAPED(text)):
        out += ('"url": "', text, '"')
    else:
        out.append(f'"url": {json.dumps(text)}')


def _headers(out: list[str], headers: dict[str, str]) -> None:
    if len(headers) == 1 and isinstance(headers.get("Range"), str) and _RANGE(headers["Range"]):
        out += ('"headers": {"Range": "', headers["Range"], '"}')
    else:
        out.append(f'"headers": {json.dumps(headers)}')


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    state.app.extensions[SITE] = Site.of(state.app.extensions["htsgetr"].config)


@bp.before_request
def _check_host() -> None:
    """A Host that ticket urls may not name is refused before any work (400)."""
    _request_origin()


@bp.after_app_request
def _no_store(resp: Response) -> Response:
    """Tickets (and their errors, routing ones included) are per request: a shared cache
    must never keep one."""
    if request.path.split("/", 2)[1] in _ENDPOINTS:
        resp.headers["Cache-Control"] = "no-store"
    return resp


def _engine() -> Htsget:
    engine: Htsget = current_app.extensions["htsgetr"]
    return engine


def _read_body(limit: int) -> bytes:
    """The POST body, at most `limit` bytes (413 beyond). A body the server cannot read
    (a broken chunked encoding, a client gone mid-body) is the client's error: 400."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:  # a stream may return short reads
            chunk = request.stream.read(limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except HTTPException:
        raise
    except Exception as err:  # the WSGI server's own parse errors (gunicorn InvalidChunkSize)
        log.info("unreadable request body: %s", type(err).__name__)
        raise InvalidInput("the request body could not be read") from None
    if size > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    return b"".join(chunks)


def ticket_view(endpoint: Endpoint, id: str) -> Response:
    engine = _engine()
    if request.method == "POST":
        content_type = request.headers.get("Content-Type")
        check_post_content_type(content_type)  # 415 before reading a body of another type
        body = _read_body(engine.config.max_post_bytes)
        query = parse_post(endpoint, id, body, bool(request.query_string), content_type)
        encryption = Encryption.of_post(body, request.environ)
    else:
        query = parse_get(endpoint, id, request.args)
        encryption = Encryption.of_get(request.args, request.environ)
    request.environ[QUERY] = query  # the ticket's ID, format, class, regions: access line
    query, allowed = authorize(query)
    site: Site = current_app.extensions[SITE]
    ticket = request.environ[TICKET] = engine.ticket(query, encryption)
    text = ticket_json(ticket, site, _request_origin(), signer(), allowed)
    return Response(text, content_type=CONTENT_TYPE)


def _request_origin() -> Optional[str]:
    """`Site.origin` of this request, computed once per request."""
    if "htsget_origin" in g:
        origin: Optional[str] = g.htsget_origin
        return origin
    site: Site = current_app.extensions[SITE]
    origin = site.origin(request.environ)
    g.htsget_origin = origin
    return origin


for _ep in Endpoint:
    bp.add_url_rule(
        f"/{_ep.value}/<path:id>",
        f"{_ep.value}_ticket",
        lambda id, _ep=_ep: ticket_view(_ep, id),
        methods=["GET", "POST"],
    )
