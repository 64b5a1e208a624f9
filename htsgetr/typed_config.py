"""Typed configuration: TOML and environment values -> dataclasses, errors naming the key.

Generic: this module knows nothing of htsgetr's schema. A schema is a tree of dataclasses
whose type hints give each key's type and whose fields come from `_opt` (the key's `doc` and
checks: choices, min, max, path, check). `build` makes an instance from a TOML table,
`set_key` overrides one dotted key (from the environment or the command line), `to_dict` goes
back. Every error is a `ConfigError` naming the source and the key.

A dataclass may define hooks, called when present:

- `_prepare(table, key, ctx) -> table` (a classmethod): sugar rewritten as plain keys, before
  the keys are checked. `set_key` passes it the one-key table of an override; it keeps that key.
- `_validate(key, ctx)`: checks of the built object that need no other layer (cross-key
  checks over the whole tree wait until every layer is applied).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """An invalid configuration: the message names the key and where it came from."""

    def __init__(self, message: str, key: Optional[str] = None, source: Optional[str] = None):
        self.message, self.key, self.source = message, key, source
        super().__init__(": ".join([p for p in (source, key) if p] + [message]))


@dataclass
class _Ctx:
    """Where values come from: for error messages, relative paths and string parsing."""

    source: Optional[str] = None  # "htsget.toml", "HTSGET_PORT", "command line"
    base_dir: Optional[str] = None  # relative paths in a file are relative to the file
    from_str: bool = False  # environment values are strings parsed into the field's type

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key or None, self.source)


def _opt(default: Any = None, doc: str = "", *, factory: Any = None, **meta: Any) -> Any:
    """A dataclass field with its documentation and checks (choices, min, max, path, check)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": doc, **meta})
    return field(default=default, metadata={"doc": doc, **meta})


_HINTS: dict[type, dict[str, Any]] = {}


def hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a config dataclass (cached)."""
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def fields_of(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def check_http_url(value: Optional[str], key: str, ctx: _Ctx) -> Optional[str]:
    """A field check: None, or an absolute http(s):// URL."""
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ctx.error(key, f"expected an http(s):// URL, got {value!r}")
    return value


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _describe(value: Any) -> str:
    kinds = [(bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
             (list, "an array"), (dict, "a table"), (datetime.date, "a date")]  # fmt: skip
    for kind, text in kinds:
        if isinstance(value, kind):
            return f"{text} ({value!r})" if kind in (bool, int, float, str) else text
    return type(value).__name__


def _plain(value: Any) -> Any:
    """TOML values as JSON-able ones (dates as ISO 8601 strings)."""
    if isinstance(value, datetime.datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _parse_str(tp: Any, text: str, key: str, ctx: _Ctx) -> Any:
    """An environment string as a value of type `tp` (lists: comma-separated or JSON)."""
    origin = get_origin(tp)
    try:
        if tp is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if origin is list:
            if text.strip().startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        if tp is Any:  # JSON where it parses ("[...]"), else the plain string ("Mirror")
            try:
                return json.loads(text)
            except ValueError:
                return text
        if origin is dict or dataclasses.is_dataclass(tp):
            return json.loads(text)
    except ValueError:
        name = {bool: "a boolean", int: "an integer", float: "a number"}.get(tp, "JSON")
        raise ctx.error(key, f"expected {name}, got {text!r}") from None
    return text


def _convert(tp: Any, value: Any, key: str, ctx: _Ctx) -> Any:
    """`value` checked against (and, from the environment, parsed into) the type `tp`."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:  # Optional[X]
        if ctx.from_str and value == "":
            return None
        return _convert(next(a for a in args if a is not type(None)), value, key, ctx)
    if ctx.from_str and isinstance(value, str) and tp is not str:
        value = _parse_str(tp, value, key, ctx)
        if not isinstance(value, list):  # parsed JSON is typed; comma lists hold strings
            ctx = dataclasses.replace(ctx, from_str=False)
    if tp is Any:
        return _plain(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, ctx)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise ctx.error(key, f"expected an array, got {_describe(value)}")
        return [_convert(args[0], v, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ctx.error(key, f"expected a table, got {_describe(value)}")
        return {k: _convert(args[1], v, _join(key, k), ctx) for k, v in value.items()}
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:  # pragma: no cover - a type the schema does not use
        raise TypeError(f"unsupported config type {tp!r}")
    if not ok:
        name = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[tp]
        raise ctx.error(key, f"expected {name}, got {_describe(value)}")
    return float(value) if tp is float else value


def _check_field(f: dataclasses.Field[Any], value: Any, key: str, ctx: _Ctx) -> Any:
    meta = f.metadata
    if value is None:
        return value
    if meta.get("choices") and value not in meta["choices"]:
        raise ctx.error(key, f"{value!r} is not one of {', '.join(meta['choices'])}")
    if "min" in meta and value < meta["min"]:
        raise ctx.error(key, f"must be at least {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ctx.error(key, f"must be at most {meta['max']}, got {value!r}")
    if meta.get("path") and ctx.base_dir and not os.path.isabs(value):
        value = os.path.normpath(os.path.join(ctx.base_dir, os.path.expanduser(value)))
    if meta.get("check"):
        value = meta["check"](value, key, ctx)
    return value


def _prepared(cls: type, table: dict[str, Any], key: str, ctx: _Ctx) -> dict[str, Any]:
    """`table` through the `_prepare` hook of `cls`, if it has one."""
    prepare = getattr(cls, "_prepare", None)
    return table if prepare is None else prepare(table, key, ctx)


def build(cls: type, table: Any, key: str, ctx: _Ctx) -> Any:
    """An instance of the dataclass `cls` from a TOML table: unknown keys and bad types refused."""
    if not isinstance(table, dict):
        raise ctx.error(key, f"expected a table, got {_describe(table)}")
    table = _prepared(cls, table, key, ctx)
    known = fields_of(cls)
    kwargs = {}
    for name, value in table.items():
        sub = _join(key, name)
        if name not in known:
            near = difflib.get_close_matches(name, list(known), n=1)
            raise ctx.error(sub, "unknown key" + (f" (did you mean {near[0]!r}?)" if near else ""))
        kwargs[name] = _check_field(
            known[name], _convert(hints(cls)[name], value, sub, ctx), sub, ctx
        )
    obj = cls(**kwargs)
    validate = getattr(obj, "_validate", None)
    if validate is not None:  # self-contained; cross-key checks wait for every layer
        validate(key, ctx)
    return obj


def set_key(obj: Any, dotted: str, value: Any, ctx: _Ctx) -> None:
    """Override one key (`ticket_server.port`, `service_info.name`, ...) with a checked value."""
    parts, key = dotted.split("."), ""
    while True:
        name, parts = parts[0], parts[1:]
        known = fields_of(type(obj))
        sub = _join(key, name)
        if name not in known:
            near = difflib.get_close_matches(name, list(known), n=1)
            raise ctx.error(sub, "unknown key" + (f" (did you mean {near[0]!r}?)" if near else ""))
        current = getattr(obj, name)
        if parts and dataclasses.is_dataclass(current):
            obj, key = current, sub
            continue
        if parts and isinstance(current, dict):  # into a free-form table
            new = dict(current)
            inner = new
            for p in parts[:-1]:
                inner[p] = dict(inner.get(p) or {})
                inner = inner[p]
            inner[parts[-1]] = _plain(value)
            value = new
        elif parts:
            raise ctx.error(sub, f"is not a table, cannot set {dotted!r}")
        tp = hints(type(obj))[name]
        value = _prepared(type(obj), {name: value}, key, ctx)[name]
        setattr(obj, name, _check_field(known[name], _convert(tp, value, sub, ctx), sub, ctx))
        return


def to_dict(config: Any) -> dict[str, Any]:
    """The configuration as a TOML-shaped dict (None values left out)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    result: dict[str, Any] = strip(dataclasses.asdict(config))
    return result
