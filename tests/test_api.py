"""Protocol errors, service-info and the /data endpoint, through the Flask app and gunicorn."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from conftest import Server, assert_ticket_records, reassemble

from htsgetr.app import create_app
from htsgetr.config import for_data_dir

CT = "application/vnd.ga4gh.htsget.v1.3.0+json"


@pytest.fixture(scope="module")
def client(data_dir: Path):
    app = create_app(for_data_dir(str(data_dir)))
    return app.test_client()


def assert_error(resp, status: int, error: str) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json(force=True)
    assert set(body) == {"htsget"}
    assert body["htsget"]["error"] == error
    assert isinstance(body["htsget"]["message"], str) and body["htsget"]["message"]
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("url,status,error", [
    ("/reads/nope", 404, "NotFound"),
    ("/variants/nope", 404, "NotFound"),
    ("/reads/sample?referenceName=chrNope", 404, "NotFound"),
    ("/variants/calls?referenceName=chrNope", 404, "NotFound"),
    ("/reads/sample?format=VCF", 400, "UnsupportedFormat"),
    ("/variants/calls?format=BAM", 400, "UnsupportedFormat"),
    ("/reads/sample?format=XYZ", 400, "UnsupportedFormat"),
    ("/reads/sample?start=10", 400, "InvalidInput"),
    ("/reads/sample?end=10", 400, "InvalidInput"),
    ("/reads/sample?referenceName=chr1&start=abc", 400, "InvalidInput"),
    ("/reads/sample?referenceName=chr1&start=-5", 400, "InvalidInput"),
    ("/reads/sample?referenceName=chr1&end=1.5", 400, "InvalidInput"),
    ("/reads/sample?referenceName=chr1&start=99999999999", 400, "InvalidInput"),
    ("/reads/sample?class=bogus", 400, "InvalidInput"),
    ("/reads/sample?class=header&referenceName=chr1", 400, "InvalidInput"),
    ("/reads/sample?referenceName=*&start=5", 400, "InvalidInput"),
    ("/variants/calls?referenceName=*", 404, "NotFound"),
    ("/reads/sample?fields=QNAME,NOPE", 400, "InvalidInput"),
    ("/reads/sample?tags=RG&notags=RG", 400, "InvalidInput"),
    ("/reads/sample?referenceName=chr1&start=20&end=10", 400, "InvalidRange"),
])
def test_get_errors(client, url: str, status: int, error: str) -> None:
    assert_error(client.get(url), status, error)
    assert client.get(url).content_type == CT


def test_get_start_equal_end_is_valid(client, data_dir: Path, tmp_path: Path) -> None:
    resp = client.get("/reads/sample?referenceName=chr1&start=10&end=10")
    assert resp.status_code == 200
    assert assert_ticket_records(payload_of(client, resp), tmp_path, data_dir / "sample.bam",
                                 [("chr1", 10, 10)]) == []


def payload_of(client, resp) -> bytes:
    """A ticket reassembled through the same Flask app (its /data urls, with their Range)."""
    import base64
    from urllib.parse import urlsplit

    out = []
    for block in resp.get_json()["htsget"]["urls"]:
        url = block["url"]
        if url.startswith("data:;base64,"):
            out.append(base64.b64decode(url[len("data:;base64,"):]))
            continue
        part = urlsplit(url)
        got = client.get(part.path + (f"?{part.query}" if part.query else ""),
                         headers=block.get("headers", {}))
        assert got.status_code in (200, 206), got.status_code
        out.append(got.get_data())
    return b"".join(out)


@pytest.mark.parametrize("id,name,regions", [
    ("sample", "sample.bam", [("chr1", 1000, 40_000)]),
    ("sample", "sample.bam", [("chr2", None, None)]),
    ("sample", "sample.bam", [("*", None, None)]),
    ("sample", "sample.bam", [("chr1", 90_000, None), ("chr1", 100, 2000), ("chr3", 5, 6),
                              ("*", None, None), ("chr1", 1500, 30_000)]),
    ("csi", "csi.bam", [("chr1", 5000, 70_000), ("chr2", 0, 1)]),
    ("bighdr", "bighdr.bam", [("chr1", 10, 90_000)]),
    ("calls", "calls.vcf.gz", [("1", 1000, 50_000)]),
    ("calls", "calls.vcf.gz", [("X", None, None), ("1", 200_000, None), ("2", None, 777)]),
    ("calls_csi", "calls_csi.vcf.gz", [("2", 10_000, 20_000), ("2", 15_000, 90_000)]),
    ("calls", "calls.bcf", [("2", 500, 80_000), ("X", 100, 101), ("empty", None, None)]),
])
def test_region_tickets_hold_exactly_htslibs_records(client, data_dir: Path, tmp_path: Path,
                                                     id: str, name: str, regions: list) -> None:
    """GET (one region) and POST (several) through the app: the whole reassembled record
    list is htslib's for the regions, in order; never the whole file, never extra reads."""
    endpoint = "reads" if name.endswith(".bam") else "variants"
    fmt = {".bam": "BAM", ".gz": "VCF", ".bcf": "BCF"}[Path(name).suffix]
    posted = [{k: v for k, v in (("referenceName", n), ("start", a), ("end", b)) if v is not None}
              for n, a, b in regions]
    asks = [client.post(f"/{endpoint}/{id}", json={"format": fmt, "regions": posted})]
    if len(regions) == 1:
        asks.append(client.get(f"/{endpoint}/{id}", query_string={"format": fmt, **posted[0]}))
    for resp in asks:
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert_ticket_records(payload_of(client, resp), tmp_path, data_dir / name, regions)


