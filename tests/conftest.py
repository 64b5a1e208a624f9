"""Shared fixtures: generated BAM/VCF data, a real gunicorn server, ticket reassembly."""

from __future__ import annotations

import base64
import collections
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest
import requests

from htsgetr.api.accel import VERIFIERS, installed_module

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
#: nginx, where `make test` installs it (Debian puts it in /usr/sbin, not always on PATH);
#: HTSGETR_TEST_NGINX: another one (deploy/docker/nginx_upstream_check.sh: nginx built from
#: nginx.org's source, with the module built as the nginx-direct image builds it)
NGINX_BIN = os.environ.get("HTSGETR_TEST_NGINX") or shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


#: accel = "nginx-direct" checks urls with njs (libnginx-mod-http-js), Perl (-http-perl) or
#: htsgetr's compiled module (`make build` compiles it when Debian's nginx-dev is installed;
#: HTSGETR_TEST_NGINX_MODULES: a directory looked in first): the nginx module each verifier
#: needs (None: not installed or not built)
_MODULE_DIRS = (os.environ.get("HTSGETR_TEST_NGINX_MODULES") or ROOT / "build" / "nginx",
                ROOT / "build" / "nginx")
VERIFIER_MODULES = {v: installed_module(v, *_MODULE_DIRS) for v in VERIFIERS}
NJS, NGINX_PERL = VERIFIER_MODULES["njs"], VERIFIER_MODULES["perl"]
DIRECT_MODULE = VERIFIER_MODULES["module"]

pysam = pytest.importorskip("pysam")


# --------------------------------------------------------------------------- helpers


#: each pytest-xdist worker hands out ports from its own slice, below Linux's ephemeral
#: range (32768 on, where bind(0) and outgoing connections take theirs)
PORTS_PER_WORKER = 2000
_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 10
_ports = itertools.cycle(range(12000 + _worker * PORTS_PER_WORKER,
                               12000 + (_worker + 1) * PORTS_PER_WORKER))


def free_port() -> int:
    """A port nothing listens on that no other test process hands out. `bind(0)` could
    give two test processes the same one between its check and a server's bind (a test
    then scraped another test's server), so each process takes the next free one of its
    own slice."""
    for port in itertools.islice(_ports, PORTS_PER_WORKER):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"every port of this test process's slice is taken ({_worker})")


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 30.0, **kw: object) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        try:
            requests.get(url, timeout=1, **kw)  # type: ignore[arg-type]
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not start")


class Server:
    """A real `htsgetr serve` (gunicorn) process on a free loopback port."""

    def __init__(self, args: list[str], port: int, scheme: str = "http",
                 env: Optional[dict[str, str]] = None) -> None:
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "htsgetr", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
        # drain the output as it comes: an unread pipe fills after ~700 access-log lines and
        # then blocks the server, which looks like a hang of the server itself
        self._output: list[bytes] = []
        self._drain = threading.Thread(target=self._read_output, daemon=True)
        self._drain.start()

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self._output.append(line)

    def output(self) -> str:
        """What the server printed so far."""
        return b"".join(self._output).decode(errors="replace")

    def start(self, **kw: object) -> Server:
        try:
            wait_for(self.url + "/service-info", self.proc, **kw)
        except RuntimeError as err:
            self._drain.join(5)
            raise RuntimeError(f"{err}\n{self.output()}") from None
        return self

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._drain.join(5)
        return self.output()


def fetch_block(block: dict, session: Optional[requests.Session] = None, **kw: object) -> bytes:
    """Bytes of one ticket url: inline `data:;base64,` or an HTTP GET with its headers."""
    url = block["url"]
    if url.startswith("data:"):
        assert url.startswith("data:;base64,"), url[:40]
        return base64.b64decode(url[len("data:;base64,"):])
    getter = session or requests
    resp = getter.get(url, headers=block.get("headers", {}), timeout=30, **kw)  # type: ignore[arg-type]
    assert resp.status_code in (200, 206), (resp.status_code, resp.text[:200])
    assert "Content-Encoding" not in resp.headers
    rng = block.get("headers", {}).get("Range")
    if rng:
        first, last = rng.split("=")[1].split("-")
        assert len(resp.content) == int(last) - int(first) + 1
    return resp.content


