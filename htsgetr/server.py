"""Run the WSGI app under gunicorn: binds, workers, TLS, graceful reload on SIGHUP.

One `htsgetr serve` is one gunicorn master (arbiter) serving tickets and /data on one bind,
or, with `data_server.separate`, two masters: the ticket one, and a data one forked from it
on its own bind (own TLS). SIGHUP to the ticket master reloads both: the configuration is
re-read, and new workers replace the old ones once their in-flight requests finish. A new
configuration that does not load is refused with a logged error; the old one keeps serving.
With `watch = true` the ticket master polls the file and sends itself SIGHUP on a change.

Slow clients (README "Slow clients"): the default worker class is gevent, a greenlet per
connection, so a connection that trickles its headers or body holds a little memory, not one
of a few threads. Deadlines bound what every connection may hold: the request line and
headers (`header_timeout`, `keepalive` between requests), the body (`body_timeout`, enforced
by `_Deadlines` around the app, on gthread too) and a stalled response (`send_timeout`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterator, Optional

from gunicorn.app.base import BaseApplication
from werkzeug.exceptions import RequestTimeout

from .app import create_app
from .config import Config, ServerConfig

log = logging.getLogger("htsgetr")


def _ensure_logging() -> None:
    """Our log lines go to stderr beside gunicorn's unless logging is configured elsewhere."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] htsgetr: %(message)s")
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)


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
        _ensure_logging()
        super().__init__()

    # ------------------------------------------------------------------ gunicorn settings

    def load_config(self) -> None:
        if self._loaded_once and self.reload_config is not None:
            self._reload()
        self._loaded_once = True
        server = self.config.data_server if self.role == "data" else self.config.ticket_server
        settings: dict[str, Any] = {
            "bind": [_bind(server.host, server.port)],
            "workers": server.workers,
            "threads": server.threads,
            "worker_class": _worker_class(server),
            "worker_connections": server.worker_connections,
            "timeout": server.timeout,
            "graceful_timeout": server.graceful_timeout,
            "keepalive": server.keepalive,
            "accesslog": "-",
            "logger_class": "htsgetr.observability.RedactingLogger",
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": f"htsgetr-{self.role}",
            "when_ready": self._when_ready,
            "on_reload": self._on_reload,
            "on_exit": self._on_exit,
        }
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 24: one per master
            settings["control_socket_disable"] = True
        if server.tls_cert:
            settings["certfile"] = server.tls_cert
            settings["keyfile"] = server.tls_key
            if server.worker_class == "gevent":  # the handshake happens under a deadline
                settings["ssl_context"] = _lazy_handshake
        for key, value in settings.items():
            self.cfg.set(key, value)
        _raise_nofile(server.worker_connections + 1024)

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
        log.info("configuration reloaded (%d locations)", len(new.locations))

    def load(self) -> Callable[..., Any]:
        server = self.config.data_server if self.role == "data" else self.config.ticket_server
        return _Deadlines(create_app(self.config, self.role), server)

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


# --------------------------------------------------------------------------- slow clients


def _worker_class(server: ServerConfig) -> Any:
    """The gunicorn worker class for `server.worker_class` (gevent: ours, with deadlines)."""
    if server.worker_class == "gevent":
        return _gevent_worker(server.header_timeout, server.send_timeout)
    return server.worker_class


def _gevent_worker(header_timeout: float, send_timeout: float) -> type:
    """gunicorn's gevent worker, with a deadline on the TLS handshake and on the first
    request's headers (gunicorn bounds the later ones of a connection by `keepalive`),
    `send_timeout` on every socket operation (a client that stops reading is cut), and
    sendfile(2) for /data."""
    import gevent
    import gevent.socket
    from gunicorn.workers.base_async import AsyncWorker
    from gunicorn.workers.ggevent import GeventWorker

    class SendfileSocket(gevent.socket.socket):  # type: ignore[misc,unused-ignore]
        """gevent's socket emulates sendfile with read + send of 8 KiB blocks (a third of
        the /data throughput); this one calls sendfile(2) and waits cooperatively."""

        __slots__ = ()

        def sendfile(self, file: Any, offset: int = 0, count: Optional[int] = None) -> int:
            out, src, sent = self.fileno(), file.fileno(), 0
            try:
                while count is None or sent < count:
                    step = (count - sent) if count is not None else 1 << 30
                    try:
                        n = os.sendfile(out, src, offset + sent, min(step, 1 << 30))
                    except BlockingIOError:
                        gevent.socket.wait_write(out, timeout=self.gettimeout(),
                                                 timeout_exc=socket.timeout("timed out"))
                        continue
                    if n == 0:
                        break
                    sent += n
            finally:
                file.seek(offset + sent)
            return sent

    class HtsgetrGeventWorker(GeventWorker):  # type: ignore[misc,unused-ignore]
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self._fresh: set[Any] = set()  # greenlets whose connection has no request yet

        def patch(self) -> None:
            with warnings.catch_warnings():  # gunicorn imported ssl first: repaired below
                warnings.simplefilter("ignore")
                super().patch()
            _repair_ssl_names()

        def handle(self, listener: Any, client: Any, addr: Any) -> None:
            client.settimeout(send_timeout)
            if type(client) is gevent.socket.socket:
                client.__class__ = SendfileSocket
            if hasattr(client, "do_handshake"):  # TLS, wrapped by _lazy_handshake
                done = False
                with gevent.Timeout(header_timeout, False):
                    client.do_handshake()
                    done = True
                if not done:
                    return  # gevent's server closes the socket
            me = gevent.getcurrent()
            self._fresh.add(me)
            try:
                AsyncWorker.handle(self, listener, client, addr)
            finally:
                self._fresh.discard(me)

        def timeout_ctx(self) -> Any:
            """The deadline of `next(parser)`: header_timeout for a connection's first
            request, keepalive (idle wait and headers) for the next ones."""
            me = gevent.getcurrent()
            if me in self._fresh:
                self._fresh.discard(me)
                return gevent.Timeout(header_timeout, False)
            # Let the other connections run first: a client that sends its next request
            # at once (a fast one on loopback) would otherwise keep this greenlet going and
            # starve the rest of the worker (measured: p99 1.3 s under wrk, 16 connections).
            gevent.sleep(0)
            return gevent.Timeout(self.cfg.keepalive, False)

    return HtsgetrGeventWorker


