"""The `htsgetr` command: serve, ticket, and config subcommands.

Every option maps to a configuration key (`OPTIONS`), so a command line, the HTSGET_*
environment and a TOML file can all say the same thing; the command line wins.
A configuration error is printed as one line naming the key and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence, get_args, get_origin

from ._version import __version__
from .auth.schema import AuthConfig
from .config import (
    ENV_CONFIG,
    Config,
    LocationConfig,
    env_name,
    load_config,
    redact,
    to_dict,
)
from .typed_config import ConfigError, hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: option -> (config key, argparse keywords); help comes from the field's doc
OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "--host": ("ticket_server.host", {}),
    "--port": ("ticket_server.port", {"type": int}),
    "--base-url": ("ticket_server.base_url", {}),
    "--workers": ("ticket_server.workers", {"type": int}),
    "--threads": ("ticket_server.threads", {"type": int}),
    "--timeout": ("ticket_server.timeout", {"type": int}),
    "--tls-cert": ("ticket_server.tls_cert", {}),
    "--tls-key": ("ticket_server.tls_key", {}),
    "--cors-origin": ("ticket_server.cors_origins", {"action": "append"}),
    "--separate-data-server": ("data_server.separate", {"action": "store_const", "const": True}),
    "--data-host": ("data_server.host", {}),
    "--data-port": ("data_server.port", {"type": int}),
    "--data-base-url": ("data_server.base_url", {}),
    "--data-tls-cert": ("data_server.tls_cert", {}),
    "--data-tls-key": ("data_server.tls_key", {}),
    "--watch": ("watch", {"action": "store_const", "const": True}),
    "--allow-missing": ("allow_missing", {"action": "store_const", "const": True}),
}


def field_doc(dotted: str) -> str:
    cls: Any = Config
    *tables, name = dotted.split(".")
    for table in tables:
        cls = hints(cls)[table]
    doc: str = {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("doc", "")
    return doc


def _config_options(p: argparse.ArgumentParser, server: bool = True) -> None:
    g = p.add_argument_group("configuration (command line > HTSGET_* > file > defaults)")
    g.add_argument("--config", metavar="FILE", help=f"TOML configuration (default ${ENV_CONFIG})")
    g.add_argument("--data-dir", metavar="DIR", help="serve IDs as files under DIR")
    g.add_argument(
        "--storage",
        action="append",
        metavar="[PREFIX=]URL",
        help="a location: file:///dir, s3://bucket/prefix or https://host/path, for IDs "
        "starting with PREFIX (stripped) or all; repeat for several, tried in order",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any configuration key, e.g. ticket_server.threads=8 (VALUE in TOML syntax)",
    )
    if server:
        for flag, (key, kw) in OPTIONS.items():
            if kw.get("action") != "store_const":
                kw = {"metavar": key.rsplit(".", 1)[-1].upper(), **kw}
            g.add_argument(flag, dest=key, default=None, help=f"{field_doc(key)} [{key}]", **kw)
    else:
        g.add_argument("--base-url", dest="ticket_server.base_url", default=None)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htsgetr", description="GA4GH htsget 1.3 server")
    parser.add_argument("--version", action="version", version=f"htsgetr {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="serve tickets and data under gunicorn")
    _config_options(serve)

    ticket = sub.add_parser("ticket", help="print the ticket for an ID (no server needed)")
    ticket.add_argument("endpoint", choices=["reads", "variants", "sequences"])
    ticket.add_argument("id")
    ticket.add_argument("--format")
    ticket.add_argument("--reference-name")
    ticket.add_argument("--start")
    ticket.add_argument("--end")
    ticket.add_argument("--class", dest="klass")
    _config_options(ticket, server=False)

    fetch = sub.add_parser("fetch", help="fetch a ticket URL from any htsget server into a file")
    fetch.add_argument("url", help="ticket URL, e.g. 'https://host/reads/ID?referenceName=chr1'")
    fetch.add_argument("-o", "--output", required=True, help="file to write ('-': stdout)")
    fetch.add_argument("-H", "--header", action="append", default=[],
                       help="'Name: value' sent with the ticket request (e.g. Authorization)")

    config = sub.add_parser("config", help="check, show or write configuration")
    config.set_defaults(config_help=config.print_help)
    csub = config.add_subparsers(dest="config_command")
    check = csub.add_parser("check", help="validate a configuration file")
    check.add_argument("file")
    check.add_argument("--allow-missing", action="store_true",
                       help="accept location roots that do not exist")
    show = csub.add_parser("show", help="the effective configuration (secrets redacted)")
    _config_options(show)
    csub.add_parser("default", help="a commented configuration file with every default")
    return parser


# --------------------------------------------------------------------------- configuration


def _toml_value(text: str) -> Any:
    """A `--set` value: TOML syntax (8, true, ["a"], "x"), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def cli_layer(args: argparse.Namespace) -> dict[str, Any]:
    """The command line as dotted configuration keys (sugar keys: data_dir, storage)."""
    layer: dict[str, Any] = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", source="--set")
        layer[key.strip()] = _toml_value(value.strip())
    for key in [k for _, (k, _kw) in OPTIONS.items()] + ["ticket_server.base_url"]:
        value = getattr(args, key, None)
        if value is not None:
            layer[key] = value
    if getattr(args, "data_dir", None):
        layer["data_dir"] = args.data_dir
    if getattr(args, "storage", None):
        layer["storage"] = args.storage
    return layer


