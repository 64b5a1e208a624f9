"""/data bytes sent by the front proxy: `X-Accel-Redirect` (nginx) or `X-Sendfile` (Apache
mod_xsendfile, lighttpd), `[data_server] accel = "nginx" | "apache"`.

htsgetr still decides everything — the path (`Resolver.data_object`), the signature and
token (api/auth.py), the Range (416 answered here) — and then, for a local file, answers
with an empty body and one header naming the file; the proxy serves the bytes itself
(sendfile, its own Range handling against the original request's `Range` header), so a
/data request costs htsgetr the decision only. Proxied backends (url, s3 proxy) are served
by htsgetr as without accel.

nginx: the header is `accel_prefix` + the file's /data path (`[~mount/]key`, symlinks
resolved), which an `internal` location maps back onto the location's root
(`nginx_locations` writes those blocks; `internal` makes nginx refuse them from outside).
Apache: the header is the file's absolute path (allow the roots with `XSendFilePath`).

Every /data request still costs htsgetr one decision, so nginx + accel serves small ranges
at about htsgetr's request rate, not nginx's (bench/http_load.py: `bench_accel`); proxy to
an `upstream` with `keepalive` so that rate is not spent opening connections. What accel
frees is the worker's time and memory per byte: large ranges and slow readers cost nginx,
not a gunicorn worker.
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import quote

from ..config import Config, DataServerConfig
from ..storage.local import BARE_ALIAS, LocalStorage, mount_path
from ..storage.resolver import Resolver

MODES = ("off", "nginx", "apache")


class Accel:
    """The header that hands a local file to the front proxy."""

    def __init__(self, mode: str, prefix: str) -> None:
        if mode not in MODES[1:]:
            raise ValueError(f"accel mode {mode!r}: one of {', '.join(MODES[1:])}")
        self.mode = mode
        self.prefix = prefix
        self.name = "X-Accel-Redirect" if mode == "nginx" else "X-Sendfile"

    def header(self, storage: LocalStorage, key: str) -> tuple[str, str]:
        if self.mode == "nginx":
            where = mount_path(storage.mount, storage.resolved_key(key))
            return self.name, self.prefix + quote(where)
        return self.name, storage.path(key)


def accel_for(server: DataServerConfig) -> Optional[Accel]:
    """The data server's accel, or None when it is off."""
    return None if server.accel == "off" else Accel(server.accel, server.accel_prefix)


def nginx_locations(config: Config, indent: str = "    ") -> str:
    """The nginx `location` blocks that map `accel_prefix` back onto each local location's
    root (`internal`: reachable only through an X-Accel-Redirect). nginx keeps htsgetr's
    Content-Type and Cache-Control on the internal redirect, not its CORS headers: those are
    repeated from the upstream answer."""
    prefix = config.data_server.accel_prefix
    resolver = Resolver(config)
    out = []
    for _, _, storage in resolver.rules:
        # Crypt4GH locations: only their stored ciphertext (`x.c4gh`) is ever handed over;
        # decrypted bytes are htsgetr's own answer (api/data.py), never a file nginx reads
        storage = getattr(storage, "inner", storage)
        if not isinstance(storage, LocalStorage):
            continue
        mounts = [storage.mount] if storage.mount else ["", BARE_ALIAS]
        for mount in mounts:
            where = prefix + (mount + "/" if mount else "")
            out.append(
                f"{indent}location {where} {{\n"
                f"{indent}    internal;\n"
                f"{indent}    alias {storage.root}/;\n"
                f"{indent}    max_ranges 1;\n"
                f"{indent}    add_header Access-Control-Allow-Origin "
                f"$upstream_http_access_control_allow_origin always;\n"
                f"{indent}    add_header Access-Control-Expose-Headers "
                f"$upstream_http_access_control_expose_headers always;\n"
                f"{indent}    add_header Vary $upstream_http_vary always;\n"
                f"{indent}}}\n"
            )
    return "".join(out)


def nginx_server(config: Config, listen: str, upstream: str) -> str:
    """A whole nginx `server` (with its `upstream`) for nginx in front of htsgetr on the same
    host or pod — `htsgetr config nginx`, the Helm chart's sidecar: every request goes to
    htsgetr over kept-alive connections, and the files it hands over with X-Accel-Redirect
    come from the `internal` locations (`nginx_locations`), sent with sendfile."""
    return (
        "upstream htsgetr_upstream {\n"
        f"    server {upstream};\n"
        "    keepalive 32;\n"
        "}\n"
        "server {\n"
        f"    listen {listen};\n"
        "    sendfile on;\n"
        f"    client_max_body_size {config.max_post_bytes};\n"
        "    location / {\n"
        "        proxy_pass http://htsgetr_upstream;\n"
        "        proxy_http_version 1.1;\n"
        '        proxy_set_header Connection "";\n'
        "        proxy_set_header Host $http_host;\n"
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "        proxy_set_header X-Forwarded-Proto $scheme;\n"
        "        proxy_buffering off;  # stream proxied bodies: nothing on a read-only disk\n"
        "        proxy_request_buffering off;\n"
        "    }\n"
        + nginx_locations(config)
        + "}\n"
    )
