"""`gunicorn htsgetr.wsgi:app`: configuration from HTSGET_CONFIG and the HTSGET_* environment.

HTSGET_ROLE picks the endpoints (all | ticket | data). Each worker reads the configuration
when it boots, so a SIGHUP to gunicorn (new workers) picks up a changed file; for reloads
that refuse a broken file and keep the old configuration, run `htsgetr serve` instead.

Run it with `-c python:htsgetr.gunicorn_conf`: gunicorn's defaults (sync workers, no
header or body deadlines) let a few slow clients hold every worker.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

from .app import create_app
from .auth.gate import missing_secret
from .config import ConfigError, load_config
from .workers import Deadlines, patch_gunicorn


def _fail(message: str) -> NoReturn:
    message = f"htsgetr: {message}"
    try:  # gunicorn stops (instead of respawning workers) on an AppImportError
        from gunicorn.errors import AppImportError
    except ImportError:  # pragma: no cover - another WSGI server
        raise SystemExit(message) from None
    raise AppImportError(message) from None


def _app() -> Any:
    try:
        config = load_config()
    except ConfigError as err:
        _fail(f"configuration error: {err}")
    # each gunicorn worker imports this module: a secret made here would differ per worker
    missing = missing_secret(config, os.environ)
    if missing:
        _fail(missing)
    role = os.environ.get("HTSGET_ROLE", "all")
    patch_gunicorn()  # this worker's refusals in htsget JSON, sendfile bytes counted
    server = config.data_server if role == "data" else config.ticket_server
    return Deadlines(create_app(config, role), server)


app = _app()
