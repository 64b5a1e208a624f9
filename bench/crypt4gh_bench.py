"""Crypt4GH: what serving encrypted files costs, against the same files in the clear.

- stored bytes read per region ticket (the server's reads: header, index, edge blocks),
  cold (a fresh worker) and warm (header and index parsed), plain vs encrypted;
- bytes a client fetches for the ticket: plain payload, mode 1 (whole stored segments +
  the re-encrypted header + encrypted server-made pieces), mode 2 (= plain payload) and
  the stored bytes /data reads to serve mode 2;
- mode-2 throughput: a whole file decrypted through /data (MB/s of plaintext), next to
  the same file read plain through /data.

    python bench/crypt4gh_bench.py [--reads 60000] [--regions 30]

Figures are printed and recorded in bench/results.json (bench/results.py).
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from c4gh_kit import b64_key_file, build_tree, keypair  # noqa: E402
from conftest import make_bam, make_vcf  # noqa: E402
from results import FIGURES, load, record, save  # noqa: E402

from htsgetr.app import create_app  # noqa: E402
from htsgetr.config import Config, LocationConfig, ServerConfig  # noqa: E402
from htsgetr.crypt4gh.keys import KeyPairConfig, KeySource, LocationKeys  # noqa: E402
from htsgetr.storage.local import LocalStorage  # noqa: E402

BASE = "http://bench.test"


def counting(storage: LocalStorage) -> list[int]:
    """Count the bytes `storage.read` returns (the stored bytes a worker reads)."""
    counter = [0]
    read = storage.read

    def counted(key: str, start: int, end: int) -> bytes:
        data = read(key, start, end)
        counter[0] += len(data)
        return data

    storage.read = counted  # type: ignore[method-assign]
    return counter


class World:
    """One worker's app over the plain and the encrypted copy, with read counters."""

    def __init__(self, d: Path) -> None:
        keys = LocationKeys(server=KeyPairConfig(private=KeySource(key=str(d / "server.sec"))))
        config = Config(ticket_server=ServerConfig(base_url=BASE), locations=[
            LocationConfig(name="plain", regex="plain/(.*)", root=str(d / "plain")),
            LocationConfig(name="enc", regex="enc/(.*)", root=str(d / "enc"), keys=keys)])
        self.app = create_app(config)
        self.http = self.app.test_client()
        rules = self.app.extensions["htsgetr"].resolver.rules
        self.plain_reads = counting(rules[0][2])
        self.enc_storage = rules[1][2]
        self.enc_reads = counting(rules[1][2].inner)
        self.key_header = {"Htsget-Context-Public-Key": b64_key_file(d / "client.pub")}

    def ticket(self, path: str, **headers: str) -> dict[str, Any]:
        resp = self.http.get(path, headers=headers)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()

    def fetched(self, ticket: dict[str, Any]) -> int:
        """Bytes a client downloads for the ticket (data: blocks decoded), via /data."""
        total = 0
        for block in ticket["htsget"]["urls"]:
            url = block["url"]
            if url.startswith("data:"):
                total += len(base64.b64decode(url[len("data:;base64,"):]))
            else:
                resp = self.http.get(url[len(BASE):], headers=block.get("headers") or {})
                total += len(resp.get_data())
        return total


