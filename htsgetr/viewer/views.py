"""GET /viewer/<id> (with `[viewer] enabled = true`): the igv.js page and its assets.

The page is a shell: it names the ID and this server's base URL, nothing read from storage.
Everything about the data goes through the htsget endpoints from the browser, with the token
the user gives the page (the `#token=` fragment, never sent to the server, or the token box),
so authentication and authorization are exactly the tickets' own:

- the formats an ID has: `class=header` tickets for BAM, VCF (and CRAM, BCF to say why not:
  igv.js's htsget reader takes BAM and VCF only, a client limit);
- the reference igv.js needs: built in the page from the header's references (names and
  lengths) as an all-N FASTA of Blob slices, so no reference data is needed here;
- the track: igv.js's htsget source on /reads/<id> or /variants/<id>.

igv.js is pinned (IGV_VERSION) and served from the package; the page has a strict CSP.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

from flask import Blueprint, Response, abort, request

IGV_VERSION = "3.8.10"
IGV_ASSET = f"igv-{IGV_VERSION}.min.js"
#: the only files /viewer/_static serves (name -> content type)
ASSETS = {IGV_ASSET: "text/javascript", "viewer.js": "text/javascript",
          "viewer.css": "text/css", "igv-LICENSE.txt": "text/plain"}

bp = Blueprint("viewer", __name__)

_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' https: http: "
        "data: blob:; worker-src 'self' blob:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'")


def _static(name: str) -> bytes:
    return resources.files("htsgetr.viewer").joinpath("static", name).read_bytes()


def _page(config: dict[str, Any]) -> str:
    # JSON in a data block: "<" escaped so no value can close the script element
    blob = json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e")
    template = _static("viewer.html").decode("utf-8")
    static = html.escape(config["root"] + "/viewer/_static", quote=True)
    return (template.replace("{{CONFIG}}", blob).replace("{{IGV}}", IGV_ASSET)
            .replace("{{STATIC}}", static))


@bp.route("/viewer/_static/<name>", methods=["GET", "HEAD"])
def asset(name: str) -> Response:
    """The pinned igv.js and the page's own script and style, from the package."""
    if name not in ASSETS:
        abort(404)
    resp = Response(_static(name), content_type=ASSETS[name])
    resp.headers["Cache-Control"] = "public, max-age=86400"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


@bp.route("/viewer/<path:id>", methods=["GET", "HEAD"])
def page(id: str) -> Response:
    """The viewer page for `id`; `?locus=chr1:1-1000` picks where it opens."""
    # the page finds the endpoints from its own origin: no Host header is echoed into it
    config = {"id": id, "root": request.script_root, "locus": request.args.get("locus"),
              "igvVersion": IGV_VERSION}
    resp = Response(_page(config), content_type="text/html; charset=utf-8")
    resp.headers["Content-Security-Policy"] = _CSP
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = "no-store"
    return resp
