"""Run the WSGI app under gunicorn: binds, workers, TLS, graceful reload on SIGHUP.

One `htsgetr serve` is one gunicorn master (arbiter) serving tickets and /data on one bind,
or, with `data_server.separate`, two masters: the ticket one, and a data one forked from it
on its own bind (own TLS). SIGHUP to the ticket master reloads both: the configuration is
re-read, and new workers replace the old ones once their in-flight requests finish. A new
configuration that does not load is refused with a logged error; the old one keeps serving.
With `watch = true` the ticket master polls the file and sends itself SIGHUP on a change.

Slow clients: the worker class and the deadlines every connection lives under are
`workers.py`'s (README "Slow clients").
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

from gunicorn.app.base import BaseApplication

from . import observability
from .app import create_app
from .config import Config, ServerConfig
from .workers import (
    Deadlines,
    lazy_handshake,
    patch_gunicorn,
    raise_nofile,
    worker_class,
)

log = logging.getLogger("htsgetr")


def _ensure_logging(config: Config) -> None:
    """Our log lines go to stderr beside gunicorn's, in `[logging]`'s format and level,
    unless logging is configured elsewhere (observability/logs.py)."""
    from .observability import logs

    logs.configure(config.logging)


class HtsgetrServer(BaseApplication):  # type: ignore[misc,unused-ignore]
    """A gunicorn application whose workers each build the Flask app from `config`.

    `reload_config` (if given) is called by the master on SIGHUP; when it raises, the error
    is logged and the previous configuration keeps serving. `watch` names the file the
    master polls when the configuration says `watch = true`. With role "all" and
    `data_server.separate`, `run()` forks the data server and this one serves tickets.
    """

    def __init__(
        self,
        config: Config,
        reload_config: Optional[Callable[[], Config]] = None,
        role: str = "all",
        watch: Optional[str] = None,
    ) -> None:
        self.config = config
        self.reload_config = reload_config
        self.spawn_data = role == "all" and config.data_server.separate
        self.role = "ticket" if self.spawn_data else role
        self.watch_path = watch
        self.child_pid: Optional[int] = None
        self.arbiter: Any = None
        self._loaded_once = False
        self._stopping = False
        self.metrics_server: Any = None
        _ensure_logging(config)
        super().__init__()

    # ------------------------------------------------------------------ gunicorn settings

    def load_config(self) -> None:
        if self._loaded_once and self.reload_config is not None:
            self._reload()
        self._loaded_once = True
        server = self.config.data_server if self.role == "data" else self.config.ticket_server
        settings = gunicorn_settings(server, self.role)
        settings.update(observability.gunicorn_hooks(self.config))  # log level, metrics hooks
        settings.update(when_ready=self._when_ready, on_reload=self._on_reload,
                        on_exit=self._on_exit)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 24: one per master
            settings["control_socket_disable"] = True
        for key, value in settings.items():
            self.cfg.set(key, value)
        raise_nofile(server.worker_connections + 1024)
        patch_gunicorn()

    def _reload(self) -> None:
        assert self.reload_config is not None
        try:
            new = self.reload_config()
        except Exception as exc:  # keep serving with the old config
            log.error("configuration reload refused, keeping the old one: %s", exc)
            return
        if new.data_server.separate != self.config.data_server.separate:
            log.warning("data_server.separate changed: that takes a restart, not a reload")
            new.data_server.separate = self.config.data_server.separate
        moved = _bind_changes(self.config, new)
        if moved:  # a new bind would drop every live connection: refuse, keep serving
            log.error("configuration reload refused, keeping the old one: %s change(s) need a"
                      " restart", ", ".join(moved))
            return
        self.config = new
        _ensure_logging(new)
        log.info("configuration reloaded (%d locations)", len(new.locations))

    def load(self) -> Callable[..., Any]:
        server = self.config.data_server if self.role == "data" else self.config.ticket_server
        return Deadlines(create_app(self.config, self.role), server)

    # ------------------------------------------------------------------ run, hooks

    def run(self) -> None:
        if self.spawn_data:
            self.child_pid = self._fork_data_server()
        super().run()

    def _fork_data_server(self) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        code = 0  # the child: a second arbiter, role "data", on the data server's bind
        try:
            HtsgetrServer(self.config, self.reload_config, role="data").run()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("data server failed")
            code = 1
        os._exit(code)

    def _when_ready(self, arbiter: Any) -> None:
        self.arbiter = arbiter
        metrics = self.config.metrics
        if self.role != "data" and metrics.enabled and metrics.port is not None:
            from .observability.metrics import start_server

            try:  # scrapes answered here, in the master: off the public port, across reloads
                self.metrics_server, port = start_server(metrics.host, metrics.port)
                log.info("metrics at http://%s/metrics", _bind(metrics.host, port))
            except OSError as exc:
                log.error("metrics cannot listen on %s: %s", _bind(metrics.host, metrics.port),
                          exc)
        parent = os.getppid()
        target = self._watch_parent if self.role == "data" else self._monitor
        threading.Thread(target=target, args=(parent,), name="htsgetr-monitor", daemon=True).start()

    def _on_reload(self, arbiter: Any) -> None:
        if self.child_pid:
            _signal(self.child_pid, signal.SIGHUP)

    def _on_exit(self, arbiter: Any) -> None:
        self._stopping = True
        pid, self.child_pid = self.child_pid, None
        if not pid:
            return
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.data_server.graceful_timeout + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            _signal(pid, signal.SIGKILL)

    def _monitor(self, _parent: int) -> None:
        """Ticket master: poll the config file (when asked) and the data server's health."""
        stamp = _stamp(self.watch_path)
        next_poll = time.monotonic()
        while not self._stopping:
            time.sleep(0.2)
            if self.child_pid and not _alive(self.child_pid) and not self._stopping:
                log.error("the data server (pid %d) exited; stopping", self.child_pid)
                self.child_pid = None
                os.kill(os.getpid(), signal.SIGTERM)
                return
            if not (self.watch_path and self.config.watch) or time.monotonic() < next_poll:
                continue
            next_poll = time.monotonic() + self.config.watch_interval
            now = _stamp(self.watch_path)
            if now != stamp:
                stamp = now
                log.info("%s changed, reloading", self.watch_path)
                os.kill(os.getpid(), signal.SIGHUP)

    def _watch_parent(self, parent: int) -> None:
        """Data master: stop when the ticket master that forked us is gone."""
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)


