"""Long tickets take turns with light ones on the same gevent worker (htsgetr/turns.py).

A CRAM POST whose regions each cut a container re-encodes one container after another, and
a POST of hundreds of BAM regions walks and re-cuts one region after another: CPU work with
no socket wait in it, which a gevent worker used to run to its end while every other
connection of the worker waited (measured before: one light ticket answered in ~360 ms,
behind the heavy one). Here a real server with one worker gets the heavy POST, then light
tickets one after another on another connection: several must be answered before the
heavy one is. Counted in answers, not timed."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import requests
from conftest import Server, free_port

from htsgetr import turns

#: one reference, reads of 100 bp every ~50 bp: CRAM containers of 500 reads (~25 kbp)
LENGTH = 3_000_000
READS = 60_000
CONTAINER_READS = 500


@pytest.fixture(scope="module")
def heavy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """heavy.bam and heavy.cram (small containers: many to re-encode) with their indexes."""
    d = tmp_path_factory.mktemp("turns")
    rng = random.Random(7)
    sam = d / "heavy.sam"
    with open(sam, "w") as f:
        f.write(f"@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:chr1\tLN:{LENGTH}\n")
        for i, pos in enumerate(sorted(rng.randrange(1, LENGTH - 100) for _ in range(READS))):
            seq = "".join(rng.choices("ACGT", k=100))
            f.write(f"r{i}\t0\tchr1\t{pos}\t60\t100M\t*\t0\t0\t{seq}\t{'I' * 100}\n")
    subprocess.run(["samtools", "view", "-b", "-o", str(d / "heavy.bam"), str(sam)], check=True)
    subprocess.run(["samtools", "index", str(d / "heavy.bam")], check=True)
    subprocess.run(["samtools", "view", "-C", "--output-fmt-option", "no_ref=1",
                    "--output-fmt-option", f"seqs_per_slice={CONTAINER_READS}",
                    "-o", str(d / "heavy.cram"), str(d / "heavy.bam")], check=True)
    subprocess.run(["samtools", "index", str(d / "heavy.cram")], check=True)
    sam.unlink()
    return d


def _send_post(port: int, body: dict) -> socket.socket:
    """A ticket POST sent on a connection of its own (`_answer` reads the answer)."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /reads/heavy HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def _answer(sock: socket.socket) -> bytes:
    out = b""
    with sock:
        while chunk := sock.recv(1 << 20):
            out += chunk
    return out


@pytest.mark.parametrize("fmt,regions", [
    # a 2 kbp region inside each of 100 containers: 100 re-encodings
    ("CRAM", [(k * 30_000 + 10_000, k * 30_000 + 12_000) for k in range(100)]),
    # 1,000 regions of 1 kbp: 1,000 walks and re-cuts
    ("BAM", [(k * 2_900 + 10, k * 2_900 + 1_010) for k in range(1000)]),
])
def test_a_long_ticket_takes_turns_with_light_ones(heavy_dir: Path, fmt: str,
                                                   regions: list[tuple[int, int]]) -> None:
    port = free_port()
    srv = Server(["--data-dir", str(heavy_dir), "--port", str(port), "--workers", "1"], port)
    srv.start()
    try:
        light = requests.Session()
        light_url = f"{srv.url}/reads/heavy?referenceName=chr1&start=1000000&end=1001000"
        light.get(light_url).raise_for_status()  # indexes loaded: the light ticket is light
        requests.get(f"{srv.url}/reads/heavy?format=CRAM&referenceName=chr1&start=0&end=10"
                     ).raise_for_status()
        body = {"format": fmt, "regions": [
            {"referenceName": "chr1", "start": s, "end": e} for s, e in regions]}
        sock = _send_post(port, body)  # sent: the worker takes it up next
        done: dict[str, bytes] = {}
        heavy = threading.Thread(target=lambda: done.setdefault("answer", _answer(sock)))
        heavy.start()
        answered = 0
        while heavy.is_alive():
            light.get(light_url).raise_for_status()
            if heavy.is_alive():
                answered += 1
        heavy.join()
        assert done["answer"].startswith(b"HTTP/1.1 200"), done["answer"][:300]
        assert json.loads(done["answer"].split(b"\r\n\r\n", 1)[1])["htsget"]["urls"]
        # taking turns: each light ticket waits a turn, not the whole heavy ticket (before:
        # the first one, and maybe one the worker read before the POST, then none)
        assert answered >= 5, answered
    finally:
        srv.stop()


