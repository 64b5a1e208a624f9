"""Derived BGZF edges (issue 12): the re-cut partial blocks at the ends of a BAM, VCF or BCF
chunk are inline while the ticket's `max_inline_bytes` budget lasts, and past it are urls of
/data (`~~bgzf/<version>/<block>/<payload span>/<path>`) that recompute the same bytes.

A POST of many regions then keeps its ticket JSON bounded, and its reassembled records still
equal htslib's (whole list, in order); the derived bytes equal the inline ones; urls that
name no block, a span past the block, or a file changed since are 404; with auth on they are
signed like every /data url; samtools reads such a ticket end to end.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
from conftest import (
    ROOT,
    Server,
    Spec,
    assert_ticket_records,
    free_port,
    make_bam,
    make_vcf,
)

sys.path.insert(0, str(ROOT / "bench"))
from exactness import reassemble_via  # noqa: E402  (the bench's in-app client)

from htsgetr.app import create_app
from htsgetr.config import for_data_dir
from htsgetr.formats.derived import BGZF_PREFIX, parse_derived

FILES = {"BAM": ("reads", "sample.bam"), "VCF": ("variants", "calls.vcf.gz"),
         "BCF": ("variants", "calls.bcf")}
REFS = {"BAM": [("chr1", 250_000), ("chr2", 120_000), ("chr3", 90_000)],
        "VCF": [("1", 300_000), ("2", 200_000), ("X", 150_000)]}
REFS["BCF"] = REFS["VCF"]
BOUND = 3_000


@pytest.fixture(scope="module")
def edir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("edges")
    make_bam(d / "sample.bam", seed=31, n_reads=12_000)
    make_vcf(d / "calls.vcf.gz", seed=32, n=12_000)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(d / "calls.bcf"),
                    str(d / "calls.vcf.gz")], check=True)
    subprocess.run(["bcftools", "index", str(d / "calls.bcf")], check=True)
    return d


def regions_for(fmt: str, n: int, seed: int) -> list[Spec]:
    rng = random.Random(seed)
    out: list[Spec] = []
    for _ in range(n):
        name, length = rng.choice(REFS[fmt])
        start = rng.randrange(0, length - 3000)
        out.append((name, start, start + rng.randint(50, 3000)))
    return out


def post(client: Any, fmt: str, regions: list[Spec]) -> dict[str, Any]:
    endpoint, name = FILES[fmt]
    body = {"format": fmt, "regions": [
        {"referenceName": n, "start": s, "end": e} for n, s, e in regions]}
    r = client.post(f"/{endpoint}/{name.split('.')[0]}", json=body)
    assert r.status_code == 200, r.get_data()[:300]
    return r.get_json()  # type: ignore[no-any-return]


def inline_chars(ticket: dict[str, Any]) -> int:
    return sum(len(b["url"]) for b in ticket["htsget"]["urls"] if b["url"].startswith("data:"))


def derived_urls(ticket: dict[str, Any]) -> list[str]:
    return [b["url"] for b in ticket["htsget"]["urls"] if f"/data/{BGZF_PREFIX}/" in b["url"]]


@pytest.mark.parametrize("fmt", list(FILES))
def test_many_regions_stay_in_budget_and_exact(edir: Path, fmt: str, tmp_path: Path) -> None:
    config = for_data_dir(str(edir))
    regions = regions_for(fmt, 60, seed=7)
    bounded = create_app(_bounded(edir)).test_client()
    ticket = post(bounded, fmt, regions)
    assert derived_urls(ticket), "no edge was derived: the bound was not reached"
    # the EOF marker and header re-cut always stay inline; edges only while the budget lasts
    assert inline_chars(ticket) <= BOUND, inline_chars(ticket)
    payload = reassemble_via(bounded, ticket)
    assert_ticket_records(payload, tmp_path, edir / FILES[fmt][1], regions)
    # the same ticket with everything inline reassembles to the same bytes
    free = create_app(config).test_client()
    unbounded = post(free, fmt, regions)
    assert not derived_urls(unbounded)
    assert inline_chars(unbounded) > BOUND
    assert reassemble_via(free, unbounded) == payload


def _bounded(edir: Path) -> Any:
    config = for_data_dir(str(edir))
    config.max_inline_bytes = BOUND
    return config


def test_small_tickets_are_unchanged(edir: Path) -> None:
    """Far inside the budget, a ticket is what it always was: every edge inline."""
    client = create_app(for_data_dir(str(edir))).test_client()
    r = client.get("/reads/sample?referenceName=chr1&start=100000&end=101000")
    ticket = r.get_json()
    assert not derived_urls(ticket)
    assert len(ticket["htsget"]["urls"]) >= 3


def test_tampered_and_stale_edges_are_404(edir: Path, tmp_path: Path) -> None:
    d = tmp_path / "copy"
    shutil.copytree(edir, d)
    config = for_data_dir(str(d))
    config.max_inline_bytes = 0
    client = create_app(config).test_client()
    ticket = client.get("/reads/sample?referenceName=chr2&start=5000&end=9000").get_json()
    urls = derived_urls(ticket)
    assert urls
    path = urlparse(urls[0]).path
    assert client.get(path).status_code == 200
    ref = parse_derived(path[len("/data/"):])
    assert ref is not None
    prefix, tag = BGZF_PREFIX, ref.tag
    bad = [
        f"{prefix}/{tag}/{ref.start + 1}-{ref.end}/{ref.token}/{ref.data_path}",  # no block
        f"{prefix}/{tag}/{ref.start}-{ref.end + 7}/{ref.token}/{ref.data_path}",  # wrong end
        f"{prefix}/{tag}/{ref.start}-{ref.end}/0-65536/{ref.data_path}",  # past the payload?
        f"{prefix}/{tag}/{ref.start}-{ref.end}/{ref.token}/sample.bam.bai",  # an index
        f"{prefix}/{'0' * 16}/{ref.start}-{ref.end}/{ref.token}/{ref.data_path}",  # other tag
        f"{prefix}/{tag}/{ref.start}-{ref.end}/5-5/{ref.data_path}",  # empty span
    ]
    for p in bad:
        r = client.get("/data/" + p)
        if p.split("/")[3] == "0-65536" and r.status_code == 200:
            # a full block of 65536 bytes is possible; it then holds exactly that span
            continue
        assert r.status_code == 404, (p, r.status_code)
        assert json.loads(r.get_data())["htsget"]["error"] == "NotFound"
    # the file changes (a new mtime is a new version): its old edges are refused, never
    # cut from other bytes
    os.utime(d / "sample.bam", ns=(1, 1))
    assert client.get(path).status_code == 404


@pytest.fixture(scope="module")
def gunicorn(edir: Path) -> Any:
    port = free_port()
    srv = Server(["--data-dir", str(edir), "--port", str(port),
                  "--set", "max_inline_bytes=0"], port).start()
    yield srv
    srv.stop()


@pytest.mark.skipif(shutil.which("samtools") is None, reason="samtools not installed")
def test_samtools_reads_derived_edges(gunicorn: Server, edir: Path, tmp_path: Path) -> None:
    region: Spec = ("chr1", 120_000, 127_000)
    url = f"{gunicorn.url}/reads/sample?referenceName=chr1&start=120000&end=127000"
    ticket = requests.get(url, timeout=10).json()
    assert derived_urls(ticket)
    out = subprocess.run(["samtools", "view", "-b", "-o", str(tmp_path / "out.bam"), url],
                         capture_output=True, check=True)
    assert out.returncode == 0
    assert_ticket_records((tmp_path / "out.bam").read_bytes(), tmp_path, edir / "sample.bam",
                          [region])
