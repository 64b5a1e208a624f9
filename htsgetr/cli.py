"""The `htsgetr` command: serve, ticket, and config subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from ._version import __version__
from .config import Config, for_data_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htsgetr", description="GA4GH htsget 1.3 server")
    parser.add_argument("--version", action="version", version=f"htsgetr {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="serve tickets and data under gunicorn")
    serve.add_argument("--data-dir", help="serve IDs as files under this directory")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--base-url", default=None, help="public URL used in ticket urls")
    serve.add_argument("--workers", type=int, default=None)

    ticket = sub.add_parser("ticket", help="print the ticket for an ID (no server needed)")
    ticket.add_argument("endpoint", choices=["reads", "variants", "sequences"])
    ticket.add_argument("id")
    ticket.add_argument("--data-dir", required=True)
    ticket.add_argument("--format")
    ticket.add_argument("--reference-name")
    ticket.add_argument("--start")
    ticket.add_argument("--end")
    ticket.add_argument("--class", dest="klass")
    return parser


def _config(args: argparse.Namespace) -> Config:
    config = for_data_dir(args.data_dir or ".")
    ts = config.ticket_server
    if getattr(args, "host", None):
        ts.host = args.host
    if getattr(args, "port", None):
        ts.port = args.port
    if getattr(args, "base_url", None):
        ts.base_url = args.base_url
    if getattr(args, "workers", None):
        ts.workers = args.workers
    return config


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from .server import HtsgetrServer

        HtsgetrServer(_config(args)).run()
        return 0
    if args.command == "ticket":
        from .engine import Htsget
        from .protocol import Endpoint, HtsgetError, parse_get

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
            ticket = Htsget(_config(args)).ticket(query)
        except HtsgetError as err:
            print(json.dumps(err.to_json()), file=sys.stderr)
            return 1
        print(json.dumps(ticket.to_json(), indent=2))
        return 0
    _parser().print_help()
    return 2