GREEN = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import gevent, json, time
    from htsgetr import turns
    from htsgetr.workers import GreenTurns

    green = GreenTurns()
    turns.install(green)
    ran = []

    def short():  # ends within its turn: never lets the others go first
        turns.begin()
        for _ in range(100):
            turns.pause()

    def long(seconds, name="long"):  # works for `seconds`, pausing between steps
        turns.begin()
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sum(range(2000))
                turns.pause()
            ran.append(name)
        finally:
            turns.end()

    def other():
        ran.append("other")

    short()
    out = {"short": green.given}
    gevent.joinall([gevent.spawn(long, 0.3), gevent.spawn(other)])
    out["long"], out["order"] = green.given, list(ran)
    # five long ones at once: two go on at a time, the others wait; all end, slots back
    gevent.joinall([gevent.spawn(long, 0.05, f"l{i}") for i in range(5)] + [
        gevent.spawn(other)])
    out["peak"], out["now"], out["later"] = green.long_peak, green.long_now, ran[2:]
    print(json.dumps(out))
""")


def test_green_turns_pause_after_a_whole_turn_only(tmp_path: Path) -> None:
    """In a gevent process: a short request never pauses; a long one pauses about once a
    turn, and a greenlet spawned after it runs before it ends (without turns: after); of
    five long ones at once, `LONG_AT_ONCE` go on at a time."""
    out = subprocess.run([sys.executable, "-c", GREEN], capture_output=True, text=True,
                         check=True, timeout=60)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["short"] == 0
    assert got["order"] == ["other", "long"]
    assert got["long"] >= 10  # 0.3 s of work in turns of 5 ms: dozens of pauses
    assert got["peak"] == turns.LONG_AT_ONCE == 2 and got["now"] == 0
    assert got["later"][0] == "other" and sorted(got["later"][1:]) == [f"l{i}" for i in range(5)]


WAIT_FOR_A_LOAD = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import gevent, json, sys, time
    from htsgetr import turns
    from htsgetr.cache import LRUCache
    from htsgetr.workers import GreenTurns

    green = GreenTurns(long_at_once=int(sys.argv[1]))
    turns.install(green)
    cache = LRUCache()
    got = {}

    def work(seconds):  # busy, pausing between steps, as a ticket's walk does
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sum(range(2000))
            turns.pause()

    def loads(name, first):  # a ticket that works a while, then needs the file's md5
        turns.begin()
        try:
            work(first)
            got[name] = cache.get_or_load("md5", lambda: (work(0.05), "digest")[1], once=True)
        finally:
            turns.end()

    # the waiters work first and become long (each takes a slot, all of them), then wait
    # for the md5 that `loader` began computing meanwhile; the loader, long too, needs a
    # slot to go on
    waiters = [gevent.spawn(loads, f"waiter{i}", 0.02) for i in range(int(sys.argv[1]))]
    gevent.sleep(0)
    loader = gevent.spawn(loads, "loader", 0.0)
    gevent.joinall(waiters + [loader], timeout=5)
    # work that pauses outside a request (no begin, so no end to give a slot back) lets the
    # others go first all the same, but takes no slot
    alone = GreenTurns()
    turns.install(alone)
    work(0.03)
    print(json.dumps({"got": got, "now": green.long_now,
                      "outside": [alone.given > 0, alone.long_peak]}))
""")


@pytest.mark.parametrize("slots", [1, 2])
def test_a_request_waiting_for_a_load_gives_up_its_slot(slots: int) -> None:
    """A long request that waits for a load another request is doing (the file's md5, asked
    for once) gives its long-request slot back while it waits: the loader, long too, may need
    it to go on. Held, the two waited for each other for good (seen as a fresh worker's
    first tickets hanging until the graceful timeout of a reload under load). Work pausing
    outside a request takes no slot (nothing would give it back)."""
    out = subprocess.run([sys.executable, "-c", WAIT_FOR_A_LOAD, str(slots)],
                         capture_output=True, text=True, check=True, timeout=60)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = {"loader": "digest"} | {f"waiter{i}": "digest" for i in range(slots)}
    assert got == {"got": want, "now": 0, "outside": [True, 0]}


def test_paced_pauses_every_64th_entry_of_a_long_list_only() -> None:
    """A ticket's thousands of entries (url blocks, the inline budget's sums) pause every 64
    of them; a short list, a ticket's usual three, comes back as it is, at no cost."""

    class Counting:
        def __init__(self) -> None:
            self.pauses = 0

        def begin(self) -> None:
            pass

        def pause(self) -> None:
            self.pauses += 1

        def end(self) -> None:
            pass

    counting = Counting()
    turns.install(counting)
    try:
        short = [1, 2, 3]
        assert turns.paced(short) is short
        assert list(turns.paced(list(range(1000)))) == list(range(1000))
        assert counting.pauses == 16  # entries 0, 64, ..., 960
    finally:
        turns.install(turns._Alone())
