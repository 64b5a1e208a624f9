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

`accel = "nginx-direct"` takes htsgetr off the common /data request too: nginx checks the
url's signature itself (the same HMAC-SHA256 as auth/signing.py, with the same secrets) and
sends a plain local file's signed range with sendfile. The check is one of `VERIFIERS`: a
script, `nginx_direct.js` (njs, in nginx's own images) or `nginx_direct.pm` (nginx's embedded
Perl, cheaper per request), or a module compiled for that nginx (`nginx_module/`, no script
call at all: bench/http_load.py `bench_accel` measures the three). Urls are
then always signed (auth on or not), since the signature is what tells nginx which files a
ticket named. nginx vouches only for the plain case (GET/HEAD, one `bytes=` Range or none,
no `Origin`, no `If-Range`, a regular file reached without symlinks); everything else falls
through to htsgetr, which answers it as in "nginx" mode (refusals, CORS, Crypt4GH, derived
blocks, remote backends, symlinked files by X-Accel-Redirect).
"""

from __future__ import annotations

import json
import os
import re
from importlib.resources import files
from typing import Mapping, Optional
from urllib.parse import quote

from ..auth.gate import missing_secret, url_signing
from ..auth.signing import SECRET_ENV
from ..config import NGINX_DIRECT, NGINX_VERIFIERS, Config, DataServerConfig
from ..engine import default_handlers
from ..storage.local import BARE_ALIAS, LocalStorage, mount_path
from ..storage.resolver import INDEX_SUFFIXES, Resolver

MODES = ("off", "nginx", NGINX_DIRECT, "apache")
DIRECT = NGINX_DIRECT
#: the variable the check sets: "1" when nginx may send the file itself
VOUCHED = "$htsgetr_direct"
#: the package nginx_direct.pm declares (its file is named after it)
PERL_PACKAGE = "HtsgetrDirect"
#: what nginx can check signed urls with -> the file `htsgetr config nginx` writes for it,
#: holding the secrets: a script (from `_TEMPLATES`) or the compiled module's secrets (hex)
VERIFIERS = dict(zip(NGINX_VERIFIERS, (
    "htsgetr-direct.js",
    f"{PERL_PACKAGE}.pm",
    "htsgetr-direct.keys",
)))
#: the nginx dynamic module each verifier needs loaded: the distributions' njs and Perl
#: modules, htsgetr's own (`htsgetr config nginx-module` builds it)
VERIFIER_MODULES = dict(zip(NGINX_VERIFIERS, (
    "ngx_http_js_module.so",
    "ngx_http_perl_module.so",
    "ngx_http_htsgetr_direct_module.so",
)))
#: where distributions install nginx's dynamic modules (Debian: /usr/lib/nginx/modules)
NGINX_MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")
_TEMPLATES = {"njs": "nginx_direct.js", "perl": "nginx_direct.pm"}


def installed_module(verifier: str, *first: str | os.PathLike[str]) -> Optional[str]:
    """The path of the nginx module `verifier` needs, in the directories `first` (say where
    it was built) or else where distributions install modules; None when it is nowhere."""
    name = VERIFIER_MODULES[verifier]
    for where in (*first, *NGINX_MODULE_DIRS):
        path = os.path.join(where, name)
        if os.path.exists(path):
            return path
    return None


class Accel:
    """The header that hands a local file to the front proxy."""

    def __init__(self, mode: str, prefix: str) -> None:
        if mode not in MODES[1:]:
            raise ValueError(f"accel mode {mode!r}: one of {', '.join(MODES[1:])}")
        self.mode = mode
        self.prefix = prefix
        self.nginx = mode in ("nginx", DIRECT)
        self.name = "X-Accel-Redirect" if self.nginx else "X-Sendfile"

    def header(self, storage: LocalStorage, key: str) -> tuple[str, str]:
        if self.nginx:
            where = mount_path(storage.mount, storage.resolved_key(key))
            return self.name, self.prefix + quote(where)
        return self.name, storage.path(key)


def accel_for(server: DataServerConfig) -> Optional[Accel]:
    """The data server's accel, or None when it is off."""
    return None if server.accel == "off" else Accel(server.accel, server.accel_prefix)


def _quoted(path: str) -> str:
    """`path` as one nginx string argument. nginx has no escape for `$` (a variable) and the
    rest would end the argument: roots holding them are refused, not mangled."""
    bad = sorted({c for c in path if c in '"\\$;{}\'' or c.isspace() and c != " "})
    if bad:
        raise ValueError(f"{path!r}: nginx cannot name a path holding {' '.join(map(repr, bad))}")
    return f'"{path}"'


