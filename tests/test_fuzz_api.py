"""Bad input never gets a traceback or a 500: random query strings, POST bodies and IDs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htsgetr.app import create_app
from htsgetr.config import for_data_dir

ERRORS = {"NotFound", "InvalidInput", "InvalidRange", "UnsupportedFormat", "PayloadTooLarge",
          "MethodNotAllowed"}


@pytest.fixture(scope="module")
def client(data_dir: Path):
    return create_app(for_data_dir(str(data_dir))).test_client()


def check(resp) -> None:
    assert resp.status_code in (200, 400, 404, 405, 413), resp.get_data(as_text=True)[:300]
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


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
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


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(["reads", "variants"]), body=json_values,
       raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_post_never_500(client, endpoint: str, body: object, raw: bytes | None) -> None:
    data = raw if raw is not None else json.dumps(body).encode()
    id = "sample" if endpoint == "reads" else "calls"
    check(client.post(f"/{endpoint}/{id}", data=data, content_type="application/json"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
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
