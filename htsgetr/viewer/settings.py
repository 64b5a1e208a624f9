"""`[viewer]`: the built-in igv.js page (off unless configured)."""

from __future__ import annotations

from dataclasses import dataclass

from ..typed_config import _opt


@dataclass
class ViewerConfig:
    """GET /viewer/<id> on the ticket server: igv.js (shipped in the package, no CDN) showing
    an ID's reads or variants through this server's own htsget endpoints."""

    enabled: bool = _opt(False, "serve GET /viewer/<id> (igv.js) on the ticket server")
