"""A real `htsgetr serve --config FILE`: regex locations over two directories, live reload."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterator

import pysam
import pytest
import requests
from conftest import Server, free_port, make_bam, reassemble

REGION = ("chr1", 20_000, 90_000)


class ConfigServer:
    """`htsgetr serve --config path` whose output can be read while it runs."""

    def __init__(self, path: Path, port: int) -> None:
        self.path, self.port = path, port
        self.server = Server(["--config", str(path)], port)
        self.url = self.server.url
        self.output = ""

    def read(self) -> str:
        self.output = self.server.output()  # conftest.Server drains it as it comes
        return self.output

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.read():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged:\n{self.output}")
            time.sleep(0.05)

    def hup(self) -> None:
        os.kill(self.server.proc.pid, signal.SIGHUP)

    def stop(self) -> str:
        return self.server.stop()


@pytest.fixture()
def running() -> Iterator[Callable[[Path, int], ConfigServer]]:
    servers: list[ConfigServer] = []

    def start(path: Path, port: int) -> ConfigServer:
        srv = ConfigServer(path, port)
        servers.append(srv)
        srv.server.start()
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture(scope="module")
def cohort_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cohortB")
    (d / "bams").mkdir()
    make_bam(d / "bams" / "s1.bam", seed=11, n_reads=1200)
    return d


def status(url: str) -> int:
    return requests.get(url, timeout=10).status_code


def wait_status(url: str, expected: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := status(url)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}: {got}, expected {expected}")
        time.sleep(0.1)


def bam_region_records(data: bytes, tmp: Path, name: str) -> list[str]:
    """Records of `data` (a reassembled BAM) in REGION, read back through an index."""
    path = tmp / f"{name}.bam"
    path.write_bytes(data)
    pysam.index(str(path))
    with pysam.AlignmentFile(str(path)) as f:
        return [r.to_string() for r in f.fetch(*REGION)]


def expected_records(path: Path) -> list[str]:
    with pysam.AlignmentFile(str(path)) as f:
        return [r.to_string() for r in f.fetch(*REGION)]


def two_locations(port: int, cohort_b: Path, data_dir: Path, prefix: str = "cohortA") -> str:
    """cohortB by named groups (falling through to disk A), everything else on disk A."""
    return f"""
[ticket_server]
port = {port}
workers = 1
threads = 4
graceful_timeout = 5

[service_info]
name = "config e2e"

[[locations]]
name = "cohortB"
regex = '^cohortB/(?P<sample>[A-Za-z0-9]+)$'
substitution = "bams/${{sample}}"
root = "{cohort_b}"
fall_through = true

