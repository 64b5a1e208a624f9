"""gunicorn workers that slow or stalled clients cannot exhaust (README "Slow clients").

The default worker class is gevent: a greenlet per connection, so a connection that trickles
its headers or body, or stops reading its answer, holds a little memory, not one of a few
threads. Deadlines bound how long any connection may hold it:

- the request line and headers: `header_timeout` from the connection's start (and the TLS
  handshake), `keepalive` for the next request on a kept-alive connection;
- the body: `body_timeout` from the headers, else 408 and the connection is closed
  (`Deadlines` around the app: gevent and gthread alike);
- the answer: `send_timeout` per socket operation (gevent; gthread from the app on).

Measured with bench/slow_clients.py (numbers in the README): with 500 connections trickling
headers and 500 trickling bodies, gthread with 4 threads per worker answers nothing within
10 s; gevent answers tickets with p99 ~ 10 ms, and ~ 20 ms at 2000 + 2000.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from functools import partial
from typing import Any, Callable, Iterator, Optional

from werkzeug.exceptions import RequestTimeout

from . import turns
from .config import ServerConfig
from .protocol import CONTENT_TYPE

#: seconds a kept-alive connection lets the worker's other connections go first, at most
IDLE_TURN = 0.05


def worker_class(server: ServerConfig) -> Any:
    """The gunicorn worker class for `server.worker_class` (gevent: ours, with deadlines)."""
    if server.worker_class == "gevent":
        return _gevent_worker(server.header_timeout, server.send_timeout)
    return server.worker_class


class GreenTurns:
    """`turns.Turns` in a gevent worker: a request that has worked for a whole turn
    (`seconds`) waits until the worker's loop has served what else is ready — as a kept-alive
    connection does before its next request, `IDLE_TURN` at most — then goes on; the first
    time, it also takes one of `long_at_once` slots for long requests (waiting for one if
    all are taken), which it gives back at `end`, or while it waits for another request
    (`step_aside`). Work that pauses outside `begin`/`end` takes turns but no slot."""

    def __init__(self, seconds: float = turns.TURN_SECONDS,
                 long_at_once: int = turns.LONG_AT_ONCE) -> None:
        import gevent
        from gevent.local import local
        from gevent.lock import BoundedSemaphore

        self._gevent = gevent
        self._local = local()  # per greenlet: when its request began or last paused; long?
        self._slots = BoundedSemaphore(long_at_once)
        self.seconds = seconds
        #: how many times a request let the others go first
        self.given = 0
        #: long requests going on now, and the most there were at once
        self.long_now = self.long_peak = 0

    def begin(self) -> None:
        self._local.since = time.monotonic()
        self._local.begun = True

    def pause(self) -> None:
        local = self._local
        now = time.monotonic()
        since = getattr(local, "since", None)
        if since is None:  # work that did not say when it began: from now
            local.since = now
            return
        if now - since < self.seconds:
            return
        # a slot only between begin and end: work outside them would never give it back
        if not getattr(local, "long", False) and getattr(local, "begun", False):
            self._slots.acquire()  # waiting here lets the others go on
            local.long = True
            self.long_now += 1
            self.long_peak = max(self.long_peak, self.long_now)
        with self._gevent.Timeout(IDLE_TURN, False):
            self._gevent.idle()
        self.given += 1
        local.since = time.monotonic()

    def end(self) -> None:
        local = self._local
        local.since = None
        local.begun = False
        self.step_aside()

    def step_aside(self) -> None:
        local = self._local
        if getattr(local, "long", False):
            local.long = False
            self.long_now -= 1
            self._slots.release()


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
        """gevent's socket emulates sendfile with read + send of 8 KiB blocks (measured:
        3.5x the worker CPU per /data byte); this one calls sendfile(2), waiting
        cooperatively while the socket is full."""

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
            self._wake: Any = None

        def run(self) -> None:
            """GeventWorker.run, but woken at once by SIGTERM: on a reload or stop, an old
            worker stops accepting right away (gunicorn's looks once a second, and took new
            connections with the old configuration meanwhile)."""
            from gevent.event import Event
            from gevent.pool import Pool
            from gevent.server import StreamServer
            from gunicorn.sock import ssl_context

            self._wake = Event()
            turns.install(GreenTurns())  # long tickets take turns with the others (turns.py)
            ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
            servers = []
            for listener in self.sockets:
                listener.setblocking(1)
                server = StreamServer(listener, handle=partial(self.handle, listener),
                                      spawn=Pool(self.worker_connections), **ssl_args)
                if self.cfg.workers > 1:
                    server.max_accept = 1
                server.start()
                servers.append(server)
            while self.alive:
                self.notify()
                self._wake.wait(1.0)
            for server in servers:
                # stop accepting, but keep the listening socket open until the process ends:
                # closing it here reset a connection now and then (5 in 45 reloads with 4
                # clients asking and a SIGHUP a second; none since: tests/test_config_e2e.py)
                server.stop_accepting()
            deadline = time.monotonic() + self.cfg.graceful_timeout
            while any(srv.pool.free_count() != srv.pool.size for srv in servers):
                if time.monotonic() > deadline:
                    self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
                    for server in servers:
                        server.stop(timeout=1)
                    return
                self.notify()
                gevent.sleep(0.1)

        def handle_exit(self, sig: Any, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if self._wake is not None:
                self._wake.set()

        def patch(self) -> None:
            with warnings.catch_warnings():  # gunicorn imported ssl first: repaired below
                warnings.simplefilter("ignore")
                super().patch()
            repair_ssl_names()

        def handle(self, listener: Any, client: Any, addr: Any) -> None:
            client.settimeout(send_timeout)
            if type(client) is gevent.socket.socket:
                client.__class__ = SendfileSocket
            if hasattr(client, "do_handshake"):  # TLS, wrapped by lazy_handshake
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
            # at once (a fast one on loopback, or pipelining) would otherwise keep this
            # greenlet going and starve the rest of the worker. `idle` waits until the loop
            # has polled and served what else is ready; `sleep(0)` did not always poll
            # (measured under wrk -c16 on deep-data tickets: p99 127-445 ms with it, 16-27 ms
            # with `idle`, the same req/s; tests/test_fairness.py counts it in requests).
            # Bounded: a flood of new connections keeps the loop busy, and this one's turn
            # must come all the same.
            with gevent.Timeout(IDLE_TURN, False):
                gevent.idle()
            return gevent.Timeout(self.cfg.keepalive, False)

    return HtsgetrGeventWorker


def lazy_handshake(conf: Any, default_factory: Callable[[], Any]) -> Any:
    """gunicorn's TLS context, wrapping without a handshake: the gevent worker does it
    in `handle`, under `header_timeout`, instead of gevent's server, with no deadline."""
    context = default_factory()
    wrap = context.wrap_socket

    def wrap_socket(sock: Any, **kw: Any) -> Any:
        kw["do_handshake_on_connect"] = False
        return wrap(sock, **kw)

    context.wrap_socket = wrap_socket
    return context


