"""Log lines: text or JSON (`[logging] format`), the request ID on every line written while a
request is served, one access line per request, and never a secret.

- Every record of htsgetr, gunicorn and the libraries goes through `TextFormatter` or
  `JsonFormatter`, which cut secrets out of the message (`redact.redact_text`): signatures,
  presigned S3 query strings, tokens, url passwords, bearer tokens.
- The access line is written once per request, after its last byte is sent. Under gunicorn
  it replaces gunicorn's own access line: `RedactingLogger.access` (gunicorn calls it with the
  bytes sent and the time taken, sendfile(2) included) hands the request to
  `middleware.Observer.finish`; elsewhere (AWS Lambda, a test client, another WSGI server)
  `middleware.Observe` calls `finish` when the response is closed. The line carries the
  method, the path and query with their secrets removed, the status, the bytes, the latency,
  the request ID (`X-Request-ID`, echoed back) and, for a ticket, its ID, format, class and
  region count. Request headers (Authorization, Cookie) are never in it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import sys
import time
import traceback
from contextvars import ContextVar
from typing import Any, Optional

from gunicorn.glogging import Logger

from .keys import OBSERVER, QUERY, TICKET
from .redact import REDACTED, redact_text, redact_url
from .schema import LoggingConfig

#: the request being served in this thread / greenlet (greenlets have their own context)
request_id: ContextVar[Optional[str]] = ContextVar("htsgetr_request_id", default=None)

#: an incoming X-Request-ID is kept when it is this: bounded, no spaces, quotes or controls
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")
REQUEST_ID_HEADER = "X-Request-ID"

#: gunicorn's "Invalid request from ip=...: <what>" quotes the offending line or header
_QUOTED = re.compile(r"""(['"]).*""", re.S)

#: this process's logging configuration (`configure`); the gunicorn logger reads it
CONFIG = LoggingConfig()
#: set once a `RedactingLogger` exists in this process: gunicorn then calls `finish` itself
GUNICORN_LOGGER = False

ACCESS_LOGGER = "htsgetr.access"


def new_request_id(environ: dict[str, Any]) -> str:
    """The request's ID: its `X-Request-ID` when that is safe to log and echo, else a new one
    (32 hex digits)."""
    given = environ.get("HTTP_X_REQUEST_ID")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return str(given)
    return os.urandom(16).hex()


def redact_refusal(message: str) -> str:
    """gunicorn's warning for a request it refused, without the quoted request line or
    header it names (a malformed `Authorization` line would otherwise be logged whole)."""
    if message.startswith("Invalid request from"):
        return _QUOTED.sub(REDACTED, message)
    return message


# --------------------------------------------------------------------------- formatters


def _message(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception:  # a bad format string: log what there is
        text = str(record.msg)
    return redact_text(redact_refusal(text))


class TextFormatter(logging.Formatter):
    """`[time] [pid] [LEVEL] logger: message [request ID]`, secrets cut; an access line is
    written as it is (`access_text`)."""

    def __init__(self) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S %z")

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "htsgetr_access", None)
        if access is not None:
            return str(record.msg)
        rid = request_id.get()
        line = (f"[{self.formatTime(record, self.datefmt)}] [{record.process}] "
                f"[{record.levelname}] {_logger_name(record)}: {_message(record)}")
        if rid is not None:
            line += f" [request_id={rid}]"
        if record.exc_info:
            line += "\n" + redact_text(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, pid, message (secrets
    cut), request_id while a request is served, exception text; an access line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": _logger_name(record),
            "pid": record.process,
        }
        access = getattr(record, "htsgetr_access", None)
        if access == "json":  # the line's fields, already JSON: spliced in, not re-encoded
            head = json.dumps(out, separators=(",", ":"))
            return f"{head[:-1]},{str(record.msg)[1:]}"
        if access is not None:
            out["message"] = str(record.msg)
            return json.dumps(out, separators=(",", ":"))
        out["message"] = _message(record)
        rid = request_id.get()
        if rid is not None:
            out["request_id"] = rid
        if record.exc_info:
            out["exception"] = redact_text("".join(traceback.format_exception(*record.exc_info)))
        return json.dumps(out, separators=(",", ":"))


def _logger_name(record: logging.LogRecord) -> str:
    name = record.name
    if name == "gunicorn.error":
        return "gunicorn"
    return "access" if name in ("gunicorn.access", ACCESS_LOGGER) else name


def _iso(created: float) -> str:
    stamp = datetime.datetime.fromtimestamp(created, datetime.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def formatter(config: LoggingConfig) -> logging.Formatter:
    return JsonFormatter() if config.format == "json" else TextFormatter()


# --------------------------------------------------------------------------- the access line


def access_record(logger: logging.Logger, environ: dict[str, Any], status: int,
                  sent: Optional[int], seconds: float, rid: Optional[str]) -> None:
    """Write the access line of a finished request to `logger` (gunicorn's access logger, or
    `htsgetr.access`), in this process's format (`configure`: the handlers' own)."""
    method = environ.get("REQUEST_METHOD", "-")
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    if query:
        path = f"{path}?{redact_url(query)}"
    if not path.isprintable():  # a control character would forge a line
        path = path.encode("unicode_escape").decode("ascii")
    query_obj = environ.get(QUERY)
    if CONFIG.format == "json":
        fields: dict[str, Any] = {
            "message": f"{method} {path} {status}",
            "request_id": rid, "method": method, "path": path, "status": status,
            "bytes": sent, "duration_ms": round(seconds * 1000, 3),
            "remote": environ.get("REMOTE_ADDR"),
            "protocol": environ.get("SERVER_PROTOCOL"),
        }
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            fields["user_agent"] = redact_text(agent)
        if query_obj is not None:
            fields["ticket"] = _ticket_fields(query_obj, environ)
        # the message is the JSON object: whatever formats it (our JsonFormatter splices it
        # into its own object; another handler, e.g. AWS Lambda's, prints it) keeps the fields
        _emit(logger, json.dumps(fields, separators=(",", ":")), "json")
        return
    line = (f'{environ.get("REMOTE_ADDR", "-")} - - [{time.strftime("%d/%b/%Y:%H:%M:%S %z")}]'
            f' "{method} {path} {environ.get("SERVER_PROTOCOL", "-")}" {status}'
            f' {"-" if sent is None else sent} {seconds * 1000:.2f}ms request_id={rid}')
    if query_obj is not None:
        t = _ticket_fields(query_obj, environ)
        line += (f' ticket_id={json.dumps(t["id"])} format={t["format"]} class={t["class"]}'
                 f' regions={t["regions"]}')
    _emit(logger, line, "text")


def _emit(logger: logging.Logger, message: str, kind: str) -> None:
    """`logger.info(message)` for an access line, without `Logger.findCaller`'s walk up the
    stack (a third of the line's cost; the caller is always this module)."""
    if logger.isEnabledFor(logging.INFO):
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, (),
                                        None, "access_record", {"htsgetr_access": kind}))


def _ticket_fields(query: Any, environ: dict[str, Any]) -> dict[str, Any]:
    regions = query.regions
    klass = query.klass
    out = {
        "id": query.id,
        "format": query.format.value,
        "class": klass.value if klass is not None else "all",
        "regions": len(regions) if regions is not None else 0,
    }
    ticket = environ.get(TICKET)
    if ticket is not None:
        out["urls"] = len(ticket.blocks)
    return out


# --------------------------------------------------------------------------- process setup


_HANDLER_MARK = "_htsgetr"


def configure(config: LoggingConfig, stream: Any = None) -> None:
    """This process's log lines in `config`'s format and level (a server process: `htsgetr
    serve`'s master and workers, `htsgetr.wsgi`). Records of htsgetr and of the libraries it
    uses go to stderr through one handler, unless logging is configured elsewhere (the root
    logger has handlers of its own: a host application, pytest)."""
    global CONFIG
    CONFIG = config
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]
    htsgetr_log = logging.getLogger("htsgetr")
    htsgetr_log.setLevel(config.level.upper())
    if root.handlers and not ours:
        return
    if ours:
        handler = ours[0]
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    handler.setFormatter(formatter(config))
    # libraries say what matters at warning; htsgetr at the configured level
    root.setLevel(max(logging.WARNING, logging.getLevelName(config.level.upper())))
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(logging.INFO)


