"""The Python face: public names, Query/Region from strings or enums checked exactly as the
HTTP layer checks them, Htsget.from_data_dir / from_config, the typed Ticket, and tickets
computed in-process that a client reassembles into htslib's records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import Server, assert_ticket_records

import htsgetr
from htsgetr import (
    Class,
    ConfigError,
    Endpoint,
    Format,
    Htsget,
    HtsgetError,
    InvalidInput,
    InvalidRange,
    NotFound,
    Query,
    Region,
    Ticket,
    UnsupportedFormat,
    create_app,
)
from htsgetr.client import fetch
from htsgetr.protocol import parse_get, parse_post

PUBLIC = ["Htsget", "Query", "Region", "Endpoint", "Format", "Class", "Ticket", "Block",
          "load_config", "create_app", "Config", "ConfigError", "HtsgetError", "InvalidInput",
          "InvalidRange", "NotFound", "PermissionDenied", "InvalidAuthentication",
          "UnsupportedFormat", "PayloadTooLarge", "InternalError", "UpstreamError",
          "__version__"]


def test_public_names_are_exported_and_documented() -> None:
    for name in PUBLIC:
        assert name in htsgetr.__all__, name
        obj = getattr(htsgetr, name)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
    for name in ("ticket", "from_data_dir", "from_config"):
        assert (getattr(Htsget, name).__doc__ or "").strip(), name
    assert (Path(htsgetr.__file__).parent / "py.typed").exists()


def test_strings_and_enums_make_the_same_query() -> None:
    a = Query("reads", "sample", "bam", "header")
    b = Query(Endpoint.READS, "sample", Format.BAM, Class.HEADER)
    assert a == b and a.format is Format.BAM and a.endpoint is Endpoint.READS
    assert Query("variants", "x").format is Format.VCF  # the endpoint's default
    assert Query("reads", "x", format="Cram").format is Format.CRAM
    assert Query("reads", "x", klass="body").klass is None  # as the HTTP layer: body = default
    one = Query("reads", "s", reference_name="chr1", start=10, end=20)
    assert one.regions == (Region("chr1", 10, 20),)
    assert Query("reads", "s", regions=[Region("chr1", 10, 20)]) == one
    assert Query("reads", "s", regions=[("chr1", 10, 20)]) == one
    assert Query("reads", "s", regions=[("chr2",), Region("*")]).regions == (Region("chr2"),
                                                                            Region("*"))
    assert Query("reads", "s", fields="QNAME,FLAG").fields == ("QNAME", "FLAG")
    assert Query("reads", "s", tags=["NM", "MD"]).tags == ("NM", "MD")
    # what the request parsers give is equal to what the constructor gives
    assert parse_get(Endpoint.READS, "s", {"referenceName": "chr1", "start": "10",
                                           "end": "20"}) == one
    assert hash(one) == hash(Query("reads", "s", reference_name="chr1", start=10, end=20))


def error_of(make: Any) -> tuple[type, str]:
    with pytest.raises(HtsgetError) as info:
        make()
    return type(info.value), info.value.message


#: (Query keywords, the same request as GET parameters) -> the same error and message
SAME_AS_GET: list[tuple[dict[str, Any], dict[str, str]]] = [
    ({"format": "XYZ"}, {"format": "XYZ"}),
    ({"format": "VCF"}, {"format": "VCF"}),
    ({"format": Format.VCF}, {"format": "VCF"}),
    ({"klass": "HEADER"}, {"class": "HEADER"}),
    ({"reference_name": "chr1", "start": 20000, "end": 10000},
     {"referenceName": "chr1", "start": "20000", "end": "10000"}),
    ({"start": 5}, {"start": "5"}),
    ({"reference_name": "*", "start": 5}, {"referenceName": "*", "start": "5"}),
    ({"reference_name": "chr1", "start": "-1"}, {"referenceName": "chr1", "start": "-1"}),
    ({"reference_name": "chr1", "end": 1 << 40}, {"referenceName": "chr1", "end": str(1 << 40)}),
    ({"reference_name": "chr\n1"}, {"referenceName": "chr\n1"}),
    ({"klass": "header", "reference_name": "chr1"}, {"class": "header", "referenceName": "chr1"}),
    ({"fields": "QNAME,NOPE"}, {"fields": "QNAME,NOPE"}),
    ({"tags": "NM,"}, {"tags": "NM,"}),
    ({"tags": "NMX"}, {"tags": "NMX"}),
    ({"tags": "NM", "notags": "NM"}, {"tags": "NM", "notags": "NM"}),
]


#: integers as Python gives them are JSON's: the POST body's errors
SAME_AS_POST: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"reference_name": "chr1", "start": -1}, {"referenceName": "chr1", "start": -1}),
    ({"reference_name": "chr1", "start": True}, {"referenceName": "chr1", "start": True}),
    ({"reference_name": 7}, {"referenceName": 7}),
    ({"reference_name": ""}, {"referenceName": ""}),
]


@pytest.mark.parametrize("kwargs,region", SAME_AS_POST)
def test_query_errors_are_the_post_bodys(kwargs: dict[str, Any], region: dict[str, Any]) -> None:
    body = json.dumps({"regions": [region]}).encode()
    want = error_of(lambda: parse_post(Endpoint.READS, "sample", body, False))
    assert error_of(lambda: Query("reads", "sample", **kwargs)) == want


@pytest.mark.parametrize("kwargs,params", SAME_AS_GET)
def test_query_errors_are_the_http_layers(kwargs: dict[str, Any], params: dict[str, str]) -> None:
    want = error_of(lambda: parse_get(Endpoint.READS, "sample", params))
    assert error_of(lambda: Query("reads", "sample", **kwargs)) == want


def test_region_checks() -> None:
    kind, message = error_of(lambda: Region("chr1", 20000, 10000))
    assert kind is InvalidRange and message == "start (20000) must be less than end (10000)"
    assert Region("chr1", 5, 5).start == 5  # as GET: an empty region is valid
    assert error_of(lambda: Region("*", 0, 10))[0] is InvalidInput
    assert error_of(lambda: Region("chr1", True))[0] is InvalidInput
    assert error_of(lambda: Region(1))[0] is InvalidInput  # type: ignore[arg-type]
    # POST: the same rules for several regions
    body = json.dumps({"regions": [{"referenceName": "chr1", "start": 9, "end": 3}]}).encode()
    post = error_of(lambda: parse_post(Endpoint.READS, "s", body, False))
    assert post[0] is InvalidRange
    assert error_of(lambda: Query("reads", "s", regions=[Region("chr1", 9, 3)]))[0] is InvalidRange
    assert error_of(lambda: Query("reads", "s", regions=[("chr1", 9, 3)]))[0] is InvalidRange
    assert error_of(lambda: Query("reads", "s", regions=[]))[1] == \
        error_of(lambda: parse_post(Endpoint.READS, "s", b'{"regions": []}', False))[1]
    assert error_of(lambda: Query("nowhere", "s"))[0] is NotFound
    assert error_of(lambda: Query("reads", ""))[0] is InvalidInput
    assert error_of(lambda: Query("reads", "s", format="FASTA"))[0] is UnsupportedFormat
    assert error_of(lambda: Query("reads", "s", regions=["chr1"]))[0] is InvalidInput


def served_json(data_dir: Path, url: str) -> Any:
    client = create_app(htsgetr.config.for_data_dir(str(data_dir))).test_client()
    resp = client.get(url)
    return resp.status_code, resp.get_json()


@pytest.mark.parametrize("url,query", [
    ("/reads/sample?referenceName=chr1&start=1000&end=30000",
     Query("reads", "sample", reference_name="chr1", start=1000, end=30000)),
    ("/reads/sample?class=header", Query("reads", "sample", klass="header")),
    ("/reads/sample", Query("reads", "sample")),
    ("/variants/calls?format=BCF&referenceName=X&end=90000",
     Query("variants", "calls", format="bcf", reference_name="X", end=90000)),
])
def test_engine_tickets_equal_the_http_ones(data_dir: Path, url: str, query: Query) -> None:
    htsget = Htsget.from_data_dir(data_dir, base_url="http://localhost")
    status, doc = served_json(data_dir, url)
    assert status == 200
    ticket = htsget.ticket(query)
    assert isinstance(ticket, Ticket) and ticket.to_json() == doc
    assert [b.to_json() for b in ticket.urls] == doc["htsget"]["urls"]
    for block, entry in zip(ticket.urls, doc["htsget"]["urls"]):
        assert block["url"] == block.url == entry["url"]
        assert all(block[key] == value for key, value in entry.items())
    assert ticket.md5 == doc["htsget"].get("md5")


def test_from_config_dict_path_and_errors(data_dir: Path, tmp_path: Path) -> None:
    doc = {"locations": [{"regex": "^cohort/(.*)$", "root": str(data_dir)}]}
    by_dict = Htsget.from_config(doc)
    assert by_dict.ticket(Query("reads", "cohort/sample")).md5 == \
        hashlib.md5((data_dir / "sample.bam").read_bytes()).hexdigest()
    with pytest.raises(NotFound):
        by_dict.ticket(Query("reads", "sample"))
    path = tmp_path / "c.toml"
    path.write_text(f'[[locations]]\nregex = "^cohort/(.*)$"\nroot = "{data_dir}"\n')
    assert Htsget.from_config(path).ticket(Query("reads", "cohort/sample")).md5
    assert Htsget.from_config(str(path)).config == by_dict.config
    with pytest.raises(ConfigError, match="no readable directory"):
        Htsget.from_config({"locations": [{"root": str(tmp_path / "nope")}]})
    with pytest.raises(ConfigError, match="prot"):
        Htsget.from_config({"ticket_server": {"prot": 1}})
    with pytest.raises(ConfigError, match="no readable directory"):
        Htsget.from_data_dir(tmp_path / "nope")


def test_in_process_tickets_reassemble_to_htslibs_records(
    server: Server, data_dir: Path, tmp_path: Path
) -> None:
    """A notebook's path: tickets computed here, blocks served by `htsgetr serve`."""
    htsget = Htsget.from_data_dir(data_dir, base_url=server.url)
    cases: list[tuple[Query, str, Optional[list[tuple[str, int, int]]]]] = [
        (Query("reads", "sample", regions=[Region("chr1", 0, 40_000), Region("chr2", 500)]),
         "sample.bam", [("chr1", 0, 40_000), ("chr2", 500, 1 << 29)]),
        (Query(Endpoint.VARIANTS, "calls", Format.VCF, reference_name="X", start=1000,
               end=70_000), "calls.vcf.gz", [("X", 1000, 70_000)]),
        (Query("variants", "calls", "BCF"), "calls.bcf", None),
    ]
    for i, (query, name, regions) in enumerate(cases):
        out = tmp_path / f"{i}-{name}"
        fetch(htsget.ticket(query) if i else htsget.ticket(query).to_json(), out)
        assert_ticket_records(out.read_bytes(), tmp_path, data_dir / name, regions)


def test_missing_index_refuses_only_regions(data_dir: Path, tmp_path: Path) -> None:
    """A BAM or VCF without its index: whole-file and class=header tickets need none."""
    for name in ("sample.bam", "calls.vcf.gz", "calls.bcf"):
        (tmp_path / name).write_bytes((data_dir / name).read_bytes())
    htsget = Htsget.from_data_dir(tmp_path, base_url="http://localhost")
    indexed = Htsget.from_data_dir(data_dir, base_url="http://localhost")
    for endpoint, id, fmt, ref in (("reads", "sample", "BAM", "chr1"),
                                   ("variants", "calls", "VCF", "X"),
                                   ("variants", "calls", "BCF", "X")):
        for klass in (None, "header"):
            got = htsget.ticket(Query(endpoint, id, fmt, klass))
            assert got.to_json() == indexed.ticket(Query(endpoint, id, fmt, klass)).to_json()
        with pytest.raises(NotFound, match="a region needs one"):
            htsget.ticket(Query(endpoint, id, fmt, reference_name=ref))
