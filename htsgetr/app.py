"""create_app(config, role) -> Flask: blueprints, CORS, errors, auth, observability."""

from __future__ import annotations

from typing import Optional

from flask import Flask
from flask_cors import CORS

from . import observability
from .config import Config
from .cors import flask_cors_options
from .engine import Htsget

ROLES = ("all", "ticket", "data")


def create_app(config: Config, role: str = "all", engine: Optional[Htsget] = None) -> Flask:
    """The WSGI app. `role` picks the ticket endpoints, the data endpoint, or both."""
    from .api import auth, data, errors, fast, service_info, tickets

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    app = Flask("htsgetr")
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False  # an ID with "//" is refused, not redirected
    app.extensions["htsgetr"] = engine or Htsget(config)
    if role in ("all", "ticket"):
        app.register_blueprint(service_info.bp)
        app.register_blueprint(tickets.bp)
        if config.viewer.enabled:  # the igv.js page (htsgetr/viewer), off by default
            from .viewer.views import bp as viewer_bp

            app.register_blueprint(viewer_bp)
    if role in ("all", "data"):
        app.register_blueprint(data.bp)
    server = config.data_server if role == "data" else config.ticket_server
    CORS(app, **flask_cors_options(server.cors, server.cors_origins))
    auth.register(app, config, role)
    errors.register(app)
    fast.install(app)  # GET tickets and /data without Flask's per-request machinery
    # /healthz, /readyz, metrics, tracing, and the request ID + access line of every request
    # (fast path included): the outermost layer
    observability.install(app, config)
    return app
