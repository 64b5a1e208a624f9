"""The bare Flask reference of `make bench`, served as `htsgetr serve` serves htsgetr's app:
the same gunicorn settings (worker class, workers, connections, keep-alive: `HtsgetrServer`
with this app in place of htsgetr's), the same deadlines (`Deadlines`) and the same access
line and request ID (`Observe`, without metrics). Without `Observe` gunicorn would write its
own access line, through the redacting logger: ~3x the cost of htsgetr's, ~70 us a request,
which made the reference slower than a Flask view served like htsgetr.

- any GET path -> `{"ok": true}`: the floor a Flask view stands on (tickets are compared
  with it, on the same request lines);
- GET /data/<path> with `Range: bytes=a-b` -> that range of the file under the root, sent
  as htsgetr sends it (`wsgi.file_wrapper`, so sendfile(2)): the floor for /data.

    python bench/bare_app.py ROOT PORT [WORKERS]
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_RANGE = re.compile(r"bytes=([0-9]+)-([0-9]+)")


def make_app(root: str) -> Flask:
    app = Flask("bare")

    @app.get("/data/<path:path>")
    def data(path: str) -> Response:
        f = open(os.path.join(root, path), "rb")
        size = os.fstat(f.fileno()).st_size
        m = _RANGE.fullmatch(request.headers.get("Range", ""))
        start, end = (int(m.group(1)), min(int(m.group(2)) + 1, size)) if m else (0, size)
        f.seek(start)
        body = request.environ["wsgi.file_wrapper"](f, 256 * 1024)
        return Response(body, status=206 if m else 200, direct_passthrough=True, headers={
            "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
            "Content-Range": f"bytes {start}-{end - 1}/{size}", "Content-Length": str(end - start),
        })

    @app.get("/<path:path>")
    def ok(path: str) -> Any:
        return {"ok": True}

    return app


def main(argv: list[str]) -> None:
    from htsgetr.config import for_data_dir
    from htsgetr.observability.middleware import Observe, Observer
    from htsgetr.server import HtsgetrServer
    from htsgetr.workers import Deadlines

    root, port = argv[0], int(argv[1])
    workers = int(argv[2]) if len(argv) > 2 else 2
    config = for_data_dir(root, port=port, workers=workers)
    app = make_app(root)
    app.wsgi_app = Observe(app.wsgi_app, Observer(config.logging))  # type: ignore[method-assign]
    served = Deadlines(app, config.ticket_server)

    class BareServer(HtsgetrServer):
        def load(self) -> Any:
            return served

    BareServer(config).run()


if __name__ == "__main__":
    main(sys.argv[1:])
