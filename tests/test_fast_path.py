"""api/fast.py: GET tickets answered without Flask's machinery are byte for byte Flask's answers
(status, every header in order, body), and whatever the shortcut does not know goes to Flask."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from htsgetr.api import auth, fast
from htsgetr.app import create_app
from htsgetr.config import Config, for_data_dir, load_config
from htsgetr.observability.middleware import Observe
from htsgetr.protocol import Block, Class, Format, Ticket

RESTRICTIONS = {"version": 1, "htsgetAuth": [
    {"location": {"prefix": "sample"}, "rules": [{"referenceName": "chr1"}]}]}

# (path with query, extra headers)
REQUESTS: list[tuple[str, dict[str, str]]] = [
    ("/reads/sample", {}),
    ("/reads/sample?referenceName=chr1&start=1000&end=20000", {}),
    ("/reads/sample?referenceName=chr1&start=1000&end=20000&referenceName=chr2", {}),
    ("/reads/sample?referenceName=chr2&start=0&end=1", {}),
    ("/reads/sample?referenceName=*", {}),
    ("/reads/sample?referenceName=chrEmpty", {}),
    ("/reads/sample?class=header", {}),
    ("/reads/sample?class=header&referenceName=chr1", {}),  # 400
    ("/reads/sample?referenceName=chr1&start=20&end=10", {}),  # 400 InvalidRange
    ("/reads/sample?start=20", {}),  # 400
    ("/reads/sample?referenceName=chr1&start=-1", {}),
    ("/reads/sample?referenceName=chr1&start=00010&end=+20", {}),
    ("/reads/sample?format=CRAM", {}),  # 404
    ("/reads/sample?format=VCF", {}),  # 400
    ("/reads/sample?encryptionScheme=c4gh&referenceName=chr3", {}),
    ("/reads/sample?fields=QNAME&tags=RG&notags=XX", {}),
    ("/reads/sample?referenceName=chr1&start=1&end=2&%FF=%FE", {}),
    ("/reads/sample?referenceName=%63hr1&start=1&end=200", {}),
    ("/reads/sample?referenceName=chr%FF1", {}),
    ("/reads/sample?referenceName=", {}),
    ("/reads/sample?&&=&a", {}),
    ("/reads/sample?referenceName=chr1&start=1&end=2000&start=5&=x", {}),
    ("/reads/sample?referenceName=chr1;start=5", {}),
    ("/reads/sample?referenceName=chr1&start=1=2", {}),
    ("/reads/nested/deep/other?referenceName=chr1&start=5&end=90000", {}),
    ("/reads/nested%2Fdeep%2Fother", {}),
    ("/reads/missing", {}),  # 404
    ("/reads/../sample", {}),
    ("/reads/a//b", {}),
    ("/reads/sample/", {}),
    ("/reads/", {}),
    ("/reads/service-info", {}),
    ("/reads/s%C3%A4mple", {}),
    ("/reads/sample%0A", {}),
    ("/reads/csi?referenceName=chr1&start=100&end=200000", {}),
    ("/variants/calls?referenceName=1&start=1000&end=50000", {}),
    ("/variants/calls?format=BCF&referenceName=2", {}),
    ("/variants/calls?format=BAM", {}),
    ("/variants/calls_csi?referenceName=X", {}),
    ("/sequences/sample", {}),
    ("/reads/bighdr?referenceName=chr1&start=100&end=5000", {}),
    ("/reads/sample?referenceName=chr1", {"Host": "localhost:8080"}),
    ("/reads/sample?referenceName=chr1", {"Host": "127.0.0.1:8080"}),
    ("/reads/sample?referenceName=chr1", {"Host": "LOCALHOST."}),
    ("/reads/sample?referenceName=chr1", {"Host": "evil.example"}),  # 400
    ("/reads/sample?referenceName=chr1", {"Host": "bad host"}),
    ("/reads/sample?referenceName=chr1", {"Host": "[::1]:8080"}),
    ("/reads/sample?referenceName=chr1", {"X-Forwarded-Proto": "https"}),
    ("/reads/sample?referenceName=chr1", {"X-Forwarded-Host": "public.example",
                                          "X-Forwarded-Port": "443"}),
    ("/reads/sample?referenceName=chr1", {"Forwarded": 'proto=https;host="p.example:9"'}),
    ("/reads/sample?referenceName=chr1", {"Origin": "https://igv.example"}),  # Flask's
    ("/reads/sample?referenceName=chr1", {"Authorization": "Bearer x"}),
    ("/reads/sample?referenceName=chr1", {"Access-Control-Request-Private-Network": "true",
                                          "Origin": "https://igv.example"}),
]


DATA_REQUESTS: list[tuple[str, dict[str, str]]] = [
    ("/data/sample.bam", {}),
    ("/data/sample.bam", {"Range": "bytes=0-99"}),
    ("/data/sample.bam", {"Range": "bytes=100-"}),
    ("/data/sample.bam", {"Range": "bytes=-100"}),
    ("/data/sample.bam", {"Range": "bytes=0-0"}),
    ("/data/sample.bam", {"Range": "bytes=99999999-"}),  # 416
    ("/data/sample.bam", {"Range": "bytes=-0"}),
    ("/data/sample.bam", {"Range": "bytes=5-1"}),
    ("/data/sample.bam", {"Range": "bytes=0-1,5-9"}),
    ("/data/sample.bam", {"Range": "items=0-1"}),
    ("/data/sample.bam", {"Range": "bytes=000000000000000000000000001-2"}),
    ("/data/sample.bam.bai", {"Range": "bytes=10-20"}),
    ("/data/sample.bam?exp=1&sig=x", {"Range": "bytes=10-20"}),
    ("/data/calls.vcf.gz", {"Range": "bytes=10-20"}),
    ("/data/calls.vcf.gz.tbi", {}),
    ("/data/nested/deep/other.bam", {"Range": "bytes=1-2"}),
    ("/data/nested/deep/", {}),
    ("/data/missing.bam", {}),  # 404, Flask's
    ("/data/conftest.py", {}),
    ("/data/../sample.bam", {}),
    ("/data/~0/sample.bam", {}),
    ("/data/~x/sample.bam", {}),
    ("/data/sample.bam", {"Range": "bytes=0-99", "Origin": "https://igv.example"}),
]


def _answer(app: Flask, path: str, headers: dict[str, str], method: str = "GET"
            ) -> tuple[str, list[tuple[str, str]], bytes]:
    headers = {"X-Request-ID": "same-for-both", **headers}  # echoed back by both
    resp = app.test_client().open(path, method=method, headers=headers)
    return resp.status, list(resp.headers.items()), resp.get_data()


def _shortcut(app: Flask) -> fast.FastTickets:
    """The app's `FastTickets` (inside observability's `Observe`, the outermost layer)."""
    layer = app.wsgi_app
    assert isinstance(layer, Observe)
    assert isinstance(layer.app, fast.FastTickets)
    return layer.app


def _flask_only(app: Flask) -> None:
    """`app` answers everything through Flask (still observed: same request-ID header)."""
    app.wsgi_app.app = _shortcut(app).flask  # type: ignore[attr-defined]


def _pair(config: Config) -> tuple[Flask, Flask]:
    """An app with the shortcut, and the same app answering through Flask only."""
    ours, ref = create_app(config), create_app(config)
    _shortcut(ours)
    _flask_only(ref)
    for app in (ours, ref):
        signer = app.extensions[auth.EXTENSION].signer
        if signer is not None:
            signer._clock = lambda: 1_700_000_000.0
        app.test_client().get("/service-info")  # Flask serves the first request
    return ours, ref


def _compare(ours: Flask, ref: Flask, requests: list[tuple[str, dict[str, str]]]) -> int:
    shortcut = _shortcut(ours)
    assert shortcut.enabled, "the shortcut should be on for this app"
    before = shortcut.served
    for path, headers in requests:
        for method in ("GET", "HEAD", "POST", "OPTIONS"):
            got, want = _answer(ours, path, headers, method), _answer(ref, path, headers, method)
            assert got == want, (method, path, headers)
    served: int = shortcut.served - before
    return served


@pytest.fixture(scope="module")
def signing_config(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Config:
    d = tmp_path_factory.mktemp("fastcfg")
    (d / "restrictions.json").write_text(json.dumps(RESTRICTIONS))
    (d / "config.toml").write_text(f"""
