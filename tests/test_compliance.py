"""The GA4GH htsget compliance cases, reproduced as our own tests (the public suite is not a
package), plus what that suite leaves out.

The server serves the compliance IDs as the suite asks for them: `htsnexus_test_NA12878` on
/reads as BAM and CRAM, `spec-v4.3` on /variants as VCF and BCF (../shared/data; skipped
where absent). For each: no parameters, `format`, and an unknown `encryptionScheme=c4gh`
(ignored: a plain ticket); then regions, `class=header`, POST, service-info, unknown IDs and
every error type. Every ticket, error and service-info answer is validated against
tests/htsget_schema.json (written from the spec: only `format`, `urls`, `md5` under `htsget`;
urls absolute http(s) or `data:;base64,`; `class` on all urls or none), and every ticket is
reassembled and compared, whole record list against htslib's.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import requests
from conftest import (
    BGZF_EOF_MARKER,
    Server,
    assert_ticket_records,
    file_records,
    free_port,
    reassemble,
    shared,
)

jsonschema = pytest.importorskip("jsonschema")

CT = "application/vnd.ga4gh.htsget.v1.3.0+json"
SCHEMA = json.loads((Path(__file__).with_name("htsget_schema.json")).read_text())

READS_ID, VARIANTS_ID = "htsnexus_test_NA12878", "spec-v4.3"
#: format -> (endpoint, id, the original under ../shared/data)
FILES = {
    "BAM": ("reads", READS_ID, ("bam", "htsnexus_test_NA12878.bam")),
    "CRAM": ("reads", READS_ID, ("cram", "htsnexus_test_NA12878.cram")),
    "VCF": ("variants", VARIANTS_ID, ("vcf", "spec-v4.3.vcf.gz")),
    "BCF": ("variants", VARIANTS_ID, ("bcf", "spec-v4.3.bcf")),
}
DEFAULT = {"reads": "BAM", "variants": "VCF"}


def validator(definition: str) -> Any:
    """A validator for one of the schema's definitions (ticket, error, serviceInfo)."""
    schema = {**SCHEMA, "$ref": f"#/$defs/{definition}"}
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


TICKET, ERROR, SERVICE_INFO = validator("ticket"), validator("error"), validator("serviceInfo")


@pytest.fixture(scope="module")
def compliance_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The compliance IDs mapped onto ../shared/data by [[locations]], one per format."""
    root = shared()
    config = tmp_path_factory.mktemp("compliance") / "htsget.toml"
    blocks = ["max_post_bytes = 20000\n"]
    for fmt, (_endpoint, id, (folder, _name)) in FILES.items():
        blocks.append(f"""
[[locations]]
regex = '^{id}$'
substitution = '{id}'
backend = "file"
root = "{root / folder}"
formats = ["{fmt}"]
fall_through = true
""")
    config.write_text("".join(blocks))
    port = free_port()
    srv = Server(["--config", str(config), "--port", str(port), "--workers", "2"], port)
    srv.start()
    yield srv
    srv.stop()


def _original(fmt: str) -> Path:
    return shared(*FILES[fmt][2])


def _ticket(resp: requests.Response, fmt: str) -> dict:
    """A 200 ticket in the protocol's content type that the schema accepts."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == CT
    body = resp.json()
    TICKET.validate(body)
    assert body["htsget"]["format"] == fmt
    return body


def _error(resp: requests.Response, status: int, error: str) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["Content-Type"].split(";")[0] in (CT, "application/json")
    body = resp.json()
    ERROR.validate(body)
    assert body["htsget"]["error"] == error, body
    assert "Traceback" not in body["htsget"]["message"]
    return str(body["htsget"]["message"])


# --------------------------------------------------------------------------- the suite's cases


@pytest.mark.parametrize("extra", [{}, {"encryptionScheme": "c4gh"}], ids=["plain", "c4gh"])
@pytest.mark.parametrize("fmt,asked", [("BAM", None), ("BAM", "BAM"), ("CRAM", "CRAM"),
                                       ("VCF", None), ("VCF", "VCF"), ("BCF", "BCF")])
