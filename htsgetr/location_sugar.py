"""Location shorthand: storage URLs, `id_prefix` and htsget-rs spellings as plain location keys.

`[ID_PREFIX=]URL` (file:///dir or a path, s3://bucket/prefix, http(s)://host/path) becomes
`backend` + `root` / `bucket` + `prefix` / `url`; `id_prefix` and htsget-rs's `prefix` become
a `regex`. Tables in, tables out: the [[locations]] dataclass checks the result.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from .typed_config import _Ctx, _describe, _join


def _location_list(value: Any) -> Any:
    """`locations = "URL"` or a list mixing URLs and tables: URLs are storage sugar."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [{"storage": v} if isinstance(v, str) else v for v in value]
    return value


def parse_storage(spec: str) -> dict[str, Any]:
    """`[ID_PREFIX=]URL` (file:///dir, a plain path, s3://bucket/prefix, https://host/path)
    as location keys. Raises ValueError."""
    table: dict[str, Any] = {}
    head, sep, rest = spec.partition("=")
    if sep and "://" not in head and ("://" in rest or rest.startswith(("/", "."))):
        table["id_prefix"], spec = head, rest
    parts = urlsplit(spec)
    scheme = parts.scheme.lower() if "://" in spec else ""
    if scheme in ("", "file"):
        root = spec if not scheme else parts.path
        if scheme and parts.netloc not in ("", "localhost"):  # file://relative/dir
            root = parts.netloc + parts.path
        if not root:
            raise ValueError(f"no directory in {spec!r}")
        table.update(backend="file", root=root)
    elif scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"no bucket in {spec!r}")
        prefix = parts.path.strip("/")
        table.update(backend="s3", bucket=parts.netloc, prefix=prefix + "/" if prefix else "")
    elif scheme in ("http", "https"):
        table.update(backend="url", url=spec)
    else:
        raise ValueError(f"unsupported storage URL {spec!r} (file://, s3://, http(s)://)")
    return table


def expand_location(table: dict[str, Any], key: str, ctx: _Ctx) -> dict[str, Any]:
    """Sugar rewritten as plain location keys: `storage = "URL"` (or htsget-rs's `location`),
    `id_prefix = "p/"` (IDs under p/, the prefix stripped), and beside a storage URL,
    htsget-rs's `prefix = "p"` (IDs starting with p, appended whole to the URL)."""
    table = _htsget_rs_backend(dict(table), key, ctx)
    if "location" in table:  # htsget-rs spelling of storage
        if "storage" in table:
            raise ctx.error(_join(key, "location"), "give either location or storage, not both")
        table["storage"] = table.pop("location")
    if "storage" in table and "prefix" in table:
        # htsget-rs's `{ location = "URL", prefix = "bam" }`: IDs under the prefix, appended whole
        if "id_prefix" in table or "regex" in table:
            raise ctx.error(_join(key, "prefix"), "give one of prefix, id_prefix or regex")
        prefix = table.pop("prefix")
        if not isinstance(prefix, str):
            raise ctx.error(_join(key, "prefix"), f"expected a string, got {_describe(prefix)}")
        table["regex"] = re.escape(prefix) + ".*"
        table.setdefault("substitution", "$0")
    if "storage" in table:
        spec = table.pop("storage")
        if not isinstance(spec, str):
            raise ctx.error(_join(key, "storage"), f"expected a string, got {_describe(spec)}")
        try:
            expanded = parse_storage(spec)
        except ValueError as err:
            raise ctx.error(_join(key, "storage"), str(err)) from None
        for name in expanded:
            if name in table:
                raise ctx.error(_join(key, name), f"conflicts with storage = {spec!r}")
        table.update(expanded)
    if "id_prefix" in table:
        prefix = table.pop("id_prefix")
        if not isinstance(prefix, str):
            raise ctx.error(_join(key, "id_prefix"), f"expected a string, got {_describe(prefix)}")
        if "regex" in table:
            raise ctx.error(_join(key, "id_prefix"), "give either id_prefix or regex, not both")
        table["regex"] = re.escape(prefix) + "(.*)"
    return table


#: htsget-rs `backend.kind` -> our backend; its backend keys -> our location keys
_RS_KINDS = {"file": "file", "s3": "s3", "url": "url"}
_RS_KEYS = {"local_path": "root", "bucket": "bucket", "endpoint": "endpoint_url",
            "path_style": "path_style", "url": "url", "keys": "keys"}


def _htsget_rs_backend(table: dict[str, Any], key: str, ctx: _Ctx) -> dict[str, Any]:
    """htsget-rs's `substitution_string` and `backend = { kind = "File", keys = {...} }`
    (its Crypt4GH `keys`, `local_path`, `bucket`, `endpoint`, `path_style`, `url`) as
    plain location keys."""
    if "substitution_string" in table:
        if "substitution" in table:
            raise ctx.error(_join(key, "substitution_string"),
                            "give either substitution_string or substitution, not both")
        table["substitution"] = table.pop("substitution_string")
    backend = table.get("backend")
    if not isinstance(backend, dict):
        return table
    sub = _join(key, "backend")
    kind = backend.get("kind")
    if not isinstance(kind, str) or kind.lower() not in _RS_KINDS:
        raise ctx.error(_join(sub, "kind"), f"expected File, S3 or Url, got {kind!r}")
    out = {k: v for k, v in table.items() if k != "backend"}
    out["backend"] = _RS_KINDS[kind.lower()]
    for name, value in backend.items():
        if name == "kind":
            continue
        mine = _RS_KEYS.get(name)
        if mine is None:
            raise ctx.error(_join(sub, name), "this htsget-rs backend key is not supported"
                            f" (supported: kind, {', '.join(_RS_KEYS)})")
        if mine in out:
            raise ctx.error(_join(sub, name), f"conflicts with the location's {mine}")
        out[mine] = value
    if out["backend"] == "file":
        out.setdefault("root", ".")  # htsget-rs's default local_path
    return out
