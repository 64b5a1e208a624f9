# PYTHON_ARGCOMPLETE_OK
"""The `htsgetr` command: serve, ticket, fetch, config and completion subcommands.

Every option maps to a configuration key (`OPTIONS`), so a command line, the HTSGET_*
environment and a TOML file can all say the same thing; the command line wins.
Every mistake is one line on stderr, never a traceback: exit 2 for a usage or
configuration error, 1 for a runtime one (a refused connection, a missing file).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import cli_fetch
from ._version import __version__
from .config import (
    ENV_CONFIG,
    NGINX_DIRECT,
    NGINX_VERIFIERS,
    Config,
    load_config,
    redact,
    to_dict,
)
from .config_toml import default_toml, dump_toml, toml_value
from .typed_config import ConfigError, hints

__all__ = ["OPTIONS", "cli_layer", "default_toml", "dump_toml", "load", "main", "toml_value"]

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
    parser = argparse.ArgumentParser(
        prog="htsgetr", description="GA4GH htsget 1.3 server, and a client for any htsget server",
        epilog="Shell completion: eval \"$(htsgetr completion bash)\" (or zsh, fish).")
    parser.add_argument("--version", action="version", version=f"htsgetr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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

    cli_fetch.add_parser(sub)

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
    nginx = csub.add_parser(
        "nginx", help="an nginx server in front of htsgetr: proxy + X-Accel-Redirect locations"
        " (accel = nginx-direct: nginx also checks signed /data urls itself)")
    _config_options(nginx)
    nginx.add_argument("--listen", default="8088", metavar="[HOST:]PORT",
                       help="where nginx listens (default 8088)")
    nginx.add_argument("--upstream", metavar="HOST:PORT",
                       help="htsgetr's bind (default: the configuration's ticket server)")
    nginx.add_argument("-o", "--output", metavar="FILE", help="write it here, not to stdout")
    nginx.add_argument("--main", action="store_true",
                       help="a whole nginx.conf (for nginx -c), not a server for conf.d/")
    nginx.add_argument("--verifier", choices=NGINX_VERIFIERS, default="njs",
                       help="accel = nginx-direct: what checks signed urls in nginx: njs"
                       " (default), its embedded Perl (faster; nginx's perl module) or"
                       " htsgetr's compiled module (fastest; `htsgetr config nginx-module`)")
    nginx.add_argument("--js-module", default="modules/ngx_http_js_module.so", metavar="PATH",
                       help="--main with the njs verifier: the module to load"
                       " (default: modules/ngx_http_js_module.so; '' when already loaded)")
    nginx.add_argument("--perl-module", default="modules/ngx_http_perl_module.so",
                       metavar="PATH", help="--main with the perl verifier: the module to load"
                       " (default: modules/ngx_http_perl_module.so; '' when already loaded)")
    nginx.add_argument("--direct-module", default="modules/ngx_http_htsgetr_direct_module.so",
                       metavar="PATH", help="--main with the module verifier: the module to"
                       " load (default: modules/ngx_http_htsgetr_direct_module.so)")
    nginx.add_argument("--temp-dir", default="/tmp", metavar="DIR",
                       help="--main: where nginx keeps its pid and temporary files")
    module = csub.add_parser(
        "nginx-module", help="build the compiled verifier for accel = nginx-direct"
        " (ngx_http_htsgetr_direct_module.so) for one nginx: needs its source and a C compiler")
    module.add_argument("--source", default="/usr/share/nginx/src", metavar="DIR",
                        help="that nginx's source tree (default: Debian's nginx-dev,"
                        " /usr/share/nginx/src)")
    module.add_argument("-o", "--output", default=".", metavar="DIR",
                        help="where the .so goes (default: here)")
    module.add_argument("configure", nargs="*", metavar="FLAG",
                        help="configure flags after --, as that nginx was built with (default:"
                        " Debian's conf_flags; --with-compat is always added)")

    completion = sub.add_parser("completion", help="print the shell completion script")
    completion.add_argument("shell", nargs="?", default="bash", choices=["bash", "zsh", "fish"])
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
    _check_tls(config, source)
    return config


def _servers(config: Config) -> list[tuple[str, Any]]:
    """(name, server table) of each bind `serve` opens."""
    out: list[tuple[str, Any]] = [("ticket_server", config.ticket_server)]
    if config.data_server.separate:
        out.append(("data_server", config.data_server))
    return out


def _check_tls(config: Config, source: str) -> None:
    """A certificate and key that load together, else a ConfigError (gunicorn would raise
    its own ValueError, a traceback, while starting)."""
    import ssl

    for name, server in _servers(config):
        if not server.tls_cert:
            continue
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                server.tls_cert, server.tls_key)
        except FileNotFoundError as err:
            raise ConfigError(f"no such file {err.filename or server.tls_cert!r}",
                              f"{name}.tls_cert", source) from None
        except (OSError, ssl.SSLError) as err:
            reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
            raise ConfigError(f"{server.tls_cert} / {server.tls_key}: {reason}",
                              f"{name}.tls_cert", source) from None


def _check_binds(config: Config) -> None:
    """Each address is free to listen on (gunicorn would retry five times, printing ten
    lines, before giving up)."""
    import socket

    for name, server in _servers(config):
        if server.port == 0:
            continue
        try:
            infos = socket.getaddrinfo(server.host or None, server.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as err:
            raise ConfigError(f"cannot resolve {server.host!r}: {err.strerror}",
                              f"{name}.host") from None
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as err:
                raise OSError(err.errno, f"{server.host}:{server.port} ({name}): "
                              f"{err.strerror}") from None


# --------------------------------------------------------------------------- commands


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    path, layer = _config_path(args), cli_layer(args)
    config = load(path, layer)
    if config.data_server.accel == NGINX_DIRECT:  # nginx must verify what this signs
        from .auth.gate import missing_secret

        missing = missing_secret(config, os.environ)
        if missing:
            raise ConfigError(missing, "data_server.accel")
    _check_binds(config)
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
        print(f"htsgetr: error: {err.error}: {err.message}", file=sys.stderr)
        return 2 if err.status == 400 else 1
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
    if args.config_command == "nginx":
        return _nginx_config(args)
    if args.config_command == "nginx-module":
        return _nginx_module(args)
    args.config_help(sys.stderr)
    return 2


def _nginx_config(args: argparse.Namespace) -> int:
    """`htsgetr config nginx`: nginx in front, serving /data files htsgetr hands over; the
    configuration must say `[data_server] accel = "nginx"` or "nginx-direct" (`--set` does).
    nginx-direct also writes its verifier's file (the njs or Perl script, or the compiled
    module's secrets), with the url secrets, beside --output (0600)."""
    from .api.accel import DIRECT, VERIFIERS, direct_script, nginx_main, nginx_server

    config = load(_config_path(args), cli_layer(args))
    accel = config.data_server.accel
    if accel not in ("nginx", DIRECT):
        print('htsgetr: error: the configuration needs [data_server] accel = "nginx" or'
              ' "nginx-direct" (or --set data_server.accel=\'nginx\')', file=sys.stderr)
        return 2
    server = config.ticket_server
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    script = None
    try:
        if accel == DIRECT:
            if not args.output:
                raise ValueError("nginx-direct writes two files: give --output")
            check = direct_script(config, os.environ, args.verifier)
            name = VERIFIERS[args.verifier]
            script = str(Path(args.output).resolve().with_name(name))
            _write_private(script, check)
        text = nginx_server(config, args.listen, args.upstream or f"{host}:{server.port}",
                            script, args.verifier)
        if args.main:
            module = {"perl": args.perl_module, "module": args.direct_module}.get(
                args.verifier, args.js_module)
            text = nginx_main(text, module if script else None, args.temp_dir)
    except ValueError as err:
        print(f"htsgetr: error: {err}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _nginx_module(args: argparse.Namespace) -> int:
    """`htsgetr config nginx-module`: nginx_module/build.sh, which compiles the verifier
    against the nginx source given (a module loads only into the nginx it was built for)."""
    from importlib.resources import files

    script = files("htsgetr.api").joinpath("nginx_module").joinpath("build.sh")
    if not Path(args.source, "src", "http", "ngx_http.h").exists():
        print(f"htsgetr: error: {args.source} is not an nginx source tree (Debian: apt install"
              " nginx-dev; else nginx.org's tarball of `nginx -v`'s version)", file=sys.stderr)
        return 2
    out = str(Path(args.output).resolve())
    return subprocess.call(["sh", str(script), args.source, out, *args.configure])


def _write_private(path: str, text: str) -> None:
    """`text` to `path`, readable by this user only (it holds secrets), even if it existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def _completion(args: argparse.Namespace) -> int:
    """The script that makes the shell complete `htsgetr` (argcomplete)."""
    from argcomplete.shell_integration import shellcode

    sys.stdout.write(shellcode(["htsgetr"], shell=args.shell))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _serve,
    "ticket": _ticket,
    "fetch": cli_fetch.run,
    "config": _config_command,
    "completion": _completion,
}


def _autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request, when this run is one (then exit)."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:  # pragma: no cover - a dependency
        return
    argcomplete.autocomplete(parser)


def _quiet_stdout() -> None:
    """After a broken pipe (`htsgetr config show | head -1`): point stdout at /dev/null so
    that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests): nothing to do
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one subcommand; every mistake is one line on stderr and exit 2 (usage,
    configuration) or 1 (runtime), never a traceback."""
    parser = _parser()
    _autocomplete(parser)
    args = parser.parse_args(argv)
    command = COMMANDS.get(args.command or "")
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = command(args)
        sys.stdout.flush()
        return code
    except ConfigError as err:
        print(f"htsgetr: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except KeyboardInterrupt:
        print("htsgetr: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a file that cannot be read or written, a port in use, ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"htsgetr: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
