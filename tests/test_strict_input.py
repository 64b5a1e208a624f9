"""Strict input (issue 9): every POST key and JSON type checked, 415 for bodies that are not
JSON, and inputs that reach Python's or the OS's limits (huge integers, deep nesting, long
names, symlink loops, control characters, empty files) answered with a clean 4xx, or a
clean 500 naming the file where the data itself is corrupt, never a bare 500."""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import quote

import pytest
from conftest import Server, free_port

from htsgetr.api.data import parse_range
from htsgetr.app import create_app
from htsgetr.config import for_data_dir
from htsgetr.protocol import (
    Endpoint,
    InvalidInput,
    UnsupportedMediaType,
    is_json_media_type,
    parse_post,
)

CT = "application/vnd.ga4gh.htsget.v1.3.0+json"


@pytest.fixture(scope="module")
def client(data_dir: Path):
    return create_app(for_data_dir(str(data_dir))).test_client()


def assert_error(resp, status: int, error: str) -> str:
    """The response is htsget error JSON with this status and type; returns the message
    (bounded, except where it quotes the ID the client sent)."""
    text = resp.get_data().decode("utf-8", "replace")
    assert resp.status_code == status, text[:300]
    assert resp.content_type == CT
    body = json.loads(text)
    assert set(body) == {"htsget"} and set(body["htsget"]) == {"error", "message"}
    assert body["htsget"]["error"] == error, body
    message = body["htsget"]["message"]
    assert isinstance(message, str) and message
    assert "Traceback" not in text
    assert len(message) < 400 or error == "NotFound", message[:300]
    return message