@pytest.mark.parametrize("body,status,error", [
    (b"{not json", 400, "InvalidInput"),
    (b"[1,2]", 400, "InvalidInput"),
    (json.dumps({"regions": []}).encode(), 400, "InvalidInput"),
    (json.dumps({"regions": [{"start": 5}]}).encode(), 400, "InvalidInput"),
    (json.dumps({"regions": [{"referenceName": "chr1", "start": 10, "end": 10}]}).encode(),
     400, "InvalidRange"),
    (json.dumps({"regions": [{"referenceName": "chr1", "start": 20, "end": 10}]}).encode(),
     400, "InvalidRange"),
    (json.dumps({"regions": [{"referenceName": "chr1", "start": "x"}]}).encode(),
     400, "InvalidInput"),
    (json.dumps({"regions": "chr1"}).encode(), 400, "InvalidInput"),
    (json.dumps({"format": "CRAMX"}).encode(), 400, "UnsupportedFormat"),
    (json.dumps({"regions": [{"referenceName": "nope"}]}).encode(), 404, "NotFound"),
    (json.dumps({"fields": ["BOGUS"]}).encode(), 400, "InvalidInput"),
    # strict POST (issue 9): a GET-style body is refused, not answered with the whole file
    (json.dumps({"referenceName": "chr1", "start": 5}).encode(), 400, "InvalidInput"),
    (json.dumps({"regions": [{"referenceName": "chr1", "start": "5"}]}).encode(),
     400, "InvalidInput"),
    (b"[" * 100_000, 400, "InvalidInput"),
])
def test_post_errors(client, body: bytes, status: int, error: str) -> None:
    assert_error(client.post("/reads/sample", data=body,
                             content_type="application/json"), status, error)


def test_post_query_parameters_refused(client) -> None:
    assert_error(client.post("/reads/sample?referenceName=chr1", json={}), 400, "InvalidInput")


def test_post_too_large(client) -> None:
    big = json.dumps({"regions": [{"referenceName": "chr1"}] * 100000}).encode()
    assert_error(client.post("/reads/sample", data=big, content_type="application/json"),
                 413, "PayloadTooLarge")


def test_too_many_regions_refused_before_any_work(server: Server, data_dir: Path,
                                                  tmp_path: Path) -> None:
    """A POST may list `max_regions` regions (1024 by default), each a walk of its own; one
    more is a 413 naming the limit, under gunicorn, before the ID is even looked up. At the
    limit the ticket holds exactly htslib's records for them all."""
    import random

    rng = random.Random(3)
    regions = []
    for _ in range(1024):
        start = rng.randrange(0, 249_000)
        regions.append(("chr1", start, start + rng.randint(1, 300)))
    body = {"regions": [{"referenceName": n, "start": s, "end": e} for n, s, e in regions]}
    resp = requests.post(f"{server.url}/reads/sample", json=body, timeout=60)
    assert resp.status_code == 200, resp.text[:300]
    assert_ticket_records(reassemble(resp.json()), tmp_path, data_dir / "sample.bam", regions)
    more = {"regions": body["regions"] + [{"referenceName": "chr1", "start": 0, "end": 1}]}
    for path in ("/reads/sample", "/reads/no-such-id"):
        resp = requests.post(f"{server.url}{path}", json=more, timeout=60)
        assert resp.status_code == 413, resp.text[:300]
        error = resp.json()["htsget"]
        assert error["error"] == "PayloadTooLarge"
        assert "1025 regions" in error["message"] and "max_regions" in error["message"]