def _config_path(args: argparse.Namespace) -> Optional[str]:
    return getattr(args, "config", None) or os.environ.get(ENV_CONFIG) or None


def load(
    path: Optional[str], layer: dict[str, Any], env: Optional[dict[str, str]] = None
) -> Config:
    """The configuration, with every location's backend and every [auth] table built once
    to surface their errors (a key file that does not parse, say)."""
    from .auth.gate import check
    from .engine import check_storage
    from .storage.resolver import Resolver

    config = load_config(path, env=env, cli=layer)
    source = path or "effective configuration"
    try:
        resolver = Resolver(config)
    except ConfigError as err:
        raise ConfigError(err.message, err.key, source) from None
    try:
        check(config)
    except ValueError as err:
        raise ConfigError(str(err), "auth", source) from None
    if not config.allow_missing:
        check_storage(resolver, source)
    return config


# --------------------------------------------------------------------------- TOML output

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
        if (
            dataclasses.is_dataclass(tp)
            or any(dataclasses.is_dataclass(a) for a in get_args(tp))  # Optional[table]
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
    for name in ("crypt4gh", "logging", "metrics"):
        out += ["", f"# {name}: reserved for its feature (env {env_name(name)}, JSON)", f"[{name}]"]
    return "\n".join(out) + "\n"


_AUTH = """
# Authentication and authorization: off unless [auth] is set (env HTSGET_AUTH, JSON).
# Its tables (jwt, authorization, passports, data_urls) are shown in config.example.toml.
"""


# --------------------------------------------------------------------------- commands


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    path, layer = _config_path(args), cli_layer(args)
    config = load(path, layer)
    serve(config, lambda: load(path, layer), watch=path)
    return 0


def _ticket(args: argparse.Namespace) -> int:
    from .engine import Htsget
    from .protocol import Endpoint, HtsgetError, parse_get

    config = load(_config_path(args), cli_layer(args))
    params = {
        k: v
        for k, v in {
            "format": args.format,
            "referenceName": args.reference_name,
            "start": args.start,
            "end": args.end,
            "class": args.klass,
        }.items()
        if v is not None
    }
    try:
        query = parse_get(Endpoint(args.endpoint), args.id, params)
        ticket = Htsget(config).ticket(query)
    except HtsgetError as err:
        print(json.dumps(err.to_json()), file=sys.stderr)
        return 1
    print(json.dumps(ticket.to_json(), indent=2))
    return 0


def _config_command(args: argparse.Namespace) -> int:
    if args.config_command == "check":
        config = load(args.file, {"allow_missing": args.allow_missing or None}, env={})
        n = len(config.locations)
        print(f"{args.file}: OK ({n} location{'s' if n != 1 else ''})")
        return 0
    if args.config_command == "show":
        config = load(_config_path(args), cli_layer(args))
        print(dump_toml(redact(to_dict(config))))
        return 0
    if args.config_command == "default":
        sys.stdout.write(default_toml())
        return 0
    args.config_help(sys.stderr)
    return 2


def _fetch(args: argparse.Namespace) -> int:
    """Reassemble a ticket into a file; the ticket's headers go only to the ticket server."""
    from .client import ClientError, fetch

    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            print(f"htsgetr: error: header {item!r} is not 'Name: value'", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    try:
        out = sys.stdout.buffer if args.output == "-" else args.output
        size = fetch(args.url, out, headers=headers)
    except ClientError as err:
        print(f"htsgetr: error: {err}", file=sys.stderr)
        return 1
    if args.output != "-":
        print(f"{size} bytes -> {args.output}", file=sys.stderr)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _serve, "ticket": _ticket, "fetch": _fetch
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        if args.command == "config":
            return _config_command(args)
    except ConfigError as err:
        print(f"htsgetr: error: {err}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2
