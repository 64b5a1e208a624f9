"""Run the WSGI app under gunicorn: binds, workers, TLS, and graceful reload on SIGHUP."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from gunicorn.app.base import BaseApplication

from .app import create_app
from .config import Config

log = logging.getLogger("htsgetr")


class HtsgetrServer(BaseApplication):  # type: ignore[misc]
    """A gunicorn application whose workers each build the Flask app from `config`.

    `reload_config` (if given) is called by the master on SIGHUP; when it raises, the error
    is logged and the previous configuration keeps serving.
    """

    def __init__(
        self,
        config: Config,
        reload_config: Optional[Callable[[], Config]] = None,
        role: str = "all",
    ) -> None:
        self.config = config
        self.reload_config = reload_config
        self.role = role
        self._loaded_once = False
        super().__init__()

    def load_config(self) -> None:
        if self._loaded_once and self.reload_config is not None:
            try:
                self.config = self.reload_config()
                log.warning("configuration reloaded")
            except Exception as exc:  # keep serving with the old config
                log.error("configuration reload refused, keeping the old one: %s", exc)
        self._loaded_once = True
        server = self.config.data_server if self.role == "data" else self.config.ticket_server
        settings: dict[str, Any] = {
            "bind": [_bind(server.host, server.port)],
            "workers": server.workers,
            "threads": server.threads,
            "worker_class": "gthread" if server.threads > 1 else "sync",
            "timeout": server.timeout,
            "graceful_timeout": 30,
            "keepalive": 5,
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "htsgetr",
        }
        if server.tls_cert:
            settings["certfile"] = server.tls_cert
            settings["keyfile"] = server.tls_key
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Callable[..., Any]:
        return create_app(self.config, self.role)


def _bind(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"
