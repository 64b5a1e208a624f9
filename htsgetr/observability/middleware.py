"""`Observe`: the outermost WSGI layer of every htsgetr app, so requests that api/fast.py
answers without Flask are seen exactly like the others.

Per request it costs a request ID (the client's `X-Request-ID` when it is safe, else 16 random
bytes), a context variable for the log lines written meanwhile, one more response header, and
at the end `Observer.finish`: the access line and the request's metrics. Under gunicorn with
`RedactingLogger` (`htsgetr serve`, `htsgetr.gunicorn_conf`) gunicorn calls `finish` after the
last byte is sent, so the body (a sendfile(2) file wrapper for /data) is passed through
untouched; anywhere else the body is wrapped and `finish` runs when it is closed.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from . import logs
from .keys import OBSERVER, REQUEST_ID, STARTED
from .schema import LoggingConfig

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_ENDPOINTS = {
    "reads": "reads", "variants": "variants", "sequences": "sequences", "data": "data",
    "service-info": "service-info", "healthz": "health", "readyz": "health",
}


def endpoint_of(path: str, metrics_path: Optional[str] = None) -> str:
    """A metric label for the path: a bounded set, never the ID itself."""
    cut = path.find("/", 1)
    head = path[1:cut] if cut > 0 else path[1:]
    name = _ENDPOINTS.get(head)
    if name is None:
        return "metrics" if path == metrics_path else "other"
    if cut > 0 and name in ("reads", "variants", "sequences") \
            and path[cut + 1:].rstrip("/") == "service-info":
        return "service-info"
    return name


class Observer:
    """What one app does at the end of each request: its access line (`[logging]`) and its
    metrics (`metrics.Recorder`, None when `[metrics] enabled = false`)."""

    def __init__(self, logging_config: LoggingConfig, recorder: Any = None,
                 metrics_path: Optional[str] = None) -> None:
        self.logging = logging_config
        self.recorder = recorder
        self.metrics_path = metrics_path
        self.exclude = frozenset(logging_config.access_exclude)
        self.access_log = logging.getLogger(logs.ACCESS_LOGGER)

    def finish(self, environ: dict[str, Any], status: int, sent: Optional[int], seconds: float,
               access_log: Any = "default") -> None:
        """The request is over (its last byte sent, or the client gone): count it, log it.
        `access_log`: the logger for the line (gunicorn's), None for no line."""
        rid = environ.get(REQUEST_ID)
        try:
            if self.recorder is not None:
                self.recorder.request(environ, endpoint_of(environ.get("PATH_INFO", ""),
                                                          self.metrics_path),
                                      status, sent, seconds)
            if access_log is not None and self.logging.access_log \
                    and environ.get("PATH_INFO") not in self.exclude:
                logger = self.access_log if access_log == "default" else access_log
                logs.access_record(logger, environ, status, sent, seconds, rid)
        finally:
            if logs.request_id.get() == rid:
                logs.request_id.set(None)


class Observe:
    """WSGI middleware around the whole app (see the module docstring)."""

    def __init__(self, app: WsgiApp, observer: Observer) -> None:
        self.app = app
        self.observer = observer

    def __getattr__(self, name: str) -> Any:  # the wrapped layer's (api/fast.py's `served`)
        return getattr(self.app, name)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        rid = logs.new_request_id(environ)
        environ[REQUEST_ID] = rid
        environ[OBSERVER] = self.observer
        logs.request_id.set(rid)
        observer = self.observer
        if observer.recorder is not None and environ.get("PATH_INFO") == observer.metrics_path:
            observer.recorder.flush(wait=True)  # a scrape sees this process's counts so far
        if logs.GUNICORN_LOGGER and "gunicorn.socket" in environ:
            def answer(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                headers.append((logs.REQUEST_ID_HEADER, rid))
                return start_response(status, headers, exc_info)

            return self.app(environ, answer)
        environ[STARTED] = started
        seen: list[int] = []

        def answer_and_keep(status: str, headers: list[tuple[str, str]],
                            exc_info: Any = None) -> Any:
            headers.append((logs.REQUEST_ID_HEADER, rid))
            seen[:] = [int(status[:3])]
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, answer_and_keep)
        except BaseException:
            self.observer.finish(environ, 500, 0, time.perf_counter() - started)
            raise
        return _Finishing(body, self.observer, environ, seen, started)


class _Finishing:
    """A response body that counts its bytes and calls `Observer.finish` when closed."""

    def __init__(self, body: Iterable[bytes], observer: Observer, environ: dict[str, Any],
                 status: list[int], started: float) -> None:
        self.body, self.observer, self.environ = body, observer, environ
        self.status, self.started, self.sent = status, started, 0
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.body:
            self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            if not self.done:
                self.done = True
                status = self.status[0] if self.status else 500
                self.observer.finish(self.environ, status, self.sent,
                                     time.perf_counter() - self.started)
