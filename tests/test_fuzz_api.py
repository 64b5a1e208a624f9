"""Bad input never gets a traceback or a 500: random query strings, POST bodies and IDs,
headers (Range, Host, Content-Type, Content-Length), nesting, integer sizes and file-system
names, through the Flask test client and, where the WSGI layer matters, a real gunicorn.

The property: no 5xx (this data has no corrupt file and no storage fault), every error is
htsget JSON, no traceback text. `make test` runs a few hundred examples per test;
`HYPOTHESIS_PROFILE=long` runs twenty times as many.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import quote

import pytest
from conftest import Server, free_port
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from htsgetr.app import create_app
from htsgetr.config import for_data_dir

ERRORS = {"NotFound", "InvalidInput", "InvalidRange", "UnsupportedFormat", "PayloadTooLarge",
          "MethodNotAllowed", "UnsupportedMediaType"}
CT = "application/vnd.ga4gh.htsget.v1.3.0+json"
SCALE = 20 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 1


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client(data_dir: Path):
    return create_app(for_data_dir(str(data_dir))).test_client()


def check(resp) -> None:
    assert resp.status_code in (200, 400, 404, 405, 413, 415), resp.get_data(as_text=True)[:300]
    assert "Traceback" not in resp.get_data().decode("utf-8", "replace")
    body = resp.get_json(force=True)
    if resp.status_code == 200 and "type" in body:  # the reserved ID service-info
        assert body["type"]["artifact"] == "htsget"
    elif resp.status_code == 200:
        assert set(body["htsget"]) <= {"format", "urls", "md5"}
    else:
        assert body["htsget"]["error"] in ERRORS
        assert "Traceback" not in body["htsget"]["message"]


values = st.one_of(
    st.text(max_size=12),
    st.integers(-5, 1 << 40).map(str),
    st.sampled_from(["chr1", "chr2", "chrEmpty", "*", "1", "X", "", "0", "250000", "header",
                     "body", "BAM", "bam", "VCF", "CRAM", "BCF", "QNAME,FLAG", "RG", "%00"]),
)
keys = st.sampled_from(["referenceName", "start", "end", "format", "class", "fields", "tags",
                        "notags", "encryptionScheme", "x"])
ids = st.sampled_from(["sample", "calls", "calls_csi", "csi", "nested/deep/other", "nope",
                       "../sample", "sample.bam", "service-info", "a%2Fb", "%00", "x" * 300])


@fuzz(400)
@given(endpoint=st.sampled_from(["reads", "variants", "sequences"]), id=ids,
       params=st.dictionaries(keys, values, max_size=5))
def test_get_never_500(client, endpoint: str, id: str, params: dict[str, str]) -> None:
    check(client.get(f"/{endpoint}/{id}", query_string=params))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 1 << 33), st.text(max_size=8),
              st.sampled_from(["chr1", "1", "*", "BAM", "vcf", "header"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(
                                ["referenceName", "start", "end", "format", "class", "regions",
                                 "fields", "tags", "notags"]), inner, max_size=4)),
    max_leaves=12,
)


@fuzz(400)
@given(endpoint=st.sampled_from(["reads", "variants"]), body=json_values,
       raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_post_never_500(client, endpoint: str, body: object, raw: bytes | None) -> None:
    data = raw if raw is not None else json.dumps(body).encode()
    id = "sample" if endpoint == "reads" else "calls"
    check(client.post(f"/{endpoint}/{id}", data=data, content_type="application/json"))


@fuzz(300)
@given(rng=st.one_of(
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20),
    st.tuples(st.integers(0, 1 << 22), st.integers(0, 1 << 22)).map(
        lambda t: f"bytes={t[0]}-{t[1]}"),
    st.integers(0, 1 << 22).map(lambda n: f"bytes=-{n}"),
    st.integers(0, 1 << 22).map(lambda n: f"bytes={n}-"),
))
def test_data_ranges_never_500(client, data_dir: Path, rng: str) -> None:
    raw = (data_dir / "sample.bam").read_bytes()
    resp = client.get("/data/sample.bam", headers={"Range": rng})
    assert resp.status_code in (200, 206, 416)
    if resp.status_code == 206:
        first, last = resp.headers["Content-Range"][6:].split("/")[0].split("-")
        assert resp.data == raw[int(first):int(last) + 1]
    elif resp.status_code == 200:
        assert resp.data == raw


# --------------------------------------------------------------------------- headers

#: What a WSGI server can hand over: environ strings are latin-1 ("bytes as str")
latin1 = st.characters(max_codepoint=0xFF)
header_text = st.text(latin1, max_size=40)
digits = st.integers(1, 6000).map(lambda n: "9" * n)
numbers = st.one_of(st.integers(0, 1 << 70).map(str), digits,
                    st.integers(1, 6000).map(lambda n: "0" * n + "7"))
ranges = st.one_of(
    header_text,
    st.tuples(st.one_of(st.just(""), numbers), st.one_of(st.just(""), numbers)).map(
        lambda t: f"bytes={t[0]}-{t[1]}"),
    st.sampled_from(["bytes=\u0661\u0662-", "bytes=\uff11-\uff12", "bytes=1-2,3-4",
                     "bytes=-0", "bytes=0-0", "BYTES=0-1", "bytes = 0-1", "bytes=0-1\x00",
                     "items=0-1", "bytes=--1"]),
)
hosts = st.one_of(
    st.none(), header_text,
    st.sampled_from(["127.0.0.1", "localhost:8080", "[::1]:80", "[::1", "a b", "", "x" * 300,
                     "h:99999999999999999999", "évil.example", "a@b", "a/b", "\x00", "h:-1"]),
)
content_types = st.one_of(
    st.none(), header_text,
    st.sampled_from(["application/json", "application/json; charset=utf-8",
                     "application/vnd.ga4gh.htsget+json", "text/plain", "application/+json",
                     "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                     "application/json\x00", "application/json;", ";", ""]),
)
content_lengths = st.one_of(
    st.none(), numbers, header_text,
    st.sampled_from(["-1", "0", "1", "2", " 2 ", "+2", "0x10", "2, 2", "\u0662"]),
)


def environ(**headers: Optional[str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if v is not None}


@fuzz(250)
@given(content_type=content_types, length=content_lengths, host=hosts,
       body=st.one_of(st.sampled_from([b"", b"{}", b'{"format": "BAM"}', b"{",
                                       b'{"regions": [{"referenceName": "chr1"}]}']),
                      st.binary(max_size=30)))
def test_post_headers_never_500(client, content_type: Optional[str], length: Optional[str],
                                host: Optional[str], body: bytes) -> None:
    resp = client.post("/reads/sample", data=body, environ_overrides=environ(
        CONTENT_TYPE=content_type, CONTENT_LENGTH=length, HTTP_HOST=host))
    check(resp)
    if resp.status_code == 415:
        assert content_type or body.strip()


@fuzz(250)
@given(rng=ranges, host=hosts, path=st.sampled_from(["sample.bam", "sample.bam.bai",
                                                     "calls.vcf.gz", "nope.bam"]))
def test_data_headers_never_500(client, data_dir: Path, rng: str, host: Optional[str],
                                path: str) -> None:
    resp = client.get(f"/data/{path}", environ_overrides=environ(HTTP_RANGE=rng, HTTP_HOST=host))
    if path == "nope.bam" or resp.status_code == 400:
        check(resp)
        return
    raw = (data_dir / path).read_bytes()
    assert resp.status_code in (200, 206, 416), resp.get_data()[:200]
    if resp.status_code == 206:
        first, last = resp.headers["Content-Range"][6:].split("/")[0].split("-")
        assert resp.data == raw[int(first):int(last) + 1]
    elif resp.status_code == 200:
        assert resp.data == raw


@fuzz(150)
@given(host=hosts, endpoint=st.sampled_from(["reads/sample", "variants/calls"]))
def test_get_hosts_never_500(client, host: Optional[str], endpoint: str) -> None:
    check(client.get(f"/{endpoint}", environ_overrides=environ(HTTP_HOST=host)))


# --------------------------------------------------------------------------- nesting, sizes


def _nest(depth: int, kind: str, closed: bool) -> bytes:
    open_, close = {"list": (b"[", b"]"), "object": (b'{"a":', b"}"),
                    "regions": (b'{"regions":[', b"]}")}[kind]
    return open_ * depth + b"0" + (close * depth if closed else b"")


def _region_number(key: str, literal: str) -> bytes:
    return f'{{"regions": [{{"referenceName": "chr1", "{key}": {literal}}}]}}'.encode()


json_literals = st.one_of(numbers, numbers.map(lambda n: "-" + n), st.sampled_from(
    ["1e400", "-1e400", "NaN", "Infinity", "5.0", "0e0", "1E2", "-0", "true", '"5"']))


@fuzz(150)
@given(body=st.one_of(
    st.builds(_nest, st.one_of(st.integers(0, 3000), st.sampled_from([10_000, 100_000])),
              st.sampled_from(["list", "object", "regions"]), st.booleans()),
    st.builds(_region_number, st.sampled_from(["start", "end"]), json_literals),
    st.integers(0, 5000).map(lambda n: b'{"fields": [' + b'"QNAME",' * n + b'"FLAG"]}'),
))
def test_post_nesting_and_numbers_never_500(client, body: bytes) -> None:
    resp = client.post("/reads/sample", data=body, content_type="application/json")
    check(resp)


@fuzz(150)
@given(name=st.sampled_from(["start", "end"]), value=numbers)
def test_get_integer_sizes_never_500(client, name: str, value: str) -> None:
    resp = client.get("/reads/sample", query_string={"referenceName": "chr1", name: value})
    check(resp)
    significant = value.lstrip("0")
    if len(significant) > 10 or int(significant or "0") >= 1 << 31:
        assert resp.status_code == 400


# --------------------------------------------------------------------------- file-system names

#: Characters of file names: any but "/", NUL and backslash (which a key may not hold),
#: surrogates (not UTF-8) and a leading dot (hidden files are not served)
name_chars = st.characters(exclude_categories=["Cs"], exclude_characters="/\\\x00")
names = st.one_of(
    st.text(name_chars, min_size=1, max_size=40),
    st.text(st.characters(codec="ascii", exclude_characters="/\\\x00"), min_size=1, max_size=8),
    st.integers(200, 300).map(lambda n: "n" * n),
    st.integers(60, 130).map(lambda n: "é" * n),  # two bytes each: around the 255-byte limit
).filter(lambda n: not n.startswith("."))


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


@pytest.fixture(scope="module")
def named_root(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("names")
    for ext in (".bam", ".bam.bai"):
        shutil.copy(data_dir / f"sample{ext}", root / f"seed{ext}")
    return root


@pytest.fixture(scope="module")
def named_client(named_root: Path):
    return create_app(for_data_dir(str(named_root))).test_client()


@fuzz(200)
@given(parts=st.lists(names, min_size=1, max_size=3))
def test_file_system_names(named_client, named_root: Path, parts: list[str]) -> None:
    """A file named by any name the file system takes (Unicode, control characters, near and
    past 255 bytes): its ticket names its bytes, or the ID is refused (control characters)
    or not found (too long), never a 5xx."""
    id = "/".join(parts)
    made = False
    try:
        folder = named_root.joinpath(*parts[:-1])
        folder.mkdir(parents=True, exist_ok=True)
        for ext in (".bam", ".bam.bai"):
            target = folder / f"{parts[-1]}{ext}"
            if not target.exists():
                os.link(named_root / f"seed{ext}", target)
        made = True
    except OSError as err:  # ENAMETOOLONG, or a name that is already a file
        assert err.errno in (36, 17, 20, 21), err
    url = quote(id, safe="/")
    resp = named_client.get(f"/reads/{url}?referenceName=chr1")
    check(resp)
    if "\n" in id:  # Flask's <path:...> matches a newline only as the first character
        assert resp.status_code in (400, 404)
        return
    if _has_control(id):
        assert resp.status_code == 400
        assert resp.get_json()["htsget"]["error"] == "InvalidInput"
        return
    if not made:
        assert resp.status_code == 404
        return
    assert resp.status_code == 200, resp.get_json()
    block = next(u for u in resp.get_json()["htsget"]["urls"] if not u["url"].startswith("data:"))
    path = block["url"].split("/data/", 1)[1]
    data = named_client.get(f"/data/{path}", headers=block.get("headers", {}))
    assert data.status_code in (200, 206)
    first = int(block["headers"]["Range"].split("=")[1].split("-")[0])
    assert data.data == (named_root / "seed.bam").read_bytes()[first:first + len(data.data)]


# --------------------------------------------------------------------------- gunicorn


@pytest.fixture(scope="module")
def raw_server(data_dir: Path) -> Iterator[Server]:
    """A server of its own, so that its log can be checked for tracebacks at the end. Its
    output is drained as it comes by conftest.Server (the long profile sends thousands of
    requests)."""
    port = free_port()
    srv = Server(["--data-dir", str(data_dir), "--port", str(port), "--workers", "1"], port)
    srv.start()
    yield srv
    log = srv.stop()
    assert "Traceback" not in log and "unhandled error" not in log, log[-4000:]


#: header values gunicorn lets through: no CR, LF or NUL
wire_text = st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n\x00"),
                    max_size=30)


def _wire(value: Optional[str]) -> Optional[bytes]:
    return None if value is None else value.encode("latin-1", "replace")


def _exchange(port: int, request: bytes) -> bytes:
    """Send `request`, half-close (a short body is seen as one, not waited for), read to EOF.
    A server that answers and closes before reading all of it (a 415 before the body, a
    413) makes TCP reset the connection: what arrived before counts."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        try:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
        except OSError as err:
            if err.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except ConnectionResetError:
            pass
    return out