def measure(world_of: Callable[[], World], paths: list[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in (
        "plain_cold", "enc_cold", "plain_warm", "enc_warm", "payload", "mode1", "mode2_stored")}
    warm = world_of()
    warm.ticket(paths[0].format("plain"))
    warm.ticket(paths[0].format("enc"))
    for path in paths:
        cold = world_of()
        n = cold.plain_reads[0]
        cold.ticket(path.format("plain"))
        out["plain_cold"].append(cold.plain_reads[0] - n)
        n = cold.enc_reads[0]
        cold.ticket(path.format("enc") + "&encryptionScheme=C4GH", **cold.key_header)
        out["enc_cold"].append(cold.enc_reads[0] - n)
        warm.enc_storage._segments.clear()  # warm: parsed header and index, no ciphertext
        n = warm.plain_reads[0]
        plain = warm.ticket(path.format("plain"))
        out["plain_warm"].append(warm.plain_reads[0] - n)
        n = warm.enc_reads[0]
        mode1 = warm.ticket(path.format("enc") + "&encryptionScheme=C4GH", **warm.key_header)
        out["enc_warm"].append(warm.enc_reads[0] - n)
        out["payload"].append(warm.fetched(plain))
        out["mode1"].append(warm.fetched(mode1))
        mode2 = warm.ticket(path.format("enc"))
        warm.enc_storage._segments.clear()
        n = warm.enc_reads[0]
        warm.fetched(mode2)
        out["mode2_stored"].append(warm.enc_reads[0] - n)
    return out


def throughput(world: World, key: str, size: int) -> tuple[float, float]:
    """MB/s of plaintext: the encrypted file decrypted through /data, and the plain one."""
    figures = []
    for path in (f"/data/~enc/{key}", f"/data/~plain/{key}"):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            resp = world.http.get(path)
            got = sum(len(chunk) for chunk in resp.response)
            best = min(best, time.perf_counter() - t)
            assert got == size, (got, size)
        figures.append(size / best / 1e6)
    return figures[0], figures[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reads", type=int, default=60000)
    ap.add_argument("--regions", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "plain").mkdir()
        make_bam(d / "plain" / "reads.bam", seed=5, n_reads=args.reads,
                 refs=[("chr1", 2_000_000), ("chr2", 1_000_000), ("chrEmpty", 1000)])
        make_vcf(d / "plain" / "calls.vcf.gz", seed=6, n=args.reads)
        keypair(d, "server")
        keypair(d, "client")
        build_tree(d / "enc", d / "plain", d / "server.pub", ["reads.bam", "calls.vcf.gz"])
        rng = random.Random(1)
        print(f"crypt4gh bench: BAM {(d / 'plain/reads.bam').stat().st_size / 1e6:.1f} MB,"
              f" VCF {(d / 'plain/calls.vcf.gz').stat().st_size / 1e6:.1f} MB,"
              f" {args.regions} random regions per size\n")
        print(f"{'case':<22}{'stored read/ticket (plain -> c4gh)':>40}"
              f"{'client bytes (plain / mode 1)':>34}{'mode-2 /data stored':>22}")
        for kind, path, refs in (
                ("BAM", "/reads/{}/reads?referenceName=", [("chr1", 2_000_000),
                                                           ("chr2", 1_000_000)]),
                ("VCF", "/variants/{}/calls?referenceName=", [("1", 300_000), ("2", 200_000),
                                                              ("X", 150_000)])):
            for span in (1_000, 10_000, 100_000):
                paths = []
                for _ in range(args.regions):
                    ref, length = rng.choice(refs)
                    start = rng.randrange(0, max(1, length - span))
                    paths.append(f"{path}{ref}&start={start}&end={start + span}")
                m = measure(lambda: World(d), paths)
                med = {k: statistics.median(v) for k, v in m.items()}
                name = f"{kind} {span // 1000} kb"
                kb = {k: v / 1e3 for k, v in med.items()}
                cold = f"cold {kb['plain_cold']:6.0f} -> {kb['enc_cold']:6.0f} KB"
                warm = f"warm {kb['plain_warm']:5.0f} -> {kb['enc_warm']:5.0f} KB"
                client = f"{kb['payload']:8.1f} / {kb['mode1']:8.1f} KB"
                print(f"{name:<22}{cold:>26}{warm:>20}{client:>34}"
                      f"{kb['mode2_stored']:>19.1f} KB")
                key = f"crypt4gh.{kind.lower()}_{span // 1000}kb"
                for k, v in med.items():
                    record(f"{key}.{k}_bytes", v, "bytes")
        world = World(d)
        for key in ("reads.bam", "calls.vcf.gz"):
            size = (d / "plain" / key).stat().st_size
            enc, plain = throughput(world, key, size)
            print(f"\nmode 2 /data whole {key}: {enc:.0f} MB/s decrypted"
                  f" (plain file through /data: {plain:.0f} MB/s)", end="")
            record(f"crypt4gh.mode2_{key.split('.')[0]}_mb_s", enc, "MB/s")
            record(f"crypt4gh.plain_{key.split('.')[0]}_mb_s", plain, "MB/s")
        print()
    out = ROOT / "bench" / "results.json"
    merged = load(out) if out.exists() else {}
    merged.update(FIGURES)  # bench/run.py's figures kept
    save(out, merged)


if __name__ == "__main__":
    main()