# --------------------------------------------------------------------------- helpers


def _stamp(path: Optional[str]) -> Optional[tuple[int, int, int]]:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _alive(pid: int) -> bool:
    """True while our child `pid` runs (gunicorn's arbiter may reap it before we do)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _bind_changes(old: Config, new: Config) -> list[str]:
    """Keys whose change needs new sockets (a restart), not new workers."""
    keys = ("host", "port", "tls_cert", "tls_key")
    moved = [
        f"{name}.{key}"
        for name in ("ticket_server", "data_server")
        for key in keys
        if getattr(getattr(old, name), key) != getattr(getattr(new, name), key)
        and (name == "ticket_server" or old.data_server.separate)
    ]
    # the master's own metrics listener (observability/metrics.py)
    if old.metrics.port != new.metrics.port or (
            new.metrics.port is not None and old.metrics.host != new.metrics.host):
        moved += [f"metrics.{key}" for key in ("port", "host")
                  if getattr(old.metrics, key) != getattr(new.metrics, key)]
    return moved


def gunicorn_settings(server: ServerConfig, role: str) -> dict[str, Any]:
    """gunicorn's settings for one server of the configuration: bind, workers, the worker
    class with its deadlines, TLS (`htsgetr serve` and `htsgetr.gunicorn_conf` share them)."""
    settings: dict[str, Any] = {
        "bind": [_bind(server.host, server.port)],
        "workers": server.workers,
        "threads": server.threads,
        "worker_class": worker_class(server),
        "worker_connections": server.worker_connections,
        "timeout": server.timeout,
        "graceful_timeout": server.graceful_timeout,
        "keepalive": server.keepalive,
        "accesslog": "-",
        "logger_class": "htsgetr.observability.RedactingLogger",
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": f"htsgetr-{role}",
    }
    if server.tls_cert:
        settings["certfile"] = server.tls_cert
        settings["keyfile"] = server.tls_key
        if server.worker_class == "gevent":  # the handshake happens under a deadline
            settings["ssl_context"] = lazy_handshake
    return settings


def _bind(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def serve(
    config: Config,
    reload_config: Optional[Callable[[], Config]] = None,
    watch: Optional[str] = None,
) -> None:
    """Serve until stopped: `htsgetr serve` in one call."""
    from .auth.signing import shared_secret

    # one /data url signing secret for every worker and the data server this master forks
    # (a reload that turns auth on finds it already there)
    shared_secret(None)
    # every worker (of both servers) writes its metrics there: made before any fork, removed
    # by this process when it stops (observability/metrics.py)
    from .observability.metrics import MultiprocDir

    metrics_dir = MultiprocDir()
    try:
        HtsgetrServer(config, reload_config, watch=watch).run()
    finally:
        metrics_dir.cleanup()  # only in this process: not in a worker leaving through here