def post(client, body: object, content_type: Optional[str] = "application/json",
         endpoint: str = "reads/sample"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": content_type} if content_type is not None else {}
    return client.post(f"/{endpoint}", data=data, headers=headers)


def whole_file(resp) -> None:
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    assert resp.get_json()["htsget"]["format"] == "BAM"


# --------------------------------------------------------------------------- POST keys


@pytest.mark.parametrize("body,named", [
    ({"referenceName": "chr1", "start": 5}, ["'referenceName'", "'start'", "regions"]),
    ({"referenceName": "chr1"}, ["'referenceName'"]),
    ({"end": 10}, ["'end'"]),
    ({"region": [{"referenceName": "chr1"}]}, ["'region'"]),
    ({"Format": "BAM"}, ["'Format'"]),
    ({"regions": [{"referenceName": "chr1"}], "x": 1}, ["'x'"]),
    ({"format": "BAM", "htsget": {}}, ["'htsget'"]),
    ({"": 1}, ["''"]),
    ({"k" * 5000: 1}, ["'kkkk"]),
    ({f"k{i}": 1 for i in range(50)}, ["'k0'", "and 45 more"]),
])
def test_unknown_top_level_key_is_named(client, body: dict, named: list[str]) -> None:
    """A misspelt or GET-style key used to be ignored, silently answering the whole file."""
    message = assert_error(post(client, body), 400, "InvalidInput")
    for part in named:
        assert part in message


@pytest.mark.parametrize("region,named", [
    ({"referenceName": "chr1", "begin": 5}, "'begin'"),
    ({"referenceName": "chr1", "Start": 5}, "'Start'"),
    ({"reference_name": "chr1"}, "'reference_name'"),
    ({"referenceName": "chr1", "regions": []}, "'regions'"),
])
def test_unknown_region_key_is_named(client, region: dict, named: str) -> None:
    message = assert_error(post(client, {"regions": [region]}), 400, "InvalidInput")
    assert named in message


@pytest.mark.parametrize("body", [
    {"regions": [{"referenceName": "chr1", "start": "5"}]},
    {"regions": [{"referenceName": "chr1", "end": "10"}]},
    {"regions": [{"referenceName": "chr1", "start": 5.0}]},
    {"regions": [{"referenceName": "chr1", "start": 5.5}]},
    {"regions": [{"referenceName": "chr1", "start": True}]},
    {"regions": [{"referenceName": "chr1", "end": False}]},
    {"regions": [{"referenceName": "chr1", "start": [5]}]},
    {"regions": [{"referenceName": "chr1", "start": {"v": 5}}]},
    {"regions": [{"referenceName": "chr1", "start": -1}]},
    {"regions": [{"referenceName": "chr1", "end": 1 << 31}]},
    {"regions": [{"referenceName": "chr1", "start": 10 ** 15}]},
    {"regions": [{"referenceName": 1}]},
    {"regions": [{"referenceName": ["chr1"]}]},
    {"regions": [{"referenceName": "chr1\x00"}]},
    {"regions": [["chr1", 0, 5]]},
    {"regions": ["chr1"]},
    {"regions": {"referenceName": "chr1"}},
    {"regions": "chr1"},
    {"regions": []},
    {"format": 5},
    {"format": ["BAM"]},
    {"format": True},
    {"class": True},
    {"class": ["header"]},
    {"fields": "QNAME,FLAG"},
    {"fields": [1]},
    {"fields": {"QNAME": True}},
    {"tags": "RG"},
    {"tags": [None]},
    {"notags": "OQ"},
    {"notags": [["OQ"]]},
    {"encryptionScheme": 1},
    {"encryptionScheme": ["c4gh"]},
])
def test_json_types_are_exact(client, body: dict) -> None:
    assert_error(post(client, body), 400, "InvalidInput")


def test_string_start_refused_in_post_but_not_in_get(client) -> None:
    """The same value is a string in a query string and an integer in JSON."""
    assert client.get("/reads/sample?referenceName=chr1&start=5&end=10").status_code == 200
    message = assert_error(post(client, {"regions": [{"referenceName": "chr1", "start": "5"}]}),
                           400, "InvalidInput")
    assert "start" in message and "integer" in message


@pytest.mark.parametrize("body", [
    {},
    {"format": "bam"},
    {"format": None, "class": None, "fields": None, "tags": None, "notags": None,
     "regions": None},
    {"encryptionScheme": "c4gh"},  # htsget-rs clients send it; ignored until Crypt4GH
    {"encryptionScheme": None},
    {"class": "body"},
    {"tags": [], "notags": ["OQ"]},
    {"fields": ["QNAME", "FLAG"], "tags": ["RG"]},
    {"regions": [{"referenceName": "chr1", "start": None, "end": None}]},
    {"regions": [{"referenceName": "chr1", "start": 0, "end": 1}, {"referenceName": "chr2"}]},
    # the spec's own example (minus references this file lacks)
    {"format": "bam", "fields": ["QNAME", "FLAG", "RNAME", "POS", "CIGAR", "SEQ"],
     "tags": ["RG"], "notags": ["OQ"],
     "regions": [{"referenceName": "chr1"}, {"referenceName": "chr2", "start": 999, "end": 1000},
                 {"referenceName": "chr2", "start": 2000, "end": 2100}]},
])
def test_valid_bodies_still_accepted(client, body: dict) -> None:
    resp = post(client, body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["htsget"]["format"] == "BAM"


def test_class_header_only_with_format(client) -> None:
    assert post(client, {"class": "header", "format": "BAM"}).status_code == 200
    assert_error(post(client, {"class": "header", "regions": [{"referenceName": "chr1"}]}),
                 400, "InvalidInput")


# --------------------------------------------------------------------------- strict JSON


@pytest.mark.parametrize("raw,says", [
    (b'{"regions": [{"referenceName": "chr1", "start": NaN}]}', "NaN"),
    (b'{"regions": [{"referenceName": "chr1", "end": Infinity}]}', "Infinity"),
    (b'{"regions": [{"referenceName": "chr1", "end": -Infinity}]}', "Infinity"),
    (b"NaN", "NaN"),
    (b'{"regions": [{"referenceName": "chr1", "start": 1e400}]}', "integer"),
    (b'{"regions": [{"referenceName": "chr1", "start": ' + b"9" * 5000 + b"}]}", "out of range"),
    (b'{"regions": [{"referenceName": "chr1", "start": -' + b"9" * 5000 + b"}]}", "out of range"),
    (b'{"format": "BAM", "format": "CRAM"}', "duplicate key 'format'"),
    (b'{"regions": [{"referenceName": "chr1", "referenceName": "chr2"}]}', "duplicate key"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"a":' * 100_000, "nested too deeply"),
    (b'{"regions": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deeply"),
    (b'{"format": "B\xe9M"}', "not UTF-8"),  # latin-1
    ('{"format": "BAM"}'.encode("utf-16"), "not UTF-8"),
    (b"\xef\xbb\xbf{}", "not valid JSON"),  # a BOM (RFC 8259: MUST NOT be added)
    (b"{} {}", "not valid JSON"),
    (b'{"format": "BAM"', "not valid JSON"),
    (b"\x00", "not valid JSON"),
])
def test_strict_json(client, raw: bytes, says: str) -> None:
    message = assert_error(post(client, raw), 400, "InvalidInput")
    assert says in message


def test_nesting_below_the_limit_is_a_type_error(client) -> None:
    body = b'{"regions": ' + b"[" * 500 + b"]" * 500 + b"}"
    assert "JSON object" in assert_error(post(client, body), 400, "InvalidInput")


def test_big_but_bounded_integers(client) -> None:
    """Integers are converted once their size is known: 12 digits reach InvalidInput's
    range check, leading zeros do not count."""
    body = b'{"regions": [{"referenceName": "chr1", "start": 999999999999}]}'
    assert "between 0 and" in assert_error(post(client, body), 400, "InvalidInput")
    assert post(client, {"regions": [{"referenceName": "chr1", "start": 0, "end": 5}]}
                ).status_code == 200


def test_lone_surrogates(client) -> None:
    body = b'{"regions": [{"referenceName": "\\ud800"}]}'
    assert "invalid Unicode" in assert_error(post(client, body), 400, "InvalidInput")
    assert_error(post(client, b'{"format": "\\udfff"}'), 400, "UnsupportedFormat")


def test_parse_post_without_flask() -> None:
    """The same rules hold for the public Python API (Lambda, CLI)."""
    with pytest.raises(InvalidInput, match="'referenceName'"):
        parse_post(Endpoint.READS, "x", b'{"referenceName": "chr1"}', False)
    with pytest.raises(UnsupportedMediaType):
        parse_post(Endpoint.READS, "x", b"{}", False, "text/plain")
    with pytest.raises(UnsupportedMediaType):
        parse_post(Endpoint.READS, "x", b"{}", False, None)
    q = parse_post(Endpoint.READS, "x", b"", False, None)
    assert q.regions is None
    q = parse_post(Endpoint.VARIANTS, "x", b'{"regions": [{"referenceName": "1", "end": 5}]}',
                   False)
    assert q.regions is not None and q.regions[0].end == 5


# --------------------------------------------------------------------------- Content-Type


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
    "application/json;charset=UTF-8", " application/json ", "application/vnd.ga4gh.htsget+json",
    "application/problem+json; q=1",
])
def test_json_content_types_accepted(client, content_type: str) -> None:
    assert is_json_media_type(content_type)
    whole_file(post(client, {"format": "BAM"}, content_type))


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/json", "application/x-www-form-urlencoded", "multipart/form-data",
    "application/jsonx", "application/+json", "application/json-seq", "json", "application",
    "application/xml", "*/*", "application/*", "\x7f", "é/json",
])
def test_other_content_types_are_415(client, content_type: str) -> None:
    assert not is_json_media_type(content_type)
    message = assert_error(post(client, {"format": "BAM"}, content_type), 415,
                           "UnsupportedMediaType")
    assert "application/json" in message
    # refused before the body is read or parsed: an empty or broken body changes nothing
    assert_error(post(client, b"", content_type), 415, "UnsupportedMediaType")
    assert_error(post(client, b"{not json", content_type), 415, "UnsupportedMediaType")