def repair_ssl_names() -> None:
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


#: gunicorn's own refusals (the request never reached the app), as htsget errors. The
#: messages are fixed: gunicorn's would echo the offending line, which may carry a token.
_REFUSALS = {
    400: ("InvalidInput", "malformed HTTP request: request line or header not valid HTTP/1.1"),
    403: ("PermissionDenied", "request forbidden"),
    414: ("InvalidInput", "request line too long (limit_request_line)"),
    417: ("InvalidInput", "unsupported Expect header"),
    431: ("InvalidInput", "request headers too many or too large (limit_request_fields/_size)"),
    500: ("InternalError", "internal error"),
    501: ("InvalidInput", "unsupported Transfer-Encoding"),
}


def write_htsget_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """`gunicorn.util.write_error`, answering in htsget JSON instead of an HTML page, so a
    client that sent a malformed request line or oversized headers gets the same kind of
    answer as any other refusal."""
    from gunicorn.util import write_nonblock

    kind, message = _REFUSALS.get(status_int, ("InvalidInput", "request refused"))
    if status_int >= 500 and status_int not in _REFUSALS:
        kind, message = "InternalError", "internal error"
    body = json.dumps({"htsget": {"error": kind, "message": message}}).encode()
    head = (f"HTTP/1.1 {int(status_int)} {reason}\r\nConnection: close\r\n"
            f"Content-Type: {CONTENT_TYPE}\r\nCache-Control: no-store\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    write_nonblock(sock, head.encode("latin-1") + body)


def patch_gunicorn() -> None:
    """Two repairs to gunicorn, made in the process that runs its workers (a master before
    it forks, or a worker): its own refusals (400, 414, 431, ...) answer in htsget JSON,
    and the bytes it sends with sendfile(2) count in the access log."""
    import gunicorn.util

    # worker classes call `gunicorn.util.write_error` by module attribute: one assignment
    # covers every class
    gunicorn.util.write_error = write_htsget_error
    count_sendfile_bytes()


def count_sendfile_bytes() -> None:
    """Make gunicorn count the bytes it sends with sendfile(2) (`/data` ranges) in
    `Response.sent`, which its access log reports: gunicorn 27 leaves it at 0."""
    from gunicorn.http import wsgi

    original = wsgi.Response.sendfile
    if getattr(original, "_htsgetr_counts", False):
        return

    def sendfile(self: Any, respiter: Any) -> bool:
        try:
            fileno = respiter.filelike.fileno()
            offset = os.lseek(fileno, 0, os.SEEK_CUR)
            size = os.fstat(fileno).st_size
        except (AttributeError, OSError, ValueError):
            return bool(original(self, respiter))
        done = bool(original(self, respiter))
        if done and not getattr(self, "_omits_body", False):
            length = self.response_length
            self.sent += max(0, (size - offset) if length is None else length)
        return done

    sendfile._htsgetr_counts = True  # type: ignore[attr-defined]
    wsgi.Response.sendfile = sendfile


def raise_nofile(want: int) -> None:
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


class Deadlines:
    """WSGI middleware: a request body must arrive within `body_timeout` seconds of the
    headers, else 408 and the connection is closed; responses get `send_timeout` per
    socket operation. Works under gevent (a true deadline) and threads (socket timeouts)."""

    def __init__(self, app: Callable[..., Any], server: ServerConfig) -> None:
        self.app = app
        self.body_timeout = server.body_timeout
        self.send_timeout = server.send_timeout
        self.green = _gevent_patched()

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


def _gevent_patched() -> bool:
    """True in a process whose sockets gevent has patched (the worker class actually
    running, whatever the configuration names: `gunicorn -k` may differ)."""
    if "gevent.monkey" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))


class _BodyTimeout(Exception):
    pass


class _DeadlineInput:
    """`wsgi.input` that raises RequestTimeout (408) once the body is past its deadline;
    then the read side of the connection is shut, so it is closed after the answer."""

    def __init__(self, inner: Any, owner: Deadlines, sock: Any) -> None:
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
