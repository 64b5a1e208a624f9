"""`[data_server] accel = "nginx"` end to end: a real nginx in front of a real `htsgetr serve`.

htsgetr decides (path, signature, Range) and answers with X-Accel-Redirect; nginx sends the
bytes from an `internal` location (`nginx_locations`). Checked: the bytes are the file's
range, tampered or unsigned urls never reach the file, and the internal location cannot be
asked for directly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from conftest import Server, free_port, make_accel_tree, make_bam, start_nginx

from htsgetr.api.accel import nginx_locations
from htsgetr.config import load_config

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(NGINX is None,
                                reason="nginx is not installed (make test installs it)")

RESTRICTIONS = {"version": 1, "htsgetAuth": [
    {"location": {"prefix": ""}, "rules": [{"referenceName": "chr1"}]}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("accel")
    root = d / "data"
    make_accel_tree(root)
    (d / "restrictions.json").write_text(json.dumps(RESTRICTIONS))
    port, nginx_port = free_port(), free_port()
    config_path = d / "config.toml"
    config_path.write_text(f"""
[ticket_server]
allowed_hosts = ["127.0.0.1:*"]
[data_server]
accel = "nginx"
[[locations]]
root = "{root}"
[data_server.auth.authorization]
kind = "static"
path = "{d / 'restrictions.json'}"
[data_server.auth.data_urls]
secret = "accel-test-secret"
""")
    config = load_config(str(config_path), env={})
    tmp = d / "nginx"
    tmp.mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the pytest tmp dir
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"{user}daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;\n"
        "events {}\nhttp {\n"
        "  log_format accel '$request_uri $status x-accel=[$upstream_http_x_accel_redirect]';\n"
        f"  access_log {tmp}/access.log accel; sendfile on;\n"
        f"  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};\n"
        f"  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n"
        f"  server {{\n    listen 127.0.0.1:{nginx_port};\n"
        "    location / { proxy_pass http://127.0.0.1:" + str(port) + ";"
        " proxy_set_header Host $http_host; }\n"
        + nginx_locations(config) +
        "  }\n}\n")
    srv = Server(["--config", str(config_path), "--port", str(port), "--workers", "1"], port)
    srv.start()
    url = f"http://127.0.0.1:{nginx_port}"
    nginx = start_nginx(conf, url)
    try:
        yield {"url": url, "root": root, "log": tmp / "access.log", "conf": conf}
    finally:
        os.killpg(nginx.pid, signal.SIGTERM)
        nginx.wait(10)
        srv.stop()


def _log_line(world: dict[str, Any], path: str) -> str:
    time.sleep(0.05)  # nginx writes the access log line after the answer
    lines = [x for x in world["log"].read_text().splitlines() if x.startswith(path)]
    assert lines, path
    return lines[-1]


def _ticket(world: dict[str, Any], id: str, query: str = "referenceName=chr1&start=1000"
            "&end=90000") -> list[dict[str, Any]]:
    r = requests.get(f"{world['url']}/reads/{id}?{query}")
    assert r.status_code == 200, r.text
    urls: list[dict[str, Any]] = r.json()["htsget"]["urls"]
    return urls


@pytest.mark.parametrize("id,name", [("sample", "sample.bam"), ("linked", "sample.bam"),
                                     ("dir with space/x y", "dir with space/x y.bam")])
def test_bytes_are_the_files_range(world: dict[str, Any], id: str, name: str) -> None:
    data = (world["root"] / name).read_bytes()
    urls = _ticket(world, id)
    fetched = 0
    for block in urls:
        if block["url"].startswith("data:"):
            continue
        assert block["url"].startswith(world["url"] + "/data/") and "&sig=" in block["url"]
        r = requests.get(block["url"], headers=block["headers"])
        first, last = (int(x) for x in block["headers"]["Range"][6:].split("-"))
        assert r.status_code == 206, r.text
        assert r.content == data[first:last + 1]
        assert r.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Content-Type"] == "application/octet-stream"
        path = block["url"][len(world["url"]):]
        assert "x-accel=[/_protected/" in _log_line(world, path)  # nginx sent it
        fetched += 1
    assert fetched


def test_tampered_or_unsigned_urls_never_reach_the_file(world: dict[str, Any]) -> None:
    block = next(b for b in _ticket(world, "sample") if not b["url"].startswith("data:"))
    url, rng = block["url"], block["headers"]["Range"]
    first = int(rng[6:].split("-")[0])
    path = url[len(world["url"]):]
    cases = [
        (url, {"Range": f"bytes={first}-{first + 10_000_000}"}),  # another range
        (url, {}),  # no range: the whole file
        (url.replace("/data/sample.bam", "/data/linked.bam"), {"Range": rng}),  # another file
        (url.split("?", 1)[0], {"Range": rng}),  # unsigned
        (url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB"), {"Range": rng}),  # bad sig
    ]
    for target, headers in cases:
        r = requests.get(target, headers=headers)
        assert r.status_code == 403, (target, headers, r.status_code)
        assert r.json()["htsget"]["error"] == "PermissionDenied"
        line = _log_line(world, target[len(world["url"]):])
        assert "x-accel=[]" in line or "x-accel=[-]" in line, line
    assert requests.get(url, headers={"Range": rng}).status_code == 206  # the signed one
    assert "x-accel=[/_protected/sample.bam]" in _log_line(world, path)


def test_internal_location_refused_from_outside(world: dict[str, Any]) -> None:
    for path in ("/_protected/sample.bam", "/_protected/secret.txt", "/_protected/~0/sample.bam",
                 "/_protected/dir%20with%20space/x%20y.bam"):
        r = requests.get(world["url"] + path, headers={"Range": "bytes=0-10"})
        assert r.status_code == 404, path
        assert not r.content.startswith(b"\x1f\x8b")


def test_what_data_serves_is_still_decided_by_htsgetr(world: dict[str, Any]) -> None:
    signed = next(b for b in _ticket(world, "sample") if not b["url"].startswith("data:"))
    # a file no ticket can name: 404 even with a valid-looking signature
    r = requests.get(world["url"] + "/data/secret.txt?" + signed["url"].split("?", 1)[1])
    assert r.status_code in (403, 404)
    # past the end of the file: htsgetr's 416
    size = (world["root"] / "sample.bam").stat().st_size
    big = requests.get(signed["url"], headers={"Range": f"bytes={size}-"})
    assert big.status_code == 403  # not the signed range
    # HEAD is answered by htsgetr itself, no body
    head = requests.head(signed["url"], headers=signed["headers"])
    assert head.status_code == 206 and head.content == b""
    assert int(head.headers["Content-Length"]) > 0


def test_cors_headers_survive_the_internal_redirect(world: dict[str, Any]) -> None:
    block = next(b for b in _ticket(world, "sample") if not b["url"].startswith("data:"))
    r = requests.get(block["url"], headers={**block["headers"], "Origin": "https://igv.example"})
    assert r.status_code == 206
    assert r.headers["Access-Control-Allow-Origin"] in ("*", "https://igv.example")
    assert "Content-Range" in r.headers["Access-Control-Expose-Headers"]
    assert r.headers["Cache-Control"] == "no-store"


def test_htsgetr_config_nginx_serves_exact_tickets(tmp_path: Path) -> None:
    """`htsgetr config nginx` (what the Helm chart's sidecar runs) writes a working nginx
    server: tickets through it reassemble to htslib's records, /data ranges leave nginx
    by X-Accel-Redirect, and the internal location is refused from outside."""
    import sys

    from conftest import assert_ticket_records, reassemble

    root = tmp_path / "data"
    root.mkdir()
    make_bam(root / "sample.bam", seed=5)
    port, nginx_port = free_port(), free_port()
    accel = "--set", "data_server.accel='nginx'"
    site = tmp_path / "htsgetr-site.conf"
    made = subprocess.run(
        [sys.executable, "-m", "htsgetr", "config", "nginx", "--data-dir", str(root), *accel,
         "--port", str(port), "--listen", f"127.0.0.1:{nginx_port}", "-o", str(site)],
        capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    tmp = tmp_path / "nginx"
    tmp.mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"{user}daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;\nevents {{}}\n"
        "http {\n  log_format accel '$request_uri $status "
        "x-accel=[$upstream_http_x_accel_redirect]';\n"
        f"  access_log {tmp}/access.log accel;\n"
        f"  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};\n"
        f"  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n  include {site};\n}}\n")
    srv = Server(["--data-dir", str(root), "--port", str(port), *accel,
                  "--set", "ticket_server.allowed_hosts=['127.0.0.1:*']"], port).start()
    url = f"http://127.0.0.1:{nginx_port}"
    nginx = start_nginx(conf, url)
    try:
        region = ("chr1", 30_000, 90_000)
        ticket = requests.get(f"{url}/reads/sample?referenceName=chr1&start=30000&end=90000",
                              timeout=10).json()
        blocks = [b["url"] for b in ticket["htsget"]["urls"] if b["url"].startswith("http")]
        assert blocks and all(b.startswith(url + "/data/") for b in blocks)
        assert_ticket_records(reassemble(ticket), tmp_path, root / "sample.bam", [region])
        assert requests.get(f"{url}/_protected/sample.bam", timeout=10).status_code == 404
        time.sleep(0.1)
        log = (tmp / "access.log").read_text()
        assert "/data/sample.bam 206 x-accel=[/_protected/sample.bam]" in log, log
    finally:
        os.killpg(nginx.pid, signal.SIGTERM)
        nginx.wait(10)
        srv.stop()


@pytest.mark.parametrize("validator", ['"no-such-etag"', "Mon, 01 Jan 1990 00:00:00 GMT"])
def test_if_range_never_widens_a_signed_range(world: dict[str, Any], validator: str) -> None:
    """nginx drops the Range for an If-Range it cannot match and sends the whole file: a
    request with one is answered by htsgetr itself, with exactly the signed range."""
    query = "referenceName=chr1&start=5000&end=70000"  # urls no other test asks (the log)
    block = next(b for b in _ticket(world, "sample", query) if not b["url"].startswith("data:"))
    rng = block["headers"]["Range"]
    first, last = (int(x) for x in rng[6:].split("-"))
    data = (world["root"] / "sample.bam").read_bytes()
    r = requests.get(block["url"], headers={"Range": rng, "If-Range": validator})
    assert r.status_code == 206 and r.content == data[first:last + 1]
    assert r.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
    path = block["url"][len(world["url"]):]
    line = _log_line(world, path)
    assert "x-accel=[]" in line or "x-accel=[-]" in line, line  # htsgetr sent it
