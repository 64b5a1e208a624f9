"""Remote backends failing: stopped, hanging, slow, refusing (401/403), missing (404), broken
(500/503), truncating, ignoring ranges, compressing. The client must get the right htsget
error (JSON, status) within a bounded time, and other IDs must keep being served.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from conftest import free_port, make_bam
from test_s3 import (
    AWS_ENV,
    BUCKET,
    PREFIX,
    AppServer,
    MotoServer,
    build_remote_data,
    server_config,
    upload_tree,
    verify_ticket,
)
from test_url import ToyUpstream

from htsgetr.config import Config, LocationConfig
from htsgetr.engine import Htsget
from htsgetr.protocol import (
    Endpoint,
    Format,
    HtsgetError,
    InternalError,
    NotFound,
    Query,
    Region,
    UpstreamError,
)
from htsgetr.storage.remote_cache import CircuitBreaker
from htsgetr.storage.s3 import S3Storage
from htsgetr.storage.url import UrlStorage

CT = "application/vnd.ga4gh.htsget.v1.3.0+json"
TIMEOUT = 1.0  # the configured upstream timeout in these tests
SLACK = 1.5  # scheduling, backoff and process overheads


class HangServer:
    """Accepts TCP connections and never answers (a wedged upstream)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.held: list[socket.socket] = []
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while self.running:
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except OSError:
                continue

    def stop(self) -> None:
        self.running = False
        self.thread.join(2)
        for conn in self.held:
            conn.close()
        self.sock.close()


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    try:
        result: Any = call()
    except HtsgetError as exc:
        result = exc
    return result, time.monotonic() - t0


