"""`htsgetr fetch URL -o FILE`: a region of any htsget server into one checked file.

A progress bar (bytes, blocks, rate) and a summary on a terminal, nothing otherwise;
every failure is one line on stderr: exit 2 for a usage mistake (not an http(s) URL, a bad
region, a token file that cannot be read), 1 for the rest (refused connection, htsget
error, bad block).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
from typing import Any, Callable, Optional

USAGE, RUNTIME = 2, 1


def add_parser(sub: Any) -> None:
    fetch = sub.add_parser(
        "fetch", help="download a region from any htsget server into one file",
        description="Ask an htsget server for a ticket and write the reassembled file: blocks "
        "fetched in parallel, retried, checked (length, md5), written atomically.")
    fetch.add_argument("url", help="ticket URL, e.g. 'https://host/reads/ID' (it may carry "
                       "?referenceName=chr1&start=0&end=1000 itself)")
    fetch.add_argument("-o", "--output", required=True, help="file to write ('-': stdout)")
    fetch.add_argument("-r", "--region", action="append", default=[], metavar="REGION",
                       help="chr1, chr1:1001-2000 (1-based, inclusive, as samtools) or * "
                       "(unplaced reads); repeat for several (one POST)")
    fetch.add_argument("--format", help="BAM, CRAM, VCF, BCF, FASTA, FASTQ (default: the "
                       "endpoint's first)")
    fetch.add_argument("--class", dest="klass", choices=["header", "body"],
                       help="header: the header alone")
    auth = fetch.add_mutually_exclusive_group()
    auth.add_argument("--token", help="bearer token for the ticket server (visible in ps: "
                      "prefer --token-file)")
    auth.add_argument("--token-file", metavar="FILE",
                      help="file whose first line is the bearer token")
    fetch.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                       help="a header sent with the ticket request")
    fetch.add_argument("-j", "--concurrency", type=int, default=4, metavar="N",
                       help="blocks downloaded at once (default 4)")
    fetch.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                       help="per request (default 60)")
    bar = fetch.add_mutually_exclusive_group()
    bar.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    bar.add_argument("--progress", action="store_true",
                     help="a progress bar even when stderr is not a terminal")


def _fail(message: str, code: int) -> int:
    print(f"htsgetr: error: {message}", file=sys.stderr)
    return code


def _token(args: argparse.Namespace) -> Optional[str]:
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.readline().strip()
        if not token:
            raise ValueError(f"{args.token_file}: the first line is empty")
        return token
    given: Optional[str] = args.token
    return given


def _bar(total: Optional[int], n_blocks: int) -> tuple[Callable[[int, int], None], Any]:
    """A tqdm bar (bytes, rate) whose postfix counts blocks; updates come from threads.
    A retried block's bytes count twice: the bar may pass 100 % then."""
    from tqdm import tqdm

    # a terminal that reports no size (a bare pty) gets 100 x 24 rather than no bar
    size = shutil.get_terminal_size((100, 24))
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
               ncols=size.columns, nrows=size.lines, leave=True, desc="fetch")
    lock = threading.Lock()
    done = [0]

    def update(n: int, blocks: int) -> None:
        with lock:
            if blocks:
                done[0] += blocks
                bar.set_postfix_str(f"{done[0]}/{n_blocks} blocks", refresh=False)
            bar.update(n)

    bar.set_postfix_str(f"0/{n_blocks} blocks")
    return update, bar


def run(args: argparse.Namespace) -> int:
    from .client import (
        ClientError,
        InvalidRequest,
        build_request,
        check_target,
        fetch,
        get_ticket,
        payload_size,
    )

    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            return _fail(f"header {item!r} is not 'Name: value'", USAGE)
        headers[name.strip()] = value.strip()
    if args.concurrency < 1:
        return _fail("--concurrency must be at least 1", USAGE)
    try:
        token = _token(args)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        return _fail(f"--token-file {args.token_file}: {reason}", USAGE)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    to_stdout = args.output == "-"
    show = False
    try:
        if not to_stdout:
            check_target(args.output)
        url, body = build_request(args.url, regions=args.region or None, format=args.format,
                                  klass=args.klass)
        ticket = get_ticket(url, None, headers, body, args.timeout)
        show = not args.quiet and (args.progress or sys.stderr.isatty())
        progress, bar = _bar(payload_size(ticket), len(ticket["urls"])) if show else (None, None)
        out = sys.stdout.buffer if to_stdout else args.output
        try:
            # the ticket's own urls: the token goes to blocks on the ticket server's origin
            size = fetch({"htsget": ticket}, out, concurrency=args.concurrency,
                         timeout=args.timeout, progress=progress, token=token,
                         origin=url)
        finally:
            if bar is not None:
                bar.close()
    except InvalidRequest as err:
        return _fail(str(err), USAGE)
    except ClientError as err:
        return _fail(str(err), RUNTIME)
    if show and not to_stdout:  # quiet otherwise: scripts see only errors
        print(f"{size} bytes -> {args.output}", file=sys.stderr)
    return 0
