"""Crypt4GH on S3 (moto's server): mode 1 tickets name presigned ranges of whole stored
segments, mode 2 tickets point at /data, which decrypts what it reads from S3; both give
the plaintext twin's payload (BAM, CRAM, VCF, BCF)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from c4gh_kit import CIPHER_SEGMENT, SEGMENT, decrypt_cli, fetch_all
from conftest import assert_ticket_records
from test_crypt4gh import (  # noqa: F401  (c4: the module's data fixture)
    BASE,
    FILES,
    Client,
    c4,
    location_keys,
    mode1,
    query,
    spec,
)
from test_s3 import AWS_ENV, MotoServer, upload_tree

from htsgetr.config import Config, LocationConfig, ServerConfig
from htsgetr.crypt4gh import Crypt4ghConfig, Crypt4ghStorage

BUCKET, PREFIX = "htsgetr-c4gh", "archive"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory, c4: dict[str, Path]  # noqa: F811
         ) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    upload_tree(server.client(), c4["enc"], BUCKET, PREFIX)
    yield server
    server.stop()


def s3_config(c4: dict[str, Path], moto: MotoServer, mode: str) -> Config:  # noqa: F811
    return Config(
        ticket_server=ServerConfig(base_url=BASE),
        locations=[
            LocationConfig(name="enc", regex="enc/(.*)", backend="s3", bucket=BUCKET,
                           prefix=PREFIX + "/", endpoint_url=moto.url, path_style=True,
                           mode=mode, keys=location_keys(c4)),
            LocationConfig(name="plain", regex="plain/(.*)", root=str(c4["plain"])),
        ],
        crypt4gh=Crypt4ghConfig(),
    )


def getter(client: Client) -> Any:
    def get(url: str, headers: dict[str, str]) -> bytes:
        if url.startswith(BASE):
            return client.get(url, headers)
        resp = requests.get(url, headers=headers, timeout=30)
        assert resp.status_code in (200, 206), resp.text[:300]
        return resp.content
    return get


CASES = [("reads", ("chr1", 10_000, 60_000)), ("reads", None), ("reads-cram", ("chr3", None, None)),
         ("calls", ("1", 1_000, 120_000)), ("calls-bcf", ("2", 10_000, 90_000))]


@pytest.mark.parametrize("mode", ["presigned", "proxy"])
@pytest.mark.parametrize("id,region", CASES)
def test_s3_both_modes(c4: dict[str, Path], moto: MotoServer, tmp_path: Path,  # noqa: F811
                       mode: str, id: str, region: Any) -> None:
    client = Client(s3_config(c4, moto, mode))
    get = getter(client)
    path = query(id, region)
    plain = client.payload(path.format("plain"))
    # mode 2: /data decrypts what it reads from S3
    ticket = client.ticket(path.format("enc"))
    assert all(u["url"].startswith(("data:", BASE)) for u in ticket["htsget"]["urls"])
    assert fetch_all(ticket, get) == plain
    # mode 1: stored segments, presigned (or proxied through /data as stored)
    ticket = mode1(client, path.format("enc"), c4["client_pub"])
    remote = [u for u in ticket["htsget"]["urls"] if not u["url"].startswith("data:")]
    assert remote
    for u in remote:
        assert u["url"].startswith(moto.url if mode == "presigned" else BASE)
    out = decrypt_cli(fetch_all(ticket, get), c4["client_sec"], tmp_path)
    assert out.returncode == 0, out.stderr[-300:]
    assert out.stdout == plain
    assert_ticket_records(out.stdout, tmp_path, c4["plain"] / FILES[id][2], spec(region))


def test_s3_small_region_reads_few_segments(c4: dict[str, Path], moto: MotoServer  # noqa: F811
                                            ) -> None:
    """Bytes fetched from S3 for a small region once the file's header and index are
    parsed: the segments at its edges, not the file; the mode-1 ticket names one or two
    stored segments, and /data (mode 2) reads no more."""
    client = Client(s3_config(c4, moto, "presigned"))
    storage = client.storage()
    assert isinstance(storage, Crypt4ghStorage)
    size = (c4["enc"] / "reads.bam.c4gh").stat().st_size
    client.ticket(query("reads", ("chr1", 0, 100)).format("enc"))  # parses header and index
    storage._segments.clear()  # no ciphertext from that ticket
    path = query("reads", ("chr2", 50_000, 50_300)).format("enc")
    before = storage.bytes_read
    ticket = mode1(client, path, c4["client_pub"])
    read = storage.bytes_read - before
    # the handler's reads (64 KiB windows at the region's edges) cross segment boundaries
    assert read <= 6 * CIPHER_SEGMENT < size, (read, size)
    ranges = [u["headers"]["Range"] for u in ticket["htsget"]["urls"] if "headers" in u]
    fetched = sum(int(b) - int(a) + 1 for a, b in (r[6:].split("-") for r in ranges))
    assert fetched <= 2 * CIPHER_SEGMENT
    storage._segments.clear()
    before = storage.bytes_read
    data = fetch_all(client.ticket(path), getter(client))
    assert data and storage.bytes_read - before <= 6 * CIPHER_SEGMENT
    assert SEGMENT