def test_whole_file_cases(compliance_server: Server, tmp_path: Path, fmt: str,
                          asked: Optional[str], extra: dict[str, str]) -> None:
    """The suite's matrix: no parameters, or `format`; an unknown `encryptionScheme` changes
    nothing. The concatenated blocks are the original's records; a given md5 is theirs."""
    endpoint, id, _path = FILES[fmt]
    params = {**({"format": asked} if asked else {}), **extra}
    resp = requests.get(f"{compliance_server.url}/{endpoint}/{id}", params=params, timeout=30)
    body = _ticket(resp, fmt)
    payload = _reassemble_strict(body)
    assert_ticket_records(payload, tmp_path, _original(fmt), None)
    if "md5" in body["htsget"]:
        assert hashlib.md5(payload).hexdigest() == body["htsget"]["md5"]
    if extra:  # the same ticket as without the parameter
        plain = requests.get(f"{compliance_server.url}/{endpoint}/{id}",
                             params={"format": fmt}, timeout=30).json()
        assert plain == body


def _reassemble_strict(ticket: dict) -> bytes:
    """As the suite does: inline blocks only when they start exactly `data:;base64,`; http
    blocks with their headers; every block's length as its Content-Length says."""
    parts = []
    with requests.Session() as session:
        for block in ticket["htsget"]["urls"]:
            url = block["url"]
            if url.startswith("data:"):
                assert url.startswith("data:;base64,")
                parts.append(base64.b64decode(url[len("data:;base64,"):], validate=True))
                continue
            resp = session.get(url, headers=block.get("headers", {}), timeout=30)
            assert resp.status_code in (200, 206)
            assert int(resp.headers["Content-Length"]) == len(resp.content)
            parts.append(resp.content)
    return b"".join(parts)


# --------------------------------------------------------------------------- beyond the suite


READ_REGIONS = [("11", 4999976, 5002000), ("11", 5050000, 5099889), ("20", None, None),
                ("20", 6000000, 6000001), ("1", None, None), ("*", None, None)]
VARIANT_REGIONS = [("20", None, None), ("20", 14000, 17330), ("20", 1110695, 1230237),
                   ("20", 0, 1)]


def _params(name: str, start: Optional[int], end: Optional[int]) -> dict[str, Any]:
    p: dict[str, Any] = {"referenceName": name}
    if start is not None:
        p["start"] = start
    if end is not None:
        p["end"] = end
    return p


@pytest.mark.parametrize("fmt", list(FILES))
def test_get_regions(compliance_server: Server, tmp_path: Path, fmt: str) -> None:
    endpoint, id, _ = FILES[fmt]
    regions = READ_REGIONS if endpoint == "reads" else VARIANT_REGIONS
    for region in regions:
        resp = requests.get(f"{compliance_server.url}/{endpoint}/{id}",
                            params={"format": fmt, **_params(*region)}, timeout=30)
        body = _ticket(resp, fmt)
        assert "md5" not in body["htsget"] or region == ("20", None, None)
        assert_ticket_records(reassemble(body), tmp_path, _original(fmt), [region])


@pytest.mark.parametrize("fmt", list(FILES))
def test_post_regions(compliance_server: Server, tmp_path: Path, fmt: str) -> None:
    """Several regions, overlapping and out of order: one stream, each record once, in file
    order."""
    endpoint, id, _ = FILES[fmt]
    regions = ([("20", 6000000, 6050000), ("11", 5000000, 5010000), ("20", 6040000, 6060000)]
               if endpoint == "reads" else
               [("20", 1110695, 1230237), ("20", 14000, 17331), ("20", 17000, 1110700)])
    post = {"format": fmt, "regions": [_params(*r) for r in regions]}
    resp = requests.post(f"{compliance_server.url}/{endpoint}/{id}", json=post, timeout=30)
    body = _ticket(resp, fmt)
    got = assert_ticket_records(reassemble(body), tmp_path, _original(fmt), regions)
    assert got


