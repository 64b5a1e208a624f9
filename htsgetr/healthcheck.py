"""`python -m htsgetr.healthcheck`: the container's HEALTHCHECK. It reads the configuration
the server reads (HTSGET_CONFIG and the HTSGET_* environment), so it asks the port and
scheme the server actually listens on, and GETs /healthz there (`--ready`: /readyz).
Exit status 0 when the answer is 200, 1 otherwise (Docker's "unhealthy").

TLS is spoken when the ticket server has a certificate, without verifying it: the probe
talks to its own process over loopback, and the certificate names the public host.
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys
from typing import Optional, Sequence

from .config import ConfigError, ServerConfig, load_config

#: bind addresses that mean "every interface": probe over loopback instead
WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def target(server: ServerConfig) -> tuple[str, str, int]:
    """(scheme, host, port) a probe inside the container connects to."""
    scheme = "https" if server.tls_cert else "http"
    host = WILDCARDS.get(server.host, server.host)
    return scheme, host, server.port


def probe(server: ServerConfig, path: str = "/healthz", timeout: float = 2.0) -> int:
    """The HTTP status of GET `path` on the server's bind (0: no answer)."""
    scheme, host, port = target(server)
    conn: http.client.HTTPConnection
    if scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m htsgetr.healthcheck",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--ready", action="store_true", help="probe /readyz, not /healthz")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    args = parser.parse_args(argv)
    try:
        config = load_config()
    except ConfigError as err:
        print(f"htsgetr healthcheck: configuration error: {err}", file=sys.stderr)
        return 1
    path = "/readyz" if args.ready else "/healthz"
    status = probe(config.ticket_server, path, args.timeout)
    scheme, host, port = target(config.ticket_server)
    if status != 200:
        print(f"htsgetr healthcheck: {scheme}://{host}:{port}{path}: "
              + (f"HTTP {status}" if status else "no answer"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