def test_empty_body(client) -> None:
    """The spec makes every POST key optional: an empty body means `{}`, the whole file,
    with a JSON Content-Type or with none (`curl -X POST`, `requests.post(url)`). A body
    without a Content-Type is refused: nothing says it is JSON."""
    whole_file(client.post("/reads/sample"))
    whole_file(post(client, b"", None))
    whole_file(post(client, b"  \r\n", None))
    whole_file(post(client, b""))
    whole_file(post(client, b"{}"))
    assert_error(post(client, b"{}", None), 415, "UnsupportedMediaType")
    assert_error(post(client, b'{"format": "BAM"}', ""), 415, "UnsupportedMediaType")


def test_query_string_refused_before_content_type(client) -> None:
    assert_error(post(client, b"{}", content_type="application/json",
                      endpoint="reads/sample?format=BAM"), 400, "InvalidInput")


def test_werkzeug_statuses_keep_htsget_names(data_dir: Path) -> None:
    from flask import abort

    app = create_app(for_data_dir(str(data_dir)))
    app.add_url_rule("/_abort/<int:code>", "abort", lambda code: abort(code))
    client = app.test_client()
    assert_error(client.get("/_abort/415"), 415, "UnsupportedMediaType")
    assert_error(client.get("/_abort/413"), 413, "PayloadTooLarge")
    assert_error(client.get("/_abort/400"), 400, "InvalidInput")


