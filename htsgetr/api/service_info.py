"""GA4GH service-info for the whole service and per endpoint (`type` and `htsget` derived)."""

from __future__ import annotations

import json
from typing import Any, Optional

from flask import Blueprint, Response, current_app

from .._version import __version__
from ..protocol import ENDPOINT_FORMATS, PROTOCOL_VERSION, Endpoint

bp = Blueprint("service_info", __name__)

DEFAULTS: dict[str, Any] = {
    "id": "org.ga4gh.htsgetr",
    "name": "htsgetr",
    "description": "GA4GH htsget server for reads, variants and sequences",
    "organization": {"name": "htsgetr", "url": "https://github.com/htsgetr/htsgetr"},
    "version": __version__,
}


def service_info(endpoint: Optional[Endpoint], configured: dict[str, Any]) -> dict[str, Any]:
    """Configured fields over defaults; `type` and `htsget` always come from the server."""
    info = {**DEFAULTS, **{k: v for k, v in configured.items() if k not in ("type", "htsget")}}
    per = configured.get(endpoint.value if endpoint else "reads", {})
    datatype = endpoint or Endpoint.READS
    formats = [f.value for f in ENDPOINT_FORMATS[datatype]]
    if isinstance(per, dict) and per.get("formats"):
        formats = [f for f in formats if f in {str(x).upper() for x in per["formats"]}]
    for key in ("reads", "variants", "sequences"):
        info.pop(key, None)
    info["type"] = {"group": "org.ga4gh", "artifact": "htsget", "version": PROTOCOL_VERSION}
    info["htsget"] = {
        "datatype": datatype.value,
        "formats": formats,
        "fieldsParameterEffective": False,
        "tagsParametersEffective": False,
    }
    return info


def _view(endpoint: Optional[Endpoint]) -> Response:
    configured = current_app.extensions["htsgetr"].config.service_info
    body = service_info(endpoint, configured)
    return Response(json.dumps(body), content_type="application/json")


bp.add_url_rule("/service-info", "root", lambda: _view(None))
for _ep in Endpoint:
    bp.add_url_rule(
        f"/{_ep.value}/service-info", _ep.value, lambda _ep=_ep: _view(_ep), methods=["GET"]
    )
