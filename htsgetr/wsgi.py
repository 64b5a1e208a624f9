"""`gunicorn htsgetr.wsgi:app`: configuration from HTSGET_CONFIG / HTSGET_* environment."""

from __future__ import annotations

import os

from .app import create_app
from .config import load_config

app = create_app(load_config(os.environ.get("HTSGET_CONFIG")), os.environ.get("HTSGET_ROLE", "all"))
