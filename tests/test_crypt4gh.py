"""Crypt4GH: keys and configuration, the plaintext view (mode 2 through /data), the
re-encrypted tickets (mode 1, decrypted by the real `crypt4gh` tool), and the safety rules.

Every payload is compared with what the same query gives on the PLAINTEXT twin of the file
(byte for byte), and with htslib's records for the region."""

from __future__ import annotations

import base64
import collections
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from c4gh_kit import (
    CIPHER_SEGMENT,
    SEGMENT,
    SHARED_C4GH,
    b64_key_file,
    build_tree,
    decrypt_cli,
    encrypt_file,
    fetch_all,
    keypair,
    raw_keys,
)
from conftest import (
    Server,
    assert_ticket_records,
    free_port,
    htslib_records,
    make_bam,
    make_vcf,
    payload_records,
)

from htsgetr.app import create_app
from htsgetr.config import Config, ConfigError, LocationConfig, ServerConfig, load_config
from htsgetr.crypt4gh import Crypt4ghError, Crypt4ghStorage
from htsgetr.crypt4gh.keys import Crypt4ghConfig, KeyPairConfig, KeySource, LocationKeys
from htsgetr.engine import Htsget
from htsgetr.storage.local import LocalStorage

BASE = "http://htsget.test"

FILES = {  # id -> (endpoint, format, plaintext file name)
    "reads": ("reads", "BAM", "reads.bam"),
    "reads-cram": ("reads", "CRAM", "reads.cram"),
    "calls": ("variants", "VCF", "calls.vcf.gz"),
    "calls-bcf": ("variants", "BCF", "calls.bcf"),
}


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def c4(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Plaintext files (several segments each), their encrypted twins, and key pairs."""
    d = tmp_path_factory.mktemp("c4gh")
    plain, keys = d / "plain", d / "keys"
    plain.mkdir()
    keys.mkdir()
    make_bam(plain / "reads.bam", seed=11, n_reads=12000)
    subprocess.run(["samtools", "view", "-C", "--output-fmt-option", "no_ref=1", "-o",
                    str(plain / "reads.cram"), str(plain / "reads.bam")], check=True)
    subprocess.run(["samtools", "index", str(plain / "reads.cram")], check=True)
    make_vcf(plain / "calls.vcf.gz", seed=12, n=30000)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(plain / "calls.bcf"),
                    str(plain / "calls.vcf.gz")], check=True)
    subprocess.run(["bcftools", "index", str(plain / "calls.bcf")], check=True)
    server_sec, server_pub = keypair(keys, "server")
    client_sec, client_pub = keypair(keys, "client")
    other_sec, other_pub = keypair(keys, "other")
    enc = d / "enc"
    build_tree(enc, plain, server_pub, ["reads.bam", "reads.cram", "calls.vcf.gz", "calls.bcf"],
               encrypt_index=("calls.vcf.gz.tbi",))
    for name in ("reads.bam", "calls.vcf.gz"):
        assert (plain / name).stat().st_size > 3 * SEGMENT, name  # several segments
    return {"dir": d, "plain": plain, "enc": enc, "server_sec": server_sec,
            "server_pub": server_pub, "client_sec": client_sec, "client_pub": client_pub,
            "other_sec": other_sec, "other_pub": other_pub}


def location_keys(c4: dict[str, Path], client: Optional[str] = None) -> LocationKeys:
    return LocationKeys(
        server=KeyPairConfig(private=KeySource(key=str(c4["server_sec"])),
                             public=KeySource(key=str(c4["server_pub"]))),
        client=None if client is None else KeyPairConfig(
            public=KeySource(key=client) if client != "Header" else KeySource(kind="Header")))


def config_for(c4: dict[str, Path], enc_root: Optional[Path] = None, **enc: Any) -> Config:
    """`enc/<id>`: the encrypted files; `plain/<id>`: their plaintext twins."""
    return Config(
        ticket_server=ServerConfig(base_url=BASE),
        locations=[
            LocationConfig(name="enc", regex="enc/(.*)", root=str(enc_root or c4["enc"]),
                           keys=enc.pop("keys", location_keys(c4)), **enc),
            LocationConfig(name="plain", regex="plain/(.*)", root=str(c4["plain"])),
        ],
        crypt4gh=Crypt4ghConfig(),
    )


class Client:
    """The Flask app in-process: tickets and every url of them (data: and /data)."""

    def __init__(self, config: Config) -> None:
        self.app = create_app(config)
        self.http = self.app.test_client()
        self.engine: Htsget = self.app.extensions["htsgetr"]

    def ticket(self, path: str, headers: Optional[dict[str, str]] = None,
               status: int = 200) -> dict[str, Any]:
        resp = self.http.get(path, headers=headers or {})
        assert resp.status_code == status, resp.get_data(as_text=True)[:500]
        return resp.get_json()

    def get(self, url: str, headers: dict[str, str]) -> bytes:
        assert url.startswith(BASE + "/data/"), url
        resp = self.http.get(url[len(BASE):], headers=headers)
        assert resp.status_code in (200, 206), resp.get_data(as_text=True)[:300]
        return resp.get_data()

    def payload(self, path: str, headers: Optional[dict[str, str]] = None) -> bytes:
        return fetch_all(self.ticket(path, headers), self.get)

    def storage(self) -> Crypt4ghStorage:
        storage = self.engine.resolver.rules[0][2]
        assert isinstance(storage, Crypt4ghStorage)
        return storage


@pytest.fixture(scope="module")
def client(c4: dict[str, Path]) -> Client:
    return Client(config_for(c4))


def query(id: str, region: Optional[tuple[str, Optional[int], Optional[int]]] = None,
          extra: str = "") -> str:
    endpoint, fmt, _ = FILES[id]
    name = id.split("-")[0]
    q = f"format={fmt}"
    if region is not None:
        ref, start, end = region
        q += f"&referenceName={ref}"
        q += f"&start={start}" if start is not None else ""
        q += f"&end={end}" if end is not None else ""
    return f"/{endpoint}/{{}}/{name}?{q}{extra}"


REGIONS: dict[str, list[Optional[tuple[str, Optional[int], Optional[int]]]]] = {
    "reads": [None, ("chr1", 10_000, 60_000), ("chr2", None, None), ("chr3", 5_000, 5_300),
              ("*", None, None), ("chrEmpty", None, None)],
    "reads-cram": [None, ("chr1", 100_000, 130_000), ("chr3", None, None)],
    "calls": [None, ("1", 1_000, 120_000), ("X", None, None), ("2", 50_000, 50_500)],
    "calls-bcf": [None, ("2", 10_000, 90_000)],
}
CASES = [(id, r) for id, regions in REGIONS.items() for r in regions]


def spec(region: Optional[tuple[str, Optional[int], Optional[int]]]) -> Optional[list[Any]]:
    return None if region is None else [region]


# --------------------------------------------------------------------------- mode 2


@pytest.mark.parametrize("id,region", CASES)
def test_mode2_is_the_plain_payload(client: Client, c4: dict[str, Path], tmp_path: Path,
                                    id: str, region: Any) -> None:
    """Without encryptionScheme: /data decrypts, and the payload is, byte for byte, the
    plaintext twin's; its records are htslib's."""
    path = query(id, region)
    ticket = client.ticket(path.format("enc"))
    assert all(not u["url"].endswith(".c4gh") for u in ticket["htsget"]["urls"])
    got = fetch_all(ticket, client.get)
    assert got == client.payload(path.format("plain"))
    assert_ticket_records(got, tmp_path, c4["plain"] / FILES[id][2], spec(region))


def test_mode2_post_regions(client: Client, c4: dict[str, Path], tmp_path: Path) -> None:
    body = {"format": "BAM", "regions": [{"referenceName": "chr1", "start": 5000, "end": 9000},
                                         {"referenceName": "chr3", "start": 100, "end": 40000}]}
    tickets = [client.http.post(f"/reads/{loc}/reads", json=body).get_json()
               for loc in ("enc", "plain")]
    enc, plain = (fetch_all(t, client.get) for t in tickets)
    assert enc == plain
    assert_ticket_records(enc, tmp_path, c4["plain"] / "reads.bam",
                          [("chr1", 5000, 9000), ("chr3", 100, 40000)])


def test_mode2_ranges_decrypt_only_their_segments(c4: dict[str, Path]) -> None:
    """/data answers a range by decrypting the segments it touches: stored bytes read
    stay within those segments (plus the header once), whatever the file's size."""
    fresh = Client(config_for(c4))
    storage = fresh.storage()
    size = storage.size("reads.bam")
    storage.stored("reads.bam")  # the header, once
    for start, end in [(0, 10), (SEGMENT - 5, SEGMENT + 5), (3 * SEGMENT + 100, 3 * SEGMENT + 200),
                       (size - 40, size)]:
        before = storage.bytes_read
        resp = fresh.http.get("/data/~enc/reads.bam", headers={"Range": f"bytes={start}-{end - 1}"})
        assert resp.status_code == 206
        plain = (c4["plain"] / "reads.bam").read_bytes()[start:end]
        assert resp.get_data() == plain
        touched = (end - 1) // SEGMENT - start // SEGMENT + 1
        assert storage.bytes_read - before <= touched * CIPHER_SEGMENT


def test_mode2_streams_large_ranges(client: Client, c4: dict[str, Path]) -> None:
    """A whole-file /data answer is streamed `stream_segments` at a time, and is the
    plaintext; HEAD answers the plaintext size."""
    plain = (c4["plain"] / "calls.vcf.gz").read_bytes()
    head = client.http.head("/data/~enc/calls.vcf.gz")
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(plain)
    resp = client.http.get("/data/~enc/calls.vcf.gz")
    assert resp.get_data() == plain
    assert resp.headers["Content-Length"] == str(len(plain))


def test_ciphertext_is_served_as_stored_and_plaintext_never_as_a_file(
        client: Client, c4: dict[str, Path]) -> None:
    """`x.c4gh` on /data is the stored object's bytes (what mode-1 tickets name); the
    plaintext name goes through decryption, never through the local-file paths (fast path,
    sendfile, accel), which only ever see LocalStorage."""
    stored = (c4["enc"] / "reads.bam.c4gh").read_bytes()
    resp = client.http.get("/data/~enc/reads.bam.c4gh", headers={"Range": "bytes=100-5000"})
    assert resp.status_code == 206 and resp.get_data() == stored[100:5001]
    extensions = {f: h.extensions for f, h in client.engine.handlers.items()}
    storage, key = client.engine.resolver.data_object("~enc/reads.bam.c4gh", extensions)
    assert isinstance(storage, LocalStorage) and key == "reads.bam.c4gh"
    storage, key = client.engine.resolver.data_object("~enc/reads.bam", extensions)
    assert isinstance(storage, Crypt4ghStorage) and not isinstance(storage, LocalStorage)
    # names a ticket cannot give stay 404: a ".c4gh" of the plain location, the double suffix
    assert client.http.get("/data/~plain/reads.bam.c4gh").status_code == 404
    assert client.http.get("/data/~enc/reads.bam.c4gh.c4gh").status_code == 404


def test_index_encrypted_or_plain(client: Client, c4: dict[str, Path]) -> None:
    """calls.vcf.gz.tbi is stored encrypted, reads.bam.bai plain: both read through."""
    assert (c4["enc"] / "calls.vcf.gz.tbi.c4gh").exists()
    assert not (c4["enc"] / "calls.vcf.gz.tbi").exists()
    storage = client.storage()
    tbi = (c4["plain"] / "calls.vcf.gz.tbi").read_bytes()
    assert storage.read("calls.vcf.gz.tbi", 0, len(tbi)) == tbi
    assert storage.read("reads.bam.bai", 0, 10) == (c4["plain"] / "reads.bam.bai").read_bytes()[:10]
    assert not storage.exists("reads.bam.c4gh")  # the view names plaintext only


def test_plain_data_file_in_an_encrypted_location_is_not_served(
        c4: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    shutil.copytree(c4["enc"], root)
    shutil.copy(c4["plain"] / "calls.bcf", root / "loose.bcf")
    shutil.copy(c4["plain"] / "calls.bcf.csi", root / "loose.bcf.csi")
    fresh = Client(config_for(c4, enc_root=root))
    fresh.ticket("/variants/enc/loose?format=BCF", status=404)


# --------------------------------------------------------------------------- mode 1


def mode1(client: Client, path: str, pub: Path) -> dict[str, Any]:
    sep = "&" if "?" in path else "?"
    return client.ticket(path + sep + "encryptionScheme=C4GH",
                         {"Htsget-Context-Public-Key": b64_key_file(pub)})


@pytest.mark.parametrize("id,region", CASES)
def test_mode1_decrypts_to_the_plain_payload(client: Client, c4: dict[str, Path],
                                             tmp_path: Path, id: str, region: Any) -> None:
    """encryptionScheme=C4GH: a new header for the client's key, then stored segments and
    encrypted server-made pieces; `crypt4gh decrypt` gives the plain ticket's payload."""
    path = query(id, region)
    ticket = mode1(client, path.format("enc"), c4["client_pub"])
    urls = ticket["htsget"]["urls"]
    assert urls[0]["url"].startswith("data:;base64,")
    assert base64.b64decode(urls[0]["url"][13:])[:8] == b"crypt4gh"
    assert "md5" not in ticket["htsget"]
    for block in urls[1:]:
        if not block["url"].startswith("data:"):
            assert block["url"].endswith(".c4gh")
            first, last = map(int, block["headers"]["Range"][6:].split("-"))
            header_len = client.storage().stored("reads.bam" if id == "reads" else
                                                 FILES[id][2]).header.length
            assert (first - header_len) % CIPHER_SEGMENT == 0  # whole segments
    payload = fetch_all(ticket, client.get)
    out = decrypt_cli(payload, c4["client_sec"], tmp_path)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout == client.payload(path.format("plain"))
    assert_ticket_records(out.stdout, tmp_path, c4["plain"] / FILES[id][2], spec(region))


def test_mode1_cram_past_the_recut_budget(client: Client, c4: dict[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """CRAM containers past the ticket's re-encoding budget are derived blocks in a plain
    ticket (exact); an encrypted ticket has no urls of ours, so it sends them whole, as they
    are stored: every wanted record, in a valid file, and more."""
    from htsgetr.formats import cram_recode

    monkeypatch.setattr(cram_recode, "MAX_RECUTS", 0)  # every boundary container deferred
    region = ("chr1", 100_000, 130_000)
    original = c4["plain"] / FILES["reads-cram"][2]
    path = query("reads-cram", region)
    plain = client.http.get(path.format("plain")).get_json()
    assert any("/data/~~cram/" in b["url"] for b in plain["htsget"]["urls"])
    assert_ticket_records(fetch_all(plain, client.get), tmp_path, original, spec(region))
    payload = fetch_all(mode1(client, path.format("enc"), c4["client_pub"]), client.get)
    out = decrypt_cli(payload, c4["client_sec"], tmp_path)
    assert out.returncode == 0, out.stderr[-500:]
    got = payload_records(out.stdout, tmp_path, ".cram")
    want = htslib_records(original, spec(region))
    assert not collections.Counter(want) - collections.Counter(got) and len(got) > len(want)


def test_mode1_random_regions(client: Client, c4: dict[str, Path], tmp_path: Path) -> None:
    """Regions that start and end anywhere inside segments, BAM and VCF."""
    rng = random.Random(7)
    for id, refs in (("reads", [("chr1", 250_000), ("chr2", 120_000), ("chr3", 90_000)]),
                     ("calls", [("1", 300_000), ("2", 200_000), ("X", 150_000)])):
        for _ in range(6):
            ref, length = rng.choice(refs)
            start = rng.randrange(0, length - 10)
            region = (ref, start, min(length, start + rng.choice([50, 2_000, 30_000])))
            path = query(id, region)
            payload = fetch_all(mode1(client, path.format("enc"), c4["client_pub"]), client.get)
            out = decrypt_cli(payload, c4["client_sec"], tmp_path)
            assert out.returncode == 0, out.stderr[-300:]
            assert out.stdout == client.payload(path.format("plain")), region
            suffix = ".bam" if id == "reads" else ".vcf.gz"
            assert payload_records(out.stdout, tmp_path, suffix) == htslib_records(
                c4["plain"] / FILES[id][2], [region])


def test_mode1_post(client: Client, c4: dict[str, Path], tmp_path: Path) -> None:
    body = {"format": "VCF", "encryptionScheme": "C4GH",
            "regions": [{"referenceName": "1", "start": 0, "end": 40000},
                        {"referenceName": "X", "start": 70000, "end": 90000}]}
    resp = client.http.post("/variants/enc/calls", json=body, headers={
        "Htsget-Context-Public-Key": b64_key_file(c4["client_pub"])})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    out = decrypt_cli(fetch_all(resp.get_json(), client.get), c4["client_sec"], tmp_path)
    assert out.returncode == 0
    del body["encryptionScheme"]
    plain = client.http.post("/variants/plain/calls", json=body).get_json()
    assert out.stdout == fetch_all(plain, client.get)


def test_mode1_wrong_key_cannot_decrypt(client: Client, c4: dict[str, Path],
                                        tmp_path: Path) -> None:
    path = query("reads", ("chr1", 10_000, 60_000)).format("enc")
    payload = fetch_all(mode1(client, path, c4["client_pub"]), client.get)
    out = decrypt_cli(payload, c4["other_sec"], tmp_path)
    assert out.returncode != 0 or not out.stdout
    plain = client.payload(query("reads", ("chr1", 10_000, 60_000)).format("plain"))
    assert plain[1000:1100] not in payload  # nothing of it in the clear


def test_mode1_region_inside_one_segment_fetches_one_segment(
        client: Client, c4: dict[str, Path], tmp_path: Path) -> None:
    """A region whose plaintext lies inside one segment: the client fetches that one
    stored segment (65,564 bytes), not the file."""
    found = None
    for start in range(1000, 240_000, 7_000):
        plain = client.ticket(query("reads", ("chr1", start, start + 300)).format("plain"))
        ranges = [tuple(map(int, u["headers"]["Range"][6:].split("-")))
                  for u in plain["htsget"]["urls"] if "headers" in u]
        if ranges and ranges[0][0] // SEGMENT == ranges[-1][1] // SEGMENT:
            found = start
            break
    assert found is not None
    path = query("reads", ("chr1", found, found + 300))
    ticket = mode1(client, path.format("enc"), c4["client_pub"])
    fetched = [u for u in ticket["htsget"]["urls"] if not u["url"].startswith("data:")]
    sizes = [int(b) - int(a) + 1 for a, b in
             (u["headers"]["Range"][6:].split("-") for u in fetched)]
    assert sizes == [CIPHER_SEGMENT], sizes
    out = decrypt_cli(fetch_all(ticket, client.get), c4["client_sec"], tmp_path)
    assert out.stdout == client.payload(path.format("plain"))


def test_mode1_fixed_client_key(c4: dict[str, Path], tmp_path: Path) -> None:
    """keys.client.public of kind File: every C4GH ticket is for that key (the header is
    not needed, and not used)."""
    fresh = Client(config_for(c4, keys=location_keys(c4, client=str(c4["client_pub"]))))
    path = query("calls", ("2", 1000, 80000))
    ticket = mode1(fresh, path.format("enc"), c4["other_pub"])
    out = decrypt_cli(fetch_all(ticket, fresh.get), c4["client_sec"], tmp_path)
    assert out.returncode == 0 and out.stdout == fresh.payload(path.format("plain"))


def test_mode1_client_key_errors(client: Client) -> None:
    path = "/variants/enc/calls?encryptionScheme=C4GH"
    body = client.ticket(path, status=400)["htsget"]
    assert body["error"] == "InvalidInput" and "Htsget-Context-Public-Key" in body["message"]
    body = client.ticket(path, {"Htsget-Context-Public-Key": "%%%"}, status=400)["htsget"]
    assert "Htsget-Context-Public-Key" in body["message"]
    bad = base64.b64encode(b"-----BEGIN CRYPT4GH PUBLIC KEY-----\nAAAA\n-----END x\n").decode()
    client.ticket(path, {"Htsget-Context-Public-Key": bad}, status=400)
    body = client.ticket("/variants/enc/calls?encryptionScheme=AES", status=400)["htsget"]
    assert body["error"] == "UnsupportedFormat"


def test_mode1_accepts_a_bare_base64_key(client: Client, c4: dict[str, Path],
                                         tmp_path: Path) -> None:
    raw = base64.b64encode(raw_keys(c4["client_sec"])[1]).decode()
    path = "/variants/enc/calls?class=header&encryptionScheme=c4gh"
    ticket = client.ticket(path, {"Htsget-Context-Public-Key": raw})
    out = decrypt_cli(fetch_all(ticket, client.get), c4["client_sec"], tmp_path)
    assert out.stdout == client.payload("/variants/plain/calls?class=header")


def test_plain_location_ignores_encryption_scheme(client: Client) -> None:
    """The compliance suite sends encryptionScheme=c4gh to plain files: a normal ticket."""
    a = client.ticket("/reads/plain/reads?referenceName=chr1&encryptionScheme=c4gh")
    b = client.ticket("/reads/plain/reads?referenceName=chr1")
    assert a == b


# --------------------------------------------------------------------------- allow_plaintext


def test_allow_plaintext_false(c4: dict[str, Path], tmp_path: Path) -> None:
    fresh = Client(config_for(c4, allow_plaintext=False))
    body = fresh.ticket("/reads/enc/reads?referenceName=chr1", status=400)["htsget"]
    assert body["error"] == "InvalidInput" and "encryptionScheme" in body["message"]
    assert fresh.http.get("/data/~enc/reads.bam", headers={"Range": "bytes=0-99"}
                          ).status_code == 404
    path = query("reads", ("chr1", 0, 20_000))
    out = decrypt_cli(fetch_all(mode1(fresh, path.format("enc"), c4["client_pub"]), fresh.get),
                      c4["client_sec"], tmp_path)
    assert out.stdout == fresh.payload(path.format("plain"))


# --------------------------------------------------------------------------- safety


def tampered_tree(c4: dict[str, Path], tmp: Path, segment: int) -> Path:
    root = tmp / "tampered"
    shutil.copytree(c4["enc"], root)
    target = root / "reads.bam.c4gh"
    data = bytearray(target.read_bytes())
    fresh = Client(config_for(c4))
    header = fresh.storage().stored("reads.bam").header
    assert header is not None
    pos = header.length + segment * CIPHER_SEGMENT + 5000
    data[pos] ^= 0x01
    target.write_bytes(bytes(data))
    return root


def test_tampered_segment_is_reported_not_served(c4: dict[str, Path], tmp_path: Path) -> None:
    root = tampered_tree(c4, tmp_path, segment=2)
    config = config_for(c4, enc_root=root)
    config.crypt4gh.stream_segments = 1  # /data streams one segment at a time
    fresh = Client(config)
    plain = (c4["plain"] / "reads.bam").read_bytes()
    resp = fresh.http.get("/data/~enc/reads.bam",
                          headers={"Range": f"bytes={2 * SEGMENT + 10}-{2 * SEGMENT + 2000}"})
    assert resp.status_code == 500
    body = resp.get_json()["htsget"]
    assert body["error"] == "InternalError" and "authentication" in body["message"]
    assert plain[2 * SEGMENT + 10:2 * SEGMENT + 200] not in resp.get_data()
    # a stream that reaches the segment later stops before it: nothing of it goes out
    got = bytearray()
    with pytest.raises(Crypt4ghError):
        resp = fresh.http.get("/data/~enc/reads.bam", headers={"Range": "bytes=0-"},
                              buffered=False)
        for chunk in resp.response:
            got += chunk
    assert len(got) == 2 * SEGMENT and bytes(got) == plain[:len(got)]
    # mode 1, whole file: the server reports it when computing the ticket reads the
    # segment; else the client's decryption fails its MAC
    resp = fresh.http.get("/reads/enc/reads?encryptionScheme=C4GH", headers={
        "Htsget-Context-Public-Key": b64_key_file(c4["client_pub"])})
    if resp.status_code == 500:
        assert "authentication" in resp.get_json()["htsget"]["message"]
    else:
        out = decrypt_cli(fetch_all(resp.get_json(), fresh.get), c4["client_sec"], tmp_path)
        assert out.stdout != plain and len(out.stdout) < len(plain)


def test_tampered_segment_under_a_region_edge_fails_the_ticket(
        c4: dict[str, Path], tmp_path: Path) -> None:
    root = tampered_tree(c4, tmp_path, segment=1)
    fresh = Client(config_for(c4, enc_root=root))
    failures = 0
    for start in range(0, 250_000, 10_000):
        resp = fresh.http.get(f"/reads/enc/reads?referenceName=chr1&start={start}"
                              f"&end={start + 100}")
        if resp.status_code == 500:
            failures += 1
            assert "authentication" in resp.get_json()["htsget"]["message"]
        else:
            assert resp.status_code == 200
    assert failures  # some region edge lies in segment 1


def stored_with(path: Path, c4: dict[str, Path], plain: bytes,
                edit_list: Optional[list[int]] = None, extra: Optional[bytes] = None) -> None:
    """A hand-made Crypt4GH file: optional edit list, optional raw packet content."""
    from htsgetr.crypt4gh.header import (
        MAGIC,
        data_enc_packet,
        edit_list_packet,
        encrypt_segment,
        seal_packet,
    )

    secret = raw_keys(c4["server_sec"])[0]
    public = raw_keys(c4["server_sec"])[1]
    key = bytes(range(32))
    contents = [data_enc_packet(key)]
    if edit_list is not None:
        contents.append(edit_list_packet(edit_list))
    if extra is not None:
        contents.append(extra)
    packets = [seal_packet(c, secret, public) for c in contents]
    header = (MAGIC + (1).to_bytes(4, "little") + len(packets).to_bytes(4, "little")
              + b"".join((len(p) + 4).to_bytes(4, "little") + p for p in packets))
    body = b"".join(encrypt_segment(plain[i:i + SEGMENT], key)
                    for i in range(0, len(plain), SEGMENT))
    path.write_bytes(header + body)


@pytest.mark.parametrize("kind,message", [
    ("edit", "edit list"), ("unknown", "unknown header packet type"),
    ("foreign", "no header packet opens"), ("large", "larger than max_header_bytes"),
    ("garbage", "not a Crypt4GH file"),
])
def test_stored_headers_refused(c4: dict[str, Path], tmp_path: Path, kind: str,
                                message: str) -> None:
    root = tmp_path / "odd"
    shutil.copytree(c4["enc"], root)
    plain = (c4["plain"] / "calls.bcf").read_bytes()
    target = root / "calls.bcf.c4gh"
    if kind == "edit":
        stored_with(target, c4, plain, edit_list=[0, len(plain)])
    elif kind == "unknown":
        stored_with(target, c4, plain, extra=(7).to_bytes(4, "little") + b"\0" * 8)
    elif kind == "foreign":
        encrypt_file(c4["plain"] / "calls.bcf", target, c4["other_pub"])
    elif kind == "large":
        stored_with(target, c4, plain, extra=(0).to_bytes(4, "little") * 40000)
    else:
        target.write_bytes(b"not crypt4gh at all" * 10)
    fresh = Client(config_for(c4, enc_root=root))
    for path in ("/variants/enc/calls?format=BCF", "/variants/enc/calls?format=BCF"
                 "&encryptionScheme=C4GH"):
        resp = fresh.http.get(path, headers={
            "Htsget-Context-Public-Key": b64_key_file(c4["client_pub"])})
        assert resp.status_code == 500, resp.get_data(as_text=True)
        body = resp.get_json()["htsget"]
        assert body["error"] == "InternalError" and message in body["message"], body
        assert "calls.bcf.c4gh" in body["message"]
    assert fresh.http.get("/data/~enc/calls.bcf").status_code == 500


def test_hand_made_file_without_edit_list_is_served(c4: dict[str, Path], tmp_path: Path) -> None:
    """The hand-made writer above is a valid Crypt4GH writer (so the refusals are about
    what they say)."""
    root = tmp_path / "ok"
    shutil.copytree(c4["enc"], root)
    plain = (c4["plain"] / "calls.bcf").read_bytes()
    stored_with(root / "calls.bcf.c4gh", c4, plain)
    fresh = Client(config_for(c4, enc_root=root))
    assert fresh.http.get("/data/~enc/calls.bcf").get_data() == plain


# --------------------------------------------------------------------------- keys and config


def write_config(tmp: Path, text: str) -> Path:
    path = tmp / "htsget.toml"
    path.write_text(text)
    return path


def test_toml_keys_htsget_rs_spelling(c4: dict[str, Path], tmp_path: Path) -> None:
    """htsget-rs's own location table: backend.kind, local_path, keys (File / Header)."""
    path = write_config(tmp_path, f"""
[[locations]]
regex = "enc/(.*)"
substitution_string = "$1"
backend.kind = "File"
backend.local_path = "{c4['enc']}"
backend.keys.server.private.kind = "File"
backend.keys.server.private.key = "{c4['server_sec']}"
backend.keys.server.public.kind = "file"
backend.keys.server.public.key = "{c4['server_pub']}"
backend.keys.client.public.kind = "Header"
""")
    config = load_config(str(path), env={})
    loc = config.locations[0]
    assert loc.backend == "file" and loc.root == str(c4["enc"]) and loc.keys is not None
    assert loc.keys.client is not None and loc.keys.client.public is not None
    assert loc.keys.client.public.kind == "Header"
    Htsget(config)  # loads the keys


@pytest.mark.parametrize("change,message", [
    (lambda k, c4: setattr(k.server.private, "key", "/nonexistent/server.sec"), "cannot read"),
    (lambda k, c4: setattr(k.server, "public", KeySource(key=str(c4["other_pub"]))),
     "is not the public key"),
    (lambda k, c4: setattr(k.server.private, "key", str(c4["server_pub"])),
     "not a Crypt4GH or OpenSSH private"),
])
def test_bad_keys_refused_naming_the_location(c4: dict[str, Path], change: Any,
                                              message: str) -> None:
    keys = location_keys(c4)
    change(keys, c4)
    with pytest.raises(ConfigError) as err:
        Htsget(config_for(c4, keys=keys))
    assert "location 'enc'" in str(err.value) and message in str(err.value)
    assert "locations[0]" in str(err.value)


def test_locked_private_key(c4: dict[str, Path], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    sec, pub = keypair(tmp_path, "locked", passphrase=b"s3cret words")
    enc = tmp_path / "enc"
    enc.mkdir()
    encrypt_file(c4["plain"] / "calls.bcf", enc / "calls.bcf.c4gh", pub)
    shutil.copy(c4["plain"] / "calls.bcf.csi", enc / "calls.bcf.csi")

    def keys(**source: Any) -> LocationKeys:
        return LocationKeys(server=KeyPairConfig(private=KeySource(key=str(sec), **source)))

    monkeypatch.delenv("C4GH_PASSPHRASE", raising=False)
    with pytest.raises(ConfigError, match="locked and no passphrase"):
        Htsget(config_for(c4, enc_root=enc, keys=keys()))
    monkeypatch.setenv("MY_PASS", "wrong")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        Htsget(config_for(c4, enc_root=enc, keys=keys(passphrase_env="MY_PASS")))
    with pytest.raises(ConfigError, match="NOT_SET is not set"):
        Htsget(config_for(c4, enc_root=enc, keys=keys(passphrase_env="NOT_SET")))
    monkeypatch.setenv("MY_PASS", "s3cret words")
    fresh = Client(config_for(c4, enc_root=enc, keys=keys(passphrase_env="MY_PASS")))
    assert fresh.http.get("/data/~enc/calls.bcf").get_data() == \
        (c4["plain"] / "calls.bcf").read_bytes()
    (tmp_path / "pass.txt").write_text("s3cret words\n")
    Htsget(config_for(c4, enc_root=enc, keys=keys(passphrase_file=str(tmp_path / "pass.txt"))))
    monkeypatch.setenv("C4GH_PASSPHRASE", "s3cret words")  # the crypt4gh tool's variable
    Htsget(config_for(c4, enc_root=enc, keys=keys()))


def test_config_errors(c4: dict[str, Path], tmp_path: Path) -> None:
    def load(text: str) -> Config:
        return load_config(str(write_config(tmp_path, text)), env={})

    base = f'[[locations]]\nroot = "{c4["enc"]}"\n'
    with pytest.raises(ConfigError, match="server.private"):
        load(base + '[locations.keys.server.public]\nkind = "File"\nkey = "x.pub"\n')
    with pytest.raises(ConfigError, match="client's private key"):
        load(base + f'keys.server.private = {{ key = "{c4["server_sec"]}" }}\n'
                    'keys.client.private = { key = "x.sec" }\n'
                    'keys.client.public = { kind = "Header" }\n')
    with pytest.raises(ConfigError, match="SecretsManager"):
        load(base + 'keys.server.private = { kind = "SecretsManager", key = "x" }\n')
    with pytest.raises(ConfigError, match="required by kind"):
        load(base + 'keys.server.private = { kind = "File" }\n')
    config = load(base + f'allow_plaintext = false\nkeys.server.private = '
                         f'{{ key = "{c4["server_sec"]}" }}\n[crypt4gh]\nmax_header_bytes = 4096\n')
    assert config.locations[0].allow_plaintext is False
    assert config.crypt4gh.max_header_bytes == 4096


def test_reload_refuses_a_missing_key(c4: dict[str, Path], tmp_path: Path) -> None:
    """`htsgetr config check` (what start and reload run) names the location."""
    sec = tmp_path / "server.sec"
    shutil.copy(c4["server_sec"], sec)
    path = write_config(tmp_path, f"""
[[locations]]
name = "archive"
root = "{c4['enc']}"
keys.server.private = {{ kind = "File", key = "{sec}" }}
""")
    ok = subprocess.run([sys.executable, "-m", "htsgetr", "config", "check", str(path)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    sec.unlink()
    bad = subprocess.run([sys.executable, "-m", "htsgetr", "config", "check", str(path)],
                         capture_output=True, text=True)
    assert bad.returncode != 0
    assert "location 'archive'" in bad.stderr + bad.stdout


# --------------------------------------------------------------------------- real clients


@pytest.fixture(scope="module")
def live(c4: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("live")
    path = tmp / "htsget.toml"
    path.write_text(f"""
[[locations]]
name = "enc"
regex = "enc/(.*)"
root = "{c4['enc']}"
keys.server.private = {{ kind = "File", key = "{c4['server_sec']}" }}
keys.server.public = {{ kind = "File", key = "{c4['server_pub']}" }}
keys.client.public = {{ kind = "Header" }}
""")
    port = free_port()
    srv = Server(["--config", str(path), "--port", str(port), "--workers", "2"], port).start()
    yield srv
    srv.stop()


@pytest.mark.skipif(shutil.which("samtools") is None, reason="samtools not installed")
@pytest.mark.parametrize("fmt,region", [("BAM", ("chr1", 10_000, 60_000)),
                                        ("BAM", ("chr3", 5_000, 5_300)),
                                        ("CRAM", ("chr2", 1_000, 40_000))])
def test_samtools_reads_mode2_ticket(live: Server, c4: dict[str, Path], fmt: str,
                                     region: tuple[str, int, int]) -> None:
    ref, start, end = region
    url = f"{live.url}/reads/enc/reads?format={fmt}&referenceName={ref}&start={start}&end={end}"
    out = subprocess.run(["samtools", "view", url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = [line for line in out.stdout.splitlines() if line]
    name = "reads.bam" if fmt == "BAM" else "reads.cram"
    assert got and got == htslib_records(c4["plain"] / name, [region])


@pytest.mark.skipif(shutil.which("bcftools") is None, reason="bcftools not installed")
def test_bcftools_reads_mode2_ticket(live: Server, c4: dict[str, Path]) -> None:
    url = f"{live.url}/variants/enc/calls?referenceName=2&start=1000&end=90000"
    out = subprocess.run(["bcftools", "view", "-H", url], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    got = [line for line in out.stdout.splitlines() if line]
    want = [r.rstrip("\n") for r in htslib_records(c4["plain"] / "calls.vcf.gz",
                                                   [("2", 1000, 90000)])]
    assert got and got == want


def test_live_mode1_through_gunicorn(live: Server, c4: dict[str, Path], tmp_path: Path) -> None:
    import requests
    from conftest import reassemble

    resp = requests.get(f"{live.url}/reads/enc/reads?referenceName=chr2&encryptionScheme=C4GH",
                        headers={"Htsget-Context-Public-Key": b64_key_file(c4["client_pub"])},
                        timeout=30)
    assert resp.status_code == 200, resp.text
    out = decrypt_cli(reassemble(resp.json()), c4["client_sec"], tmp_path)
    assert out.returncode == 0
    assert_ticket_records(out.stdout, tmp_path, c4["plain"] / "reads.bam", [("chr2", None, None)])


# --------------------------------------------------------------------------- shared data


def shared_config() -> Config:
    if not SHARED_C4GH.exists():
        pytest.skip("../shared/data/c4gh not present")
    keys = LocationKeys(server=KeyPairConfig(
        private=KeySource(key=str(SHARED_C4GH / "keys" / "bob.sec")),
        public=KeySource(key=str(SHARED_C4GH / "keys" / "bob.pub"))))
    return Config(ticket_server=ServerConfig(base_url=BASE),
                  locations=[LocationConfig(root=str(SHARED_C4GH), keys=keys)])


@pytest.mark.parametrize("endpoint,id,fmt,region,plain", [
    ("reads", "htsnexus_test_NA12878", "BAM", ("11", 4_999_976, 5_005_000), "bam"),
    ("reads", "htsnexus_test_NA12878", "BAM", ("20", None, None), "bam"),
    ("reads", "htsnexus_test_NA12878", "CRAM", ("20", 6_000_000, 6_010_000), "cram"),
    ("variants", "spec-v4.3", "VCF", ("20", None, None), "vcf"),
    ("variants", "sample1-bcbio-cancer", "BCF", None, "bcf"),
])
def test_shared_reference_files(tmp_path: Path, endpoint: str, id: str, fmt: str,
                                region: Any, plain: str) -> None:
    """../shared/data/c4gh (encrypted for bob): both modes hold htslib's records of the
    plaintext files of ../shared/data."""
    client = Client(shared_config())
    ext = {"BAM": ".bam", "CRAM": ".cram", "VCF": ".vcf.gz", "BCF": ".bcf"}[fmt]
    original = SHARED_C4GH.parent / plain / (id + ext)
    q = f"/{endpoint}/{id}?format={fmt}"
    if region is not None:
        q += f"&referenceName={region[0]}"
        q += "".join(f"&{k}={v}" for k, v in zip(("start", "end"), region[1:]) if v is not None)
    assert_ticket_records(client.payload(q), tmp_path, original, spec(region))
    payload = fetch_all(mode1(client, q, SHARED_C4GH / "keys" / "alice.pub"), client.get)
    out = decrypt_cli(payload, SHARED_C4GH / "keys" / "alice.sec", tmp_path)
    assert out.returncode == 0, out.stderr[-300:]
    assert out.stdout == client.payload(q)
    assert json.dumps  # keep the import for debugging output


def test_accel_hands_over_ciphertext_only(c4: dict[str, Path]) -> None:
    """With accel = nginx, /data/<x>.c4gh goes to nginx (the stored file), the plaintext
    name is htsgetr's own decrypted answer: no X-Accel-Redirect for it, ever."""
    from htsgetr.api.accel import direct_locations, nginx_locations
    from htsgetr.config import DataServerConfig

    config = config_for(c4)
    config.data_server = DataServerConfig(accel="nginx")
    fresh = Client(config)
    cipher = fresh.http.get("/data/~enc/reads.bam.c4gh", headers={"Range": "bytes=0-99"})
    assert cipher.headers["X-Accel-Redirect"].endswith("/~enc/reads.bam.c4gh")
    plain = fresh.http.get("/data/~enc/reads.bam", headers={"Range": "bytes=0-99"})
    assert "X-Accel-Redirect" not in plain.headers
    assert plain.get_data() == (c4["plain"] / "reads.bam").read_bytes()[:100]
    assert f'alias "{c4["enc"].resolve()}/";' in nginx_locations(config)
    # nginx-direct: nginx never sends a Crypt4GH location's files itself (the plaintext names
    # are htsgetr's decrypted answers); /data/~enc/ reaches htsgetr, which may X-Accel them
    config.data_server = DataServerConfig(accel="nginx-direct")
    assert "/~enc/" not in direct_locations(config)
    assert f'alias "{c4["enc"].resolve()}/";' in nginx_locations(config)