# --------------------------------------------------------------------------- GET numbers


@pytest.mark.parametrize("query,status,error", [
    ("referenceName=chr1&start=" + "9" * 5000, 400, "InvalidInput"),
    ("referenceName=chr1&end=" + "9" * 10000, 400, "InvalidInput"),
    ("referenceName=chr1&start=9999999999999", 400, "InvalidInput"),
    ("referenceName=chr1&start=%D9%A1%D9%A2", 400, "InvalidInput"),  # Arabic-Indic "12"
    ("referenceName=chr1&start=%C2%B2", 400, "InvalidInput"),  # superscript two
    ("referenceName=chr1%00", 400, "InvalidInput"),
    ("referenceName=chr1%0A", 400, "InvalidInput"),
    ("referenceName=%ff%fe", 404, "NotFound"),  # invalid UTF-8: no such reference
    ("referenceName=chr1&start=%ff", 400, "InvalidInput"),
    ("referenceName=chr1&format=%ff", 400, "UnsupportedFormat"),
])
def test_get_numbers_and_names(client, query: str, status: int, error: str) -> None:
    assert_error(client.get(f"/reads/sample?{query}"), status, error)


def test_get_leading_zeros_are_one_number(client) -> None:
    resp = client.get("/reads/sample?referenceName=chr1&start=" + "0" * 5000 + "5&end=10")
    assert resp.status_code == 200


# --------------------------------------------------------------------------- Range


@pytest.mark.parametrize("header,expect", [
    ("bytes=" + "9" * 10000 + "-", (-1, -1)),
    ("bytes=99999999999999999999999-", (-1, -1)),
    ("bytes=" + "9" * 5000 + "-" + "9" * 5000, (-1, -1)),
    ("bytes=0-" + "9" * 5000, (0, 100)),
    ("bytes=10-99999999999999999999999", (10, 100)),
    ("bytes=-" + "9" * 5000, (0, 100)),
    ("bytes=" + "0" * 5000 + "5-" + "0" * 5000 + "9", (5, 10)),
    ("bytes=-" + "0" * 5000, (-1, -1)),
    ("bytes=\u0661\u0662-", None),  # Arabic-Indic digits are not DIGIT (RFC 9110)
    ("bytes=\uff11-\uff12", None),  # fullwidth
    ("bytes=1-2\n", (1, 3)),
    ("bytes=1-2\nx", None),
    ("bytes=1-2,3-4", None),
    ("bytes=5-1", None),
])
def test_parse_range_limits(header: str, expect: Optional[tuple[int, int]]) -> None:
    assert parse_range(header, 100) == expect


