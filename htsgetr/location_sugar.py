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
    table = dict(table)
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