def reassemble(ticket: dict, **kw: object) -> bytes:
    """Concatenate every block of a ticket, as a client does."""
    with requests.Session() as session:
        return b"".join(fetch_block(b, session, **kw) for b in ticket["htsget"]["urls"])


# --------------------------------------------------------------------------- data


def make_bam(path: Path, seed: int = 1, refs: Optional[list[tuple[str, int]]] = None,
             n_reads: int = 3000, csi: bool = False, min_shift: int = 14) -> Path:
    """A sorted, indexed BAM: several references (one empty), varied read lengths,
    placed unmapped mates, and unplaced unmapped reads at the end."""
    rng = random.Random(seed)
    refs = refs or [("chr1", 250_000), ("chr2", 120_000), ("chrEmpty", 50_000), ("chr3", 90_000)]
    header = {
        "HD": {"VN": "1.6", "SO": "coordinate"},
        "SQ": [{"SN": n, "LN": ln} for n, ln in refs],
        "RG": [{"ID": "rg1", "SM": "sample1"}],
        "PG": [{"ID": "gen", "PN": "htsgetr-tests"}],
        "CO": ["generated for htsgetr tests " + "x" * rng.randint(0, 500)],
    }
    reads = []
    for i in range(n_reads):
        tid = rng.choice([t for t, (n, _) in enumerate(refs) if n != "chrEmpty"])
        ln = refs[tid][1]
        qlen = rng.choice([36, 50, 75, 100, 151, 250, rng.randint(20, 300)])
        pos = rng.randint(0, ln - qlen - 1)
        reads.append((tid, pos, qlen, i, False))
    for i in range(n_reads // 20):  # placed unmapped (has a ref and pos, flag 4)
        tid = rng.choice([0, 1])
        reads.append((tid, rng.randint(0, refs[tid][1] - 400), 80, n_reads + i, True))
    reads.sort()
    unsorted = path.with_suffix(".unsorted.bam")
    with pysam.AlignmentFile(str(unsorted), "wb", header=header) as out:
        for tid, pos, qlen, i, unmapped in reads:
            a = pysam.AlignedSegment(out.header)
            a.query_name = f"read{i}"
            a.query_sequence = "".join(rng.choice("ACGT") for _ in range(qlen))
            a.query_qualities = pysam.qualitystring_to_array("I" * qlen)
            a.reference_id = tid
            a.reference_start = pos
            if unmapped:
                a.flag = 4
            else:
                a.flag = rng.choice([0, 16])
                a.mapping_quality = rng.randint(0, 60)
                if rng.random() < 0.1:
                    d = rng.randint(1, 500)
                    a.cigarstring = f"{qlen // 2}M{d}N{qlen - qlen // 2}M"
                else:
                    a.cigarstring = f"{qlen}M"
            a.set_tag("RG", "rg1")
            out.write(a)
        for i in range(n_reads // 10):  # unplaced unmapped
            a = pysam.AlignedSegment(out.header)
            a.query_name = f"unplaced{i}"
            a.query_sequence = "ACGT" * 10
            a.query_qualities = pysam.qualitystring_to_array("I" * 40)
            a.flag = 4
            a.reference_id = -1
            a.reference_start = -1
            out.write(a)
    pysam.sort("-o", str(path), str(unsorted))
    unsorted.unlink()
    if csi:
        pysam.index("-c", "-m", str(min_shift), str(path))
    else:
        pysam.index(str(path))
    return path


def make_vcf(path: Path, seed: int = 2, csi: bool = False, n: int = 3000) -> Path:
    """A bgzipped, indexed VCF with several contigs, one declared but empty."""
    rng = random.Random(seed)
    contigs = [("1", 300_000), ("2", 200_000), ("empty", 10_000), ("X", 150_000)]
    lines = ["##fileformat=VCFv4.2"]
    lines += [f"##contig=<ID={c},length={ln}>" for c, ln in contigs]
    lines += ['##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">',
              '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2"]
    records = []
    for _ in range(n):
        c = rng.choice([0, 1, 3])
        pos = rng.randint(1, contigs[c][1])
        ref = rng.choice(["A", "C", "G", "T", "ACGT" * rng.randint(1, 30)])
        records.append((c, pos, ref))
    records.sort()
    for i, (c, pos, ref) in enumerate(records):
        lines.append(f"{contigs[c][0]}\t{pos}\tv{i}\t{ref}\tG\t50\tPASS\tDP={rng.randint(1, 99)}"
                     f"\tGT\t0/1\t1/1")
    plain = path.with_suffix("")  # x.vcf.gz -> x.vcf
    plain.write_text("\n".join(lines) + "\n")
    pysam.tabix_index(str(plain), preset="vcf", force=True, csi=csi)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("data")
    make_bam(d / "sample.bam")
    (d / "nested" / "deep").mkdir(parents=True)
    make_bam(d / "nested" / "deep" / "other.bam", seed=7)
    make_bam(d / "csi.bam", seed=3, csi=True, min_shift=12)
    make_vcf(d / "calls.vcf.gz")
    make_vcf(d / "calls_csi.vcf.gz", seed=4, csi=True)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(d / "calls.bcf"), str(d / "calls.vcf.gz")],
                   check=True)
    subprocess.run(["bcftools", "index", str(d / "calls.bcf")], check=True)
    # headers larger than one BGZF block, so header and first records share a block mid-file
    many = [(f"contig{i:05d}_with_a_long_name", 10_000 + i) for i in range(4000)]
    make_bam(d / "bighdr.bam", seed=9, refs=many[:1] + [("chr1", 250_000), ("chrEmpty", 10)]
             + many[1:], n_reads=800)
    return d


def serve_dir(directory: Path) -> Iterator[Server]:
    """`htsgetr serve --data-dir directory` on a free port, for a fixture to yield from."""
    port = free_port()
    srv = Server(["--data-dir", str(directory), "--port", str(port), "--workers", "2"], port)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server(data_dir: Path) -> Iterator[Server]:
    yield from serve_dir(data_dir)


def shared(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test where that folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} not present")
    return path


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (and key) for 127.0.0.1 and localhost: real TLS."""
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# --------------------------------------------------------------------------- whole record lists
#
# A region ticket must reassemble to exactly the records htslib returns for its region(s):
# the same records, in the same (file) order, each once: a POST answered with the whole file,
# or a `referenceName=*` ticket carrying placed reads, must fail. Compare WHOLE lists.

#: region as the tests spell it: (referenceName, start, end); "*" is BAM/CRAM's unplaced reads
Spec = tuple[str, Optional[int], Optional[int]]

_READS = (".bam", ".cram", ".sam")


def payload_records(payload: bytes, tmp: Path, suffix: str) -> list[str]:
    """The records of a reassembled payload, in order, as text (BAM/CRAM: SAM lines)."""
    out = tmp / f"whole-payload{suffix}"
    out.write_bytes(payload)
    return file_records(out)


def file_records(path: Path) -> list[str]:
    """Every record of a BAM/CRAM/VCF/BCF file, in file order, as text."""
    if path.suffix in _READS:
        with pysam.AlignmentFile(str(path), check_sq=False) as f:
            return [r.to_string() for r in f.fetch(until_eof=True)]
    with pysam.VariantFile(str(path)) as f:
        return [str(r) for r in f]


def htslib_records(path: Path, regions: list[Spec]) -> list[str]:
    """What htslib (pysam fetch) returns for `regions`: each record once, in file order
    (records told apart by where they end in the file, never by their text), a reference
    the file does not index giving none, "*" the unplaced unmapped reads."""
    found: dict[tuple[int, int], str] = {}
    order: dict[str, int] = {}
    if path.suffix == ".cram":
        for i, text in enumerate(file_records(path)):
            order.setdefault(text, i)
    if path.suffix in _READS:
        with pysam.AlignmentFile(str(path)) as f:
            for name, start, end in regions:
                if name == "*":
                    for r in f.fetch(until_eof=True):
                        if r.reference_id < 0:
                            text = r.to_string()
                            found[(order[text], 0) if order else (f.tell(), 0)] = text
                    continue
                for r in f.fetch(name, start, end):
                    text = r.to_string()
                    # CRAM: records of a container share an offset; they are told apart by
                    # their place in the file (generated and reference reads are distinct)
                    key = (order[text], 0) if order else (f.tell(), 0)
                    found[key] = text
    else:
        with pysam.VariantFile(str(path)) as f:
            for name, start, end in regions:
                if name not in f.index:
                    continue
                for r in f.fetch(name, start, end):
                    found[(f.tell(), 0)] = str(r)
    return [found[k] for k in sorted(found)]


def assert_records(got: list[str], want: list[str], what: object = "") -> None:
    """The whole lists are equal, in order; else say what is extra, missing or moved."""
    if got == want:
        return
    extra = collections.Counter(got) - collections.Counter(want)
    missing = collections.Counter(want) - collections.Counter(got)
    raise AssertionError(
        f"{what}: {len(got)} records, htslib {len(want)}; {sum(extra.values())} extra "
        f"(e.g. {[e[:60] for e in list(extra)[:2]]}), {sum(missing.values())} missing "
        f"(e.g. {[m[:60] for m in list(missing)[:2]]})"
        + ("" if extra or missing else ", same records in another order")
    )


def assert_ticket_records(payload: bytes, tmp: Path, path: Path,
                          regions: Optional[list[Spec]]) -> list[str]:
    """A reassembled ticket of `path` holds exactly htslib's records for `regions` (None:
    the whole file), and ends with the EOF marker (BGZF formats); returns its records."""
    suffix = ".vcf.gz" if path.name.endswith(".vcf.gz") else path.suffix
    got = payload_records(payload, tmp, suffix)
    want = file_records(path) if regions is None else htslib_records(path, regions)
    assert_records(got, want, f"{path.name} {regions}")
    if suffix != ".cram":
        assert payload.endswith(BGZF_EOF_MARKER)
    return got


BGZF_EOF_MARKER = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


def make_accel_tree(root: Path) -> None:
    """What the front-proxy tests serve: `sample.bam`, a copy under a name with spaces, a
    symlinked one (`linked.bam`) and a file no ticket can name (`secret.txt`)."""
    (root / "dir with space").mkdir(parents=True)
    make_bam(root / "sample.bam")
    shutil.copy(root / "sample.bam", root / "dir with space" / "x y.bam")
    shutil.copy(root / "sample.bam.bai", root / "dir with space" / "x y.bam.bai")
    (root / "linked.bam").symlink_to(root / "sample.bam")
    (root / "linked.bam.bai").symlink_to(root / "sample.bam.bai")
    (root / "secret.txt").write_text("not for anyone")


def nginx_t(tmp: Path, module: str, http: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` of a configuration loading `module` with `http` as its http block."""
    assert NGINX_BIN is not None
    conf = tmp / "t.conf"
    conf.write_text(f'load_module "{module}";\npid {tmp}/t.pid;\nevents {{}}\n'
                    f"http {{\n{http}}}\n")
    return subprocess.run([NGINX_BIN, "-t", "-e", "stderr", "-c", str(conf)],
                          capture_output=True, text=True, timeout=60)


def start_nginx(conf: Path, url: str, args: Optional[list[str]] = None,
                wrapper: Sequence[str] = ()) -> subprocess.Popen:
    """nginx with `conf` (or with `args`), run by `wrapper` if given (valgrind), once it
    answers at `url` (RuntimeError with its output if it stops first)."""
    assert NGINX_BIN is not None
    nginx = subprocess.Popen([*wrapper, NGINX_BIN, *(args or ["-c", str(conf)])],
                             stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(100):
        try:
            requests.get(url + "/service-info", timeout=1)
            return nginx
        except requests.RequestException:
            if nginx.poll() is not None:
                out = nginx.stdout.read().decode() if nginx.stdout else ""
                raise RuntimeError(out) from None
            time.sleep(0.1)
    return nginx
