"""`gunicorn htsgetr.wsgi:app`: configuration from HTSGET_CONFIG and the HTSGET_* environment.

HTSGET_ROLE picks the endpoints (all | ticket | data). Each worker reads the configuration
when it boots, so a SIGHUP to gunicorn (new workers) picks up a changed file; for reloads
that refuse a broken file and keep the old configuration, run `htsgetr serve` instead.
"""

from __future__ import annotations

import os
from typing import Any

from .app import create_app
from .config import ConfigError, load_config


def _app() -> Any:
    try:
        config = load_config()
    except ConfigError as err:
        message = f"htsgetr: configuration error: {err}"
        try:  # gunicorn stops (instead of respawning workers) on an AppImportError
            from gunicorn.errors import AppImportError
        except ImportError:  # pragma: no cover - another WSGI server
            raise SystemExit(message) from None
        raise AppImportError(message) from None
    return create_app(config, os.environ.get("HTSGET_ROLE", "all"))


app = _app()
