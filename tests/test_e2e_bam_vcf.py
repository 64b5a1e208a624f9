"""End to end under a real gunicorn: BAM and VCF tickets reassemble to what htslib returns:
the whole record list, in order, for every region, POST and `*` ticket."""

from __future__ import annotations

import collections
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pysam
import pytest
import requests
from conftest import (
    Server,
    assert_records,
    assert_ticket_records,
    make_bam,
    reassemble,
    shared,
)

CT = "application/vnd.ga4gh.htsget.v1.3.0+json"
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


def ticket(server: Server, endpoint: str, id: str, **params: object) -> dict:
    resp = requests.get(f"{server.url}/{endpoint}/{id}", params=params, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == CT
    body = resp.json()
    assert set(body) == {"htsget"} and set(body["htsget"]) <= {"format", "urls", "md5"}
    return body


def bam_records(path: Path) -> list[str]:
    with pysam.AlignmentFile(str(path), "rb", check_sq=False) as f:
        return [r.to_string() for r in f.fetch(until_eof=True)]


def vcf_records(path: Path) -> list[str]:
    with pysam.VariantFile(str(path)) as f:
        return [str(r) for r in f]


def region_bam(path: Path, contig: str, start: int | None, end: int | None) -> list[str]:
    with pysam.AlignmentFile(str(path), "rb") as f:
        return [r.to_string() for r in f.fetch(contig, start, end)]


def region_vcf(path: Path, contig: str, start: int | None, end: int | None) -> list[str]:
    with pysam.VariantFile(str(path)) as f:
        if contig not in f.index:
            return []
        return [str(r) for r in f.fetch(contig, start, end)]


def check_payload(payload: bytes, tmp: Path, suffix: str, expected: list[str]) -> list[str]:
    """The payload is a valid file with every expected record once and no record twice
    (whole files; region tickets are compared whole by `assert_ticket_records`)."""
    out = tmp / f"payload{suffix}"
    out.write_bytes(payload)
    got = bam_records(out) if suffix == ".bam" else vcf_records(out)
    counts = collections.Counter(got)
    dupes = [r for r, n in counts.items() if n > 1]
    assert not dupes, f"{len(dupes)} records duplicated"
    missing = [r for r in expected if r not in counts]
    assert not missing, f"{len(missing)} of {len(expected)} region records missing"
    assert payload.endswith(BGZF_EOF)
    return got


def header_text(path: Path) -> str:
    if path.suffix == ".bam":
        with pysam.AlignmentFile(str(path), "rb", check_sq=False) as f:
            return str(f.header)
    with pysam.VariantFile(str(path)) as f:
        return str(f.header)


# --------------------------------------------------------------------------- whole file


FORMAT = {".bam": "BAM", ".cram": "CRAM", ".vcf.gz": "VCF", ".bcf": "BCF"}


@pytest.mark.parametrize("id,suffix,endpoint", [
    ("sample", ".bam", "reads"),
    ("nested/deep/other", ".bam", "reads"),
    ("csi", ".bam", "reads"),
    ("bighdr", ".bam", "reads"),
    ("calls", ".vcf.gz", "variants"),
    ("calls_csi", ".vcf.gz", "variants"),
    ("calls", ".bcf", "variants"),
])
def test_whole_file(server: Server, data_dir: Path, tmp_path: Path, id: str, suffix: str,
                    endpoint: str) -> None:
    t = ticket(server, endpoint, id, format=FORMAT[suffix])
    assert t["htsget"]["format"] == FORMAT[suffix]
    original = data_dir / f"{id}{suffix}"
    payload = reassemble(t)
    expected = bam_records(original) if suffix == ".bam" else vcf_records(original)
    got = check_payload(payload, tmp_path, suffix, expected)
    assert got == expected
    classes = [u.get("class") for u in t["htsget"]["urls"]]
    assert classes[0] == "header" and classes[-1] == "body"
    if "md5" in t["htsget"]:
        import hashlib

        assert hashlib.md5(payload).hexdigest() == t["htsget"]["md5"]


@pytest.mark.parametrize("id,suffix,endpoint", [
    ("sample", ".bam", "reads"), ("bighdr", ".bam", "reads"), ("calls", ".vcf.gz", "variants"),
    ("calls", ".bcf", "variants")])
def test_header_class(server: Server, data_dir: Path, tmp_path: Path, id: str, suffix: str,
                      endpoint: str) -> None:
    t = ticket(server, endpoint, id, format=FORMAT[suffix], **{"class": "header"})
    assert all(u["class"] == "header" for u in t["htsget"]["urls"])
    out = tmp_path / f"h{suffix}"
    out.write_bytes(reassemble(t))
    assert header_text(out) == header_text(data_dir / f"{id}{suffix}")
    assert (bam_records(out) if suffix == ".bam" else vcf_records(out)) == []


# --------------------------------------------------------------------------- regions


def _random_regions(refs: list[tuple[str, int]], n: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    regions = []
    for _ in range(n):
        name, length = rng.choice(refs)
        kind = rng.random()
        if kind < 0.1:
            regions.append((name, None, None))
        elif kind < 0.2:
            regions.append((name, rng.randint(0, length), None))
        elif kind < 0.3:
            regions.append((name, None, rng.randint(1, length)))
        else:
            start = rng.randint(0, length - 1)
            span = rng.choice([1, 50, 1000, 20000, 100000])
            regions.append((name, start, min(length + 100, start + span)))
    return regions


def _params(name: str, start: int | None, end: int | None) -> dict:
    p: dict = {"referenceName": name}
    if start is not None:
        p["start"] = start
    if end is not None:
        p["end"] = end
    return p


@pytest.mark.parametrize("id", ["sample", "csi", "bighdr"])
def test_random_bam_regions(server: Server, data_dir: Path, tmp_path: Path, id: str) -> None:
    path = data_dir / f"{id}.bam"
    with pysam.AlignmentFile(str(path)) as f:
        refs = list(zip(f.references, f.lengths))
    for name, start, end in _random_regions(refs, 40, seed=sum(map(ord, id))):
        t = ticket(server, "reads", id, **_params(name, start, end))
        got = assert_ticket_records(reassemble(t), tmp_path, path, [(name, start, end)])
        assert got == region_bam(path, name, start, end)


@pytest.mark.parametrize("id,suffix", [
    ("calls", ".vcf.gz"), ("calls_csi", ".vcf.gz"), ("calls", ".bcf")])
def test_random_vcf_regions(server: Server, data_dir: Path, tmp_path: Path, id: str,
                            suffix: str) -> None:
    path = data_dir / f"{id}{suffix}"
    refs = [("1", 300_000), ("2", 200_000), ("empty", 10_000), ("X", 150_000)]
    for name, start, end in _random_regions(refs, 40, seed=17):
        t = ticket(server, "variants", id, format=FORMAT[suffix], **_params(name, start, end))
        got = assert_ticket_records(reassemble(t), tmp_path, path, [(name, start, end)])
        assert got == region_vcf(path, name, start, end)


def test_empty_reference_gives_valid_empty_file(server: Server, data_dir: Path,
                                                tmp_path: Path) -> None:
    t = ticket(server, "reads", "sample", referenceName="chrEmpty")
    assert assert_ticket_records(reassemble(t), tmp_path, data_dir / "sample.bam",
                                 [("chrEmpty", None, None)]) == []
    t = ticket(server, "variants", "calls", referenceName="empty", start=0, end=5000)
    assert assert_ticket_records(reassemble(t), tmp_path, data_dir / "calls.vcf.gz",
                                 [("empty", 0, 5000)]) == []


def test_unplaced_reads(server: Server, data_dir: Path, tmp_path: Path) -> None:
    t = ticket(server, "reads", "sample", referenceName="*")
    path = data_dir / "sample.bam"
    with pysam.AlignmentFile(str(path)) as f:
        unplaced = [r.to_string() for r in f.fetch(until_eof=True) if r.reference_id < 0]
    assert unplaced
    got = assert_ticket_records(reassemble(t), tmp_path, path, [("*", None, None)])
    assert got == unplaced


def test_post_overlapping_regions_one_stream(server: Server, data_dir: Path,
                                             tmp_path: Path) -> None:
    regions = [
        {"referenceName": "chr1", "start": 1000, "end": 60000},
        {"referenceName": "chr1", "start": 30000, "end": 90000},
        {"referenceName": "chr2", "start": 0, "end": 50000},
        {"referenceName": "chr1", "start": 50000, "end": 51000},
    ]
    resp = requests.post(f"{server.url}/reads/sample", json={"format": "bam", "regions": regions},
                         timeout=30)
    assert resp.status_code == 200, resp.text
    path = data_dir / "sample.bam"
    specs = [(r["referenceName"], r["start"], r["end"]) for r in regions]
    got = assert_ticket_records(reassemble(resp.json()), tmp_path, path, specs)
    assert len(got) < len(bam_records(path)) // 2
    header_urls = [u for u in resp.json()["htsget"]["urls"] if u["class"] == "header"]
    assert len(header_urls) >= 1


# --------------------------------------------------------------------------- real clients


@pytest.mark.skipif(shutil.which("samtools") is None, reason="samtools not installed")
def test_samtools_reads_ticket_url(server: Server, data_dir: Path) -> None:
    url = f"{server.url}/reads/sample?referenceName=chr1&start=10000&end=20000"
    out = subprocess.run(["samtools", "view", url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = [line for line in out.stdout.splitlines() if line]
    expected = region_bam(data_dir / "sample.bam", "chr1", 10000, 20000)
    assert expected
    assert_records(got, expected, "samtools view of the ticket")


@pytest.mark.skipif(shutil.which("bcftools") is None, reason="bcftools not installed")
def test_bcftools_reads_ticket_url(server: Server, data_dir: Path) -> None:
    url = f"{server.url}/variants/calls?referenceName=2&start=1000&end=90000"
    out = subprocess.run(["bcftools", "view", "-H", url], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    got = [line for line in out.stdout.splitlines() if line]
    expected = [r.rstrip("\n") for r in region_vcf(data_dir / "calls.vcf.gz", "2", 1000, 90000)]
    assert expected
    assert_records(got, expected, "bcftools view of the ticket")


# --------------------------------------------------------------------------- reference data


@pytest.fixture(scope="module")
def shared_server() -> Server:
    root = shared()
    from conftest import free_port

    port = free_port()
    srv = Server(["--data-dir", str(root), "--port", str(port)], port).start()
    yield srv
    srv.stop()


def test_shared_bam_whole_and_regions(shared_server: Server, tmp_path: Path) -> None:
    path = shared("bam", "htsnexus_test_NA12878.bam")
    t = ticket(shared_server, "reads", "bam/htsnexus_test_NA12878")
    payload = reassemble(t)
    assert check_payload(payload, tmp_path, ".bam", []) == bam_records(path)
    import hashlib

    assert hashlib.md5(payload).hexdigest() == "6dc47e886b9f2ecef870af88da3ebdd6"
    for name, start, end in [("11", 4999976, 5002000), ("20", None, None), ("11", 5050000, 5099889),
                             ("20", 6000000, 6000001), ("1", None, None)]:
        t = ticket(shared_server, "reads", "bam/htsnexus_test_NA12878", **_params(name, start, end))
        assert_ticket_records(reassemble(t), tmp_path, path, [(name, start, end)])
    t = ticket(shared_server, "reads", "bam/htsnexus_test_NA12878", referenceName="*")
    got = assert_ticket_records(reassemble(t), tmp_path, path, [("*", None, None)])
    assert len(got) == 12475 and all(r.split("\t")[2] == "*" for r in got)


@pytest.mark.parametrize("name", ["spec-v4.3", "sample1-bcbio-cancer"])
@pytest.mark.parametrize("suffix", [".vcf.gz", ".bcf"])
def test_shared_variants(shared_server: Server, tmp_path: Path, name: str, suffix: str) -> None:
    folder = "vcf" if suffix == ".vcf.gz" else "bcf"
    path = shared(folder, f"{name}{suffix}")
    id = f"{folder}/{name}"
    t = ticket(shared_server, "variants", id, format=FORMAT[suffix])
    assert check_payload(reassemble(t), tmp_path, suffix, []) == vcf_records(path)
    t = ticket(shared_server, "variants", id, format=FORMAT[suffix], **{"class": "header"})
    out = tmp_path / f"h{suffix}"
    out.write_bytes(reassemble(t))
    assert header_text(out) == header_text(path) and vcf_records(out) == []
    with pysam.VariantFile(str(path)) as f:
        contigs = list(f.header.contigs)
    for contig in contigs[:30]:
        for start, end in [(0, 20_000_000), (14000, 1_110_700), (None, None)]:
            t = ticket(shared_server, "variants", id, format=FORMAT[suffix],
                       **_params(contig, start, end))
            assert_ticket_records(reassemble(t), tmp_path, path, [(contig, start, end)])


@pytest.mark.parametrize("id,suffix,endpoint,regions", [
    ("csi", ".bam", "reads", [("chr1", 5000, 90000), ("chr1", 60000, 200000), ("chr3", 0, 1),
                              ("chr1", 100000, 100001), ("chrEmpty", None, None),
                              ("*", None, None)]),
    ("calls", ".vcf.gz", "variants", [("1", 1000, 150000), ("1", 100000, 300000), ("X", 0, 50),
                                      ("2", None, None), ("empty", None, None), ("2", 5, 6000)]),
    ("calls_csi", ".vcf.gz", "variants", [("X", 0, 150000), ("X", 1000, 2000), ("1", 7, 90000)]),
    ("calls", ".bcf", "variants", [("2", 1000, 150000), ("2", 100000, 200000), ("1", None, 999),
                                   ("X", 149000, None), ("empty", 0, 10)]),
])
def test_post_overlapping_regions_every_format(server: Server, data_dir: Path, tmp_path: Path,
                                               id: str, suffix: str, endpoint: str,
                                               regions: list) -> None:
    body = {"format": FORMAT[suffix].lower(),
            "regions": [{k: v for k, v in (("referenceName", n), ("start", s), ("end", e))
                         if v is not None} for n, s, e in regions]}
    resp = requests.post(f"{server.url}/{endpoint}/{id}", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    path = data_dir / f"{id}{suffix}"
    urls = resp.json()["htsget"]["urls"]
    classes = [u["class"] for u in urls]
    assert classes == sorted(classes, key=lambda c: c != "header"), "one header, then the body"
    got = assert_ticket_records(reassemble(resp.json()), tmp_path, path, regions)
    assert len(got) < len(bam_records(path) if suffix == ".bam" else vcf_records(path))


@pytest.mark.parametrize("id,suffix,endpoint,region", [
    ("csi", ".bam", "reads", ("chrEmpty", None, None)),
    ("sample", ".bam", "reads", ("chr1", 249_990, 250_000)),
    ("calls_csi", ".vcf.gz", "variants", ("empty", None, None)),
    ("calls", ".bcf", "variants", ("empty", 0, 10_000)),
    ("calls", ".bcf", "variants", ("X", 149_999_000, None)),
])
def test_empty_regions_every_format(server: Server, data_dir: Path, tmp_path: Path, id: str,
                                    suffix: str, endpoint: str, region: tuple) -> None:
    path = data_dir / f"{id}{suffix}"
    name, start, end = region
    expected = (region_bam(path, name, start, end) if suffix == ".bam"
                else region_vcf(path, name, start, end))
    assert expected == []
    t = ticket(server, endpoint, id, format=FORMAT[suffix], **_params(name, start, end))
    out = tmp_path / f"e{suffix}"
    out.write_bytes(reassemble(t))
    assert assert_ticket_records(out.read_bytes(), tmp_path, path, [region]) == []
    assert header_text(out) == header_text(path)


#: reference names as GRCh38's analysis set spells them (HLA alleles, decoys), and one that
#: reads like a region string
ODD_NAMES = ["chr1", "HLA-A*01:01:01:01", "chrUn_JTFH01000001v1_decoy", "chr6:1-100"]


@pytest.fixture(scope="module")
def odd_names_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    from conftest import free_port

    d = tmp_path_factory.mktemp("odd_names")
    make_bam(d / "odd.bam", seed=23, refs=[(n, 100_000) for n in ODD_NAMES], n_reads=2000)
    subprocess.run(["samtools", "view", "-C", "--output-fmt-option", "no_ref=1",
                    "--output-fmt-option", "seqs_per_slice=300", "-o", str(d / "odd.cram"),
                    str(d / "odd.bam")], check=True)
    subprocess.run(["samtools", "index", str(d / "odd.cram")], check=True)
    lines = ["##fileformat=VCFv4.3"] + [f"##contig=<ID={n},length=100000>" for n in ODD_NAMES]
    lines.append("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO")
    rng = random.Random(23)
    for name in ODD_NAMES:
        lines += [f"{name}\t{pos}\t.\tA\tG\t50\tPASS\t." for pos in
                  sorted(rng.sample(range(1, 100_000), 300))]
    (d / "odd.vcf").write_text("\n".join(lines) + "\n")
    pysam.tabix_index(str(d / "odd.vcf"), preset="vcf", force=True)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(d / "odd.bcf"), str(d / "odd.vcf.gz")],
                   check=True)
    subprocess.run(["bcftools", "index", str(d / "odd.bcf")], check=True)
    port = free_port()
    srv = Server(["--data-dir", str(d), "--port", str(port)], port).start()
    yield srv, d
    srv.stop()


@pytest.mark.parametrize("endpoint,suffix", [("reads", ".bam"), ("reads", ".cram"),
                                             ("variants", ".vcf.gz"), ("variants", ".bcf")])
def test_reference_names_with_stars_colons_and_dashes(
        odd_names_server: tuple[Server, Path], tmp_path: Path, endpoint: str,
        suffix: str) -> None:
    """`HLA-A*01:01:01:01` is a reference like any other (its `*` is not the unplaced reads,
    `chr6:1-100` is not a region string), alone and together in one POST."""
    server, d = odd_names_server
    path = d / f"odd{suffix}"
    fmt = {"format": FORMAT[suffix]}
    for name in ODD_NAMES:
        for start, end in [(None, None), (1000, 50_000), (99_000, 100_000)]:
            t = ticket(server, endpoint, "odd", **fmt, **_params(name, start, end))
            got = assert_ticket_records(reassemble(t), tmp_path, path, [(name, start, end)])
            assert got, (name, start, end)
    regions = [{"referenceName": n, "start": 2000, "end": 30_000} for n in ODD_NAMES[1:]]
    resp = requests.post(f"{server.url}/{endpoint}/odd", json={"regions": regions, **fmt},
                         timeout=30)
    assert resp.status_code == 200, resp.text
    assert_ticket_records(reassemble(resp.json()), tmp_path, path,
                          [(n, 2000, 30_000) for n in ODD_NAMES[1:]])