[[locations]]
root = "{data_dir}"
[data_server.auth.authorization]
kind = "static"
path = "{d / 'restrictions.json'}"
[data_server.auth.data_urls]
secret = "s3cret"
""")
    return load_config(str(d / "config.toml"), env={})


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="ab=&;.1", max_size=24))
def test_plain_query_strings_split_as_parse_qsl_does(query: str) -> None:
    """The shortcut's own split of a query string with nothing to decode gives what
    `parse_qsl` (the first value of each name) gives."""
    from urllib.parse import parse_qsl

    shortcut = fast.FastTickets.__new__(fast.FastTickets)
    shortcut.parse_qsl = parse_qsl
    want: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        want.setdefault(key, value)
    assert shortcut._args(query) == want


def test_same_answers(data_dir: Path) -> None:
    ours, ref = _pair(for_data_dir(str(data_dir)))
    served = _compare(ours, ref, REQUESTS)
    assert served >= len(REQUESTS) - 15  # the GETs it knows; the rest went to Flask
    served = _compare(ours, ref, DATA_REQUESTS)
    assert served >= 2 * (len(DATA_REQUESTS) - 9)  # GET and HEAD


@pytest.mark.parametrize("role", ["data", "ticket"])
def test_same_answers_per_role(data_dir: Path, role: str) -> None:
    config = for_data_dir(str(data_dir))
    config.data_server.separate = True
    ours, ref = create_app(config, role), create_app(config, role)
    _flask_only(ref)
    for app in (ours, ref):
        app.test_client().get("/service-info")
    assert _compare(ours, ref, DATA_REQUESTS + REQUESTS[:10]) >= 10


@pytest.mark.parametrize("server", [
    {"base_url": "https://public.example/htsget"},
    {"allowed_hosts": ["*"]},
    {"allowed_hosts": ["*.example", "localhost:*"], "trusted_proxies": ["127.0.0.1"]},
    {"trusted_proxies": ["0.0.0.0/0"], "cors_origins": ["https://igv.example"]},
])
def test_same_answers_per_server_config(data_dir: Path, server: dict[str, Any]) -> None:
    ours, ref = _pair(for_data_dir(str(data_dir), **server))
    assert _compare(ours, ref, REQUESTS) > 20


def test_same_answers_with_signed_data_urls(signing_config: Config) -> None:
    ours, ref = _pair(signing_config)
    assert ours.extensions[auth.EXTENSION].signer is not None
    assert ours.extensions[auth.EXTENSION].ticket is None
    assert _compare(ours, ref, REQUESTS) > 20
    body = ours.test_client().get("/reads/sample?referenceName=chr1").get_json()
    signed = [(u["url"].split("/data/", 1)[1], u.get("headers", {}))
              for u in body["htsget"]["urls"] if "/data/" in u["url"]]
    assert signed and all("exp=" in p and "&sig=" in p for p, _ in signed)
    requests = [("/data/" + p, h) for p, h in signed]
    requests += [("/data/" + p, {"Range": "bytes=0-1"}) for p, _ in signed]  # other range
    requests += [("/data/" + p.replace("sig=", "sig=A"), h) for p, h in signed]
    requests += DATA_REQUESTS
    assert _compare(ours, ref, requests) > 20
    shortcut = ours.wsgi_app
    for path, headers in requests[:len(signed)]:
        resp = ours.test_client().get(path, headers=headers)
        assert resp.status_code == 206, path
    assert ours.test_client().get("/data/sample.bam").status_code == 403
    assert shortcut.served > 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("accel", ["nginx", "apache"])
def test_same_answers_with_accel(data_dir: Path, accel: str) -> None:
    config = for_data_dir(str(data_dir))
    config.data_server.accel = accel
    ours, ref = _pair(config)
    assert _compare(ours, ref, DATA_REQUESTS) > 10
    resp = ours.test_client().get("/data/nested/deep/other.bam", headers={"Range": "bytes=1-2"})
    assert resp.status_code == 200 and resp.data == b""
    if accel == "nginx":
        assert resp.headers["X-Accel-Redirect"] == "/_protected/nested/deep/other.bam"
    else:
        assert resp.headers["X-Sendfile"] == str(data_dir.resolve() / "nested/deep/other.bam")
    head = ours.test_client().head("/data/sample.bam", headers={"Range": "bytes=1-2"})
    assert head.status_code == 206 and head.headers["Content-Length"] == "2"
    assert "X-Accel-Redirect" not in head.headers and "X-Sendfile" not in head.headers
    bad = ours.test_client().get("/data/sample.bam", headers={"Range": "bytes=99999999-"})
    assert bad.status_code == 416


def test_separate_data_server(data_dir: Path) -> None:
    config = for_data_dir(str(data_dir))
    config.data_server.separate = True
    ours, ref = _pair(config)
    assert _compare(ours, ref, REQUESTS[:12]) > 5


def test_ticket_gate_goes_to_flask(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps(RESTRICTIONS))
    toml = tmp_path / "c.toml"
    toml.write_text(f'[[locations]]\nroot = "{data_dir}"\n[auth.authorization]\n'
                    f'kind = "static"\npath = "{tmp_path / "r.json"}"\n')
    ours, ref = _pair(load_config(str(toml), env={}))
    assert _compare(ours, ref, REQUESTS[:10]) == 0


def test_an_unknown_hook_turns_it_off(data_dir: Path) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    seen = []
    app.before_request(lambda: seen.append(1))
    app.test_client().get("/reads/sample")
    app.test_client().get("/reads/sample")
    assert app.wsgi_app.enabled is False  # type: ignore[attr-defined]
    assert seen == [1, 1]


def test_a_new_route_under_reads_turns_it_off(data_dir: Path) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    app.add_url_rule("/reads/<path:id>/extra", "extra", lambda id: "extra")
    app.test_client().get("/service-info")
    assert app.wsgi_app.enabled is False  # type: ignore[attr-defined]


def test_signals_send_requests_to_flask(data_dir: Path) -> None:
    from flask import request_started

    app = create_app(for_data_dir(str(data_dir)))
    app.test_client().get("/service-info")
    seen: list[str] = []

    def listen(sender: Any, **kw: Any) -> None:
        seen.append("started")

    request_started.connect(listen, app)
    try:
        assert app.test_client().get("/reads/sample").status_code == 200
    finally:
        request_started.disconnect(listen, app)
    assert seen == ["started"]


def test_flask_refuses_hooks_after_the_first_request(data_dir: Path) -> None:
    """What makes deciding once safe: a hook added later would be bypassed, but Flask refuses
    it after the first request, which Flask serves."""
    app = create_app(for_data_dir(str(data_dir)))
    app.test_client().get("/reads/sample")
    with pytest.raises(AssertionError):
        app.before_request(lambda: None)


def test_engine_bug_answered_by_flask(data_dir: Path, caplog: pytest.LogCaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    app.test_client().get("/service-info")
    engine = app.extensions["htsgetr"]

    def broken(query: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "ticket", broken)
    with caplog.at_level(logging.ERROR, logger="htsgetr"):
        resp = app.test_client().get("/reads/sample")
    assert resp.status_code == 500
    assert resp.get_json() == {"htsget": {"error": "InternalError",
                                          "message": "internal server error"}}
    assert resp.headers["Cache-Control"] == "no-store"
    assert sum("unhandled error" in r.message for r in caplog.records) == 1


def test_many_random_regions(data_dir: Path) -> None:
    import random

    ours, ref = _pair(for_data_dir(str(data_dir)))
    rng = random.Random(7)
    requests: list[tuple[str, dict[str, str]]] = []
    for _ in range(150):
        ref_name, length = rng.choice([("chr1", 250_000), ("chr2", 120_000), ("chr3", 90_000)])
        start = rng.randrange(0, length)
        end = start + rng.randint(0, 30_000)
        requests.append((f"/reads/{rng.choice(['sample', 'csi'])}?referenceName={ref_name}"
                         f"&start={start}&end={end}", {}))
    assert _compare(ours, ref, requests) == len(requests)


def test_ticket_text_is_json_dumps(data_dir: Path) -> None:
    """The hand-joined ticket text is `json.dumps` of the ticket, character for character."""
    from htsgetr.api.tickets import _dumps_ticket

    bodies = [{"htsget": {"format": "BAM", "urls": []}},
              {"htsget": {"format": "BAM", "urls": [
                  {"url": "data:;base64,QUJD", "class": "header"},
                  {"url": 'data:;base64,"quoted"\\', "headers": {"Range": "bytes=0-1"}},
                  {"url": "data:;base64,\u00e9\n", "class": "body"},
                  {"url": "https://h/data/a b?x=\"1\"", "headers": {"Range": "bytes=2-3",
                                                                  "X": "\u2603"}},
                  {"url": "https://h/data/x\x01y\\z", "headers": {"Range": "bytes=5-"}},
                  {"url": "https://h/data/\u00e9", "headers": {"Range": 'bytes="1"-2'},
                   "class": "other"},
                  {"url": "https://h/data/ok", "headers": {"Range": "bytes=10-20"},
                   "class": "body"}],
                  "md5": "0" * 32, "allowed": [{"referenceName": "chr1", "start": 0}]}}]
    engine = create_app(for_data_dir(str(data_dir))).extensions["htsgetr"]
    from htsgetr.protocol import Endpoint, parse_get
    for query in ({}, {"referenceName": "chr1", "start": "1000", "end": "90000"},
                  {"class": "header"}, {"referenceName": "chr2"}):
        bodies.append(engine.ticket(parse_get(Endpoint.READS, "sample", query)).to_json())
        if "chr2" not in query.values():
            bodies.append(engine.ticket(parse_get(Endpoint.READS, "bighdr", query)).to_json())
    for body in bodies:
        assert _dumps_ticket(body) == json.dumps(body)


_URLS = st.one_of(
    st.binary(max_size=60).map(lambda b: "data:;base64," + __import__("base64").b64encode(
        b).decode()),
    st.text(max_size=30).map(lambda t: "https://h/data/" + t),
    st.sampled_from(["https://h/data/ok", 'data:;base64,"q"', "data:;base64,\u00e9",
                     "http://[::1]:8080/data/a%20b",
                     "https://h/data/\x7f", "https://h/data/\x1f"]),  # DEL: CI found it
)
_HEADERS = st.one_of(
    st.none(), st.just({}),
    st.tuples(st.integers(0, 1 << 40), st.integers(0, 1 << 40)).map(
        lambda r: {"Range": f"bytes={r[0]}-{r[1]}"}),
    st.dictionaries(st.sampled_from(["Range", "X-Amz", "\u2603"]), st.text(max_size=8),
                    max_size=2),
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(_URLS, _HEADERS, st.sampled_from([None, *Class])), max_size=6),
       st.sampled_from(list(Format)), st.one_of(st.none(), st.just("ab" * 16)))
def test_ticket_text_from_blocks_is_json_dumps(blocks: list[Any], fmt: Format,
                                               md5: Optional[str]) -> None:
    """The common ticket's text, joined from its blocks with no dict between, is
    `json.dumps(ticket.to_json())`, character for character."""
    from htsgetr.api.tickets import _dumps_blocks

    ticket = Ticket(fmt, [Block(url, headers, klass) for url, headers, klass in blocks], md5)
    assert _dumps_blocks(ticket) == json.dumps(ticket.to_json())
