"""`gunicorn -c python:htsgetr.gunicorn_conf htsgetr.wsgi:app`: plain gunicorn with the
settings `htsgetr serve` uses — bind, workers, TLS, and above all the gevent worker class with
its header, body, send and keep-alive deadlines (README "Slow clients"). Without it, gunicorn
runs sync workers with no deadlines, and a few slow clients hold every worker.

The configuration comes from HTSGET_CONFIG and the HTSGET_* environment, as for `wsgi.py`;
HTSGET_ROLE (all | ticket | data) picks the server whose settings apply. Settings given on
gunicorn's own command line (`--bind`, `--workers`, ...) still win over these.
"""

from __future__ import annotations

import os

from .config import ConfigError, load_config
from .observability import gunicorn_hooks, logs
from .observability.metrics import MultiprocDir, start_server
from .server import gunicorn_settings
from .workers import patch_gunicorn, raise_nofile

try:
    _config = load_config()
except ConfigError as _err:
    raise SystemExit(f"htsgetr: configuration error: {_err}") from None
_role = os.environ.get("HTSGET_ROLE", "all")
_server = _config.data_server if _role == "data" else _config.ticket_server

# gunicorn reads the module's names that are settings and ignores the rest
globals().update(gunicorn_settings(_server, _role))
raise_nofile(_server.worker_connections + 1024)
patch_gunicorn()
# observability: log format and level, one metrics directory for every worker (made here,
# before any fork; removed on exit), the hooks that keep the counts right across workers
logs.configure(_config.logging)
globals().update(gunicorn_hooks(_config))
_metrics_dir = MultiprocDir()


def on_exit(server: object) -> None:
    _metrics_dir.cleanup()


def when_ready(server: object) -> None:
    metrics = _config.metrics
    if metrics.enabled and metrics.port is not None:
        start_server(metrics.host, metrics.port)