def expect_error(call: Callable[[], Any], cls: type, status: int, limit: float) -> HtsgetError:
    err, elapsed = timed(call)
    assert isinstance(err, cls) and isinstance(err, HtsgetError), err
    assert err.status == status, (err.status, err.message)
    assert elapsed < limit, f"took {elapsed:.2f} s (limit {limit} s)"
    body = err.to_json()
    assert set(body["htsget"]) == {"error", "message"}
    return err


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def remote_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = build_remote_data(tmp_path_factory.mktemp("remote"))
    # a truncated index next to an intact file
    make_bam(d / "broken.bam", seed=5, n_reads=600)
    bai = (d / "broken.bam.bai").read_bytes()
    (d / "broken.bam.bai").write_bytes(bai[: len(bai) // 2])
    (d / "big.bam").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    return d


@pytest.fixture()
def toy(remote_data: Path) -> Iterator[ToyUpstream]:
    files = {p.name: p.read_bytes() for p in remote_data.iterdir() if p.is_file()}
    server = ToyUpstream(files, slow_seconds=TIMEOUT * 3)
    yield server
    server.stop()


@pytest.fixture()
def hang() -> Iterator[HangServer]:
    server = HangServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory, remote_data: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    upload_tree(server.client(), remote_data, BUCKET, PREFIX)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)


def url_engine(base: str, **kw: Any) -> Htsget:
    kw.setdefault("timeout", TIMEOUT)
    return Htsget(Config(locations=[LocationConfig(backend="url", url=base, **kw)]))


BAM_REGION = Query(Endpoint.READS, "sample", Format.BAM, regions=(Region("chr1", 1000, 50000),))


# --------------------------------------------------------------------------- URL backend


def test_stopped_upstream_is_503_quickly() -> None:
    dead = f"http://127.0.0.1:{free_port()}/"
    engine = url_engine(dead, retries=2)
    err = expect_error(lambda: engine.ticket(BAM_REGION), UpstreamError, 503, 1.5)
    assert "unreachable" in err.message
    expect_error(lambda: UrlStorage(dead, retries=0).read("x.bam", 0, 10), UpstreamError, 503,
                 1.0)


def test_hanging_upstream_is_504_within_timeout(hang: HangServer) -> None:
    """Timeouts are not retried: one `timeout`, whatever `retries` says."""
    engine = url_engine(hang.url + "/", retries=3)
    err = expect_error(lambda: engine.ticket(BAM_REGION), UpstreamError, 504, TIMEOUT + SLACK)
    assert "timed out" in err.message
    _, elapsed = timed(lambda: engine.ticket(BAM_REGION))
    assert elapsed >= TIMEOUT * 0.9


def test_slow_upstream_is_504(toy: ToyUpstream) -> None:
    s = UrlStorage(f"{toy.url}/slow/", timeout=TIMEOUT, retries=2)
    expect_error(lambda: s.size("sample.bam"), UpstreamError, 504, TIMEOUT + SLACK)


@pytest.mark.parametrize("mode,cls,status", [
    ("e401", UpstreamError, 502),
    ("e403", UpstreamError, 502),
    ("e404", NotFound, 404),
    ("e500", UpstreamError, 502),
    ("e503", UpstreamError, 503),
])
def test_upstream_status_answers(toy: ToyUpstream, mode: str, cls: type, status: int) -> None:
    engine = url_engine(f"{toy.url}/{mode}/", retries=2)
    err = expect_error(lambda: engine.ticket(BAM_REGION), cls, status, 2.0)
    if cls is UpstreamError:
        assert mode[1:] in err.message  # the upstream's own status, for the operator


@pytest.mark.parametrize("mode,words", [
    ("truncate", "cut short"),
    ("ignore-range", "ignores byte ranges"),
    ("gzip", "Content-Encoding"),
    ("wrong-range", "wrong range"),
])
def test_broken_range_answers_are_502(toy: ToyUpstream, mode: str, words: str) -> None:
    engine = url_engine(f"{toy.url}/{mode}/")
    err = expect_error(lambda: engine.ticket(BAM_REGION), UpstreamError, 502, 3.0)
    assert words in err.message


def test_truncated_index(toy: ToyUpstream, remote_data: Path) -> None:
    """A stored index cut short is the server's data problem: InternalError naming it."""
    engine = url_engine(f"{toy.url}/ok/")
    query = Query(Endpoint.READS, "broken", Format.BAM, regions=(Region("chr1", 0, 10_000),))
    err = expect_error(lambda: engine.ticket(query), InternalError, 500, 3.0)
    assert "broken.bam.bai" in err.message
    # the intact file next to it is fine
    assert engine.ticket(BAM_REGION).blocks


def test_healthy_location_keeps_serving(toy: ToyUpstream, hang: HangServer, remote_data: Path,
                                        tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/"
    engine = Htsget(Config(locations=[
        LocationConfig(name="down", regex="down/(.*)", backend="url", url=dead,
                       timeout=TIMEOUT),
        LocationConfig(name="hang", regex="hang/(.*)", backend="url", url=hang.url + "/",
                       timeout=TIMEOUT),
        LocationConfig(name="ok", regex="(.*)", backend="url", url=f"{toy.url}/ok/",
                       timeout=TIMEOUT),
    ]))
    for bad, status in (("down/sample", 503), ("hang/sample", 504)):
        q = Query(Endpoint.READS, bad, Format.BAM, regions=BAM_REGION.regions)
        expect_error(lambda: engine.ticket(q), UpstreamError, status, TIMEOUT + SLACK)  # noqa: B023
        ticket = engine.ticket(BAM_REGION).to_json()
        verify_ticket(ticket, remote_data, "sample.bam", [("chr1", 1000, 50000)], tmp_path)


# --------------------------------------------------------------------------- under gunicorn


def test_faults_under_gunicorn(toy: ToyUpstream, hang: HangServer, remote_data: Path,
                               tmp_path: Path) -> None:
    """htsget JSON errors with the right status in bounded time; a worker waiting on a hung
    upstream does not stop the others (threads) from serving healthy IDs."""
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}/"
    config = server_config(
        port,
        LocationConfig(name="down", regex="down/(.*)", backend="url", url=dead, timeout=TIMEOUT),
        LocationConfig(name="hang", regex="hang/(.*)", backend="url", url=hang.url + "/",
                       timeout=TIMEOUT),
        LocationConfig(name="forbidden", regex="forbidden/(.*)", backend="url",
                       url=f"{toy.url}/e403/", timeout=TIMEOUT),
        LocationConfig(name="missing", regex="missing/(.*)", backend="url",
                       url=f"{toy.url}/e404/", timeout=TIMEOUT),
        LocationConfig(name="broken", regex="broken/(.*)", backend="url", mode="proxy",
                       url=f"{toy.url}/e500/", timeout=TIMEOUT),  # proxy: /data serves it
        LocationConfig(name="cut", regex="cut/(.*)", backend="url", mode="proxy",
                       url=f"{toy.url}/truncate/", timeout=TIMEOUT),
        LocationConfig(name="ok", regex="(.*)", backend="url", mode="proxy",
                       url=f"{toy.url}/ok/", timeout=TIMEOUT),
    )
    server = AppServer(tmp_path, config, port, workers=1, threads=8).start()
    try:
        def get(id: str) -> tuple[requests.Response, float]:
            t0 = time.monotonic()
            resp = requests.get(f"{server.url}/reads/{id}",
                                params={"referenceName": "chr1", "start": "1000", "end": "50000"},
                                timeout=30)
            return resp, time.monotonic() - t0

        for id, status, error in [
            ("down/sample", 503, "UpstreamError"),
            ("hang/sample", 504, "UpstreamError"),
            ("forbidden/sample", 502, "UpstreamError"),
            ("missing/sample", 404, "NotFound"),
            ("broken/sample", 502, "UpstreamError"),
        ]:
            resp, elapsed = get(id)
            assert resp.status_code == status, (id, resp.text)
            assert resp.headers["Content-Type"] == CT
            assert resp.json()["htsget"]["error"] == error
            assert elapsed < TIMEOUT + SLACK, (id, elapsed)
            assert "Traceback" not in resp.text

        # while requests hang on one location, the same worker serves the healthy one
        with ThreadPoolExecutor(4) as pool:
            hung = [pool.submit(get, "hang/sample") for _ in range(3)]
            time.sleep(0.2)
            resp, elapsed = get("sample")
            assert resp.status_code == 200 and elapsed < TIMEOUT * 0.8, elapsed
            for future in hung:
                r, e = future.result()
                assert r.status_code == 504 and e < TIMEOUT + SLACK
        verify_ticket(resp.json(), remote_data, "sample.bam", [("chr1", 1000, 50000)], tmp_path)

        # proxied data: an upstream failing before the first byte is an htsget error ...
        err = requests.get(f"{server.url}/data/~broken/sample.bam",
                           headers={"Range": "bytes=0-99"}, timeout=10)
        assert err.status_code == 502 and err.json()["htsget"]["error"] == "UpstreamError"
        # ... so is one cut before the first chunk went out ...
        err = requests.get(f"{server.url}/data/~cut/sample.bam",
                           headers={"Range": "bytes=0-199999"}, timeout=10)
        assert err.status_code == 502 and "cut short" in err.json()["htsget"]["message"]
        # ... and one cut later never passes as complete: the client sees a short body
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(f"{server.url}/data/~cut/big.bam", headers={"Range": "bytes=0-999999"},
                         timeout=10)
        # the worker is still fine
        assert get("sample")[0].status_code == 200
    finally:
        server.stop()


# --------------------------------------------------------------------------- S3


def s3_engine(endpoint: str, **kw: Any) -> Htsget:
    kw.setdefault("timeout", TIMEOUT)
    return Htsget(Config(locations=[LocationConfig(
        backend="s3", bucket=kw.pop("bucket", BUCKET), prefix=kw.pop("prefix", PREFIX),
        endpoint_url=endpoint, path_style=True, **kw)]))


def test_s3_stopped_endpoint_is_503_quickly() -> None:
    engine = s3_engine(f"http://127.0.0.1:{free_port()}", retries=2)
    err = expect_error(lambda: engine.ticket(BAM_REGION), UpstreamError, 503, 2.0)
    assert "unreachable" in err.message


def test_s3_hanging_endpoint_is_504_within_timeout(hang: HangServer) -> None:
    engine = s3_engine(hang.url, retries=3)
    expect_error(lambda: engine.ticket(BAM_REGION), UpstreamError, 504, TIMEOUT + SLACK)


@pytest.mark.parametrize("bucket,cls,status,words", [
    ("e500", UpstreamError, 502, "500"),
    ("e503", UpstreamError, 503, "unavailable"),
    ("e404", NotFound, 404, "no"),
    ("s3badkey", UpstreamError, 502, "credentials"),
    # HEAD 403 + GET AccessDenied: missing-without-ListBucket or forbidden; answered 404
    ("s3denied", NotFound, 404, "no BAM file"),
])
def test_s3_error_answers(toy: ToyUpstream, bucket: str, cls: type, status: int,
                          words: str) -> None:
    engine = s3_engine(toy.url, bucket=bucket, prefix="", retries=1)
    err = expect_error(lambda: engine.ticket(BAM_REGION), cls, status, 3.0)
    assert words in err.message


def test_s3_get_denied_after_head_is_502(toy: ToyUpstream) -> None:
    """HEAD works but GET is refused: S3's 403 concerns our credentials -> 502."""
    s = S3Storage("head403", "", endpoint_url=toy.url, path_style=True, timeout=TIMEOUT)
    # head403 refuses HEAD only; the probe GET works, so metadata comes from it
    assert s.size("sample.bam") > 0
    s2 = S3Storage("e403", "", endpoint_url=toy.url, path_style=True, timeout=TIMEOUT)
    assert not s2.exists("sample.bam")  # bare 403 without an error document: ambiguous


def test_s3_truncated_transfer_is_502(toy: ToyUpstream) -> None:
    s = S3Storage("truncate", "", endpoint_url=toy.url, path_style=True, timeout=TIMEOUT)
    expect_error(lambda: s.read("sample.bam", 0, 300_000), UpstreamError, 502, 3.0)
    expect_error(lambda: s.read("sample.bam", 0, 100), UpstreamError, 502, 3.0)


def test_s3_truncated_index(moto: MotoServer) -> None:
    engine = s3_engine(moto.url)
    query = Query(Endpoint.READS, "broken", Format.BAM, regions=(Region("chr1", 0, 10_000),))
    err = expect_error(lambda: engine.ticket(query), InternalError, 500, 3.0)
    assert "broken.bam.bai" in err.message


def test_s3_outage_warm_cache_and_other_locations(tmp_path: Path, remote_data: Path,
                                                  moto: MotoServer) -> None:
    """An S3 endpoint goes down: warm IDs keep their tickets within the TTL, cold ones fail
    fast with 503, and a healthy location keeps serving."""
    own = MotoServer(tmp_path).start()
    upload_tree(own.client(), remote_data, BUCKET, PREFIX)
    engine = Htsget(Config(locations=[
        LocationConfig(name="flaky", regex="flaky/(.*)", backend="s3", bucket=BUCKET,
                       prefix=PREFIX, endpoint_url=own.url, path_style=True, cache_ttl=60,
                       timeout=TIMEOUT),
        LocationConfig(name="ok", regex="(.*)", backend="s3", bucket=BUCKET, prefix=PREFIX,
                       endpoint_url=moto.url, path_style=True, timeout=TIMEOUT),
    ]))
    warm = Query(Endpoint.READS, "flaky/sample", Format.BAM, regions=BAM_REGION.regions)
    before = engine.ticket(warm).to_json()
    own.stop()
    assert engine.ticket(warm).to_json() == before  # no S3 call needed within the TTL
    cold = Query(Endpoint.VARIANTS, "flaky/calls", Format.VCF, regions=(Region("1", 0, 9999),))
    expect_error(lambda: engine.ticket(cold), UpstreamError, 503, 2.0)
    ticket = engine.ticket(BAM_REGION).to_json()
    verify_ticket(ticket, remote_data, "sample.bam", [("chr1", 1000, 50000)], tmp_path)


def test_s3_faults_under_gunicorn(moto: MotoServer, hang: HangServer, remote_data: Path,
                                  tmp_path: Path) -> None:
    port = free_port()
    config = server_config(
        port,
        LocationConfig(name="down", regex="down/(.*)", backend="s3", bucket=BUCKET,
                       endpoint_url=f"http://127.0.0.1:{free_port()}", path_style=True,
                       timeout=TIMEOUT),
        LocationConfig(name="hang", regex="hang/(.*)", backend="s3", bucket=BUCKET,
                       endpoint_url=hang.url, path_style=True, timeout=TIMEOUT),
        LocationConfig(name="ok", regex="(.*)", backend="s3", bucket=BUCKET, prefix=PREFIX,
                       endpoint_url=moto.url, path_style=True, mode="proxy", timeout=TIMEOUT),
    )
    server = AppServer(tmp_path, config, port, workers=1, threads=4).start()
    try:
        for id, status in (("down/sample", 503), ("hang/sample", 504)):
            t0 = time.monotonic()
            resp = requests.get(f"{server.url}/reads/{id}", timeout=30)
            elapsed = time.monotonic() - t0
            assert resp.status_code == status, resp.text
            assert resp.json()["htsget"]["error"] == "UpstreamError"
            assert elapsed < TIMEOUT + SLACK
        resp = requests.get(f"{server.url}/reads/sample",
                            params={"referenceName": "chr2", "start": "0", "end": "60000"},
                            timeout=30)
        assert resp.status_code == 200, resp.text
        verify_ticket(resp.json(), remote_data, "sample.bam", [("chr2", 0, 60000)], tmp_path)
    finally:
        server.stop()



# --------------------------------------------------------------------------- circuit breaker


def test_circuit_breaker_states() -> None:
    now = [100.0]
    breaker = CircuitBreaker("x", threshold=3, cooldown=5.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.failure()
        breaker.check()  # still closed
    breaker.failure()
    with pytest.raises(UpstreamError) as info:
        breaker.check()
    assert info.value.status == 503 and "5.0 s" in info.value.message
    now[0] += 5.1
    breaker.check()  # half-open: one call goes through ...
    with pytest.raises(UpstreamError):
        breaker.check()  # ... the others still fail fast
    breaker.failure()  # the probe failed: open again
    now[0] += 1
    with pytest.raises(UpstreamError):
        breaker.check()
    now[0] += 5
    breaker.check()
    breaker.success()  # the probe worked: closed
    breaker.check()
    breaker.check()


def test_hanging_upstream_trips_the_breaker(hang: HangServer, toy: ToyUpstream) -> None:
    """Three timeouts in a row: further requests fail at once (503) instead of each tying up
    a thread for `timeout`; after the cooldown one request probes the upstream again."""
    engine = url_engine(hang.url + "/", retries=0)
    storage = engine.resolver.rules[0][2]
    assert isinstance(storage, UrlStorage)
    storage.breaker.cooldown = 1.0
    for _ in range(3):
        expect_error(lambda: engine.ticket(BAM_REGION), UpstreamError, 504, TIMEOUT + SLACK)
    err = expect_error(lambda: engine.ticket(BAM_REGION), UpstreamError, 503, 0.2)
    assert "not retried" in err.message
    time.sleep(1.1)
    expect_error(lambda: engine.ticket(BAM_REGION), UpstreamError, 504, TIMEOUT + SLACK)
    expect_error(lambda: engine.ticket(BAM_REGION), UpstreamError, 503, 0.2)
    # 404s and other answers never trip it: the upstream is there
    ok = UrlStorage(f"{toy.url}/e404/", retries=0)
    for _ in range(5):
        assert not ok.exists("sample.bam")
    assert ok.breaker.failures == 0


def test_s3_breaker(hang: HangServer) -> None:
    engine = s3_engine(hang.url, retries=0)
    for _ in range(3):
        expect_error(lambda: engine.ticket(BAM_REGION), UpstreamError, 504, TIMEOUT + SLACK)
    expect_error(lambda: engine.ticket(BAM_REGION), UpstreamError, 503, 0.2)