@pytest.mark.parametrize("fmt", list(FILES))
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_header_class(compliance_server: Server, tmp_path: Path, fmt: str, method: str) -> None:
    endpoint, id, _ = FILES[fmt]
    url = f"{compliance_server.url}/{endpoint}/{id}"
    if method == "GET":
        resp = requests.get(url, params={"format": fmt, "class": "header"}, timeout=30)
    else:
        resp = requests.post(url, json={"format": fmt, "class": "header"}, timeout=30)
    body = _ticket(resp, fmt)
    assert {u["class"] for u in body["htsget"]["urls"]} == {"header"}
    payload = _reassemble_strict(body)
    suffix = Path(FILES[fmt][2][1]).suffixes
    out = tmp_path / ("header" + "".join(suffix))
    out.write_bytes(payload)
    assert file_records(out) == []
    original = _original(fmt)
    import pysam

    if endpoint == "reads":
        with pysam.AlignmentFile(str(out), check_sq=False) as a, \
                pysam.AlignmentFile(str(original), check_sq=False) as b:
            assert str(a.header) == str(b.header)
    else:
        with pysam.VariantFile(str(out)) as a, pysam.VariantFile(str(original)) as b:
            assert str(a.header) == str(b.header)
    if fmt != "CRAM":
        assert payload.endswith(BGZF_EOF_MARKER)


@pytest.mark.parametrize("endpoint", ["reads", "variants"])
def test_service_info(compliance_server: Server, endpoint: str) -> None:
    resp = requests.get(f"{compliance_server.url}/{endpoint}/service-info", timeout=30)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].split(";")[0] == "application/json"
    info = resp.json()
    SERVICE_INFO.validate(info)
    assert info["htsget"]["datatype"] == endpoint
    want = {"reads": {"BAM", "CRAM"}, "variants": {"VCF", "BCF"}}[endpoint]
    assert want <= set(info["htsget"]["formats"])
    # the reserved ID is service-info on every method the ticket endpoint has
    post = requests.post(f"{compliance_server.url}/{endpoint}/service-info", json={},
                         timeout=30)
    assert post.status_code != 200 or "type" in post.json()


@pytest.mark.parametrize("endpoint,id", [("reads", "NA00000"), ("variants", "no-such-vcf"),
                                         ("reads", "spec-v4.3"), ("variants", READS_ID)])
def test_not_found_ids(compliance_server: Server, endpoint: str, id: str) -> None:
    for resp in (requests.get(f"{compliance_server.url}/{endpoint}/{id}", timeout=30),
                 requests.post(f"{compliance_server.url}/{endpoint}/{id}", json={}, timeout=30)):
        _error(resp, 404, "NotFound")


R = f"reads/{READS_ID}"
V = f"variants/{VARIANTS_ID}"


@pytest.mark.parametrize("path,params,status,error", [
    (R, {"format": "VCF"}, 400, "UnsupportedFormat"),
    (V, {"format": "CRAM"}, 400, "UnsupportedFormat"),
    (R, {"format": "SAM"}, 400, "UnsupportedFormat"),
    (R, {"start": "10"}, 400, "InvalidInput"),
    (R, {"end": "10"}, 400, "InvalidInput"),
    (R, {"referenceName": "*", "start": "0"}, 400, "InvalidInput"),
    (R, {"referenceName": "11", "start": "20", "end": "10"}, 400, "InvalidRange"),
    (V, {"referenceName": "20", "start": "-1"}, 400, "InvalidInput"),
    (V, {"referenceName": "20", "start": "x"}, 400, "InvalidInput"),
    (V, {"referenceName": "20", "end": "4294967296"}, 400, "InvalidInput"),
    (R, {"class": "records"}, 400, "InvalidInput"),  # `body` is taken as the default
    (R, {"class": "header", "referenceName": "11"}, 400, "InvalidInput"),
    (R, {"referenceName": "chrNope"}, 404, "NotFound"),
    (V, {"referenceName": "chrNope"}, 404, "NotFound"),
])
def test_get_errors(compliance_server: Server, path: str, params: dict, status: int,
                    error: str) -> None:
    _error(requests.get(f"{compliance_server.url}/{path}", params=params, timeout=30),
           status, error)


