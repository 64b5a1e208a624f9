"""htsgetr.aws_lambda: API Gateway REST (v1), HTTP API (v2) and function-URL events through
`ticket_handler` / `data_handler`, in process, against a real `htsgetr serve` given the same
configuration and the same request.

Tickets are compared block by block once each side's base url is taken off (the Lambda's
must be the API's public https url with its stage): the same formats, classes, Range
headers, /data paths and inline payloads. Tickets are then reassembled through the data
handler (or S3, presigned, on a moto server process) and must hold exactly htslib's records.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests
from conftest import (
    SHARED_DATA,
    Server,
    assert_ticket_records,
    fetch_block,
    free_port,
    shared,
)

from htsgetr.formats import bgzf

aws_lambda = pytest.importorskip("htsgetr.aws_lambda")
pytest.importorskip("apig_wsgi")

EVENTS = SHARED_DATA / "events"
REST_DOMAIN = "70ixmpl4fl.execute-api.us-east-2.amazonaws.com"
HTTP_DOMAIN = "a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com"
URL_DOMAIN = "abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-1.on.aws"


# --------------------------------------------------------------------------- configuration


@pytest.fixture(scope="module")
def lambda_config(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """One file for the server and the functions: the sample events' IDs (`1-vcf/...`, as
    htsget-rs's examples name them) and the generated data (IDs `gen/...`)."""
    path = tmp_path_factory.mktemp("lambda") / "htsgetr.toml"
    text = f"""
[[locations]]
regex = '^gen/(.*)$'
substitution = "$1"
root = "{data_dir}"
"""
    if (SHARED_DATA / "vcf").is_dir():
        text += f"""
[[locations]]
regex = '^1-vcf/(.*)$'
substitution = "$1"
root = "{SHARED_DATA / 'vcf'}"

[[locations]]
regex = '^bam/(.*)$'
substitution = "$1"
root = "{SHARED_DATA / 'bam'}"
"""
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def server(lambda_config: Path) -> Iterator[Server]:
    port = free_port()
    srv = Server(["--config", str(lambda_config), "--port", str(port)], port)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def functions(lambda_config: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The module as a fresh container sees it: HTSGET_CONFIG set, nothing built yet."""
    for var in ("HTSGET_STORAGE", "HTSGET_DATA_DIR", "HTSGET_BASE_URL", "LAMBDA_TASK_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTSGET_CONFIG", str(lambda_config))
    aws_lambda.reset()
    yield aws_lambda
    aws_lambda.reset()


# --------------------------------------------------------------------------- events


def v2_event(method: str, path: str, query: str = "", body: Optional[bytes] = None,
             stage: str = "$default", domain: str = HTTP_DOMAIN,
             headers: Optional[dict[str, str]] = None, base64_body: bool = False
             ) -> dict[str, Any]:
    """An HTTP API (payload 2.0) event; with `domain` a lambda-url one, a function URL's.
    `path` is what the client asked for (the stage prefix included, as API Gateway sends)."""
    hdrs = {"host": domain, "x-forwarded-proto": "https", "x-forwarded-port": "443",
            "x-forwarded-for": "198.51.100.7", "user-agent": "test"}
    hdrs.update({k.lower(): v for k, v in (headers or {}).items()})
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": hdrs,
        "requestContext": {
            "accountId": "123456789012", "apiId": domain.split(".")[0],
            "domainName": domain, "domainPrefix": domain.split(".")[0],
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "198.51.100.7", "userAgent": "test"},
            "requestId": "id", "routeKey": "$default", "stage": stage,
            "time": "12/Mar/2020:19:03:58 +0000", "timeEpoch": 1583348638390,
        },
        "isBase64Encoded": base64_body,
    }
    if query:
        event["queryStringParameters"] = dict(parse_qsl(query))
    if body is not None:
        event["body"] = base64.b64encode(body).decode() if base64_body else body.decode()
    return event


def event_from_url(url: str, headers: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """The v2 event an HTTP API (stage from the url's first segment when it is not a route)
    hands the data function for a GET of `url`."""
    parts = urlsplit(url)
    first = parts.path.split("/")[1]
    stage = "$default" if first in ("data", "reads", "variants", "sequences") else first
    return v2_event("GET", parts.path, parts.query, stage=stage, domain=parts.netloc,
                    headers=headers)


def response_body(resp: dict[str, Any]) -> bytes:
    body = resp.get("body") or ""
    return base64.b64decode(body) if resp.get("isBase64Encoded") else body.encode()


def response_headers(resp: dict[str, Any]) -> dict[str, str]:
    if "multiValueHeaders" in resp:
        return {k.lower(): v[-1] for k, v in resp["multiValueHeaders"].items()}
    return {k.lower(): v for k, v in (resp.get("headers") or {}).items()}


def lambda_fetch(block: dict[str, Any], functions: Any) -> bytes:
    """One ticket block as a client gets it from the Lambda deployment: inline, or a GET
    of its url answered by the data function."""
    url = block["url"]
    if url.startswith("data:") or not url.startswith("https://"):
        return fetch_block(block)
    resp = functions.data_handler(event_from_url(url, block.get("headers")), None)
    assert resp["statusCode"] in (200, 206), resp
    data = response_body(resp)
    rng = (block.get("headers") or {}).get("Range")
    if rng:
        first, last = rng.split("=")[1].split("-")
        assert len(data) == int(last) - int(first) + 1
    return data


def comparable(ticket: dict[str, Any], base: str) -> list[dict[str, Any]]:
    """The ticket's blocks with `base` taken off every url (which must start with it unless
    inline), so two deployments' tickets compare."""
    out = []
    for block in ticket["htsget"]["urls"]:
        block = dict(block)
        if not block["url"].startswith("data:"):
            assert block["url"].startswith(base + "/data/"), (block["url"], base)
            block["url"] = block["url"][len(base):]
        out.append(block)
    return out


def differences(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> str:
    """Where two tickets' blocks differ; for inline BGZF blocks also their sizes, ISIZE and
    CRC32 (the same ISIZE and CRC32: the same bytes compressed two ways; else other bytes)."""
    def blocks(url: str) -> list[tuple[int, int, int]]:
        raw = base64.b64decode(url.split(",", 1)[1]) if url.startswith("data:") else b""
        out, pos = [], 0
        while pos + 18 <= len(raw) and raw[pos:pos + 4] == b"\x1f\x8b\x08\x04":
            size = bgzf.block_size(raw[pos:pos + 64])
            crc, isize = struct.unpack_from("<II", raw, pos + size - 8)
            out.append((size, isize, crc))
            pos += size
        return out

    lines = [f"{len(got)} blocks against {len(want)}"]
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            lines.append(f"block {i}: {a.get('class')} {a['url'][:30]}... (size, ISIZE, CRC32) "
                         f"{blocks(a['url'])} against {b.get('class')} {b['url'][:30]}... "
                         f"{blocks(b['url'])}")
    return "; ".join(lines)


def server_answer(server: Server, method: str, path: str, query: dict[str, str],
                  body: Optional[bytes], content_type: Optional[str]) -> requests.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return requests.request(method, server.url + path, params=query, data=body,
                            headers=headers, timeout=30)


# --------------------------------------------------------------------------- the sample events


SAMPLE_EVENTS = sorted(p.name for p in EVENTS.glob("*.json")) if EVENTS.is_dir() else []


@pytest.mark.parametrize("name", SAMPLE_EVENTS or ["(no events)"])
def test_sample_rest_events_match_the_server(name: str, functions: Any, server: Server,
                                             tmp_path: Path) -> None:
    event = json.loads(shared("events", name).read_text())
    resp = functions.ticket_handler(event, None)
    assert resp["isBase64Encoded"] is False  # JSON stays text
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    body = event.get("body")
    answer = server_answer(server, event["httpMethod"], event["path"],
                           event.get("queryStringParameters") or {},
                           body.encode() if body else None, headers.get("content-type"))
    assert resp["statusCode"] == answer.status_code, (resp["body"][:300], answer.text[:300])
    got = json.loads(resp["body"])
    want = answer.json()
    assert response_headers(resp)["content-type"] == answer.headers["Content-Type"]
    if "urls" not in got.get("htsget", {}):
        assert got == want  # service-info, errors: the same document
        return
    # REST API on its execute-api domain: the stage is part of the public url
    base = f"https://{REST_DOMAIN}/Prod"
    mine, theirs = comparable(got, base), comparable(want, server.url)
    assert mine == theirs, differences(mine, theirs)
    assert got["htsget"]["format"] == want["htsget"]["format"]
    payload = b"".join(lambda_fetch(b, functions) for b in got["htsget"]["urls"])
    path = shared("vcf", "sample1-bcbio-cancer.vcf.gz")
    regions = None
    doc = json.loads(body) if body else {}
    if doc.get("regions"):
        regions = [(r["referenceName"], r.get("start"), r.get("end")) for r in doc["regions"]]
    klass = (event.get("queryStringParameters") or {}).get("class") or doc.get("class")
    if klass == "header":
        regions = []
    assert_ticket_records(payload, tmp_path, path, regions)


# --------------------------------------------------------------------------- v2 and function URLs


CASES = [
    # (endpoint, id, query, file under data_dir, regions)
    ("reads", "gen/sample", {"referenceName": "chr1", "start": "5000", "end": "120000"},
     "sample.bam", [("chr1", 5000, 120000)]),
    ("reads", "gen/nested/deep/other", {"referenceName": "chr2"}, "nested/deep/other.bam",
     [("chr2", None, None)]),
    ("variants", "gen/calls", {"referenceName": "1", "start": "1000"},
     "calls.vcf.gz", [("1", 1000, None)]),
    ("variants", "gen/calls", {"format": "BCF", "referenceName": "2"}, "calls.bcf",
     [("2", None, None)]),
    ("reads", "gen/sample", {}, "sample.bam", None),
]


@pytest.mark.parametrize("shape", ["http-api-stage", "http-api-default", "function-url"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[3]}-{len(c[2])}")
def test_v2_events_match_the_server(shape: str, case: tuple, functions: Any, server: Server,
                                    data_dir: Path, tmp_path: Path) -> None:
    endpoint, ident, query, name, regions = case
    path = f"/{endpoint}/{ident}"
    stage, domain, prefix = {
        "http-api-stage": ("prod", HTTP_DOMAIN, "/prod"),
        "http-api-default": ("$default", HTTP_DOMAIN, ""),
        "function-url": ("$default", URL_DOMAIN, ""),
    }[shape]
    event = v2_event("GET", prefix + path, urlencode(query), stage=stage, domain=domain)
    resp = functions.ticket_handler(event, None)
    answer = server_answer(server, "GET", path, query, None, None)
    assert resp["statusCode"] == answer.status_code == 200, resp["body"][:300]
    got = json.loads(response_body(resp))
    want = answer.json()
    blocks = comparable(got, f"https://{domain}{prefix}")
    assert blocks == comparable(want, server.url)
    if endpoint == "reads":  # (the small VCFs' region tickets are all inline)
        assert any(b["url"].startswith("/data/") for b in blocks)  # the data function serves
    payload = b"".join(lambda_fetch(b, functions) for b in got["htsget"]["urls"])
    assert payload == b"".join(fetch_block(b) for b in want["htsget"]["urls"])
    assert_ticket_records(payload, tmp_path, data_dir / name, regions)


def test_post_with_a_base64_body(functions: Any, server: Server, data_dir: Path,
                                 tmp_path: Path) -> None:
    """HTTP APIs hand over some bodies base64-encoded: decoded before the app sees them."""
    doc = {"format": "BAM", "regions": [{"referenceName": "chr1", "start": 0, "end": 40000},
                                        {"referenceName": "chr2", "start": 10000}]}
    body = json.dumps(doc).encode()
    event = v2_event("POST", "/prod/reads/gen/sample", body=body, stage="prod",
                     headers={"Content-Type": "application/json"}, base64_body=True)
    resp = functions.ticket_handler(event, None)
    assert resp["statusCode"] == 200, resp["body"]
    answer = server_answer(server, "POST", "/reads/gen/sample", {}, body, "application/json")
    got = json.loads(response_body(resp))
    assert comparable(got, f"https://{HTTP_DOMAIN}/prod") == comparable(answer.json(),
                                                                          server.url)
    payload = b"".join(lambda_fetch(b, functions) for b in got["htsget"]["urls"])
    assert_ticket_records(payload, tmp_path, data_dir / "sample.bam",
                          [("chr1", 0, 40000), ("chr2", 10000, None)])


# --------------------------------------------------------------------------- the data function


def test_data_handler_returns_the_range_base64(functions: Any, data_dir: Path) -> None:
    raw = (data_dir / "sample.bam").read_bytes()
    event = v2_event("GET", "/prod/data/sample.bam", stage="prod",
                     headers={"Range": "bytes=1000-70999"})
    resp = functions.data_handler(event, None)
    assert resp["statusCode"] == 206
    assert resp["isBase64Encoded"] is True
    assert base64.b64decode(resp["body"]) == raw[1000:71000]
    headers = response_headers(resp)
    assert headers["content-range"] == f"bytes 1000-70999/{len(raw)}"
    assert "content-encoding" not in headers
    # the same through a REST API (v1) event, binary support on
    v1 = {"httpMethod": "GET", "path": "/data/sample.bam", "headers": {"Range": "bytes=0-99"},
          "multiValueHeaders": None, "queryStringParameters": None, "body": None,
          "requestContext": {"stage": "Prod", "domainName": REST_DOMAIN,
                             "path": "/Prod/data/sample.bam"}}
    resp = functions.data_handler(v1, None)
    assert resp["statusCode"] == 206 and resp["isBase64Encoded"] is True
    assert base64.b64decode(resp["body"]) == raw[:100]


def test_each_function_serves_only_its_endpoints(functions: Any) -> None:
    resp = functions.data_handler(v2_event("GET", "/reads/gen/sample"), None)
    assert resp["statusCode"] == 404
    assert json.loads(resp["body"])["htsget"]["error"] == "NotFound"
    resp = functions.ticket_handler(v2_event("GET", "/data/sample.bam"), None)
    assert resp["statusCode"] == 404
    # a file no ticket can name is not served
    resp = functions.data_handler(v2_event("GET", "/data/../etc/passwd"), None)
    assert resp["statusCode"] in (400, 403, 404)


def test_user_mistakes_are_htsget_errors(functions: Any) -> None:
    cases = [
        (v2_event("GET", "/reads/gen/nope"), 404, "NotFound"),
        (v2_event("GET", "/reads/gen/sample", "referenceName=chr1&start=9&end=3"), 400,
         "InvalidRange"),
        (v2_event("POST", "/reads/gen/sample", body=b"{not json",
                  headers={"Content-Type": "application/json"}), 400, "InvalidInput"),
    ]
    for event, status, error in cases:
        resp = functions.ticket_handler(event, None)
        assert resp["statusCode"] == status, resp
        assert json.loads(resp["body"])["htsget"]["error"] == error


def test_the_app_is_built_once_per_container(functions: Any) -> None:
    for _ in range(3):
        for shape in ({"stage": "prod"}, {}):
            path = "/prod/reads/gen/sample" if shape else "/reads/gen/sample"
            assert functions.ticket_handler(v2_event("GET", path, **shape), None)[
                "statusCode"] == 200
            functions.data_handler(v2_event("GET", "/data/sample.bam",
                                            headers={"Range": "bytes=0-9"}), None)
    # one app per public base url (with and without the stage) and one data app, reused
    assert functions._ticket.builds == 2
    assert functions._data.builds == 1
    config = functions._ticket.config
    functions.ticket_handler(v2_event("GET", "/reads/gen/sample"), None)
    assert functions._ticket.config is config


def test_configured_base_url_wins(functions: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTSGET_BASE_URL", "https://htsget.example.org/v1")
    resp = functions.ticket_handler(
        v2_event("GET", "/prod/reads/gen/sample", "referenceName=chr1", stage="prod"), None)
    urls = [b["url"] for b in json.loads(resp["body"])["htsget"]["urls"]]
    assert any(u.startswith("https://htsget.example.org/v1/data/") for u in urls)
    assert not any(HTTP_DOMAIN in u for u in urls)


def test_bundled_config_file(lambda_config: Path, monkeypatch: pytest.MonkeyPatch,
                             tmp_path: Path) -> None:
    """HTSGET_CONFIG unset: `htsgetr.toml` in the code directory; relative HTSGET_CONFIG
    names a file there too."""
    (tmp_path / "htsgetr.toml").write_text(lambda_config.read_text())
    (tmp_path / "other.toml").write_text(lambda_config.read_text())
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(tmp_path))
    for config in (None, "other.toml"):
        if config is None:
            monkeypatch.delenv("HTSGET_CONFIG", raising=False)
        else:
            monkeypatch.setenv("HTSGET_CONFIG", config)
        aws_lambda.reset()
        resp = aws_lambda.ticket_handler(v2_event("GET", "/reads/gen/sample"), None)
        assert resp["statusCode"] == 200, resp["body"]
    aws_lambda.reset()


def test_no_location_is_a_logged_500_not_the_code_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        data_dir: Path) -> None:
    for var in ("HTSGET_CONFIG", "HTSGET_STORAGE", "HTSGET_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LAMBDA_TASK_ROOT", str(tmp_path))
    monkeypatch.chdir(data_dir)  # what "files under the current directory" would serve
    aws_lambda.reset()
    try:
        resp = aws_lambda.ticket_handler(v2_event("GET", "/reads/sample"), None)
        assert resp["statusCode"] == 500
        assert json.loads(resp["body"])["htsget"]["error"] == "InternalError"
        assert "HTSGET_STORAGE" in caplog.text
        # fixed without a new container: the next invocation loads it
        monkeypatch.setenv("HTSGET_DATA_DIR", str(data_dir))
        resp = aws_lambda.ticket_handler(v2_event("GET", "/reads/sample"), None)
        assert resp["statusCode"] == 200
    finally:
        aws_lambda.reset()


def test_auth_without_a_shared_secret_is_refused(functions: Any, lambda_config: Path,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "key.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    key.write_bytes(pub.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    config = tmp_path / "auth.toml"
    config.write_text(lambda_config.read_text()
                      + f'\n[auth]\njwt = {{ kind = "public_key", path = "{key}" }}\n')
    monkeypatch.setenv("HTSGET_CONFIG", str(config))
    monkeypatch.delenv("HTSGET_DATA_URL_SECRET", raising=False)
    aws_lambda.reset()
    resp = aws_lambda.ticket_handler(v2_event("GET", "/reads/gen/sample"), None)
    assert resp["statusCode"] == 500
    monkeypatch.setenv("HTSGET_DATA_URL_SECRET", "s" * 32)
    aws_lambda.reset()
    resp = aws_lambda.ticket_handler(v2_event("GET", "/reads/gen/sample"), None)
    assert resp["statusCode"] == 401  # now configured: a request without a token
    assert json.loads(resp["body"])["htsget"]["error"] == "InvalidAuthentication"


# --------------------------------------------------------------------------- S3, presigned


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Any]:
    from test_s3 import AWS_ENV, MotoServer, upload_tree

    server = MotoServer(tmp_path_factory.mktemp("moto-lambda")).start()
    upload_tree(server.client(), data_dir, "htsgetr-lambda", "cohort")
    server.env = {**AWS_ENV, "AWS_ENDPOINT_URL_S3": server.url}
    yield server
    server.stop()


def terraform_config(bucket: str, prefix: str, region: str) -> str:
    """The configuration deploy/terraform hands the functions (HTSGET_CONFIG_TOML) when
    none is given, from main.tf itself."""
    import textwrap

    main = (Path(__file__).resolve().parent.parent / "deploy" / "terraform" / "main.tf")
    found = re.search(r"generated_config = <<-EOT\n(.*?)\n\s*EOT", main.read_text(), re.S)
    assert found, "main.tf has no generated_config heredoc"
    text = textwrap.dedent(found.group(1))
    return (text.replace("${var.bucket_name}", bucket).replace("${var.data_prefix}", prefix)
            .replace("${data.aws_region.current.name}", region))


@pytest.mark.parametrize("source", ["terraform-config", "storage-variable"])
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[4]],
                         ids=lambda c: f"{c[0]}-{c[3]}-{len(c[2])}")