@pytest.mark.parametrize("header,status", [
    ("bytes=" + "9" * 10000 + "-", 416),
    ("bytes=-" + "9" * 5000, 206),
    ("bytes=0-" + "9" * 5000, 206),
    ("bytes=\u0661\u0662-", 200),
])
def test_data_range_limits(client, data_dir: Path, header: str, status: int) -> None:
    raw = (data_dir / "sample.bam").read_bytes()
    resp = client.get("/data/sample.bam", headers={"Range": header})
    assert resp.status_code == status
    if status in (200, 206):
        assert resp.data == raw


# --------------------------------------------------------------------------- IDs and names


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\x1b", "\x1f", "\x7f", "\x85", "\x9f"])
def test_control_characters_in_ids(client, char: str) -> None:
    id = quote(f"sam{char}ple", safe="")
    assert "control character" in assert_error(client.get(f"/reads/{id}"), 400, "InvalidInput")
    assert_error(client.post(f"/reads/{id}", json={}), 400, "InvalidInput")
    resp = client.get(f"/data/{id}.bam")
    assert_error(resp, 404, "NotFound")


@pytest.fixture(scope="module")
def odd_root(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Names at the file system's limits, loops, empty and truncated files."""
    root = tmp_path_factory.mktemp("odd")
    bam = (data_dir / "sample.bam").read_bytes()
    bai = (data_dir / "sample.bam.bai").read_bytes()
    for name in ("ünïcödé", "名前", "x" * 247):  # with ".bam.bai": 255 bytes, the limit
        (root / f"{name}.bam").write_bytes(bam)
        (root / f"{name}.bam.bai").write_bytes(bai)
    os.symlink("loop2.bam", root / "loop1.bam")
    os.symlink("loop1.bam", root / "loop2.bam")
    os.symlink("loop1.bam.bai", root / "loop2.bam.bai")
    os.symlink("loop2.bam.bai", root / "loop1.bam.bai")
    os.symlink(".", root / "self")
    os.symlink("spin", root / "spin")  # a link to itself, used as a directory
    (root / "dir.bam").mkdir()
    (root / "empty.bam").write_bytes(b"")
    (root / "empty.bam.bai").write_bytes(bai)
    (root / "emptyidx.bam").write_bytes(b"")
    (root / "emptyidx.bam.bai").write_bytes(b"")
    (root / "trunc.bam").write_bytes(bam[:30])
    (root / "trunc.bam.bai").write_bytes(bai)
    vcf = (data_dir / "calls.vcf.gz").read_bytes()
    tbi = (data_dir / "calls.vcf.gz.tbi").read_bytes()
    (root / "trunc.vcf.gz").write_bytes(vcf[:100])
    (root / "trunc.vcf.gz.tbi").write_bytes(tbi)
    (root / "empty.vcf.gz").write_bytes(b"")
    (root / "empty.vcf.gz.tbi").write_bytes(tbi)
    return root


@pytest.fixture(scope="module")
def odd(odd_root: Path):
    return create_app(for_data_dir(str(odd_root))).test_client()


@pytest.mark.parametrize("id", ["ünïcödé", "名前", "x" * 247])
def test_unicode_and_long_names_that_exist(odd, id: str) -> None:
    """The control-character check leaves ordinary Unicode alone."""
    resp = odd.get(f"/reads/{quote(id)}?referenceName=chr1")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    resp = odd.get(f"/data/{quote(id)}.bam", headers={"Range": "bytes=0-3"})
    assert resp.data == b"\x1f\x8b\x08\x04"


@pytest.mark.parametrize("id", [
    "x" * 256, "x" * 300, "x" * 5000, "a/" + "x" * 300 + "/b", "/".join(["d"] * 3000),
    "ü" * 200,  # 400 bytes in UTF-8
    "loop1", "loop2", "self/" * 50 + "loop1", "spin/x", "self/" * 200 + "x",
    "dir", "caf\u00e9", "\ufffd",
])
def test_names_past_the_os_limits_are_not_found(odd, id: str) -> None:
    """ENAMETOOLONG, ELOOP, ENOTDIR and friends are 404s, never a bare 500."""
    assert_error(odd.get(f"/reads/{quote(id)}"), 404, "NotFound")
    assert_error(odd.get(f"/reads/{quote(id)}?referenceName=chr1"), 404, "NotFound")
    assert_error(odd.get(f"/data/{quote(id)}.bam"), 404, "NotFound")
    assert_error(odd.get(f"/data/{quote(id)}.bam.bai"), 404, "NotFound")
    assert_error(odd.get(f"/data/{quote(id)}"), 404, "NotFound")


@pytest.mark.parametrize("id,endpoint,query", [
    ("empty", "reads", ""), ("empty", "reads", "?referenceName=chr1"),
    ("emptyidx", "reads", "?referenceName=chr1"), ("trunc", "reads", "?referenceName=chr1"),
    ("trunc", "variants", "?referenceName=1"), ("trunc", "variants", ""),
])
def test_empty_and_truncated_files_are_clean_errors(odd, id: str, endpoint: str,
                                                    query: str) -> None:
    """Corrupt data may be a 500, but an InternalError naming the file, no traceback."""
    resp = odd.get(f"/{endpoint}/{id}{query}")
    assert resp.status_code in (404, 500), resp.get_data(as_text=True)
    message = assert_error(resp, resp.status_code,
                           "NotFound" if resp.status_code == 404 else "InternalError")
    assert id in message


def test_empty_vcf_is_a_clean_error(odd) -> None:
    resp = odd.get("/variants/empty")
    assert "empty.vcf.gz" in assert_error(resp, 500, "InternalError")


def test_empty_file_over_data(odd) -> None:
    resp = odd.get("/data/empty.bam")
    assert resp.status_code == 200 and resp.data == b""
    resp = odd.get("/data/empty.bam", headers={"Range": "bytes=0-"})
    assert resp.status_code == 416 and resp.headers["Content-Range"] == "bytes */0"


@pytest.mark.parametrize("code,status", [
    (errno.EACCES, 500), (errno.EIO, 500), (errno.EMFILE, 500),
    (errno.ENAMETOOLONG, 404), (errno.ELOOP, 404), (errno.ENOTDIR, 404),
])
def test_os_errors_on_local_files(odd_root: Path, monkeypatch: pytest.MonkeyPatch,
                                  code: int, status: int) -> None:
    """A name that cannot be a file is a 404; any other OSError is a storage fault: a clean
    500 naming the key, never the server's own path (root, as tests often run, reads files
    whatever their mode, so the errors are injected)."""
    real_stat, real_open = os.stat, open

    def failing(real):
        def call(path, *args, **kw):
            if "ünïcödé" in os.fspath(path):
                raise OSError(code, os.strerror(code), os.fspath(path))
            return real(path, *args, **kw)
        return call

    client = create_app(for_data_dir(str(odd_root))).test_client()
    ticket = "/reads/%C3%BCn%C3%AFc%C3%B6d%C3%A9?referenceName=chr1"
    data = "/data/%C3%BCn%C3%AFc%C3%B6d%C3%A9.bam"
    with monkeypatch.context() as patch:  # a file that stats but does not open (mode 000)
        patch.setattr("builtins.open", failing(real_open))
        resps = [client.get(ticket)]
    with monkeypatch.context() as patch:  # a file that does not even stat
        patch.setattr("htsgetr.storage.local.os.stat", failing(real_stat))
        resps.append(client.get(data))
    for resp in resps:
        if status == 500:
            assert "ünïcödé" in assert_error(resp, 500, "InternalError")
            assert str(odd_root) not in resp.get_data(as_text=True)
        else:
            assert_error(resp, 404, "NotFound")


# --------------------------------------------------------------------------- gunicorn


@pytest.fixture(scope="module")
def odd_server(odd_root: Path) -> Iterator[Server]:
    port = free_port()
    srv = Server(["--data-dir", str(odd_root), "--port", str(port), "--workers", "1"], port)
    srv.start()
    yield srv
    log = srv.stop()
    assert "Traceback" not in log, log[-3000:]


def raw_request(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send bytes as they are (no client library tidies them) and read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def assert_raw_error(resp: tuple[int, dict, bytes], status: int, error: str) -> None:
    code, headers, body = resp
    assert code == status, body[:300]
    assert headers["content-type"] == CT
    assert json.loads(body)["htsget"]["error"] == error
    assert b"Traceback" not in body


def _post(path: str, body: bytes, extra: bytes = b"",
          content_type: bytes = b"application/json") -> bytes:
    return (b"POST " + quote(path).encode() + b" HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nConnection: close\r\nContent-Type: " + content_type + b"\r\n"
            + extra
            + (b"" if b"Transfer-Encoding" in extra else b"Content-Length: %d\r\n" % len(body))
            + b"\r\n" + body)


def _get(path: bytes, extra: bytes = b"") -> bytes:
    return (b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + extra + b"\r\n")


def test_under_gunicorn(odd_server: Server) -> None:
    """What only a real server shows: gunicorn's body reader raising mid-read, deep nesting
    on a worker thread's stack, raw bytes no client library would send."""
    port = odd_server.port
    bad_chunks = b"Transfer-Encoding: chunked\r\n"
    assert_raw_error(raw_request(port, _post("/reads/ünïcödé", b"zz\r\n{}\r\n0\r\n\r\n",
                                             bad_chunks)), 400, "InvalidInput")
    assert_raw_error(raw_request(port, _post("/reads/ünïcödé", b"[" * 200_000)),
                     400, "InvalidInput")
    assert_raw_error(raw_request(port, _post("/reads/ünïcödé", b'{"referenceName": "chr1"}')),
                     400, "InvalidInput")
    assert_raw_error(raw_request(port, _post("/reads/ünïcödé", b"{}", content_type=b"\xff")),
                     415, "UnsupportedMediaType")
    assert_raw_error(raw_request(port, _post("/reads/ünïcödé", b"{}",
                                             content_type=b"text/plain")),
                     415, "UnsupportedMediaType")
    assert_raw_error(raw_request(port, _get(b"/reads/x%00")), 400, "InvalidInput")
    assert_raw_error(raw_request(port, _get(b"/reads/%ff%fe")), 404, "NotFound")
    assert_raw_error(raw_request(port, _get(b"/data/" + b"x" * 300 + b".bam")), 404, "NotFound")
    assert_raw_error(raw_request(port, _get(b"/data/loop1.bam")), 404, "NotFound")
    assert_raw_error(raw_request(port, _get(b"/reads/loop1")), 404, "NotFound")
    code, headers, _ = raw_request(port, _get(b"/data/x%C3%BC.bam"))
    assert code == 404
    code, headers, _ = raw_request(port, _get(b"/data/empty.bam", b"Range: bytes="
                                              + b"9" * 7000 + b"-\r\n"))
    assert code == 416 and headers["content-range"] == "bytes */0"
    code, headers, body = raw_request(port, _get(b"/data/%C3%BCn%C3%AFc%C3%B6d%C3%A9.bam",
                                                 b"Range: bytes=-" + b"9" * 7000 + b"\r\n"))
    assert code == 206 and body[:4] == b"\x1f\x8b\x08\x04"
    # the worker is still there and well
    code, _, body = raw_request(port, _get(b"/reads/%C3%BCn%C3%AFc%C3%B6d%C3%A9"))
    assert code == 200 and json.loads(body)["htsget"]["format"] == "BAM"