@pytest.mark.parametrize("path,body,status,error", [
    (R, {"format": "VCF"}, 400, "UnsupportedFormat"),
    (R, {"regions": []}, 400, "InvalidInput"),
    (R, {"regions": [{"start": 5}]}, 400, "InvalidInput"),
    (R, {"regions": [{"referenceName": "11", "start": 10, "end": 10}]}, 400, "InvalidRange"),
    (V, {"regions": [{"referenceName": "20", "start": 30, "end": 10}]}, 400, "InvalidRange"),
    (V, {"regions": [{"referenceName": "20", "start": "10"}]}, 400, "InvalidInput"),
    (V, {"regions": "20"}, 400, "InvalidInput"),
    (V, {"class": "header", "regions": [{"referenceName": "20"}]}, 400, "InvalidInput"),
    (R, {"regions": [{"referenceName": "chrNope"}]}, 404, "NotFound"),
    (V, {"regions": [{"referenceName": "20", "start": 0, "end": 5}] * 2000}, 413,
     "PayloadTooLarge"),
])
def test_post_errors(compliance_server: Server, path: str, body: Any, status: int,
                     error: str) -> None:
    _error(requests.post(f"{compliance_server.url}/{path}", json=body, timeout=30),
           status, error)


def test_post_refuses_query_parameters_and_bad_json(compliance_server: Server) -> None:
    url = f"{compliance_server.url}/{R}"
    _error(requests.post(url, params={"format": "BAM"}, json={}, timeout=30), 400,
           "InvalidInput")
    _error(requests.post(url, data=b"{not json", timeout=30,
                         headers={"Content-Type": "application/json"}), 400, "InvalidInput")
    _error(requests.post(url, data=b"[1, 2]", timeout=30,
                         headers={"Content-Type": "application/json"}), 400, "InvalidInput")


# --------------------------------------------------------------------------- the schema itself


GOOD = {"htsget": {"format": "BAM", "urls": [
    {"url": "data:;base64,QkFNAQ==", "class": "header"},
    {"url": "https://x.example/data/a.bam", "headers": {"Range": "bytes=0-9"}, "class": "body"},
]}}


@pytest.mark.parametrize("change", [
    lambda t: t["htsget"].update(extra=1),
    lambda t: t.update(other={}),
    lambda t: t["htsget"].update(format="SAM"),
    lambda t: t["htsget"].update(md5="XYZ"),
    lambda t: t["htsget"]["urls"][0].pop("class"),
    lambda t: t["htsget"]["urls"][1].update(url="/data/a.bam"),
    lambda t: t["htsget"]["urls"][1].update(url="ftp://x.example/a.bam"),
    lambda t: t["htsget"]["urls"][0].update(url="data:application/vnd.ga4gh.bam;base64,QkFNAQ=="),
    lambda t: t["htsget"]["urls"][0].update(url="data:;base64,QkFNAQ"),
    lambda t: t["htsget"]["urls"][1].update(headers={"Range": 5}),
    lambda t: t["htsget"]["urls"][1].update(klass="body"),
    lambda t: t["htsget"].update(urls=[]),
    lambda t: t["htsget"].pop("format"),
])
def test_schema_refuses_what_the_spec_does(change: Any) -> None:
    """The schema can fail: each departure from the spec (or from what clients decode)."""
    TICKET.validate(GOOD)
    bad = json.loads(json.dumps(GOOD))
    change(bad)
    with pytest.raises(jsonschema.ValidationError):
        TICKET.validate(bad)


def test_error_schema_refuses_unknown_types() -> None:
    ERROR.validate({"htsget": {"error": "NotFound", "message": "no"}})
    for bad in ({"htsget": {"error": "Oops", "message": "no"}},
                {"htsget": {"error": "NotFound"}},
                {"error": "NotFound", "message": "no"}):
        with pytest.raises(jsonschema.ValidationError):
            ERROR.validate(bad)
