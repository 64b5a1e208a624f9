"""TOML output: `htsgetr config show` (the effective configuration) and `htsgetr config
default` (every key at its default, each with its doc and environment variable)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Optional, get_args, get_origin

from .auth.schema import AuthConfig
from .config import Config, LocationConfig, env_name
from .typed_config import hints

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return ("-inf" if v < 0 else "inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        inner = ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items())
        return "{ " + inner + " }" if inner else "{}"
    return json.dumps(str(v))


def _is_tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dump_toml(doc: dict[str, Any], path: str = "") -> str:
    """`doc` as TOML: plain keys first, then [tables], then [[arrays of tables]]."""
    lines = []
    for k, v in doc.items():
        if not isinstance(v, dict) and not _is_tables(v):
            lines.append(f"{_key(k)} = {toml_value(v)}")
    for k, v in doc.items():
        sub = f"{path}.{_key(k)}" if path else _key(k)
        if isinstance(v, dict) and v:
            lines += ["", f"[{sub}]", dump_toml(v, sub)]
        elif _is_tables(v):
            for item in v:
                lines += ["", f"[[{sub}]]", dump_toml(item, sub)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is list:
        return f"array of {_type_name(get_args(tp)[0])}s"
    if origin is dict:
        return "table"
    if get_args(tp) and type(None) in get_args(tp):
        return _type_name(next(a for a in get_args(tp) if a is not type(None)))
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, "value")


def _render_fields(obj: Any, prefix: Optional[str]) -> list[str]:
    """Each field of `obj` with its doc comment; None-valued ones commented out."""
    lines = []
    cls = type(obj)
    for f in dataclasses.fields(obj):
        tp, value = hints(cls)[f.name], getattr(obj, f.name)
        optional_table = any(dataclasses.is_dataclass(a) for a in get_args(tp))
        if optional_table and prefix is None and value is None:
            # a location's (or [auth]'s) optional table, e.g. Crypt4GH keys: named, shown empty
            lines.append(f"# {f.metadata.get('doc', '')} (table)")
            lines.append(f"# {f.name} = {{}}")
            continue
        if (
            dataclasses.is_dataclass(tp)
            or optional_table
            or f.name == "locations"
            or get_origin(tp) is dict
            and (get_args(tp)[1] is Any)
        ):
            continue  # tables: rendered on their own
        env = f", {env_name(prefix + f.name)}" if prefix is not None else ""
        lines.append(f"# {f.metadata.get('doc', '')} ({_type_name(tp)}{env})")
        if value is None:
            example = "[]" if "array" in _type_name(tp) else '""'
            lines.append(f"# {f.name} = {example}")
        else:
            lines.append(f"{f.name} = {toml_value(value)}")
    return lines


_HEADER = """\
# htsgetr configuration: every key, at its default.
#
# Load it with `htsgetr serve --config FILE` or HTSGET_CONFIG=FILE (gunicorn htsgetr.wsgi:app).
# Precedence: command line > HTSGET_* environment > this file > defaults. Each key's variable
# is named in its comment; list values there are comma-separated (or JSON), tables are JSON.
# Relative paths in this file are relative to the file. Unknown keys are refused.
# `htsgetr config check FILE` validates a file; SIGHUP (or watch = true) reloads it live.
"""

_LOCATIONS = """\
# Ordered ID -> storage rules. For an ID, every location whose `regex` matches the whole ID
# is tried in order; the first holding the object serves it, and a miss stops there unless
# `fall_through = true`. Sugar: `storage = "file:///dir" | "s3://bucket/prefix" |
# "https://host/path"` sets backend and its keys; `id_prefix = "cohortA/"` stands for
# regex = "cohortA/(.*)"; `locations = ["file:///data", ...]` is a list of such storages.
# With no location anywhere (as here), IDs are files under the current directory; a
# location with every key at its default (root is required for "file") reads:
"""

_SERVICE_INFO = """\
# GA4GH service-info (GET /service-info, /reads/service-info, ...). `type` and `htsget` are
# derived by the server. Any other key is passed through as a custom field.
# (env HTSGET_SERVICE_INFO, JSON)
[service_info]
# id = "org.ga4gh.htsgetr"
# name = "htsgetr"
# description = "GA4GH htsget server for reads, variants and sequences"
# contactUrl = "mailto:helpdesk@example.org"
# documentationUrl = "https://example.org/docs"
# environment = "prod"
# version = "1.0.0"
# createdAt = 2024-01-01T00:00:00Z
# updatedAt = 2024-01-01T00:00:00Z
# organization = { name = "Example Org", url = "https://example.org" }
# reads = { formats = ["BAM", "CRAM"] }
# variants = { formats = ["VCF", "BCF"] }
# sequences = { formats = ["FASTA", "FASTQ"] }
"""


def default_toml() -> str:
    config = Config(locations=[LocationConfig(root=".")])
    out = [_HEADER]
    out += _render_fields(config, "")
    for name in ("ticket_server", "data_server"):
        f = {f.name: f for f in dataclasses.fields(Config)}[name]
        out += ["", f"# {f.metadata['doc']}", f"[{name}]"]
        out += _render_fields(getattr(config, name), name + ".")
        out += [f"# [{name}.auth]: this server's own [auth] (env {env_name(name + '.auth')}, JSON)"]
        out += ["", f"[{name}.cors]"]
        out += _render_fields(getattr(config, name).cors, name + ".cors.")
    out += ["", _LOCATIONS.rstrip(), "# [[locations]]"]
    out += [
        line if line.startswith("# ") else "# " + line
        for line in _render_fields(config.locations[0], None)
    ]
    out += ["", _SERVICE_INFO.rstrip()]
    out += ["", _AUTH.rstrip(), "# [auth]"]
    out += ["# " + line.lstrip("# ") for line in _render_fields(AuthConfig(), None)]
    for f in dataclasses.fields(Config):  # each feature's own table (crypt4gh, metrics, ...)
        name, table = f.name, getattr(config, f.name)
        if name in _SPECIAL:
            continue
        if isinstance(table, dict):  # a table no feature has claimed yet
            out += ["", f"# {name}: reserved for its feature (env {env_name(name)}, JSON)",
                    f"[{name}]"]
            continue
        if not dataclasses.is_dataclass(table):
            continue
        out += ["", f"# {f.metadata.get('doc', name)}", f"[{name}]"]
        out += _render_fields(table, name + ".")
        for sub in dataclasses.fields(table):  # and their subtables, if any
            value = getattr(table, sub.name)
            if dataclasses.is_dataclass(value):
                out += ["", f"[{name}.{sub.name}]"]
                out += _render_fields(value, f"{name}.{sub.name}.")
    return "\n".join(out) + "\n"


#: tables default_toml renders by hand
_SPECIAL = frozenset({"ticket_server", "data_server", "auth", "service_info", "locations"})


_AUTH = """
# Authentication and authorization: off unless [auth] is set (env HTSGET_AUTH, JSON).
# Its tables (jwt, authorization, passports, data_urls) are shown in config.example.toml.
"""