[[locations]]
name = "cohortA"
regex = '^({prefix}|cohortB)/(.+)$'
substitution = "$2"
root = "{data_dir}"
"""


def ticket(srv: ConfigServer, endpoint: str, id: str, **params: object) -> dict:
    resp = requests.get(f"{srv.url}/{endpoint}/{id}", params=params, timeout=30)  # type: ignore[arg-type]
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_two_locations_over_two_directories(
    running: Callable[[Path, int], ConfigServer], cohort_b: Path, data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "htsget.toml"
    path.write_text(two_locations(port, cohort_b, data_dir))
    srv = running(path, port)
    region = {"referenceName": REGION[0], "start": REGION[1], "end": REGION[2]}

    # named groups: cohortB/s1 -> <cohortB>/bams/s1.bam, served through its own mount
    t = ticket(srv, "reads", "cohortB/s1", **region)
    assert any("/data/~cohortB/bams/s1.bam" in u["url"] for u in t["htsget"]["urls"])
    got = bam_region_records(reassemble(t), tmp_path, "b")
    assert got and got == expected_records(cohort_b / "bams" / "s1.bam")

    # numbered groups: cohortA/nested/deep/other -> <data_dir>/nested/deep/other.bam
    t = ticket(srv, "reads", "cohortA/nested/deep/other", **region)
    assert any("/data/~cohortA/nested/deep/other.bam" in u["url"] for u in t["htsget"]["urls"])
    got = bam_region_records(reassemble(t), tmp_path, "a")
    assert got and got == expected_records(data_dir / "nested" / "deep" / "other.bam")

    # fall-through: cohortB/sample is not under cohortB's root, so the next location serves it
    t = ticket(srv, "reads", "cohortB/sample", **region)
    assert bam_region_records(reassemble(t), tmp_path, "f") == expected_records(
        data_dir / "sample.bam"
    )

    # variants from the same location; IDs no location matches are 404
    t = ticket(srv, "variants", "cohortA/calls", referenceName="1", start=0, end=100_000)
    assert t["htsget"]["format"] == "VCF"
    assert status(f"{srv.url}/reads/sample") == 404
    assert status(f"{srv.url}/reads/cohortB/nothing") == 404
    assert requests.get(f"{srv.url}/service-info", timeout=10).json()["name"] == "config e2e"


def test_sighup_switches_mapping_and_refuses_a_broken_file(
    running: Callable[[Path, int], ConfigServer], cohort_b: Path, data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "htsget.toml"
    path.write_text(two_locations(port, cohort_b, data_dir))
    srv = running(path, port)
    old, new = f"{srv.url}/reads/cohortA/sample", f"{srv.url}/reads/alpha/sample"
    assert (status(old), status(new)) == (200, 404)

    # a changed file: after SIGHUP the new mapping serves and the old one is gone
    path.write_text(two_locations(port, cohort_b, data_dir, prefix="alpha"))
    srv.hup()
    wait_status(new, 200)
    wait_status(old, 404)
    srv.wait_log("configuration reloaded")
    t = ticket(
        srv, "reads", "alpha/sample", referenceName=REGION[0], start=REGION[1], end=REGION[2]
    )
    assert bam_region_records(reassemble(t), tmp_path, "r") == expected_records(
        data_dir / "sample.bam"
    )

    # a broken file: refused with a logged error naming the key; the mapping does not change
    path.write_text(path.read_text().replace("regex = '^(alpha", "regex = '^((alpha"))
    srv.hup()
    srv.wait_log("configuration reload refused")
    assert "locations[1].regex: bad regular expression" in srv.output
    srv.wait_log("Booting worker", timeout=5)  # the replacement workers run the old config
    for _ in range(10):
        assert (status(new), status(old)) == (200, 404)
        time.sleep(0.1)

    # and a later good file is picked up again
    path.write_text(two_locations(port, cohort_b, data_dir, prefix="beta"))
    srv.hup()
    wait_status(f"{srv.url}/reads/beta/sample", 200)


def test_watch_reloads_a_changed_file(
    running: Callable[[Path, int], ConfigServer], cohort_b: Path, data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "htsget.toml"
    watch = "watch = true\nwatch_interval = 0.2\n"
    path.write_text(watch + two_locations(port, cohort_b, data_dir))
    srv = running(path, port)
    assert status(f"{srv.url}/reads/cohortA/sample") == 200
    path.write_text(watch + two_locations(port, cohort_b, data_dir, prefix="gamma"))
    wait_status(f"{srv.url}/reads/gamma/sample", 200)
    srv.wait_log("changed, reloading")


def test_separate_data_server(
    running: Callable[[Path, int], ConfigServer], data_dir: Path, tmp_path: Path
) -> None:
    port, data_port = free_port(), free_port()
    path = tmp_path / "htsget.toml"
    text = f"""