def test_max_regions_is_configured(data_dir: Path, tmp_path: Path) -> None:
    """`max_regions` from the configuration file and HTSGET_MAX_REGIONS; the Python API
    refuses as the HTTP API does."""
    from htsgetr import Htsget, load_config
    from htsgetr.protocol import Endpoint, PayloadTooLarge, parse_post

    toml = tmp_path / "c.toml"
    toml.write_text(f'max_regions = 2\n[[locations]]\nroot = "{data_dir}"\n')
    three = json.dumps({"regions": [{"referenceName": "chr1", "start": s, "end": s + 10}
                                    for s in (100, 5000, 90000)]}).encode()
    client = create_app(load_config(str(toml), env={})).test_client()
    assert_error(client.post("/reads/sample", data=three, content_type="application/json"),
                 413, "PayloadTooLarge")
    config = load_config(str(toml), env={"HTSGET_MAX_REGIONS": "3"})
    assert config.max_regions == 3
    assert create_app(config).test_client().post(
        "/reads/sample", data=three, content_type="application/json").status_code == 200
    query = parse_post(Endpoint.READS, "sample", three, False)
    with pytest.raises(PayloadTooLarge):
        Htsget(load_config(str(toml), env={})).ticket(query)


def test_post_body_must_be_json(client) -> None:
    """415 with htsget JSON for a body of another media type (tests/test_strict_input.py)."""
    assert_error(client.post("/reads/sample", data=b"{}", content_type="text/plain"),
                 415, "UnsupportedMediaType")
    assert client.post("/reads/sample", data=b"{}",
                       content_type="application/json; charset=utf-8").status_code == 200


def test_post_empty_body_is_whole_file(client) -> None:
    resp = client.post("/reads/sample")
    assert resp.status_code == 200
    assert resp.get_json()["htsget"]["format"] == "BAM"


def test_unknown_parameters_ignored(client) -> None:
    resp = client.get("/reads/sample?encryptionScheme=c4gh&foo=bar")
    assert resp.status_code == 200


def test_format_case_insensitive(client) -> None:
    assert client.get("/reads/sample?format=bam").status_code == 200
    assert client.post("/reads/sample", json={"format": "bam"}).status_code == 200


@pytest.mark.parametrize("id", [
    "../sample", "nested/../sample", "nested/../../etc/passwd", "/etc/passwd", "%2Fetc%2Fpasswd",
    "nested%2F..%2F..%2Fsample", "sample%00", "..%2Fsample", "nested//deep/other", "./sample",
])
def test_ids_cannot_escape(client, id: str) -> None:
    resp = client.get(f"/reads/{id}")
    assert resp.status_code in (404, 400)
    assert_error(resp, resp.status_code, "NotFound" if resp.status_code == 404 else "InvalidInput")


def test_symlink_outside_root_refused(data_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.bam"
    outside.write_bytes((data_dir / "sample.bam").read_bytes())
    link = data_dir / "escape.bam"
    if not link.exists():
        os.symlink(outside, link)
    client = create_app(for_data_dir(str(data_dir))).test_client()
    try:
        assert_error(client.get("/reads/escape"), 404, "NotFound")
        assert_error(client.get("/data/escape.bam"), 404, "NotFound")
    finally:
        link.unlink()


def test_nested_id_and_service_info_reserved(client) -> None:
    assert client.get("/reads/nested/deep/other").status_code == 200
    info = client.get("/reads/service-info").get_json()
    assert info["htsget"]["datatype"] == "reads"


def test_unknown_route_and_method(client) -> None:
    assert_error(client.get("/nothing/here"), 404, "NotFound")
    resp = client.delete("/reads/sample")
    assert resp.status_code == 405
    assert "htsget" in resp.get_json()


# --------------------------------------------------------------------------- service-info


@pytest.mark.parametrize("path,datatype,formats", [
    ("/service-info", "reads", ["BAM", "CRAM"]),
    ("/reads/service-info", "reads", ["BAM", "CRAM"]),
    ("/variants/service-info", "variants", ["VCF", "BCF"]),
])
def test_service_info(client, path: str, datatype: str, formats: list[str]) -> None:
    resp = client.get(path)
    assert resp.status_code == 200
    info = resp.get_json()
    assert info["type"] == {"group": "org.ga4gh", "artifact": "htsget", "version": "1.3.0"}
    assert info["htsget"]["datatype"] == datatype
    assert info["htsget"]["formats"] == formats
    assert info["htsget"]["fieldsParameterEffective"] is False
    assert info["htsget"]["tagsParametersEffective"] is False
    for key in ("id", "name", "organization", "version"):
        assert key in info


# --------------------------------------------------------------------------- /data


def test_data_ranges(client, data_dir: Path) -> None:
    raw = (data_dir / "sample.bam").read_bytes()
    resp = client.get("/data/sample.bam", headers={"Range": "bytes=100-199"})
    assert resp.status_code == 206
    assert resp.data == raw[100:200]
    assert resp.headers["Content-Range"] == f"bytes 100-199/{len(raw)}"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert "Content-Encoding" not in resp.headers
    resp = client.get("/data/sample.bam", headers={"Range": f"bytes={len(raw) - 10}-"})
    assert resp.data == raw[-10:]
    resp = client.get("/data/sample.bam", headers={"Range": "bytes=-28"})
    assert resp.data == raw[-28:]
    resp = client.get("/data/sample.bam")
    assert resp.status_code == 200 and resp.data == raw
    resp = client.get("/data/sample.bam", headers={"Range": f"bytes={len(raw)}-"})
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(raw)}"
    head = client.head("/data/sample.bam", headers={"Range": "bytes=0-9"})
    assert head.status_code == 206 and head.headers["Content-Length"] == "10"
    gz = client.get("/data/calls.vcf.gz", headers={"Range": "bytes=0-1"})
    assert gz.data == b"\x1f\x8b" and "Content-Encoding" not in gz.headers
    assert_error(client.get("/data/../etc/passwd"), 404, "NotFound")
    assert_error(client.get("/data/missing.bam"), 404, "NotFound")


