"""Auth end to end under real gunicorn: tokens, restrictions that hold to the record, signed
/data urls, CORS, the callout, Passports, and samtools over HTTPS with HTS_AUTH_LOCATION."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pysam
import pytest
import requests
from authkit import Key, Service, claims, hs256, unsigned, unverified_claims
from conftest import Server, fetch_block, free_port, reassemble

CHR1 = 3_000_000
RULE = ("chr1", 1_000_000, 2_000_000)
SECRET_TOKEN_MARK = "alice-secret-marker"


# --------------------------------------------------------------------------- data


def make_edge_data(d: Path) -> None:
    """BAM, CRAM, VCF.gz and BCF whose records crowd the rule's edges: reads spanning them,
    long spliced reads, reads ending just before them, placed unmapped mates, unplaced reads;
    variants with long REFs and symbolic deletions (END=) across them."""
    rng = random.Random(11)
    (d / "cohort").mkdir(parents=True)
    (d / "other").mkdir()
    seq = "".join(rng.choice("ACGT") for _ in range(CHR1))
    (d / "ref.fa").write_text(">chr1\n" + "\n".join(seq[i:i + 60] for i in range(0, CHR1, 60))
                              + "\n>chr2\n" + "ACGT" * 25_000 + "\n")
    pysam.faidx(str(d / "ref.fa"))
    header = {"HD": {"VN": "1.6", "SO": "coordinate"},
              "SQ": [{"SN": "chr1", "LN": CHR1}, {"SN": "chr2", "LN": 100_000}]}
    reads: list[tuple[int, int, str, int]] = []  # (tid, pos, cigar, flag)
    for _ in range(3000):
        reads.append((0, rng.randint(0, CHR1 - 400), f"{rng.randint(30, 250)}M", 0))
    for edge in (RULE[1], RULE[2]):
        for _ in range(400):
            n = rng.randint(30, 250)
            reads.append((0, rng.randint(edge - 3000, edge + 3000), f"{n}M", rng.choice([0, 16])))
        for _ in range(40):  # long spliced reads across the edge
            gap = rng.randint(1000, 60_000)
            reads.append((0, edge - rng.randint(200, gap), f"100M{gap}N100M", 0))
        for k in range(40):  # ending right before the edge
            reads.append((0, edge - 100 - k, "100M" if k else "99M", 0))
        for _ in range(20):
            reads.append((0, rng.randint(edge - 500, edge + 500), "", 4))  # placed unmapped
    for _ in range(200):
        reads.append((1, rng.randint(0, 90_000), "100M", 0))
    reads.sort()
    unsorted = d / "u.bam"
    with pysam.AlignmentFile(str(unsorted), "wb", header=header) as out:
        for i, (tid, pos, cigar, flag) in enumerate(reads):
            a = pysam.AlignedSegment(out.header)
            a.query_name, a.flag, a.reference_id, a.reference_start = f"r{i}", flag, tid, pos
            qlen = sum(int(x) for x in cigar.replace("N", "M").split("M") if x) if cigar else 80
            if cigar:
                a.cigarstring, a.mapping_quality = cigar, 30
                qlen = a.query_alignment_length if "N" not in cigar else 200
            a.query_sequence = "".join(rng.choice("ACGT") for _ in range(qlen))
            a.query_qualities = pysam.qualitystring_to_array("I" * qlen)
            out.write(a)
        for i in range(100):
            a = pysam.AlignedSegment(out.header)
            a.query_name, a.flag, a.reference_id, a.reference_start = f"u{i}", 4, -1, -1
            a.query_sequence = "ACGT" * 10
            a.query_qualities = pysam.qualitystring_to_array("I" * 40)
            out.write(a)
    bam = d / "cohort" / "edge.bam"
    pysam.sort("-o", str(bam), str(unsorted))
    unsorted.unlink()
    pysam.index(str(bam))
    shutil.copy(bam, d / "other" / "x.bam")
    shutil.copy(str(bam) + ".bai", d / "other" / "x.bam.bai")
    cram = d / "cohort" / "edge.cram"
    subprocess.run(["samtools", "view", "-C", "-T", str(d / "ref.fa"), "--output-fmt-option",
                    "embed_ref=1", "--output-fmt-option", "seqs_per_slice=300",
                    "-o", str(cram), str(bam)], check=True)
    subprocess.run(["samtools", "index", str(cram)], check=True)
    lines = ["##fileformat=VCFv4.2", f"##contig=<ID=chr1,length={CHR1}>",
             "##contig=<ID=chr2,length=100000>",
             '##INFO=<ID=END,Number=1,Type=Integer,Description="End">',
             '##ALT=<ID=DEL,Description="Deletion">',
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    recs: list[tuple[int, int, str, str, str]] = []
    for _ in range(2000):
        recs.append((0, rng.randint(1, CHR1), "A", "G", "."))
    for edge in (RULE[1], RULE[2]):
        for _ in range(200):
            recs.append((0, rng.randint(edge - 2000, edge + 2000), "A", "T", "."))
        for _ in range(30):  # long REFs ending either side of the edge
            ln = rng.randint(50, 3000)
            recs.append((0, edge - ln + rng.randint(-20, 20), "C" * ln, "C", "."))
        for _ in range(30):  # symbolic deletions with END
            pos = edge - rng.randint(1, 20_000)
            recs.append((0, pos, "N", "<DEL>", f"END={pos + rng.randint(1, 40_000)}"))
    for _ in range(100):
        recs.append((1, rng.randint(1, 100_000), "A", "C", "."))
    recs.sort()
    names = ["chr1", "chr2"]
    lines += [f"{names[c]}\t{p}\tv{i}\t{r}\t{a}\t50\tPASS\t{info}"
              for i, (c, p, r, a, info) in enumerate(recs)]
    plain = d / "cohort" / "edge.vcf"
    plain.write_text("\n".join(lines) + "\n")
    pysam.tabix_index(str(plain), preset="vcf", force=True)
    vcf = d / "cohort" / "edge.vcf.gz"
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(d / "cohort" / "edge.bcf"), str(vcf)],
                   check=True)
    subprocess.run(["bcftools", "index", str(d / "cohort" / "edge.bcf")], check=True)


def records(path: Path, fmt: str, region: tuple[str, int, int] | None = None) -> list[str]:
    """Every record of a file (or of `region`, as htslib's region query has it)."""
    if fmt in ("BAM", "CRAM"):
        with pysam.AlignmentFile(str(path), check_sq=False) as f:
            it = f.fetch(*region) if region else f.fetch(until_eof=True)
            return [r.to_string() for r in it]
    with pysam.VariantFile(str(path)) as f:
        it = f.fetch(*region) if region else f.fetch()
        return [str(r) for r in it]


EXT = {"BAM": ".bam", "CRAM": ".cram", "VCF": ".vcf.gz", "BCF": ".bcf"}
ENDPOINT = {"BAM": "reads", "CRAM": "reads", "VCF": "variants", "BCF": "variants"}


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("authdata")
    make_edge_data(d / "data")
    key = Key("RSA", "main")
    (d / "jwt.pub").write_bytes(key.public_pem())
    (d / "restrictions.json").write_text(json.dumps({"version": 1, "htsgetAuth": [
        {"location": {"prefix": "cohort/"},
         "rules": [{"referenceName": RULE[0], "start": RULE[1], "end": RULE[2]}]},
    ]}))
    yield {"dir": d, "data": d / "data", "key": key}


def write_config(d: Path, name: str, auth: str, extra: str = "") -> Path:
    path = d / f"{name}.toml"
    path.write_text(f"""
[[locations]]
root = "{d / 'data'}"
{extra}
[auth]
validate_audience = ["htsget-test"]
validate_issuer = ["https://idp.test"]
{auth}
[auth.data_urls]
secret = "data-url-secret-for-tests"
""")
    return path


def start(config: Path, tls: tuple[Path, Path] | None = None, **env: str) -> Server:
    port = free_port()
    args = ["--config", str(config), "--port", str(port), "--workers", "2"]
    if tls:
        args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    srv = Server(args, port, scheme="https" if tls else "http", env=env)
    return srv.start(verify=str(tls[0])) if tls else srv.start()


@pytest.fixture(scope="module")
def static_server(world: dict[str, Any], cert: tuple[Path, Path]) -> Iterator[Server]:
    d = world["dir"]
    config = write_config(d, "static", f"""
[auth.jwt]
kind = "public_key"
path = "{d / 'jwt.pub'}"
[auth.authorization]
kind = "static"
path = "{d / 'restrictions.json'}"
""")
    srv = start(config, cert)
    yield srv
    log = srv.stop()
    world["static_log"] = log


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- authentication


def test_service_info_is_public_and_tickets_need_a_token(
    static_server: Server, cert: tuple[Path, Path]
) -> None:
    v = str(cert[0])
    assert requests.get(f"{static_server.url}/reads/service-info", verify=v).status_code == 200
    r = requests.get(f"{static_server.url}/reads/cohort/edge", verify=v)
    assert r.status_code == 401
    assert r.json()["htsget"]["error"] == "InvalidAuthentication"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def refused_tokens(key: Key, pub_pem: bytes) -> dict[str, tuple[str, int]]:
    other = Key("RSA", "main")  # same kid, another key
    return {
        "malformed": ("not-a-jwt", 401),
        "expired": (key.sign(claims(ttl=-3600, sub=SECRET_TOKEN_MARK)), 401),
        "wrong aud": (key.sign(claims(aud="someone-else")), 401),
        "wrong iss": (key.sign(claims(iss="https://evil.test")), 401),
        "alg none": (unsigned(claims()), 401),
        "HS256 with the public key": (hs256(claims(), pub_pem, "main"), 401),
        "another key": (other.sign(claims()), 401),
        "no exp": (key.sign({k: v for k, v in claims().items() if k != "exp"}), 401),
    }


def test_bad_tokens_are_refused_with_401(
    static_server: Server, world: dict[str, Any], cert: tuple[Path, Path]
) -> None:
    url = f"{static_server.url}/reads/cohort/edge?referenceName=chr1&start=1000000&end=1001000"
    key: Key = world["key"]
    for name, (token, status) in refused_tokens(key, key.public_pem()).items():
        r = requests.get(url, headers=bearer(token), verify=str(cert[0]))
        assert r.status_code == status, (name, r.text)
        assert r.json()["htsget"]["error"] == "InvalidAuthentication", name
        assert token not in r.text and "WWW-Authenticate" in r.headers, name
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", key.sign(claims())):
        r = requests.get(url, headers={"Authorization": header}, verify=str(cert[0]))
        assert r.status_code == 401, header


def test_an_id_outside_the_rules_is_403(
    static_server: Server, world: dict[str, Any], cert: tuple[Path, Path]
) -> None:
    token = world["key"].sign(claims())
    for path in ("/reads/other/x?referenceName=chr1&start=1000000&end=1001000",
                 "/reads/cohort/edge?referenceName=chr1&start=999000&end=1001000",
                 "/reads/cohort/edge", "/reads/cohort/edge?referenceName=chr2",
                 "/reads/nonexistent/thing"):
        r = requests.get(static_server.url + path, headers=bearer(token), verify=str(cert[0]))
        assert r.status_code == 403, (path, r.text)
        assert r.json()["htsget"]["error"] == "PermissionDenied"


# --------------------------------------------------------------------------- to the record


@pytest.mark.parametrize("fmt", ["BAM", "CRAM", "VCF", "BCF"])
def test_restricted_tickets_hold_exactly_the_allowed_records(
    static_server: Server, world: dict[str, Any], cert: tuple[Path, Path], fmt: str,
    tmp_path: Path,
) -> None:
    token = world["key"].sign(claims())
    original = world["data"] / "cohort" / f"edge{EXT[fmt]}"
    for region in (RULE, ("chr1", 1_000_000, 1_000_500), ("chr1", 1_999_000, 2_000_000)):
        url = (f"{static_server.url}/{ENDPOINT[fmt]}/cohort/edge?format={fmt}"
               f"&referenceName={region[0]}&start={region[1]}&end={region[2]}")
        r = requests.get(url, headers=bearer(token), verify=str(cert[0]))
        assert r.status_code == 200, r.text
        ticket = r.json()
        assert set(ticket["htsget"]) == {"format", "urls"}  # no hint without suppress_errors
        out = tmp_path / f"out{EXT[fmt]}"
        out.write_bytes(reassemble(ticket, verify=str(cert[0])))
        got = records(out, fmt)
        expected = records(original, fmt, region)
        assert got == expected, (fmt, region, len(got), len(expected))
        # and nothing of the file outside the rule: every record overlaps it
        assert set(got) <= set(records(original, fmt, RULE))


def test_header_and_post_under_restrictions(
    static_server: Server, world: dict[str, Any], cert: tuple[Path, Path], tmp_path: Path
) -> None:
    v, token = str(cert[0]), world["key"].sign(claims())
    bam = world["data"] / "cohort" / "edge.bam"
    r = requests.get(f"{static_server.url}/reads/cohort/edge?class=header", headers=bearer(token),
                     verify=v)
    assert r.status_code == 200  # the header wherever the ID is allowed
    out = tmp_path / "h.bam"
    out.write_bytes(reassemble(r.json(), verify=v))
    assert records(out, "BAM") == []
    with pysam.AlignmentFile(str(out)) as f:
        assert f.references == ("chr1", "chr2")
    inside = [{"referenceName": "chr1", "start": 1_100_000, "end": 1_101_000},
              {"referenceName": "chr1", "start": 1_999_500, "end": 2_000_000}]
    r = requests.post(f"{static_server.url}/reads/cohort/edge", json={"regions": inside},
                      headers=bearer(token), verify=v)
    assert r.status_code == 200, r.text
    out.write_bytes(reassemble(r.json(), verify=v))
    expected = records(bam, "BAM", ("chr1", 1_100_000, 1_101_000))
    expected += [x for x in records(bam, "BAM", ("chr1", 1_999_500, 2_000_000))
                 if x not in expected]
    assert records(out, "BAM") == expected
    outside = inside + [{"referenceName": "chr1", "start": 2_000_000, "end": 2_000_001}]
    r = requests.post(f"{static_server.url}/reads/cohort/edge", json={"regions": outside},
                      headers=bearer(token), verify=v)
    assert r.status_code == 403


# --------------------------------------------------------------------------- signed /data


def test_data_urls_are_signed_and_cannot_be_widened(
    static_server: Server, world: dict[str, Any], cert: tuple[Path, Path]
) -> None:
    v = str(cert[0])
    token = world["key"].sign(claims())
    url = f"{static_server.url}/reads/cohort/edge?referenceName=chr1&start=1500000&end=1600000"
    ticket = requests.get(url, headers=bearer(token), verify=v).json()
    blocks = [b for b in ticket["htsget"]["urls"] if not b["url"].startswith("data:")]
    assert blocks and all("sig=" in b["url"] and "exp=" in b["url"] for b in blocks)
    block = blocks[0]
    assert fetch_block(block, verify=v)  # as listed: works, with no token at all
    first, last = block["headers"]["Range"].split("=")[1].split("-")
    signed = block["url"]
    bare = signed.split("?")[0]
    attempts = {
        "wider range": (signed, {"Range": f"bytes={first}-{int(last) + 1}"}),
        "other range": (signed, {"Range": "bytes=0-100"}),
        "no range": (signed, {}),
        "no signature": (bare, block["headers"]),
        "other file": (signed.replace("cohort/edge.bam", "other/x.bam"), block["headers"]),
        "the index": (signed.replace("edge.bam", "edge.bam.bai"), block["headers"]),
        "altered signature": (signed[:-2] + ("AA" if not signed.endswith("AA") else "BB"),
                              block["headers"]),
        "later expiry": (signed.replace("exp=", "exp=9"), block["headers"]),
    }
    for name, (u, headers) in attempts.items():
        r = requests.get(u, headers=headers, verify=v)
        assert r.status_code == 403, (name, r.status_code)
        assert r.json()["htsget"]["error"] == "PermissionDenied", name


def test_cors_preflight_needs_no_token(static_server: Server, cert: tuple[Path, Path]) -> None:
    v = str(cert[0])
    for path in ("/reads/cohort/edge", "/data/cohort/edge.bam"):
        r = requests.options(static_server.url + path, verify=v, headers={
            "Origin": "https://igv.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization, Range"})
        assert r.status_code == 200, (path, r.text)
        assert r.headers["Access-Control-Allow-Origin"] in ("*", "https://igv.example")
        assert "range" in r.headers["Access-Control-Allow-Headers"].lower()


@pytest.mark.skipif(shutil.which("samtools") is None, reason="samtools not installed")
def test_samtools_over_https_with_hts_auth_location(
    static_server: Server, world: dict[str, Any], cert: tuple[Path, Path]
) -> None:
    token = world["key"].sign(claims(sub=SECRET_TOKEN_MARK))
    with tempfile.NamedTemporaryFile("w", suffix=".token", delete=False) as f:
        f.write(token)
    url = f"{static_server.url}/reads/cohort/edge?referenceName=chr1&start=1200000&end=1300000"
    env = {**os.environ, "CURL_CA_BUNDLE": str(cert[0]), "HTS_AUTH_LOCATION": f.name}
    out = subprocess.run(["samtools", "view", url], capture_output=True, text=True, env=env,
                         timeout=60)
    os.unlink(f.name)
    assert out.returncode == 0, out.stderr
    expected = records(world["data"] / "cohort" / "edge.bam", "BAM", ("chr1", 1_200_000, 1_300_000))
    assert out.stdout.splitlines() == expected
    no_token = subprocess.run(["samtools", "view", url], capture_output=True, text=True,
                              env={**os.environ, "CURL_CA_BUNDLE": str(cert[0])}, timeout=60)
    assert no_token.returncode != 0


# --------------------------------------------------------------------------- callout + suppress


@pytest.fixture(scope="module")
def callout_server(world: dict[str, Any]) -> Iterator[tuple[Server, Service]]:
    """Restrictions from a callout of the test's own: alice may read cohort/ on chr1 within
    the rule, bob nothing; suppress_errors on."""
    svc = Service()

    def authorize(headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        sub = unverified_claims(token).get("sub") if token.count(".") == 2 else None
        if sub == "alice":
            return 200, {"Cache-Control": "max-age=60"}, {"version": 1, "htsgetAuth": [
                {"location": {"prefix": "cohort/"}, "rules": [
                    {"referenceName": RULE[0], "start": RULE[1], "end": RULE[2]}]}]}
        return 200, {}, {"version": 1, "htsgetAuth": [{"location": {"id": "nothing"}}]}

    svc.routes["/authorize"] = authorize
    key = Key("EC", "ec1")
    svc.routes["/jwks"] = lambda h: (200, {"Cache-Control": "max-age=300"}, {"keys": [key.jwk()]})
    world["ec_key"] = key
    d = world["dir"]
    config = write_config(d, "callout", f"""
suppress_errors = true
[auth.jwt]
kind = "jwks"
url = "{svc.url}/jwks"
[auth.authorization]
kind = "callout"
url = "{svc.url}/authorize"
forward.headers.allow = ["Author*"]
forward.context.id = true
forward.context.endpoint_type = true
""")
    srv = start(config)
    yield srv, svc
    world["callout_log"] = srv.stop()
    svc.close()


def test_callout_decides_per_token_and_suppress_gives_the_allowed_part(
    callout_server: tuple[Server, Service], world: dict[str, Any], tmp_path: Path
) -> None:
    srv, svc = callout_server
    key: Key = world["ec_key"]
    alice, bob = key.sign(claims(sub="alice")), key.sign(claims(sub="bob"))
    url = f"{srv.url}/reads/cohort/edge?referenceName=chr1&start=500000&end=1500000"
    r = requests.get(url, headers=bearer(bob))
    assert r.status_code == 403, r.text  # another dataset's token
    r = requests.get(url, headers=bearer(alice))
    assert r.status_code == 200, r.text
    ticket = r.json()
    assert ticket["htsget"]["allowed"][0]["location"] == {"prefix": "cohort/"}
    out = tmp_path / "s.bam"
    out.write_bytes(reassemble(ticket))
    bam = world["data"] / "cohort" / "edge.bam"
    assert records(out, "BAM") == records(bam, "BAM", ("chr1", 1_000_000, 1_500_000))
    whole = requests.get(f"{srv.url}/reads/cohort/edge", headers=bearer(alice)).json()
    out.write_bytes(reassemble(whole))
    assert records(out, "BAM") == records(bam, "BAM", RULE)
    outside = requests.get(f"{srv.url}/reads/cohort/edge?referenceName=chr2",
                           headers=bearer(alice)).json()
    out.write_bytes(reassemble(outside))
    assert records(out, "BAM") == []  # only the header
    calls = [h for p, h in svc.requests if p.startswith("/authorize")]
    assert calls and calls[-1]["Htsget-Context-Id"] == "cohort/edge"
    assert calls[-1]["Htsget-Context-Endpoint-Type"] == "reads"
    assert "Authorization" in calls[-1]


def test_no_token_in_any_log_line(
    static_server: Server, callout_server: tuple[Server, Service], world: dict[str, Any],
    cert: tuple[Path, Path],
) -> None:
    """Refused and accepted tokens, then every line either server logged so far."""
    key: Key = world["key"]
    token = key.sign(claims(sub=SECRET_TOKEN_MARK, ttl=-10))
    requests.get(f"{static_server.url}/reads/cohort/edge", headers=bearer(token),
                 verify=str(cert[0]))
    log = static_server.stop() + callout_server[0].stop()
    assert "GET /reads/cohort/edge" in log  # the access log is there
    for secret in (token, token.split(".")[2], SECRET_TOKEN_MARK, "data-url-secret-for-tests"):
        assert secret not in log