def _local_mounts(config: Config, plain_only: bool) -> list[tuple[str, str]]:
    """(/data path segment with its slash, root) of each local location: the bare location's
    "" and its "~0/" alias. `plain_only`: without Crypt4GH locations, whose /data answers
    (decrypted views) are htsgetr's own."""
    out = []
    for _, _, storage in Resolver(config).rules:
        if not plain_only:
            storage = getattr(storage, "inner", storage)
        if not isinstance(storage, LocalStorage):
            continue
        mounts = [storage.mount] if storage.mount else ["", BARE_ALIAS]
        out += [(mount + "/" if mount else "", storage.root) for mount in mounts]
    return out


def nginx_locations(config: Config, indent: str = "    ") -> str:
    """The nginx `location` blocks that map `accel_prefix` back onto each local location's
    root (`internal`: reachable only through an X-Accel-Redirect). nginx keeps htsgetr's
    Content-Type and Cache-Control on the internal redirect, not its CORS headers: those are
    repeated from the upstream answer."""
    prefix = config.data_server.accel_prefix
    out = []
    # Crypt4GH locations: only their stored ciphertext (`x.c4gh`) is ever handed over;
    # decrypted bytes are htsgetr's own answer (api/data.py), never a file nginx reads
    for mount, root in _local_mounts(config, plain_only=False):
        out.append(
            f"{indent}location {prefix}{mount} {{\n"
            f"{indent}    internal;\n"
            f"{indent}    alias {_quoted(root + '/')};\n"
            f"{indent}    max_ranges 1;\n"
            f"{indent}    add_header Access-Control-Allow-Origin "
            f"$upstream_http_access_control_allow_origin always;\n"
            f"{indent}    add_header Access-Control-Expose-Headers "
            f"$upstream_http_access_control_expose_headers always;\n"
            f"{indent}    add_header Vary $upstream_http_vary always;\n"
            f"{indent}}}\n"
        )
    return "".join(out)


def direct_locations(config: Config, indent: str = "    ") -> str:
    """accel = "nginx-direct": a location per plain local location's /data path that sends
    the signed range itself when `nginx_direct.js` vouches for the request, and hands
    anything else to htsgetr (`@htsgetr`), as are files nginx does not find or that sit
    behind a symlink (`disable_symlinks`: htsgetr resolves those inside the root and sends
    them by X-Accel-Redirect). Needs `direct_script`'s `js_set` and an `@htsgetr` location."""
    out = []
    mounts = _local_mounts(config, plain_only=True)
    if any(mount == "" for mount, _ in mounts):  # other "~" segments: mounts, derived blocks
        out.append(f"{indent}location ^~ /data/~ {{\n{_proxy(indent + '    ')}{indent}}}\n")
    for mount, root in mounts:
        out.append(
            f"{indent}location ^~ /data/{mount} {{\n"
            f"{indent}    error_page 403 404 418 = @htsgetr;\n"
            f"{indent}    if ({VOUCHED} != 1) {{ return 418; }}\n"
            f"{indent}    alias {_quoted(root + '/')};\n"
            f"{indent}    disable_symlinks on from={_quoted(root)};\n"
            f"{indent}    log_not_found off;  # a file gone since its ticket: htsgetr's 404\n"
            f"{indent}    max_ranges 1;\n"
            f"{indent}    types {{ }}\n"
            f"{indent}    default_type application/octet-stream;\n"
            f"{indent}    etag off;\n"
            f"{indent}    add_header Cache-Control no-store always;\n"
            f"{indent}}}\n"
        )
    return "".join(out)


def direct_script(config: Config, env: Mapping[str, str], verifier: str = "njs") -> str:
    """The `verifier`'s file (`VERIFIERS`) holding this configuration's verifying secrets, the
    current one first (ValueError when urls are not signed or the secret is not set where
    nginx can be told it)."""
    urls = url_signing(config)
    missing = missing_secret(config, env)
    if urls is None or missing:
        raise ValueError(missing or "/data urls are not signed")
    keys = [urls.secret or env[SECRET_ENV], *urls.previous_secrets]
    # the keys' UTF-8 bytes in hex: nothing to quote
    hex_keys = [k.encode("utf-8").hex() for k in keys]
    if verifier == "module":  # one per line; the names go in the site (`nginx_server`)
        return "".join(f"{k}\n" for k in hex_keys)
    text = files(__package__).joinpath(_TEMPLATES[verifier]).read_text(encoding="utf-8")
    if verifier == "perl":
        text = text.replace("@NAMES@", _names_pattern(config, "\\A", "\\z"))
        return text.replace("@KEYS@", ", ".join(f"'{k}'" for k in hex_keys))
    text = text.replace("@NAMES@", _names_pattern(config, "/^", "$/"))
    return text.replace("@KEYS@", json.dumps(keys))  # ASCII: \uXXXX escapes, valid JS


