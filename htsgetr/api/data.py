"""GET/HEAD /data/<key>: byte ranges of stored files, for the urls our tickets hand out.

Local files go out through `wsgi.file_wrapper`, which gunicorn turns into sendfile(2) when
the file is positioned at the range start and Content-Length bounds the range. Proxied
backends stream their range. Never `Content-Encoding`: a .gz served with it gets silently
decompressed by clients.
"""

from __future__ import annotations

import re
from typing import IO, Any, Iterable, Iterator, Optional, Union

from flask import Blueprint, Response, current_app, request
from flask.sansio.blueprints import BlueprintSetupState

from ..formats.derived import is_derived
from ..protocol import NotFound
from ..storage.local import LocalStorage
from .accel import Accel, accel_for

bp = Blueprint("data", __name__)

_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")  # ASCII digits only: \d matches "١٢"
#: A position with more digits than this lies beyond any file; int() itself refuses
#: strings of more than 4300 digits (ValueError), so they are never converted.
_MAX_DIGITS = 18
CHUNK = 256 * 1024


def _position(digits: str) -> int:
    significant = digits.lstrip("0")
    return 1 << 62 if len(significant) > _MAX_DIGITS else int(significant or "0")


def parse_range(header: Optional[str], size: int) -> Optional[tuple[int, int]]:
    """Single `bytes=` range -> half-open (start, end); None = whole file; (-1,-1) = 416."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # multiple or malformed ranges: RFC 9110 lets us send the whole file
    first, last = m.group(1), m.group(2)
    if first:
        start = _position(first)
        end = min(_position(last) + 1, size) if last else size
        if last and _position(last) < start:
            return None
        if start >= size:
            return (-1, -1)
        return start, end
    suffix = _position(last)
    if suffix == 0:
        return (-1, -1)
    return max(0, size - suffix), size


def _limited(f: IO[bytes], length: int) -> Iterator[bytes]:
    try:
        while length > 0:
            buf = f.read(min(CHUNK, length))
            if not buf:
                break
            length -= len(buf)
            yield buf
    finally:
        f.close()


def _file_body(path: str, start: int, length: int, environ: dict[str, Any]
               ) -> Iterable[bytes]:
    f = open(path, "rb")
    f.seek(start)
    wrapper = environ.get("wsgi.file_wrapper")
    # gunicorn's FileWrapper is sent with sendfile(2) and capped by Content-Length; other
    # servers' wrappers read to EOF, so they get a bounded Python iterator instead.
    if wrapper is not None and getattr(wrapper, "__module__", "").startswith("gunicorn"):
        body: Iterable[bytes] = wrapper(f, CHUNK)
        return body
    return _limited(f, length)


def _ranged(size: int) -> Union[Response, tuple[int, int, int, dict[str, str]]]:
    """The request's Range against an object of `size` bytes: a 416 answer, or (start, end,
    status, headers) for the bytes to send."""
    rng = parse_range(request.headers.get("Range"), size)
    headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    if rng == (-1, -1):
        headers["Content-Range"] = f"bytes */{size}"
        return Response(b"", status=416, headers=headers)
    start, end = rng if rng else (0, size)
    if rng:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return start, end, 206 if rng else 200, headers


def _derived(payload: bytes) -> Response:
    """A derived block (formats/derived.py): bytes the engine re-cut, with Range support."""
    ranged = _ranged(len(payload))
    if isinstance(ranged, Response):
        return ranged
    start, end, status, headers = ranged
    body = b"" if request.method == "HEAD" else payload[start:end]
    resp = Response(body, status=status, headers=headers)
    resp.headers["Content-Length"] = str(end - start)
    return resp


#: app.extensions key of the data server's `accel.Accel` (absent: off)
ACCEL = "htsgetr.accel"


def local_answer(storage: LocalStorage, key: str, method: str, range_header: Optional[str],
                 environ: dict[str, Any], accel: Optional[Accel] = None
                 ) -> tuple[int, list[tuple[str, str]], Iterable[bytes]]:
    """(status, headers, body) of a GET or HEAD of a local file's `Range` (the Flask view's
    and api/fast.py's). With `accel`, a GET hands the file to the front proxy."""
    size = storage.size(key)
    rng = parse_range(range_header, size)
    headers = [("Accept-Ranges", "bytes"), ("Content-Type", "application/octet-stream")]
    if rng == (-1, -1):
        headers += [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")]
        return 416, headers, ()
    # the proxy answers the Range itself; not with an If-Range: nginx and Apache drop the
    # Range for a validator they cannot match and send the whole file, past what was signed
    if accel is not None and method == "GET" and "HTTP_IF_RANGE" not in environ:
        return 200, [*headers, accel.header(storage, key), ("Content-Length", "0")], ()
    start, end = rng if rng else (0, size)
    if rng:
        headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
    headers.append(("Content-Length", str(end - start)))
    if method == "HEAD":
        return 206 if rng else 200, headers, ()
    return 206 if rng else 200, headers, _file_body(storage.path(key), start, end - start,
                                                    environ)


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    accel = accel_for(state.app.extensions["htsgetr"].config.data_server)
    if accel is not None:
        state.app.extensions[ACCEL] = accel


@bp.after_app_request
def _no_store(resp: Response) -> Response:
    """Never kept by a shared cache: the object behind a url can change or be withdrawn, and
    a signed url's answer is for its holder (errors too, routing ones included)."""
    if request.path == "/data" or request.path.startswith("/data/"):
        resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.route("/data/<path:path>", methods=["GET", "HEAD"])
def data(path: str) -> Response:
    """Only what a ticket can name (`Resolver.data_object`): anything else, existing or not,
    is the same 404."""
    engine = current_app.extensions["htsgetr"]
    if is_derived(path):
        return _derived(engine.derived(path))
    extensions = {fmt: handler.extensions for fmt, handler in engine.handlers.items()}
    found = engine.resolver.data_object(path, extensions)
    if found is None:
        raise NotFound(f"no such object: {path!r}")
    storage, key = found
    if isinstance(storage, LocalStorage):
        status, headers_list, body = local_answer(
            storage, key, request.method, request.headers.get("Range"), request.environ,
            current_app.extensions.get(ACCEL))
        return Response(body, status=status, headers=headers_list, direct_passthrough=True)
    ranged = _ranged(storage.size(key))
    if isinstance(ranged, Response):
        return ranged
    start, end, status, headers = ranged
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        resp = Response(b"", status=status, headers=headers)
        resp.headers["Content-Length"] = str(end - start)
        return resp
    if hasattr(storage, "stream"):
        body = storage.stream(key, start, end)
    else:
        raise NotFound(f"{path!r} is not served through /data")
    resp = Response(body, status=status, headers=headers, direct_passthrough=True)
    resp.headers["Content-Length"] = str(end - start)
    return resp