[ticket_server]
port = {port}
workers = 1
[data_server]
separate = true
port = {data_port}
workers = 1
[[locations]]
id_prefix = "one/"
root = "{data_dir}"
"""
    path.write_text(text)
    srv = running(path, port)
    t = ticket(srv, "reads", "one/sample", referenceName=REGION[0], start=REGION[1], end=REGION[2])
    urls = [u["url"] for u in t["htsget"]["urls"] if not u["url"].startswith("data:")]
    assert urls and all(u.startswith(f"http://127.0.0.1:{data_port}/data/") for u in urls)
    assert bam_region_records(reassemble(t), tmp_path, "s") == expected_records(
        data_dir / "sample.bam"
    )
    assert status(f"http://127.0.0.1:{port}/data/sample.bam") == 404  # not on the ticket bind
    assert status(f"http://127.0.0.1:{data_port}/reads/one/sample") == 404  # nor tickets here

    # SIGHUP to the ticket master reloads the data master too
    path.write_text(text.replace('"one/"', '"two/"'))
    srv.hup()
    wait_status(f"{srv.url}/reads/two/sample", 200)
    deadline = time.monotonic() + 20
    while srv.read().count("configuration reloaded") < 2:
        assert time.monotonic() < deadline, srv.output
        time.sleep(0.1)


def test_reload_does_not_drop_in_flight_requests(
    running: Callable[[Path, int], ConfigServer], cohort_b: Path, data_dir: Path, tmp_path: Path
) -> None:
    """A download that is under way when SIGHUP arrives finishes, whole, on the old worker."""
    big = cohort_b / "bams" / "big.bam"  # /data serves data files only
    if not big.exists():
        big.write_bytes(os.urandom(48 << 20))  # larger than any socket buffer
    port = free_port()
    path = tmp_path / "htsget.toml"
    path.write_text(two_locations(port, cohort_b, data_dir))
    srv = running(path, port)
    resp = requests.get(f"{srv.url}/data/~cohortB/bams/big.bam", stream=True, timeout=30)
    assert resp.status_code == 200
    body = resp.raw.read(1 << 20)
    path.write_text(two_locations(port, cohort_b, data_dir, prefix="alpha"))
    srv.hup()
    wait_status(f"{srv.url}/reads/alpha/sample", 200)  # new workers serve the new mapping
    while chunk := resp.raw.read(1 << 20):  # meanwhile the old worker keeps sending
        body += chunk
        time.sleep(0.01)
    assert len(body) == big.stat().st_size and body == big.read_bytes()


def test_reference_layout_by_format(tmp_path: Path) -> None:
    """The GA4GH compliance layout: one ID, its BAM/CRAM/VCF/BCF in per-format folders,
    chosen by format-restricted locations."""
    from conftest import shared

    root = shared()
    port = free_port()
    path = tmp_path / "htsget.toml"
    locations = "".join(
        f'[[locations]]\nregex = "(.*)"\nsubstitution = "{folder}/$1"\nroot = "{root}"\n'
        f'formats = ["{fmt}"]\n\n'
        for fmt, folder in (("BAM", "bam"), ("CRAM", "cram"), ("VCF", "vcf"), ("BCF", "bcf"))
    )
    path.write_text(f"[ticket_server]\nport = {port}\nworkers = 1\n\n" + locations)
    srv = Server(["--config", str(path)], port).start()
    try:
        for endpoint, id, fmt, suffix in (
            ("reads", "htsnexus_test_NA12878", "BAM", ".bam"),
            ("reads", "htsnexus_test_NA12878", "CRAM", ".cram"),
            ("variants", "spec-v4.3", "VCF", ".vcf.gz"),
            ("variants", "spec-v4.3", "BCF", ".bcf"),
        ):
            resp = requests.get(f"{srv.url}/{endpoint}/{id}",
                                params={"format": fmt, "encryptionScheme": "c4gh"}, timeout=30)
            assert resp.status_code == 200, resp.text
            out = tmp_path / f"whole{suffix}"
            out.write_bytes(reassemble(resp.json()))
            original = root / fmt.lower() / f"{id}{suffix}"
            if endpoint == "reads":
                with pysam.AlignmentFile(str(out), check_sq=False) as a, \
                        pysam.AlignmentFile(str(original), check_sq=False) as b:
                    assert [r.to_string() for r in a.fetch(until_eof=True)] == \
                        [r.to_string() for r in b.fetch(until_eof=True)]
            else:
                with pysam.VariantFile(str(out)) as a, pysam.VariantFile(str(original)) as b:
                    assert [str(r) for r in a] == [str(r) for r in b]
    finally:
        srv.stop()


def test_reloads_under_load_drop_no_connection(
    running: Callable[[Path, int], ConfigServer], cohort_b: Path, data_dir: Path, tmp_path: Path
) -> None:
    """Fifteen SIGHUPs, a second apart, while four clients keep asking: every request is
    answered (old workers stop accepting at once but never reset a connection; they used
    to close their listening socket, which reset about one connection in nine reloads)."""
    import threading

    port = free_port()
    path = tmp_path / "htsget.toml"
    path.write_text(two_locations(port, cohort_b, data_dir).replace("workers = 1", "workers = 2"))
    srv = running(path, port)
    url = f"{srv.url}/reads/cohortA/sample"
    errors: list[str] = []
    answered = [0]
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                status = requests.get(url, timeout=20).status_code
                if status != 200:
                    errors.append(f"status {status}")
                answered[0] += 1
            except requests.RequestException as exc:
                errors.append(repr(exc)[:200])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(15):
            time.sleep(1.0)
            srv.hup()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, f"{len(errors)} of {answered[0] + len(errors)} requests failed: {errors[:3]}"
    assert answered[0] > 100