def test_data_cors_preflight(client) -> None:
    resp = client.options("/data/sample.bam", headers={
        "Origin": "https://igv.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Range"})
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://igv.example")
    assert "range" in resp.headers["Access-Control-Allow-Headers"].lower()


def test_data_under_gunicorn_sendfile(server: Server, data_dir: Path) -> None:
    """Under gunicorn the range comes out exact (sendfile bounded by Content-Length)."""
    raw = (data_dir / "sample.bam").read_bytes()
    with requests.Session() as s:
        for start, end in [(0, 0), (5, 70000), (len(raw) - 28, len(raw) - 1), (1000, 1000)]:
            resp = s.get(f"{server.url}/data/sample.bam",
                         headers={"Range": f"bytes={start}-{end}"}, timeout=10)
            assert resp.status_code == 206
            assert resp.content == raw[start:end + 1]
        resp = s.get(f"{server.url}/data/sample.bam", timeout=10)
        assert resp.content == raw


def test_errors_under_gunicorn(server: Server) -> None:
    resp = requests.get(f"{server.url}/reads/sample?referenceName=chr1&start=9&end=1", timeout=10)
    assert resp.status_code == 400 and resp.json()["htsget"]["error"] == "InvalidRange"
    resp = requests.get(f"{server.url}/reads/sample.bai", timeout=10)
    assert resp.status_code == 404 and resp.json()["htsget"]["error"] == "NotFound"


def test_corrupt_index_is_internal_error_without_traceback(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "corrupt"
    root.mkdir()
    (root / "bad.bam").write_bytes((data_dir / "sample.bam").read_bytes())
    (root / "bad.bam.bai").write_bytes(b"BAI\x01" + b"\xff" * 40)
    (root / "trunc.bam").write_bytes((data_dir / "sample.bam").read_bytes()[:5000])
    (root / "trunc.bam.bai").write_bytes((data_dir / "sample.bam.bai").read_bytes())
    (root / "notbam.bam").write_bytes(b"hello world, not a BAM file at all" * 10)
    (root / "notbam.bam.bai").write_bytes((data_dir / "sample.bam.bai").read_bytes())
    client = create_app(for_data_dir(str(root))).test_client()
    for id in ("bad", "trunc", "notbam"):
        resp = client.get(f"/reads/{id}?referenceName=chr1")
        body = assert_error(resp, 500, "InternalError")
        assert "Traceback" not in body["htsget"]["message"]


def test_urls_follow_the_request_address(data_dir: Path) -> None:
    """No base URL configured: /data urls use the Host the client reached us at; a configured
    base URL always wins. The Host must be an allowed one (issue 9; tests/test_hosts.py)."""
    config = for_data_dir(str(data_dir), allowed_hosts=["htsget.example.org:9000"])
    client = create_app(config).test_client()
    t = client.get("/reads/sample", headers={"Host": "htsget.example.org:9000"}).get_json()
    http = [u["url"] for u in t["htsget"]["urls"] if not u["url"].startswith("data:")]
    assert http and all(u.startswith("http://htsget.example.org:9000/data/") for u in http)
    fixed = create_app(for_data_dir(str(data_dir), base_url="https://public.example/htsget"))
    t = fixed.test_client().get("/reads/sample", headers={"Host": "inside:1"}).get_json()
    http = [u["url"] for u in t["htsget"]["urls"] if not u["url"].startswith("data:")]
    assert http and all(u.startswith("https://public.example/htsget/data/") for u in http)
