"""GET/POST /reads, /variants and /sequences: HTTP <-> protocol.Query / Ticket."""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from ..engine import Htsget
from ..hosts import host_policy
from ..protocol import (
    CONTENT_TYPE,
    Endpoint,
    InvalidInput,
    PayloadTooLarge,
    check_post_content_type,
    parse_get,
    parse_post,
)
from .auth import authorize, sign

bp = Blueprint("tickets", __name__)
_ENDPOINTS = frozenset(e.value for e in Endpoint)
log = logging.getLogger("htsgetr")


@bp.before_request
def _check_host() -> None:
    """A Host that ticket urls may not name is refused before any work (400)."""
    _request_origin(_engine())


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
    else:
        query = parse_get(endpoint, id, request.args)
    query, allowed = authorize(query)
    ticket = engine.ticket(query).to_json()
    data_base = _use_request_address(ticket, engine)
    for block in ticket["htsget"]["urls"]:
        block["url"] = sign(block["url"], block.get("headers"), data_base)
    if allowed is not None:
        ticket["htsget"]["allowed"] = allowed
    return Response(json.dumps(ticket), content_type=CONTENT_TYPE)


def _use_request_address(body: dict[str, Any], engine: Htsget) -> str:
    """With no base URL configured, /data urls name the address the client reached us at.
    Returns the base url of our /data urls in the ticket.

    The default base URL comes from the bind (http://127.0.0.1:8080), which is wrong for a
    client anywhere else: in a container, behind a port mapping, on another machine. The
    Host header the client sent is the address that works for it, when `allowed_hosts`
    lets it (see `hosts`).
    """
    config = engine.config
    if config.ticket_server.base_url or config.data_server.separate:
        return config.data_url()
    default = config.data_url() + "/data/"
    origin = _request_origin(engine)
    here = f"{origin}/data/" if origin else default
    if here == default:
        return config.data_url()
    for block in body["htsget"]["urls"]:
        if block["url"].startswith(default):
            block["url"] = here + block["url"][len(default):]
    return here[: -len("/data/")]


def _request_origin(engine: Htsget) -> Optional[str]:
    """`scheme://host[:port]` of this request as ticket urls may name it; None when the
    configuration decides (base_url, a separate data server) or no Host was sent. 400
    InvalidInput for a Host outside `allowed_hosts`. Computed once per request."""
    if "htsget_origin" in g:
        origin: Optional[str] = g.htsget_origin
        return origin
    config, server = engine.config, engine.config.ticket_server
    origin = None
    if not (server.base_url or config.data_server.separate):
        policy = host_policy(
            tuple(server.allowed_hosts) if server.allowed_hosts is not None else None,
            server.host,
            server.port,
            bool(server.tls_cert),
            tuple(server.trusted_proxies),
        )
        origin = policy.origin(
            request.scheme, request.environ.get("HTTP_HOST"), request.remote_addr,
            dict(request.headers),
        )
    g.htsget_origin = origin
    return origin


for _ep in Endpoint:
    bp.add_url_rule(
        f"/{_ep.value}/<path:id>",
        f"{_ep.value}_ticket",
        lambda id, _ep=_ep: ticket_view(_ep, id),
        methods=["GET", "POST"],
    )
