"""GET/POST /reads, /variants and /sequences: HTTP <-> protocol.Query / Ticket."""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, request

from ..engine import Htsget
from ..protocol import CONTENT_TYPE, Endpoint, PayloadTooLarge, parse_get, parse_post

bp = Blueprint("tickets", __name__)


def _engine() -> Htsget:
    engine: Htsget = current_app.extensions["htsgetr"]
    return engine


def _read_body(limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    return body


def ticket_view(endpoint: Endpoint, id: str) -> Response:
    engine = _engine()
    if request.method == "POST":
        body = _read_body(engine.config.max_post_bytes)
        query = parse_post(endpoint, id, body, bool(request.query_string))
    else:
        query = parse_get(endpoint, id, request.args)
    ticket = engine.ticket(query)
    return Response(json.dumps(ticket.to_json()), content_type=CONTENT_TYPE)


for _ep in Endpoint:
    bp.add_url_rule(
        f"/{_ep.value}/<path:id>",
        f"{_ep.value}_ticket",
        lambda id, _ep=_ep: ticket_view(_ep, id),
        methods=["GET", "POST"],
    )