@fuzz(60)
@given(method=st.sampled_from(["GET", "POST"]),
       path=st.sampled_from(["/reads/sample", "/variants/calls", "/data/sample.bam",
                             "/reads/x%00", "/reads/%ff", "/data/" + "x" * 300]),
       host=st.one_of(st.none(), wire_text, st.sampled_from(["127.0.0.1", "[::1", "a b"])),
       rng=st.one_of(st.none(), ranges.filter(lambda r: not re.search("[\r\n\x00]", r))),
       content_type=st.one_of(st.none(), wire_text, st.just("application/json")),
       length=st.one_of(st.none(), st.just("auto"), wire_text,
                        numbers.filter(lambda n: len(n) < 30)),
       body=st.one_of(st.sampled_from([b"", b"{}", b'{"referenceName": "chr1"}', b"[" * 20000,
                                       b'{"regions": [{"referenceName": "chr1", "end": 1e400}]}']),
                      st.binary(max_size=20)))
def test_raw_http_never_500(raw_server: Server, method: str, path: str, host: Optional[str],
                            rng: Optional[str], content_type: Optional[str],
                            length: Optional[str], body: bytes) -> None:
    """Bytes on the wire, as no client library would send them, to a real gunicorn. Its own
    refusals of malformed HTTP (a 400 page before the app runs) are not the app's to shape;
    everything the app answers is htsget JSON without a 5xx."""
    lines = [f"{method} {path} HTTP/1.1".encode()]
    lines.append(b"Host: " + (_wire(host) if host is not None else b"127.0.0.1"))
    for name, value in (("Range", rng), ("Content-Type", content_type)):
        if value is not None:
            lines.append(name.encode() + b": " + (_wire(value) or b""))
    if length == "auto":
        lines.append(b"Content-Length: %d" % len(body))
    elif length is not None:
        lines.append(b"Content-Length: " + (_wire(length) or b""))
    lines.append(b"Connection: close")
    request = b"\r\n".join(lines) + b"\r\n\r\n" + (body if method == "POST" else b"")
    out = _exchange(raw_server.port, request)
    # the server still answers a plain request at once: nothing above wedged a worker
    with socket.create_connection(("127.0.0.1", raw_server.port), timeout=10) as s:
        s.sendall(b"GET /reads/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert s.recv(12) == b"HTTP/1.1 200"
    assume(out)  # gunicorn may close without an answer on some broken requests
    head, _, payload = out.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    assert status < 500, out[:400]
    assert b"Traceback" not in out
    if headers.get(b"content-type") == b"text/html":  # gunicorn's own refusal
        assert status in (400, 414, 431), out[:300]
    elif status == 416:  # /data: an empty body and Content-Range: bytes */size
        assert headers[b"content-range"].startswith(b"bytes */"), out[:300]
    elif status >= 400:
        assert headers.get(b"content-type") == CT.encode(), out[:300]
        assert json.loads(payload)["htsget"]["error"] in ERRORS