class RedactingLogger(Logger):  # type: ignore[misc,unused-ignore]
    """gunicorn's logger: its lines in `[logging] format`, secrets cut from every one, and
    htsgetr's access line (see the module docstring) instead of gunicorn's."""

    def __init__(self, cfg: Any) -> None:
        global GUNICORN_LOGGER
        GUNICORN_LOGGER = True
        super().__init__(cfg)

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        fmt = formatter(CONFIG)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(fmt)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, str):
            msg = redact_refusal(msg)
        super().warning(msg, *args, **kwargs)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        observer = environ.get(OBSERVER) if isinstance(environ, dict) else None
        if observer is None:  # not one of our apps (or refused before it): gunicorn's line
            super().access(resp, req, environ, request_time)
            return
        status = resp.status
        code = int(status[:3]) if isinstance(status, str) else int(status or 0)
        seconds = request_time.total_seconds()
        observer.finish(environ, code, getattr(resp, "sent", None), seconds,
                        self.access_log if self.access_log_enabled else None)

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for name in ("r", "q", "f", "U"):
            if isinstance(atoms.get(name), str):
                atoms[name] = redact_url(atoms[name])
        for name in [k for k in atoms if k.startswith("{")]:
            if name.endswith("}i") and name[1:-2] in ("authorization", "cookie"):
                atoms[name] = REDACTED
            elif isinstance(atoms[name], str):
                atoms[name] = redact_text(atoms[name])
        return atoms
