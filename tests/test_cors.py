"""CORS as the htsget spec's CORS section asks, with htsget-rs's keys (htsgetr/cors.py).

By default a preflight echoes the headers the browser asks for (`Access-Control-Request-Headers`)
and may be cached for 30 days, on the ticket endpoints and on /data alike: a browser track that
sends a header outside a fixed list (igv.js with `X-Request-Id`) is no longer dropped. An
explicit `allow_headers` list, or `max_age`, in the config still wins. Checked through Flask's
test client and against a real `htsgetr serve` (whose fast path hands CORS requests to Flask).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from conftest import Server, free_port, make_bam

from htsgetr import create_app, load_config
from htsgetr.cors import THIRTY_DAYS

ASKED = "range, x-request-id, authorization, x-custom-trace"
PATHS = [("/reads/sample", "GET"), ("/variants/calls", "POST"), ("/data/sample.bam", "GET")]


def _allowed(resp: Any) -> set[str]:
    return {h.strip().lower() for h in resp.headers.get("Access-Control-Allow-Headers", "")
            .split(",") if h.strip()}


def _app(tmp_path: Path, **cors: Any) -> Any:
    config = load_config(env={}, cli={"data_dir": str(tmp_path)})
    for key, value in cors.items():
        setattr(config.ticket_server.cors, key, value)
    return create_app(config).test_client()


def _preflight(client: Any, path: str, method: str, headers: str = ASKED) -> Any:
    return client.options(path, headers={"Origin": "https://igv.example",
                                         "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": headers})


@pytest.mark.parametrize("path,method", PATHS)
def test_default_preflight_echoes_requested_headers_for_30_days(tmp_path: Path, path: str,
                                                                method: str) -> None:
    resp = _preflight(_app(tmp_path), path, method)
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://igv.example")
    assert _allowed(resp) == {"range", "x-request-id", "authorization", "x-custom-trace"}
    assert resp.headers["Access-Control-Max-Age"] == str(THIRTY_DAYS) == "2592000"
    assert method in resp.headers["Access-Control-Allow-Methods"]


def test_default_echo_is_exactly_what_was_asked(tmp_path: Path) -> None:
    """Echoing does not widen: ask for one header, one comes back."""
    resp = _preflight(_app(tmp_path), "/data/sample.bam", "GET", headers="Range")
    assert _allowed(resp) == {"range"}


@pytest.mark.parametrize("path,method", PATHS)
def test_explicit_allow_headers_list_still_wins(tmp_path: Path, path: str, method: str) -> None:
    client = _app(tmp_path, allow_headers=["Authorization", "Content-Type", "Range"])
    resp = _preflight(client, path, method)
    assert _allowed(resp) == {"range", "authorization"}  # no x-request-id: the browser refuses
    assert resp.headers["Access-Control-Max-Age"] == "2592000"


def test_explicit_max_age_and_keywords(tmp_path: Path) -> None:
    client = _app(tmp_path, max_age=600, allow_headers="All")
    resp = _preflight(client, "/reads/sample", "GET")
    assert resp.headers["Access-Control-Max-Age"] == "600"
    assert "x-request-id" in _allowed(resp)


def test_config_file_keys(tmp_path: Path) -> None:
    """The TOML spelling: htsget-rs's `[ticket_server.cors]` table."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[ticket_server.cors]\nallow_headers = ["Range"]\nmax_age = 60\n')
    config = load_config(path=str(cfg), env={}, cli={"data_dir": str(tmp_path)})
    assert config.ticket_server.cors.allow_headers == ["Range"]
    client = create_app(config).test_client()
    resp = _preflight(client, "/data/sample.bam", "GET")
    assert _allowed(resp) == {"range"} and resp.headers["Access-Control-Max-Age"] == "60"
    default = load_config(env={}, cli={"data_dir": str(tmp_path)}).ticket_server.cors
    assert default.allow_headers is None and default.max_age == THIRTY_DAYS


# --------------------------------------------------------------------------- real gunicorn


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("cors")
    make_bam(d / "sample.bam", n_reads=200)
    port = free_port()
    srv = Server(["--data-dir", str(d), "--port", str(port), "--workers", "1"], port).start()
    yield srv
    srv.stop()


def test_served_preflight_and_cross_origin_get(cors_server: Server) -> None:
    """What a browser does: preflight the ticket with an extra header, GET it, preflight the
    /data url with Range and the extra header, GET the range and read Content-Range."""
    origin = {"Origin": "https://igv.example"}
    ask = {**origin, "Access-Control-Request-Method": "GET",
           "Access-Control-Request-Headers": "x-request-id"}
    pre = requests.options(f"{cors_server.url}/reads/sample", headers=ask, timeout=10)
    assert pre.status_code == 200 and _allowed(pre) == {"x-request-id"}
    assert pre.headers["Access-Control-Max-Age"] == "2592000"
    ticket = requests.get(f"{cors_server.url}/reads/sample",
                          headers={**origin, "X-Request-Id": "t1"}, timeout=10)
    assert ticket.headers["Access-Control-Allow-Origin"] in ("*", "https://igv.example")
    block = next(u for u in ticket.json()["htsget"]["urls"] if u["url"].startswith("http"))
    ask["Access-Control-Request-Headers"] = "range,x-request-id"
    pre = requests.options(block["url"], headers=ask, timeout=10)
    assert pre.status_code == 200 and _allowed(pre) == {"range", "x-request-id"}
    data = requests.get(block["url"], headers={**origin, **block["headers"]}, timeout=10)
    assert data.status_code == 206
    assert data.headers["Access-Control-Allow-Origin"] in ("*", "https://igv.example")
    exposed = {h.strip().lower() for h in data.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"content-range", "content-length", "x-request-id"} <= exposed
    # a browser script can read the request id the server echoed (access-log correlation)
    assert data.headers["X-Request-ID"]