def _lazy_handshake(conf: Any, default_factory: Callable[[], Any]) -> Any:
    """gunicorn's TLS context, wrapping without a handshake: the gevent worker does it
    in `handle`, under `header_timeout`, instead of gevent's server, with no deadline."""
    context = default_factory()
    wrap = context.wrap_socket

    def wrap_socket(sock: Any, **kw: Any) -> Any:
        kw["do_handshake_on_connect"] = False
        return wrap(sock, **kw)

    context.wrap_socket = wrap_socket
    return context


def _repair_ssl_names() -> None:
    """After gevent patched `ssl` in a worker: modules imported in the master that bound
    the original `SSLContext` by name (urllib3 does) get gevent's; otherwise TLS from
    boto3 or requests fails with RecursionError (gevent issue 1016)."""
    import ssl

    from gevent import monkey

    for name in ("SSLContext", "SSLSocket"):
        original, patched = monkey.get_original("ssl", name), getattr(ssl, name)
        if original is patched:
            continue
        for mod_name, mod in list(sys.modules.items()):
            if mod is not None and not mod_name.startswith("gevent") and mod is not ssl:
                if getattr(mod, name, None) is original:
                    setattr(mod, name, patched)


def _raise_nofile(want: int) -> None:
    """Lift the soft open-files limit (up to the hard one) so a worker can hold its
    `worker_connections`; inherited by the workers."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want:
            top = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - not POSIX, or refused
        pass


class _Deadlines:
    """WSGI middleware: a request body must arrive within `body_timeout` seconds of the
    headers, else 408 and the connection is closed; responses get `send_timeout` per
    socket operation. Works under gevent (a true deadline) and threads (socket timeouts)."""

    def __init__(self, app: Callable[..., Any], server: ServerConfig) -> None:
        self.app = app
        self.body_timeout = server.body_timeout
        self.send_timeout = server.send_timeout
        self.green = server.worker_class == "gevent"

    def __getattr__(self, name: str) -> Any:  # the Flask app's attributes, for callers
        return getattr(self.app, name)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            _settimeout(sock, self.send_timeout)
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked and length in ("", "0"):
            return self.app(environ, start_response)
        body = _DeadlineInput(environ["wsgi.input"], self, sock)
        environ["wsgi.input"] = body
        return self.app(environ, start_response)


class _BodyTimeout(Exception):
    pass


class _DeadlineInput:
    """`wsgi.input` that raises RequestTimeout (408) once the body is past its deadline;
    then the read side of the connection is shut, so it is closed after the answer."""

    def __init__(self, inner: Any, owner: _Deadlines, sock: Any) -> None:
        self.inner = inner
        self.owner = owner
        self.sock = sock
        self.deadline = time.monotonic() + owner.body_timeout

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self._expired()
        try:
            if self.sock is not None:
                _settimeout(self.sock, left)
            if self.owner.green:
                import gevent

                with gevent.Timeout(left, _BodyTimeout):
                    return fn(*args)
            return fn(*args)
        except (_BodyTimeout, socket.timeout):
            self._expired()
        finally:
            if self.sock is not None:
                _settimeout(self.sock, self.owner.send_timeout)

    def _expired(self) -> None:
        if self.sock is not None:
            _shut_reads(self.sock)
        raise RequestTimeout(
            f"the request body did not arrive within {self.owner.body_timeout:g} s"
        )

    def read(self, size: Optional[int] = -1) -> bytes:
        data: bytes = self._call(self.inner.read, -1 if size is None else size)
        return data

    def readline(self, size: Optional[int] = None) -> bytes:
        line: bytes = self._call(self.inner.readline, size)
        return line

    def readlines(self, hint: Optional[int] = None) -> list[bytes]:
        lines: list[bytes] = self._call(self.inner.readlines, hint)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


def _settimeout(sock: Any, seconds: float) -> None:
    try:
        sock.settimeout(seconds)
    except OSError:
        pass


def _shut_reads(sock: Any) -> None:
    """Shut the connection's read side (on a duplicate of its descriptor, so a TLS
    layer above it still writes the answer): the server closes it after responding."""
    try:
        dup = socket.socket(fileno=os.dup(sock.fileno()))
    except (OSError, ValueError):
        return
    try:
        dup.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    finally:
        dup.close()


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
    return [
        f"{name}.{key}"
        for name in ("ticket_server", "data_server")
        for key in keys
        if getattr(getattr(old, name), key) != getattr(getattr(new, name), key)
        and (name == "ticket_server" or old.data_server.separate)
    ]


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
    HtsgetrServer(config, reload_config, watch=watch).run()