def test_s3_tickets_are_presigned(case: tuple, source: str, moto_s3: Any, data_dir: Path,
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The configuration Terraform writes (HTSGET_CONFIG_TOML: an S3 location with its
    region), or HTSGET_STORAGE=s3://bucket/prefix: presigned urls with the Range in the
    ticket, the same ranges as the server's, records as htslib's. With the region named,
    the function never asks HeadBucket (the IAM policy does not allow it)."""
    endpoint, ident, query, name, regions = case
    ident = ident[len("gen/"):]
    for var, value in moto_s3.env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("HTSGET_CONFIG", raising=False)
    monkeypatch.delenv("HTSGET_STORAGE", raising=False)
    if source == "terraform-config":
        monkeypatch.setenv("HTSGET_CONFIG_TOML",
                           terraform_config("htsgetr-lambda", "cohort/", "us-east-1"))
    else:
        monkeypatch.setenv("HTSGET_STORAGE", "s3://htsgetr-lambda/cohort")
    aws_lambda.reset()
    before = len(moto_s3.requests_logged())
    try:
        resp = aws_lambda.ticket_handler(
            v2_event("GET", f"/prod/{endpoint}/{ident}", urlencode(query), stage="prod"), None)
    finally:
        aws_lambda.reset()
    assert resp["statusCode"] == 200, resp["body"]
    asked = [re.sub(r"\x1b\[[0-9;]*m", "", line)  # moto colours some lines
             for line in moto_s3.requests_logged()[before:]]
    if source == "terraform-config":
        assert asked and not any('"HEAD /htsgetr-lambda ' in line for line in asked), asked
    got = json.loads(resp["body"])
    remote = [b for b in got["htsget"]["urls"] if not b["url"].startswith("data:")]
    assert remote
    for block in remote:
        parts = urlsplit(block["url"])
        assert block["url"].startswith(f"{moto_s3.url}/htsgetr-lambda/cohort/{name}?")
        assert "X-Amz-Signature" in dict(parse_qsl(parts.query))
    port = free_port()
    srv = Server(["--storage", "s3://htsgetr-lambda/cohort", "--port", str(port)], port,
                 env=moto_s3.env).start()
    try:
        want = requests.get(f"{srv.url}/{endpoint}/{ident}", params=query, timeout=30).json()
    finally:
        srv.stop()

    def shape(ticket: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(b["url"] if b["url"].startswith("data:") else b["url"].split("?")[0],
                 b.get("headers"), b.get("class")) for b in ticket["htsget"]["urls"]]

    assert shape(got) == shape(want)
    payload = b"".join(fetch_block(b) for b in got["htsget"]["urls"])  # no AWS credentials
    assert_ticket_records(payload, tmp_path, data_dir / name, regions)


def test_a_response_over_lambdas_limit_is_a_clear_error(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A /data range whose base64 body passes Lambda's 6 MB: an htsget error naming the
    limit, not the opaque 502 API Gateway would give; a smaller range of the same file is
    served."""
    big = tmp_path / "big.bam"
    big.write_bytes(bytes(range(256)) * (5 * 4096))  # 5 MiB
    monkeypatch.delenv("HTSGET_CONFIG", raising=False)
    monkeypatch.setenv("HTSGET_DATA_DIR", str(tmp_path))
    aws_lambda.reset()
    try:
        resp = aws_lambda.data_handler(
            v2_event("GET", "/data/big.bam", headers={"Range": "bytes=0-4999999"}), None)
        assert resp["statusCode"] == 500
        error = json.loads(resp["body"])["htsget"]
        assert error["error"] == "InternalError" and "6 MB" in error["message"]
        resp = aws_lambda.data_handler(
            v2_event("GET", "/data/big.bam", headers={"Range": "bytes=0-3999999"}), None)
        assert resp["statusCode"] == 206
        assert base64.b64decode(resp["body"]) == big.read_bytes()[:4_000_000]
    finally:
        aws_lambda.reset()


def test_rest_api_behind_a_custom_domain_base_path(functions: Any) -> None:
    """REST API on a custom domain mapped at /genomics: requestContext.path is what the
    client asked for, `path` what the API saw; ticket urls keep the base path."""
    event = {
        "httpMethod": "GET", "path": "/reads/gen/sample",
        "headers": {"Host": "htsget.example.org"}, "multiValueHeaders": None,
        "queryStringParameters": {"referenceName": "chr1"},
        "multiValueQueryStringParameters": {"referenceName": ["chr1"]}, "body": None,
        "requestContext": {"stage": "prod", "domainName": "htsget.example.org",
                           "path": "/genomics/reads/gen/sample"},
    }
    resp = functions.ticket_handler(event, None)
    assert resp["statusCode"] == 200, resp["body"]
    urls = [b["url"] for b in json.loads(resp["body"])["htsget"]["urls"]]
    assert any(u.startswith("https://htsget.example.org/genomics/data/sample.bam") for u in urls)
    assert not any("/prod/" in u for u in urls)


def test_signed_data_urls_across_the_two_functions(lambda_config: Path, tmp_path: Path,
                                                   data_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """[auth] on: the ticket function checks the token and signs /data urls, the data
    function (another container) verifies them with the shared HTSGET_DATA_URL_SECRET;
    a url used for another range, or checked with another secret, is refused."""
    from authkit import Key, claims

    key = Key("EC")
    pem = tmp_path / "jwt.pem"
    pem.write_bytes(key.public_pem())
    config = tmp_path / "auth.toml"
    config.write_text(lambda_config.read_text() + f"""
[auth]
jwt = {{ kind = "public_key", path = "{pem}" }}
validate_audience = ["htsget-test"]
""")
    monkeypatch.setenv("HTSGET_CONFIG", str(config))
    monkeypatch.setenv("HTSGET_DATA_URL_SECRET", "a" * 40)
    aws_lambda.reset()
    try:
        token = key.sign(claims())
        event = v2_event("GET", "/prod/reads/gen/sample", "referenceName=chr1&start=0&end=90000",
                         stage="prod", headers={"Authorization": f"Bearer {token}"})
        resp = aws_lambda.ticket_handler(event, None)
        assert resp["statusCode"] == 200, resp["body"]
        blocks = json.loads(resp["body"])["htsget"]["urls"]
        remote = [b for b in blocks if not b["url"].startswith("data:")]
        assert remote and all("sig=" in b["url"] or "signature=" in b["url"].lower()
                              for b in remote), remote[0]["url"]
        payload = b"".join(lambda_fetch(b, aws_lambda) for b in blocks)
        assert_ticket_records(payload, tmp_path, data_dir / "sample.bam", [("chr1", 0, 90000)])
        block = remote[0]
        first, last = block["headers"]["Range"].split("=")[1].split("-")
        other = {"Range": f"bytes={first}-{int(last) - 1}"}
        refused = aws_lambda.data_handler(event_from_url(block["url"], other), None)
        assert refused["statusCode"] == 403
        unsigned = aws_lambda.data_handler(
            event_from_url(block["url"].split("?")[0], block["headers"]), None)
        assert unsigned["statusCode"] == 403
        no_token = aws_lambda.ticket_handler(v2_event("GET", "/prod/reads/gen/sample",
                                                      stage="prod"), None)
        assert no_token["statusCode"] == 401
        # a data function given another secret verifies nothing the ticket one signed
        monkeypatch.setenv("HTSGET_DATA_URL_SECRET", "b" * 40)
        aws_lambda._data.config, aws_lambda._data.handlers = None, {}
        other_secret = aws_lambda.data_handler(event_from_url(block["url"],
                                                              block["headers"]), None)
        assert other_secret["statusCode"] == 403
    finally:
        aws_lambda.reset()


def test_json_access_lines_under_lambda(lambda_config: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """`[logging] format = "json"` holds in the functions too: one JSON access line per
    event (the message itself is the JSON object, so Lambda's own formatter keeps it), with
    the request id the client sent and no signature."""
    import json
    import logging

    from htsgetr.observability import logs

    config = tmp_path / "json.toml"
    config.write_text('[logging]\nformat = "json"\n\n' + lambda_config.read_text())
    for var in ("HTSGET_STORAGE", "HTSGET_DATA_DIR", "HTSGET_BASE_URL", "LAMBDA_TASK_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTSGET_CONFIG", str(config))
    aws_lambda.reset()
    try:
        with caplog.at_level(logging.INFO):
            resp = aws_lambda.ticket_handler(v2_event(
                "GET", "/reads/gen/sample", "sig=SECRETSIG",
                headers={"X-Request-ID": "lambda-1"}), None)
        assert resp["statusCode"] == 200
        lines = [json.loads(r.getMessage()) for r in caplog.records
                 if r.getMessage().startswith("{") and '"request_id"' in r.getMessage()]
        assert [ln["request_id"] for ln in lines] == ["lambda-1"]
        assert lines[0]["status"] == 200 and lines[0]["ticket"]["id"] == "gen/sample"
        assert "SECRETSIG" not in caplog.text
    finally:
        aws_lambda.reset()
        logs.CONFIG = type(logs.CONFIG)()
