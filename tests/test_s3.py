"""S3 backend against a real S3 endpoint process (moto's server on a loopback port).

Region tickets are fetched with plain `requests` and the ticket's headers (presigned urls, no
AWS credentials on the client side) and must reassemble to exactly the records htslib returns
(the whole list, in order). Proxy mode goes through a real gunicorn. Warm tickets make no S3
call within the TTL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, urlparse

import pysam
import pytest
import requests
from conftest import (
    SHARED_DATA,
    Server,
    assert_records,
    assert_ticket_records,
    free_port,
    htslib_records,
    make_bam,
    make_vcf,
    reassemble,
)

from htsgetr.config import Config, LocationConfig, ServerConfig
from htsgetr.engine import Htsget
from htsgetr.protocol import (
    Endpoint,
    Format,
    NotFound,
    PermissionDenied,
    Query,
    Region,
    UpstreamError,
)
from htsgetr.storage.base import Storage
from htsgetr.storage.s3 import ArchivedObject, S3Storage

boto3 = pytest.importorskip("boto3")

ROOT = Path(__file__).resolve().parent.parent
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_CONFIG_FILE": "/nonexistent",
}
BUCKET = "htsgetr-test"
PREFIX = "cohort"
EOF_BGZF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")

#: (file name under the data dir, files that go with it) of the shared reference data
SHARED_FILES = {
    "htsnexus_test_NA12878.bam": ("bam", [".bai", ".gzi"]),
    "htsnexus_test_NA12878.cram": ("cram", [".crai"]),
    "spec-v4.3.vcf.gz": ("vcf", [".tbi", ".gzi"]),
    "sample1-bcbio-cancer.vcf.gz": ("vcf", [".tbi", ".gzi"]),
    "spec-v4.3.bcf": ("bcf", [".csi", ".gzi"]),
}


# --------------------------------------------------------------------------- processes


def wait_port(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class MotoServer:
    """moto's S3 server as a real process; its request log goes to a file we can count."""

    def __init__(self, log_dir: Path, port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"moto-{self.port}.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> MotoServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **AWS_ENV},
        )
        log.close()
        wait_port(self.url + "/moto-api/", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def requests_logged(self) -> list[str]:
        """Request lines of the S3 API (moto's own /moto-api excluded)."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [ln for ln in lines if '"' in ln and "HTTP/1.1" in ln and "/moto-api" not in ln]

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )


class AppServer:
    """gunicorn serving `create_app(config)` from a generated module (works whether or not
    `htsgetr serve --config` is available)."""

    def __init__(self, tmp: Path, config: Config, port: int, env: Optional[dict[str, str]] = None,
                 workers: int = 2, threads: int = 4) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        name = f"htsgetr_test_app_{port}"
        (tmp / f"{name}.py").write_text(
            "from htsgetr.config import *  # noqa\n"
            "from htsgetr.app import create_app\n"
            f"app = create_app({config!r})\n"
        )
        self.log_path = tmp / f"{name}.log"
        log = open(self.log_path, "ab")
        path = os.pathsep.join([str(tmp), str(ROOT), os.environ.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", str(workers),
             "--threads", str(threads), "-k", "gthread", "--timeout", "60", f"{name}:app"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(tmp),
            env={**os.environ, **AWS_ENV, **(env or {}), "PYTHONPATH": path},
        )
        log.close()

    def start(self) -> AppServer:
        try:
            wait_port(self.url + "/service-info", self.proc)
        except RuntimeError:
            raise RuntimeError(self.log_path.read_text()) from None
        return self

    def stop(self) -> None:
        stop_process(self.proc)


def server_config(port: int, *locations: LocationConfig) -> Config:
    return Config(ticket_server=ServerConfig(host="127.0.0.1", port=port),
                  locations=list(locations))


# --------------------------------------------------------------------------- data


def build_remote_data(d: Path) -> Path:
    """Generated BAM/VCF files, plus the shared reference files where present."""
    make_bam(d / "sample.bam")
    (d / "nested").mkdir(exist_ok=True)
    make_bam(d / "nested" / "other.bam", seed=7)
    make_bam(d / "csi.bam", seed=3, csi=True, min_shift=12)
    make_vcf(d / "calls.vcf.gz")
    if shutil.which("samtools"):  # CRAM 3.0 with small containers, so regions span several
        subprocess.run(["samtools", "view", "-C", "--output-fmt",
                        "cram,version=3.0,no_ref=1,seqs_per_slice=100", "-o",
                        str(d / "reads.cram"), str(d / "sample.bam")], check=True, timeout=120)
        subprocess.run(["samtools", "index", str(d / "reads.cram")], check=True, timeout=120)
    if shutil.which("bcftools"):
        subprocess.run(["bcftools", "view", "-Ob", "-o", str(d / "calls.bcf"),
                        str(d / "calls.vcf.gz")], check=True, timeout=120)
        subprocess.run(["bcftools", "index", "-c", str(d / "calls.bcf")], check=True, timeout=120)
    for name, (sub, extras) in SHARED_FILES.items():
        src = SHARED_DATA / sub / name
        if src.exists():
            for suffix in ["", *extras]:
                if Path(str(src) + suffix).exists():
                    shutil.copy(str(src) + suffix, d / (name + suffix))
    return d


def upload_tree(client: Any, root: Path, bucket: str, prefix: str) -> None:
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    for path in sorted(root.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(root)}" if prefix else str(path.relative_to(root))
            client.upload_file(str(path), bucket, key)


def records(path: Path) -> list[str]:
    if path.suffix in (".bam", ".cram"):
        with pysam.AlignmentFile(str(path), check_sq=False) as f:
            return [r.to_string() for r in f.fetch(until_eof=True)]
    with pysam.VariantFile(str(path)) as f:
        return [str(r) for r in f]


def region_records(path: Path, contig: str, start: Optional[int], end: Optional[int]
                   ) -> list[str]:
    if path.suffix in (".bam", ".cram"):
        with pysam.AlignmentFile(str(path)) as f:
            if contig == "*":
                return [r.to_string() for r in f.fetch(until_eof=True)
                        if r.reference_id < 0]
            return [r.to_string() for r in f.fetch(contig, start, end)]
    with pysam.VariantFile(str(path)) as f:
        if contig not in f.index:
            return []
        return [str(r) for r in f.fetch(contig, start, end)]


def check_payload(payload: bytes, tmp: Path, suffix: str, expected: list[str]) -> list[str]:
    """The payload's records are exactly `expected`: the whole list, in order."""
    out = tmp / f"payload{suffix}"
    out.write_bytes(payload)
    got = records(out)
    assert_records(got, expected, out.name)
    return got


def query_for(name: str, regions: Optional[list[tuple[str, Optional[int], Optional[int]]]]
              ) -> tuple[Query, str]:
    if name.endswith(".bam"):
        endpoint, fmt, suffix = Endpoint.READS, Format.BAM, ".bam"
    elif name.endswith(".cram"):
        endpoint, fmt, suffix = Endpoint.READS, Format.CRAM, ".cram"
    elif name.endswith(".bcf"):
        endpoint, fmt, suffix = Endpoint.VARIANTS, Format.BCF, ".bcf"
    else:
        endpoint, fmt, suffix = Endpoint.VARIANTS, Format.VCF, ".vcf.gz"
    regs = None if regions is None else tuple(Region(c, s, e) for c, s, e in regions)
    return Query(endpoint, name[: -len(suffix)], fmt, regions=regs), suffix


#: (file, regions) region tickets checked against htslib; None = the whole file
CASES: list[tuple[str, Optional[list[tuple[str, Optional[int], Optional[int]]]]]] = [
    ("sample.bam", [("chr1", 1000, 50000)]),
    ("sample.bam", [("chr2", None, None)]),
    ("sample.bam", [("chr1", 10_000, 20_000), ("chr1", 15_000, 90_000), ("chr3", 0, 5000)]),
    ("sample.bam", [("*", None, None)]),
    ("sample.bam", None),
    ("nested/other.bam", [("chr3", 2000, 80_000)]),
    ("csi.bam", [("chr1", 100_000, 200_000)]),
    ("calls.vcf.gz", [("1", 1000, 150_000)]),
    ("calls.vcf.gz", [("X", None, None), ("2", 5, 100_000)]),
    ("calls.vcf.gz", None),
    ("reads.cram", [("chr1", 10_000, 90_000)]),
    ("reads.cram", [("chr2", None, None), ("chr3", 0, 30_000)]),
    ("reads.cram", [("*", None, None)]),
    ("reads.cram", None),
    ("calls.bcf", [("1", 1000, 150_000)]),
    ("calls.bcf", None),
    ("htsnexus_test_NA12878.bam", [("11", 5_000_000, 5_050_000)]),
    ("htsnexus_test_NA12878.bam", [("20", None, None)]),
    ("htsnexus_test_NA12878.cram", [("11", 5_010_000, 5_020_000)]),
    ("spec-v4.3.vcf.gz", [("20", 1, 1_300_000)]),
    ("sample1-bcbio-cancer.vcf.gz", [("chrM", 100, 10_000)]),
    ("spec-v4.3.bcf", [("20", 1, 1_300_000)]),
]


def expected_records(path: Path, regions: Optional[list[tuple[str, Optional[int], Optional[int]]]]
                     ) -> list[str]:
    """htslib's records for `regions` (None: the whole file), each once, in file order."""
    if regions is None:
        return records(path)
    return htslib_records(path, regions)


def verify_ticket(ticket: dict, data: Path, name: str,
                  regions: Optional[list[tuple[str, Optional[int], Optional[int]]]],
                  tmp: Path) -> bytes:
    """The reassembled ticket holds exactly htslib's records for `regions` (None: the whole
    file): the whole list, in order, every format (CRAM included)."""
    payload = reassemble(ticket)
    assert_ticket_records(payload, tmp, data / name, regions)
    return payload


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def remote_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_remote_data(tmp_path_factory.mktemp("remote"))


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory, remote_data: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    upload_tree(server.client(), remote_data, BUCKET, PREFIX)
    yield server
    server.stop()


def s3_location(moto: MotoServer, **kw: Any) -> LocationConfig:
    params: dict[str, Any] = {
        "backend": "s3", "bucket": BUCKET, "prefix": PREFIX, "endpoint_url": moto.url,
        "path_style": True,
    }
    params.update(kw)
    return LocationConfig(**params)


def storage_of(engine: Htsget) -> S3Storage:
    storage = engine.resolver.rules[0][2]
    assert isinstance(storage, S3Storage)
    return storage


# --------------------------------------------------------------------------- storage units


def test_storage_basics(moto: MotoServer, remote_data: Path) -> None:
    s = S3Storage(BUCKET, PREFIX, endpoint_url=moto.url, path_style=True, expires=600)
    assert isinstance(s, Storage)
    raw = (remote_data / "sample.bam").read_bytes()
    assert s.exists("sample.bam") and not s.exists("nope.bam")
    assert s.size("sample.bam") == len(raw)
    assert s.version("sample.bam").startswith('"')
    assert s.version("sample.bam") != s.version("csi.bam")
    # small reads (window cache), a read across two windows, a large read, past the end
    for a, b in [(0, 18), (5, 1000), (131_000, 132_000), (0, 300_000), (len(raw) - 28, len(raw)),
                 (len(raw) - 10, len(raw) + 100), (len(raw) + 5, len(raw) + 10)]:
        assert s.read("sample.bam", a, b) == raw[a:b], (a, b)
    assert s.read("nested/other.bam", 0, 4) == b"\x1f\x8b\x08\x04"
    with pytest.raises(NotFound):
        s.size("nope.bam")
    with pytest.raises(NotFound):
        s.read("nope.bam", 0, 10)
    for bad in ("../sample.bam", "/sample.bam", "a//b", ""):
        assert not s.exists(bad)


def test_presigned_block_urls(moto: MotoServer, remote_data: Path) -> None:
    """Presigned GET urls carry the Range in headers; plain requests (no AWS) fetch them."""
    s = S3Storage(BUCKET, PREFIX, endpoint_url=moto.url, path_style=True, expires=900)
    raw = (remote_data / "sample.bam").read_bytes()
    for a, b in [(0, 1), (100, 70_000), (1000, len(raw))]:
        url, headers = s.block_url("sample.bam", a, b)
        assert headers == {"Range": f"bytes={a}-{b - 1}"}
        parsed = urlparse(url)
        assert parsed.path == f"/{BUCKET}/{PREFIX}/sample.bam"  # path-style addressing
        qs = parse_qs(parsed.query)
        assert qs["X-Amz-Expires"] == ["900"] and "X-Amz-Signature" in qs
        resp = requests.get(url, headers=headers, timeout=10)
        assert resp.status_code == 206 and resp.content == raw[a:b]


def test_public_endpoint_for_presigned_urls(moto: MotoServer, remote_data: Path) -> None:
    """We reach the store at 127.0.0.1, clients at `localhost`: presigned urls are signed for
    the public endpoint (the host is part of a SigV4 signature) and work from there."""
    public = moto.url.replace("127.0.0.1", "localhost")
    s = S3Storage(BUCKET, PREFIX, endpoint_url=moto.url, public_endpoint_url=public,
                  path_style=True)
    raw = (remote_data / "sample.bam").read_bytes()
    url, headers = s.block_url("sample.bam", 10, 5000)
    assert url.startswith(f"{public}/{BUCKET}/{PREFIX}/sample.bam?")
    resp = requests.get(url, headers=headers, timeout=10)
    assert resp.status_code == 206 and resp.content == raw[10:5000]
    assert s.read("sample.bam", 0, 4) == raw[:4]  # our own reads still use endpoint_url
    plain = S3Storage(BUCKET, PREFIX, endpoint_url=moto.url, path_style=True)
    assert plain.block_url("sample.bam", 0, 1)[0].startswith(f"{moto.url}/")


def test_presigned_for_the_buckets_region(moto: MotoServer, remote_data: Path) -> None:
    """A bucket in eu-west-1, a server whose session says us-east-1: the presigned url is
    signed for eu-west-1 (HeadBucket once, then cached); a configured region wins unasked."""
    client = moto.client()
    client.create_bucket(Bucket="htsgetr-eu",
                         CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    raw = (remote_data / "sample.bam").read_bytes()
    client.put_object(Bucket="htsgetr-eu", Key="x/sample.bam", Body=raw)
    client.put_object(Bucket="htsgetr-eu", Key="x/other.bam", Body=raw)
    # (metadata kept an hour: without a TTL the object's HEAD is asked again after a
    # second, which a loaded machine can take before the count below)
    s = S3Storage("htsgetr-eu", "x", endpoint_url=moto.url, path_style=True, cache_ttl=3600)
    url, headers = s.block_url("sample.bam", 0, 100)
    scope = parse_qs(urlparse(url).query)["X-Amz-Credential"][0]
    assert "/eu-west-1/s3/aws4_request" in scope
    assert requests.get(url, headers=headers, timeout=10).content == raw[:100]
    calls = s.calls
    s.block_url("sample.bam", 100, 200)
    assert s.calls == calls  # the ticket's url is reused
    url, _ = s.block_url("other.bam", 0, 100)  # another object: its HEAD, no HeadBucket
    assert s.calls == calls + 1  # the region is remembered
    assert "/eu-west-1/s3/" in parse_qs(urlparse(url).query)["X-Amz-Credential"][0]
    fixed = S3Storage("htsgetr-eu", "x", endpoint_url=moto.url, path_style=True,
                      region="eu-west-1")
    url, _ = fixed.block_url("sample.bam", 0, 100)
    assert "/eu-west-1/s3/" in parse_qs(urlparse(url).query)["X-Amz-Credential"][0]
    assert fixed.bucket_region("htsgetr-eu") == "eu-west-1"


def test_bucket_from_key(moto: MotoServer, remote_data: Path) -> None:
    """Without a bucket, keys are `<bucket>/<key>` (for buckets taken from the ID)."""
    s = S3Storage(None, PREFIX, endpoint_url=moto.url, path_style=True)
    raw = (remote_data / "calls.vcf.gz").read_bytes()
    assert s.read(f"{BUCKET}/calls.vcf.gz", 0, 100) == raw[:100]
    assert not s.exists("no-such-bucket-here/calls.vcf.gz")
    assert not s.exists("calls.vcf.gz")  # no bucket segment
    url, _ = s.block_url(f"{BUCKET}/calls.vcf.gz", 0, 10)
    assert f"/{BUCKET}/{PREFIX}/calls.vcf.gz" in url
    # a "$1" template in the location is the same thing (the resolver expands it)
    assert S3Storage("$1", "", endpoint_url=moto.url).bucket is None


def test_endpoint_from_environment(moto: MotoServer, remote_data: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_ENDPOINT_URL_S3 is honoured as boto3 does (no endpoint in the location)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)
    s = S3Storage(BUCKET, PREFIX, path_style=True)
    assert s.size("sample.bam") == (remote_data / "sample.bam").stat().st_size
    assert s.block_url("sample.bam", 0, 10)[0].startswith(moto.url + "/")


def test_anonymous_public_bucket(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials anywhere: unsigned requests, plain object urls in tickets."""
    client = moto.client()
    client.create_bucket(Bucket="htsgetr-public")
    client.put_object(Bucket="htsgetr-public", Key="x.bin", Body=b"0123456789", ACL="public-read")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s = S3Storage("htsgetr-public", "", endpoint_url=moto.url, path_style=True)
    assert s.read("x.bin", 2, 5) == b"234"
    url, headers = s.block_url("x.bin", 2, 5)
    assert "X-Amz-Signature" not in url
    assert requests.get(url, headers=headers, timeout=10).content == b"234"


def test_glacier_is_a_clear_error(moto: MotoServer) -> None:
    client = moto.client()
    body = (Path(__file__).parent / "conftest.py").read_bytes()
    client.put_object(Bucket=BUCKET, Key="cold/frozen.bam", Body=body, StorageClass="GLACIER")
    client.put_object(Bucket=BUCKET, Key="cold/frozen.bam.bai", Body=b"BAI\x01")
    s = S3Storage(BUCKET, "cold", endpoint_url=moto.url, path_style=True)
    assert s.exists("frozen.bam") and s.size("frozen.bam") == len(body)
    for call in (lambda: s.read("frozen.bam", 0, 10), lambda: s.block_url("frozen.bam", 0, 10),
                 lambda: s.stream("frozen.bam", 0, 10)):
        with pytest.raises(ArchivedObject) as info:
            call()
        assert info.value.status == 403 and "GLACIER" in info.value.message
        assert isinstance(info.value, PermissionDenied)
    engine = Htsget(Config(locations=[s3_location(moto, prefix="cold")]))
    with pytest.raises(PermissionDenied) as denied:
        engine.ticket(Query(Endpoint.READS, "frozen", Format.BAM))
    assert "restored" in denied.value.message
    assert denied.value.to_json()["htsget"]["error"] == "PermissionDenied"


def test_changed_object_is_never_mixed(moto: MotoServer, remote_data: Path) -> None:
    """Within the TTL the cached version is trusted, but a read that meets another ETag
    fails (and drops the cache) instead of mixing two versions of a file."""
    client = moto.client()
    client.put_object(Bucket=BUCKET, Key="mut/x.bin", Body=b"a" * 500_000)
    s = S3Storage(BUCKET, "mut", endpoint_url=moto.url, path_style=True, cache_ttl=300)
    v1 = s.version("x.bin")
    assert s.read("x.bin", 0, 10) == b"a" * 10
    client.put_object(Bucket=BUCKET, Key="mut/x.bin", Body=b"b" * 500_000)
    assert s.version("x.bin") == v1  # within the TTL: no S3 call
    assert s.read("x.bin", 0, 10) == b"a" * 10  # cached window of the same version
    with pytest.raises(UpstreamError) as info:
        s.read("x.bin", 400_000, 400_010)  # not cached: S3 answers with the new ETag
    assert info.value.status == 502 and "changed" in info.value.message
    assert s.version("x.bin") != v1
    assert s.read("x.bin", 400_000, 400_010) == b"b" * 10


# --------------------------------------------------------------------------- tickets


@pytest.mark.parametrize("name,regions", CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_presigned_region_tickets(moto: MotoServer, remote_data: Path, tmp_path: Path,
                                  name: str, regions: Any) -> None:
    if not (remote_data / name).exists():
        pytest.skip(f"{name} not present (../shared/data absent)")
    engine = Htsget(Config(locations=[s3_location(moto)]))
    query, _ = query_for(name, regions)
    try:
        ticket = engine.ticket(query).to_json()
    except NotFound as exc:
        if "not available" in exc.message:
            pytest.skip(exc.message)
        raise
    for block in ticket["htsget"]["urls"]:
        if not block["url"].startswith("data:"):
            assert "X-Amz-Signature=" in block["url"] and f"/{BUCKET}/{PREFIX}/" in block["url"]
            assert block["headers"]["Range"].startswith("bytes=")
    verify_ticket(ticket, remote_data, name, regions, tmp_path)


def test_s3_tickets_equal_local_tickets(moto: MotoServer, remote_data: Path) -> None:
    """Same byte ranges and inline blocks as the same file on local disk."""
    local = Htsget(Config(locations=[LocationConfig(root=str(remote_data))]))
    remote = Htsget(Config(locations=[s3_location(moto)]))
    for name, regions in CASES[:8]:
        query, _ = query_for(name, regions)
        a = local.ticket(query).to_json()["htsget"]["urls"]
        b = remote.ticket(query).to_json()["htsget"]["urls"]
        assert [x.get("headers") for x in a] == [x.get("headers") for x in b]
        assert [x["url"] for x in a if x["url"].startswith("data:")] == \
            [x["url"] for x in b if x["url"].startswith("data:")]


def test_warm_ticket_makes_no_s3_call(moto: MotoServer, remote_data: Path) -> None:
    engine = Htsget(Config(locations=[s3_location(moto, cache_ttl=60)]))
    storage = storage_of(engine)
    methods: list[str] = []
    storage.client.meta.events.register(
        "before-send.s3", lambda request, **_: methods.append(request.method))
    query = Query(Endpoint.READS, "sample", Format.BAM, regions=(Region("chr1", 1000, 50000),))
    t0 = time.perf_counter()
    cold = engine.ticket(query).to_json()
    cold_ms = (time.perf_counter() - t0) * 1000
    cold_calls = len(methods)
    assert cold_calls > 0 and "GET" in methods
    warm_ms = []
    for _ in range(5):
        methods.clear()
        t0 = time.perf_counter()
        assert engine.ticket(query).to_json() == cold
        warm_ms.append((time.perf_counter() - t0) * 1000)
        assert methods == [], methods
    print(f"\nS3 ticket: cold {cold_ms:.1f} ms ({cold_calls} S3 calls), "
          f"warm {min(warm_ms):.2f}-{max(warm_ms):.2f} ms (0 S3 calls)")


def test_ttl_zero_revalidates_with_one_listing(moto: MotoServer) -> None:
    """With cache_ttl = 0 a warm ticket only revalidates, never re-reads: one listing tells
    the data file, its index candidates, .gzi and .md5 (not a HEAD per object)."""
    engine = Htsget(Config(locations=[s3_location(moto, cache_ttl=0)]))
    storage = storage_of(engine)
    sent: list[tuple[str, str]] = []
    storage.client.meta.events.register(
        "before-send.s3", lambda request, **_: sent.append((request.method, request.url)))
    query = Query(Endpoint.VARIANTS, "calls", Format.VCF, regions=(Region("1", 1000, 90000),))
    engine.ticket(query)
    time.sleep(1.2)  # past the coalescing window
    sent.clear()
    rounds = storage.rounds
    engine.ticket(query)
    assert len(sent) == 1 and sent[0][0] == "GET" and "list-type=2" in sent[0][1], sent
    assert storage.rounds == rounds + 1


def test_changed_object_gives_new_ticket(moto: MotoServer, remote_data: Path,
                                         tmp_path: Path) -> None:
    client = moto.client()
    src = tmp_path / "v1.bam"
    make_bam(src, seed=21, n_reads=800)
    for suffix in ("", ".bai"):
        client.upload_file(str(src) + suffix, BUCKET, f"swap/x.bam{suffix}")
    engine = Htsget(Config(locations=[s3_location(moto, prefix="swap", cache_ttl=0)]))
    query = Query(Endpoint.READS, "x", Format.BAM, regions=(Region("chr1", 0, 100_000),))
    first = engine.ticket(query).to_json()
    assert_ticket_records(reassemble(first), tmp_path, src, [("chr1", 0, 100_000)])
    src2 = tmp_path / "v2.bam"
    make_bam(src2, seed=22, n_reads=1600)
    for suffix in ("", ".bai"):
        client.upload_file(str(src2) + suffix, BUCKET, f"swap/x.bam{suffix}")
    time.sleep(1.2)
    second = engine.ticket(query).to_json()
    assert second != first
    assert_ticket_records(reassemble(second), tmp_path, src2, [("chr1", 0, 100_000)])


# --------------------------------------------------------------------------- under gunicorn


def test_proxy_mode_under_gunicorn(moto: MotoServer, remote_data: Path, tmp_path: Path) -> None:
    """Ticket urls point at our /data, which streams the range from S3."""
    port = free_port()
    config = server_config(port, s3_location(moto, mode="proxy", cache_ttl=60))
    server = AppServer(tmp_path, config, port, workers=1).start()
    try:
        for name, regions in [CASES[0], CASES[2], CASES[7]]:
            query, _ = query_for(name, regions)
            params: dict[str, Any] = {"format": query.format.value}
            if regions and len(regions) == 1:
                params.update(referenceName=regions[0][0], start=regions[0][1],
                              end=regions[0][2])
                resp = requests.get(f"{server.url}/{query.endpoint.value}/{query.id}",
                                    params=params, timeout=30)
            else:
                body = {"format": query.format.value,
                        "regions": [{"referenceName": c, "start": s, "end": e}
                                    for c, s, e in regions or []]}
                resp = requests.post(f"{server.url}/{query.endpoint.value}/{query.id}",
                                     json=body, timeout=30)
            assert resp.status_code == 200, resp.text
            ticket = resp.json()
            for block in ticket["htsget"]["urls"]:
                if not block["url"].startswith("data:"):
                    assert block["url"].startswith(f"{server.url}/data/{name}")
            verify_ticket(ticket, remote_data, name, regions, tmp_path)
        # /data answers ranges itself, with the object's size
        raw = (remote_data / "sample.bam").read_bytes()
        resp = requests.get(f"{server.url}/data/sample.bam", headers={"Range": "bytes=10-99"},
                            timeout=10)
        assert resp.status_code == 206 and resp.content == raw[10:100]
        assert resp.headers["Content-Range"] == f"bytes 10-99/{len(raw)}"
        missing = requests.get(f"{server.url}/reads/nope", timeout=10)
        assert missing.status_code == 404 and missing.json()["htsget"]["error"] == "NotFound"
        # warm tickets reach moto no more (one worker, TTL 60 s): count its request log
        url = f"{server.url}/reads/sample?referenceName=chr1&start=1000&end=50000"
        assert requests.get(url, timeout=10).status_code == 200
        before = len(moto.requests_logged())
        for _ in range(5):
            assert requests.get(url, timeout=10).status_code == 200
        time.sleep(0.2)
        assert len(moto.requests_logged()) == before
    finally:
        server.stop()


def test_presigned_mode_under_gunicorn(moto: MotoServer, remote_data: Path,
                                       tmp_path: Path) -> None:
    port = free_port()
    config = server_config(port, s3_location(moto))
    server = AppServer(tmp_path, config, port, workers=2).start()
    try:
        resp = requests.get(f"{server.url}/reads/sample",
                            params={"referenceName": "chr1", "start": "5000", "end": "200000"},
                            timeout=30)
        assert resp.status_code == 200, resp.text
        ticket = resp.json()
        assert any(b["url"].startswith(moto.url + "/") for b in ticket["htsget"]["urls"])
        verify_ticket(ticket, remote_data, "sample.bam", [("chr1", 5000, 200_000)], tmp_path)
    finally:
        server.stop()


def test_aws_presigned_urls_are_regional() -> None:
    """Real AWS: virtual-hosted regional urls (no redirect needed), path style for dotted
    bucket names (TLS wildcard) or when asked. Presigning is local: no network here."""
    cases = [
        (S3Storage("bucket1", "", region="eu-west-1"),
         "https://bucket1.s3.eu-west-1.amazonaws.com/x?"),
        (S3Storage("my.bucket", "", region="eu-west-1"),
         "https://s3.eu-west-1.amazonaws.com/my.bucket/x?"),
        (S3Storage("bucket1", "", region="eu-west-1", path_style=True),
         "https://s3.eu-west-1.amazonaws.com/bucket1/x?"),
    ]
    for storage, prefix in cases:
        assert storage.presign(storage.bucket or "", "x").startswith(prefix)


def test_serve_storage_s3_with_endpoint_from_environment(moto: MotoServer, remote_data: Path,
                                                         tmp_path: Path) -> None:
    """`htsgetr serve --storage s3://bucket/prefix` against any S3-compatible endpoint given
    by AWS_ENDPOINT_URL_S3, no config file."""
    port = free_port()
    server = Server(["--storage", f"s3://{BUCKET}/{PREFIX}", "--port", str(port)], port,
                    env={**AWS_ENV, "AWS_ENDPOINT_URL_S3": moto.url})
    server.start()
    try:
        resp = requests.get(f"{server.url}/reads/sample",
                            params={"referenceName": "chr1", "start": "1000", "end": "90000"},
                            timeout=30)
        assert resp.status_code == 200, resp.text
        ticket = resp.json()
        assert any(b["url"].startswith(f"{moto.url}/{BUCKET}/{PREFIX}/sample.bam?")
                   for b in ticket["htsget"]["urls"])
        verify_ticket(ticket, remote_data, "sample.bam", [("chr1", 1000, 90000)], tmp_path)
    finally:
        server.stop()


def test_bucket_from_capture_group_config_file(moto: MotoServer, remote_data: Path,
                                               tmp_path: Path) -> None:
    """A bucket named by the ID (`bucket = "${b}"`), from a TOML config under gunicorn."""
    port = free_port()
    config = tmp_path / "htsgetr.toml"
    config.write_text(f"""
[ticket_server]
host = "127.0.0.1"
port = {port}

[[locations]]
regex = "(?P<b>[a-z0-9-]+)/(.*)"
substitution = "$2"
backend = "s3"
bucket = "${{b}}"
prefix = "{PREFIX}"
endpoint_url = "{moto.url}"
path_style = true
mode = "proxy"
""")
    server = Server(["--config", str(config)], port, env=AWS_ENV)
    server.start()
    try:
        resp = requests.get(f"{server.url}/variants/{BUCKET}/calls",
                            params={"referenceName": "1", "start": "0", "end": "300000"},
                            timeout=30)
        assert resp.status_code == 200, resp.text
        verify_ticket(resp.json(), remote_data, "calls.vcf.gz", [("1", 0, 300_000)], tmp_path)
        missing = requests.get(f"{server.url}/variants/no-such-bucket/calls", timeout=30)
        assert missing.status_code == 404, missing.text
    finally:
        server.stop()


def test_md5_from_single_part_etag(moto: MotoServer, remote_data: Path) -> None:
    import hashlib

    s = S3Storage(BUCKET, PREFIX, endpoint_url=moto.url, path_style=True)
    raw = (remote_data / "calls.vcf.gz").read_bytes()
    assert s.md5("calls.vcf.gz") == hashlib.md5(raw).hexdigest()
    client = moto.client()
    part = b"x" * (5 * 1024 * 1024)
    upload = client.create_multipart_upload(Bucket=BUCKET, Key="multi/x.bin")
    etags = [client.upload_part(Bucket=BUCKET, Key="multi/x.bin", UploadId=upload["UploadId"],
                                PartNumber=n, Body=part)["ETag"] for n in (1, 2)]
    client.complete_multipart_upload(
        Bucket=BUCKET, Key="multi/x.bin", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n + 1} for n, e in enumerate(etags)]})
    assert S3Storage(BUCKET, "multi", endpoint_url=moto.url, path_style=True).md5("x.bin") is None


def test_profile(moto: MotoServer, remote_data: Path, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A named profile from the shared credentials file; an unknown one is a config error."""
    creds = tmp_path / "credentials"
    creds.write_text("[htsgetr]\naws_access_key_id = fromprofile\n"
                     "aws_secret_access_key = fromprofile\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s = S3Storage(BUCKET, PREFIX, endpoint_url=moto.url, path_style=True, profile="htsgetr")
    assert s.size("calls.vcf.gz") == (remote_data / "calls.vcf.gz").stat().st_size
    assert "Credential=fromprofile%2F" in s.block_url("calls.vcf.gz", 0, 10)[0]
    with pytest.raises(ValueError, match="not configured"):
        S3Storage(BUCKET, PREFIX, endpoint_url=moto.url, profile="nope")


def test_a_bucket_that_cannot_be_used_is_refused_at_start(
    moto: MotoServer, tmp_path: Path
) -> None:
    from htsgetr.cli import load
    from htsgetr.config import ConfigError

    def config(bucket: str, allow: str = "") -> str:
        path = tmp_path / "s3.toml"
        path.write_text(f'{allow}\n[[locations]]\nbackend = "s3"\nbucket = "{bucket}"\n'
                        f'endpoint_url = "{moto.url}"\npath_style = true\nretries = 0\n')
        return str(path)

    load(config(BUCKET), {}, env={})  # the real bucket: fine
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket-x' cannot be used"):
        load(config("no-such-bucket-x"), {}, env={})
    load(config("no-such-bucket-x", "allow_missing = true"), {}, env={})


def test_with_auth_presigned_urls_expire_with_the_signed_ones(
    moto: MotoServer, remote_data: Path
) -> None:
    """Auth on: a presigned url lives no longer than our signed /data urls (default 600 s)."""
    from htsgetr.auth.schema import AuthConfig, JwtConfig

    for auth_expires, location_expires, expected in [(600, 3600, "600"), (600, 60, "60")]:
        config = server_config(8080, s3_location(moto, expires=location_expires))
        config.auth = AuthConfig(jwt=JwtConfig(kind="jwks", url="https://idp.test/jwks"))
        config.auth.data_urls.expires = auth_expires
        url, _ = storage_of(Htsget(config)).block_url("sample.bam", 0, 10)
        assert parse_qs(urlparse(url).query)["X-Amz-Expires"] == [expected]


# --------------------------------------------------------------------------- round trips

#: per format: a file, a region for a cold ticket, another region of the same file (a ticket
#: on a file whose header and index are cached)
ROUND_TRIPS: list[tuple[str, tuple[str, int, int], tuple[str, int, int]]] = [
    ("sample.bam", ("chr1", 1000, 50_000), ("chr2", 5000, 60_000)),
    ("csi.bam", ("chr1", 100_000, 200_000), ("chr2", 0, 80_000)),
    ("reads.cram", ("chr1", 10_000, 90_000), ("chr3", 0, 30_000)),
    ("calls.vcf.gz", ("1", 1000, 150_000), ("2", 5, 100_000)),
    ("calls.bcf", ("1", 1000, 150_000), ("2", 5, 100_000)),
    ("htsnexus_test_NA12878.bam", ("11", 5_000_000, 5_050_000), ("11", 4_900_000, 4_910_000)),
    ("htsnexus_test_NA12878.cram", ("11", 5_010_000, 5_020_000), ("11", 4_900_000, 4_910_000)),
    ("spec-v4.3.vcf.gz", ("20", 1, 1_300_000), ("20", 14_000, 18_000)),
    ("spec-v4.3.bcf", ("20", 1, 1_300_000), ("20", 14_000, 18_000)),
]


def local_records(ticket: dict, path: Path, tmp: Path, suffix: str) -> list[str]:
    """The records of a local-disk ticket on `path`, its byte ranges read from the file."""
    import base64

    raw, parts = path.read_bytes(), []
    for block in ticket["htsget"]["urls"]:
        if block["url"].startswith("data:"):
            parts.append(base64.b64decode(block["url"].partition(",")[2]))
        else:
            first, _, last = block["headers"]["Range"].removeprefix("bytes=").partition("-")
            parts.append(raw[int(first) : int(last) + 1])
    out = tmp / f"local{suffix}"
    out.write_bytes(b"".join(parts))
    return records(out)


def moto_agrees(moto: MotoServer, before: int, calls: int) -> None:
    """moto's own request log counts the requests `S3Storage.calls` counted."""
    deadline = time.monotonic() + 5
    while len(moto.requests_logged()) - before < calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(moto.requests_logged()) - before == calls


@pytest.mark.parametrize("name,region,other", ROUND_TRIPS, ids=[c[0] for c in ROUND_TRIPS])
def test_cold_ticket_round_trips(moto: MotoServer, remote_data: Path, tmp_path: Path,
                                 name: str, region: tuple[str, int, int],
                                 other: tuple[str, int, int]) -> None:
    """A cold region ticket waits on at most 3 sequential round trips to S3 (one listing;
    header, index and EOF in parallel; the region's edge blocks in parallel), the same
    ticket again on none, another region of the same file on at most one. The records are
    those of the same ticket on local disk (prefetching changes no byte), htslib's all."""
    if not (remote_data / name).exists():
        pytest.skip(f"{name} not present (../shared/data absent)")
    engine = Htsget(Config(locations=[s3_location(moto, cache_ttl=60)]))
    storage = storage_of(engine)
    local = Htsget(Config(locations=[LocationConfig(root=str(remote_data))]))
    query, suffix = query_for(name, [region])
    before = len(moto.requests_logged())
    cold = engine.ticket(query).to_json()
    assert 1 <= storage.rounds <= 3, (storage.rounds, storage.calls)
    moto_agrees(moto, before, storage.calls)
    rounds, calls = storage.rounds, storage.calls
    assert engine.ticket(query).to_json() == cold
    assert (storage.rounds, storage.calls) == (rounds, calls)  # warm: no S3 call at all
    query2, _ = query_for(name, [other])
    second = engine.ticket(query2).to_json()
    assert storage.rounds - rounds <= 1, storage.rounds - rounds
    print(f"\n{name}: cold {rounds} rounds ({calls} requests), same again 0, "
          f"another region {storage.rounds - rounds} ({storage.calls - calls} requests)")
    for q, ticket, regions in ((query, cold, [region]), (query2, second, [other])):
        expected = expected_records(remote_data / name, list(regions))
        got = check_payload(reassemble(ticket), tmp_path, suffix, expected)
        assert got == local_records(local.ticket(q).to_json(), remote_data / name, tmp_path,
                                    suffix)


def test_whole_file_ticket_md5_with_listed_metadata(moto: MotoServer, remote_data: Path
                                                    ) -> None:
    """Metadata from a listing does not say whether an ETag is an MD5 (encryption): the
    GET of the header does, so a whole-file ticket still carries the right md5."""
    import hashlib

    engine = Htsget(Config(locations=[s3_location(moto, cache_ttl=60)]))
    ticket = engine.ticket(Query(Endpoint.READS, "sample", Format.BAM))
    raw = (remote_data / "sample.bam").read_bytes()
    assert ticket.md5 == hashlib.md5(raw).hexdigest()
    assert storage_of(engine).rounds <= 2


def test_stat_many_listing_cut_short(moto: MotoServer, remote_data: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing page that ends before some keys: those are asked by GET, in one more round
    trip; every answer (found, size, not found) is right and cached."""
    import htsgetr.storage.s3 as s3

    monkeypatch.setattr(s3, "LIST_PAGE", 1)
    s = S3Storage(BUCKET, PREFIX, endpoint_url=moto.url, path_style=True, cache_ttl=60)
    keys = ["sample.bam", "sample.bam.bai", "sample.bai", "sample.bam.csi", "sample.bam.gzi",
            "sample.bam.md5", "sample.zzz"]
    found = s.stat_many(keys)
    assert s.rounds == 2
    assert {k for k, m in found.items() if m is not None} == {"sample.bam", "sample.bam.bai"}
    assert found["sample.bam"] is not None
    assert found["sample.bam"].size == (remote_data / "sample.bam").stat().st_size
    calls = s.calls
    assert s.exists("sample.bam.bai") and not s.exists("sample.bai") and s.calls == calls


def test_read_many_in_one_round(moto: MotoServer, remote_data: Path) -> None:
    s = S3Storage(BUCKET, PREFIX, endpoint_url=moto.url, path_style=True, cache_ttl=60)
    raw = (remote_data / "sample.bam").read_bytes()
    bai = (remote_data / "sample.bam.bai").read_bytes()
    s.stat_many(["sample.bam", "sample.bam.bai"])
    rounds = s.rounds
    ranges = [("sample.bam", 0, 18), ("sample.bam", 100, 70_000), ("sample.bam.bai", 0, len(bai)),
              ("sample.bam", len(raw) - 28, len(raw)), ("sample.bam", 5, 900_000)]
    assert s.read_many(ranges) == [raw[0:18], raw[100:70_000], bai, raw[-28:], raw[5:900_000]]
    assert s.rounds == rounds + 1
    calls = s.calls
    assert s.read("sample.bam", 130_000, 131_000) == raw[130_000:131_000] and s.calls == calls


@pytest.fixture()
def locked_moto(tmp_path: Path, remote_data: Path) -> Iterator[tuple[MotoServer, dict[str, str]]]:
    """A moto server enforcing IAM for a role that may GetObject but not ListBucket (nor
    read `secret/`): the shape of many production roles."""
    import json

    server = MotoServer(tmp_path).start()
    try:
        client = server.client()
        client.create_bucket(Bucket="htsgetr-locked")
        for name in ("sample.bam", "sample.bam.bai", "calls.vcf.gz", "calls.vcf.gz.tbi"):
            client.upload_file(str(remote_data / name), "htsgetr-locked", f"{PREFIX}/{name}")
        client.upload_file(str(remote_data / "sample.bam"), "htsgetr-locked",
                           f"{PREFIX}/secret.bam")
        iam = boto3.client("iam", endpoint_url=server.url, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="get", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject"],
                 "Resource": "arn:aws:s3:::htsgetr-locked/*"},
                {"Effect": "Deny", "Action": ["s3:GetObject"],
                 "Resource": f"arn:aws:s3:::htsgetr-locked/{PREFIX}/secret.*"},
            ]}))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        # from now on moto checks every request against IAM
        assert requests.post(f"{server.url}/moto-api/reset-auth", data=b"0", timeout=10).ok
        yield server, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                       "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        server.stop()


def test_without_list_bucket_gets_tell_existence(
    locked_moto: tuple[MotoServer, dict[str, str]], remote_data: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No s3:ListBucket: the start-up check accepts the bucket and learns that listings are
    denied; tickets then find objects by parallel GETs (which also bring their first bytes),
    still in at most 3 sequential round trips, with the same byte ranges. (moto's IAM does
    not check presigned urls, so the ranges are read from the local copy.)"""
    server, creds = locked_moto
    for name, value in creds.items():
        monkeypatch.setenv(name, value)
    engine = Htsget(Config(locations=[s3_location(server, bucket="htsgetr-locked",
                                                  cache_ttl=60)]))
    storage = storage_of(engine)
    with pytest.raises(Exception) as listing:
        storage.client.list_objects_v2(Bucket="htsgetr-locked", Prefix=PREFIX)
    assert "AccessDenied" in str(listing.value)  # moto does enforce the policy
    storage.check()  # as `htsgetr serve` does at start
    assert "htsgetr-locked" in storage._unlisted
    local = Htsget(Config(locations=[LocationConfig(root=str(remote_data))]))
    for name, region in [("sample.bam", ("chr1", 1000, 50_000)),
                         ("calls.vcf.gz", ("1", 1000, 150_000))]:
        query, suffix = query_for(name, [region])
        rounds = storage.rounds
        ticket = engine.ticket(query).to_json()
        assert storage.rounds - rounds <= 3, storage.rounds - rounds
        got = local_records(ticket, remote_data / name, tmp_path, suffix)
        assert got == local_records(local.ticket(query).to_json(), remote_data / name,
                                    tmp_path, suffix)
        assert_records(got, expected_records(remote_data / name, [region]), name)
    # an object the role may not read, and one that is not there: both "not found"
    for missing in ("secret", "nope"):
        with pytest.raises(NotFound):
            engine.ticket(Query(Endpoint.READS, missing, Format.BAM))