def _names_pattern(config: Config, first: str, last: str) -> str:
    """The regex (JavaScript's, Perl's and PCRE's alike) for the /data paths nginx may send,
    between the anchors `first` and `last`: no hidden segment, and a name a ticket can give
    — a data file of a served format or an index (`data_object`'s name checks, short of the
    location's own pattern). A second fence behind the signature."""
    suffixes = {ext for handler in default_handlers(config).values()
                for ext in handler.extensions}
    suffixes |= {idx for fmt in INDEX_SUFFIXES.values() for idx in fmt}
    alternatives = "|".join(re.escape(x).replace("/", "\\/") for x in sorted(suffixes))
    segment = r"[^.\/\\\x00][^\/\\\x00]*"
    return f"{first}(?:{segment}\\/)*{segment}(?:{alternatives}){last}"


def _proxy(indent: str) -> str:
    """The directives that pass a request to htsgetr over kept-alive connections."""
    return "".join(f"{indent}{line}\n" for line in (
        "proxy_pass http://htsgetr_upstream;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_buffering off;  # stream proxied bodies: nothing on a read-only disk",
        "proxy_request_buffering off;",
    ))


def nginx_server(config: Config, listen: str, upstream: str, script: Optional[str] = None,
                 verifier: str = "njs") -> str:
    """A whole nginx `server` (with its `upstream`) for nginx in front of htsgetr on the same
    host or pod — `htsgetr config nginx`, the Helm chart's sidecar: every request goes to
    htsgetr over kept-alive connections, and the files it hands over with X-Accel-Redirect
    come from the `internal` locations (`nginx_locations`), sent with sendfile. With
    accel = "nginx-direct", `script` is where `direct_script` wrote the `verifier`'s file,
    and signed ranges of plain local files never reach htsgetr (`direct_locations`)."""
    direct = config.data_server.accel == DIRECT
    if direct and not script:
        raise ValueError('accel = "nginx-direct" needs the path of its check script')
    check = _check_directives(config, script, verifier) if direct and script else ""
    return (
        check
        + "upstream htsgetr_upstream {\n"
        f"    server {upstream};\n"
        "    keepalive 32;\n"
        "}\n"
        "server {\n"
        f"    listen {listen};\n"
        "    sendfile on;\n"
        f"    client_max_body_size {config.max_post_bytes};\n"
        f"    location / {{\n{_proxy('        ')}    }}\n"
        + (f"    location @htsgetr {{\n{_proxy('        ')}    }}\n"
           + direct_locations(config) if direct else "")
        + nginx_locations(config)
        + "}\n"
    )


def _check_directives(config: Config, script: str, verifier: str) -> str:
    """The http-level directives that give nginx the `verifier`'s check, from `script`."""
    if verifier == "module":
        # nginx's parser reads \\ as \ and \" as ": escaped so PCRE gets the pattern as is
        names = _names_pattern(config, "\\A", "\\z").replace("\\", "\\\\")
        names = names.replace('"', '\\"')
        return (f"htsgetr_direct_secrets {_quoted(script)};\n"
                f'htsgetr_direct_names "{names}";\n')
    if verifier == "perl":
        # required by its path: no `perl_modules` directory in front of Perl's own, where a
        # file someone else could write (in /tmp, say) would be loaded in its place
        return (f"perl_require {_quoted(script)};\n"
                f"perl_set {VOUCHED} {PERL_PACKAGE}::verify;\n")
    return (f"js_import htsgetr_direct from {_quoted(script)};\n"
            f"js_set {VOUCHED} htsgetr_direct.verify;\n")


def nginx_main(site: str, module: Optional[str], temp_dir: str) -> str:
    """A whole nginx.conf around `site` (`nginx_server`'s text), for an nginx started with
    `-c` (the Helm chart's sidecar): the check's module (njs, Perl or htsgetr's) loaded when
    `module` names it, logs to stdout/stderr, pid and temporary files under `temp_dir` (a writable
    directory)."""
    load = f"load_module {_quoted(module)};\n" if module else ""
    tmp = temp_dir.rstrip("/")
    temps = "".join(f"    {kind}_temp_path {_quoted(f'{tmp}/{kind}')};\n"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    body = "".join(f"    {line}\n" if line else "\n" for line in site.splitlines())
    return (
        f"{load}worker_processes auto;\n"
        f"pid {_quoted(tmp + '/nginx.pid')};\n"
        "error_log stderr;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    access_log /dev/stdout;\n"
        "    keepalive_requests 10000;\n"
        f"{temps}"
        f"{body}"
        "}\n"
    )
