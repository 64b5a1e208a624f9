"""Load figures of `make bench` (and `make bench-check`), each a ratio measured in the same run
against its reference, repeated (`REPEATS`, alternating the two) because the machine is
shared; the median ratio is the figure, every repeat is printed.

- tickets, RANDOM regions per request (bench/random_regions.lua: tens of thousands of
  distinct requests per run, so no cache of identical tickets is measured) vs the bare
  Flask view (bench/bare_app.py) on the same request lines, both under htsgetr's gunicorn
  settings (gevent workers, same count); req/s and p99 latency.
- /data small (64 KiB) random ranges vs the bare Flask floor that sends the same range
  with sendfile(2) (wrk -c64).
- /data behind nginx with `accel = "nginx"` (X-Accel-Redirect) vs nginx alone serving the
  file, 64 KiB random ranges; and with `accel = "nginx-direct"` (nginx checks each signed
  url in njs: bench/signed_ranges.lua picks from 20,000 distinct signed urls).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import requests
from results import record

from htsgetr.api.accel import VERIFIERS, installed_module

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
REPEATS = 3
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A server process in its own session, waited for on `url`, stopped with its children."""

    def __init__(self, cmd: list[str], url: str, cwd: Optional[Path] = None,
                 log: Optional[Path] = None, env: Optional[dict[str, str]] = None) -> None:
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=str(cwd) if cwd else None, start_new_session=True,
                                     env={**os.environ, **env} if env else None)
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url, timeout=2)
                return
            except requests.RequestException:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{cmd[:4]} did not start (log: {log})") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def htsgetr(root: Path, port: int, workers: int = 2, config: Optional[Path] = None,
            extra: tuple[str, ...] = (), env: Optional[dict[str, str]] = None) -> Proc:
    cmd = [sys.executable, "-m", "htsgetr", "serve", "--port", str(port), "--workers",
           str(workers), *extra]
    cmd += ["--config", str(config)] if config else ["--data-dir", str(root)]
    return Proc(cmd, f"http://127.0.0.1:{port}/service-info", cwd=ROOT, env=env)


def bare(root: Path, port: int, workers: int = 2) -> Proc:
    return Proc([sys.executable, str(BENCH / "bare_app.py"), str(root), str(port), str(workers)],
                f"http://127.0.0.1:{port}/ping", cwd=ROOT)


def nginx(tmp: Path, server_block: str, upstream: Optional[int] = None, main: str = "") -> Proc:
    """nginx with one `server { ... }` block (its listen port first in the block), and an
    upstream `htsgetr_up` with kept-alive connections to port `upstream`; `main`: lines for
    the main context (load_module)."""
    assert NGINX is not None
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    user = main + ("user root;\n" if os.geteuid() == 0 else "")
    up = (f"  upstream htsgetr_up {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n"
          if upstream else "")
    conf.write_text(
        f"{user}daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;\n"
        "worker_processes 2; events { worker_connections 4096; }\n"
        "http { access_log off; sendfile on; keepalive_requests 1000000;\n"
        f"  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};\n"
        f"  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n{up}"
        f"  {server_block}\n}}\n")
    port = server_block.split("listen 127.0.0.1:", 1)[1].split(";", 1)[0]
    return Proc([NGINX, "-c", str(conf)], f"http://127.0.0.1:{port}/", cwd=tmp)


def session_cpu(procs: list[Proc]) -> float:
    """CPU seconds (user + system) used so far by every process of `procs`' sessions (each
    Proc leads its own): nginx's workers, gunicorn's."""
    leaders = {p.proc.pid for p in procs}
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) in leaders:  # session id; then utime, stime (proc(5))
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(url: str, script: str, args: list[str], threads: int = 2, connections: int = 16,
        seconds: float = 5) -> dict[str, Any]:
    """The JSON line the request script prints when wrk is done."""
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s",
                          "--timeout", "10s", "-s", str(BENCH / script), url, "--", *args],
                         capture_output=True, text=True, check=True).stdout
    line = [x for x in out.splitlines() if x.startswith("{")][-1]
    result: dict[str, Any] = json.loads(line)
    return result


def paired(name: str, ours: Callable[[], dict[str, Any]], ref: Callable[[], dict[str, Any]],
           what: str, ref_name: str, repeats: int = REPEATS) -> dict[str, float]:
    """Run ours and the reference alternately `repeats` times; print each pair; record the
    median ratio of req/s (better: higher), the medians of each side's req/s and p99."""
    ratios, mine, theirs = [], [], []
    for i in range(repeats):
        a, b = ours(), ref()
        for r in (a, b):
            if r["requests"] == 0:
                raise RuntimeError(f"{name}: no request answered")
        ratio = a["rps"] / b["rps"]
        ratios.append(ratio)
        mine.append(a)
        theirs.append(b)
        print(f"  {what:28} run {i + 1}: {a['rps']:8.0f} req/s (p99 {a['p99_us'] / 1e3:6.1f} ms, "
              f"{a['status_errors'] + a['socket_errors']} errors)   {ref_name} "
              f"{b['rps']:8.0f} req/s (p99 {b['p99_us'] / 1e3:6.1f} ms)   ratio {ratio:5.2f}",
              flush=True)
    med = statistics.median(ratios)
    figures = {
        "ratio": record(f"{name}.ratio", med, "x", better="higher"),
        "rps": record(f"{name}.rps", statistics.median(r["rps"] for r in mine), "req/s"),
        "ref_rps": record(f"{name}.ref_rps", statistics.median(r["rps"] for r in theirs),
                          "req/s"),
        "p99_ms": record(f"{name}.p99_ms",
                         statistics.median(r["p99_us"] for r in mine) / 1e3, "ms"),
        "ref_p99_ms": record(f"{name}.ref_p99_ms",
                             statistics.median(r["p99_us"] for r in theirs) / 1e3, "ms"),
        "errors": record(f"{name}.errors", sum(r["status_errors"] + r["socket_errors"]
                                                for r in mine), ""),
    }
    record(f"{name}.ratio_min", min(ratios), "x")
    record(f"{name}.ratio_max", max(ratios), "x")
    print(f"  {what:28} median ratio {med:5.2f}  (runs {', '.join(f'{r:.2f}' for r in ratios)});"
          f"  p99 {figures['p99_ms']:.1f} ms vs {figures['ref_p99_ms']:.1f} ms", flush=True)
    return figures


def bench_load_random(root: Path, id: str, refs: list[tuple[str, int]], name: str,
                      seconds: float = 5, spans: tuple[int, int] = (1000, 20000),
                      fmt: str = "", repeats: int = REPEATS, what: str = "",
                      block_cache: int = 0, warmup: float = 0) -> dict[str, float]:
    """Tickets for random regions of `id` vs bare Flask, 2 workers each, wrk -t2 -c16
    (`what`: how to name the regions in the printout); `block_cache`: htsgetr's
    `block_cache_bytes` (0: the default), `warmup`: seconds of the same load first, not
    counted (a cache filled as by a server that has been up a while)."""
    if shutil.which("wrk") is None:
        print("load: skipped (apt install wrk)")
        return {}
    port_a, port_b = free_port(), free_port()
    env = {"HTSGET_BLOCK_CACHE_BYTES": str(block_cache)} if block_cache else None
    ours, ref = htsgetr(root, port_a, env=env), bare(root, port_b)
    endpoint = "variants" if fmt in ("VCF", "BCF") else "reads"
    spec = ",".join(f"{n}:{ln}" for n, ln in refs)
    seed = iter(range(1, 1000))
    try:
        def run(port: int, seconds: float = seconds) -> dict[str, Any]:
            return wrk(f"http://127.0.0.1:{port}", "random_regions.lua",
                       [f"/{endpoint}/{id}", spec, str(spans[0]), str(spans[1]),
                        str(next(seed)), fmt], seconds=seconds)

        check = requests.get(f"http://127.0.0.1:{port_a}/{endpoint}/{id}?referenceName="
                             f"{refs[0][0]}&start=0&end={spans[0]}" + (f"&format={fmt}" if fmt
                                                                       else ""))
        check.raise_for_status()
        what = what or f"random {spans[0]}-{spans[1]} bp regions per request"
        if block_cache:
            what += f", block_cache_bytes = {block_cache >> 20} MiB"
        if warmup:
            run(port_a, warmup)
            what += f" (after {warmup:g} s of the same load)"
        print(f"load: {id} tickets, {what} vs bare Flask (2 gevent workers each, wrk -t2 "
              f"-c16, {seconds:g} s)", flush=True)
        return paired(name, lambda: run(port_a), lambda: run(port_b),
                      "tickets", "bare Flask", repeats)
    finally:
        ours.stop()
        ref.stop()


def bench_turns(root: Path, name: str = "turns") -> dict[str, float]:
    """Light tickets on ONE worker while it computes a heavy one: a CRAM POST of 20 random
    2 kbp regions of deep15.cram (each re-encoding a container), then a BAM POST of 400
    random 1 kbp regions of deep15.bam; how many light tickets were answered meanwhile and
    how long they waited (htsgetr/turns.py)."""
    import random
    import threading

    port = free_port()
    srv = htsgetr(root, port, workers=1)
    base = f"http://127.0.0.1:{port}"
    figures: dict[str, float] = {}
    try:
        rng = random.Random(1)
        light = requests.Session()
        light.get(f"{base}/reads/genome?referenceName=chr1&start=0&end=1000").raise_for_status()
        for fmt, n, span in (("CRAM", 20, 2000), ("BAM", 400, 1000)):
            requests.get(f"{base}/reads/deep15?format={fmt}&referenceName=chrD&start=0&end=1000"
                         ).raise_for_status()
            body = {"format": fmt, "regions": [
                {"referenceName": "chrD", "start": s, "end": s + span}
                for s in (rng.randrange(0, 9_900_000) for _ in range(n))]}
            heavy: dict[str, float] = {}

            def post(body: dict[str, Any] = body, heavy: dict[str, float] = heavy) -> None:
                t0 = time.perf_counter()
                requests.post(f"{base}/reads/deep15", json=body).raise_for_status()
                heavy["s"] = time.perf_counter() - t0

            thread = threading.Thread(target=post)
            thread.start()
            waits = []
            while thread.is_alive():
                a = rng.randrange(0, 100_000_000)
                t0 = time.perf_counter()
                light.get(f"{base}/reads/genome?referenceName=chr2&start={a}&end={a + 5000}"
                          ).raise_for_status()
                waits.append(time.perf_counter() - t0)
            thread.join()
            key = f"{name}.{fmt.lower()}_post"
            print(f"turns: one worker, a {fmt} POST of {n} regions ({heavy['s'] * 1e3:.0f} ms) "
                  f"and light tickets meanwhile: {len(waits)} answered, slowest "
                  f"{max(waits) * 1e3:.0f} ms, median {statistics.median(waits) * 1e3:.1f} ms",
                  flush=True)
            figures[f"{fmt}.heavy_ms"] = record(f"{key}.heavy_ms", heavy["s"] * 1e3, "ms")
            figures[f"{fmt}.answered"] = record(f"{key}.light_answered", len(waits), "",
                                                better="higher")
            figures[f"{fmt}.max_ms"] = record(f"{key}.light_max_ms", max(waits) * 1e3, "ms",
                                              better="lower")
    finally:
        srv.stop()
    return figures


def make_blob(root: Path, size: int = 64 << 20) -> Path:
    """Incompressible bytes under a name /data serves (a .bam: only data files are served)."""
    blob = root / "blob.bam"
    if not blob.exists() or blob.stat().st_size != size:
        blob.write_bytes(os.urandom(size))
    return blob


def bench_data_ranges(root: Path, name: str = "data.ranges_64k", seconds: float = 5,
                      length: int = 64 << 10, repeats: int = REPEATS) -> dict[str, float]:
    """/data random 64 KiB ranges vs the bare Flask floor (sendfile both), wrk -t2 -c64."""
    if shutil.which("wrk") is None:
        print("data: skipped (apt install wrk)")
        return {}
    blob = make_blob(root)
    size = blob.stat().st_size
    port_a, port_b = free_port(), free_port()
    ours, ref = htsgetr(root, port_a), bare(root, port_b)
    seed = iter(range(1, 1000))
    try:
        def run(port: int) -> dict[str, Any]:
            r = wrk(f"http://127.0.0.1:{port}", "random_ranges.lua",
                    ["/data/blob.bam", str(size), str(length), str(next(seed))],
                    connections=64, seconds=seconds)
            if r["requests"] and r["bytes"] < r["requests"] * length:
                raise RuntimeError(f"{name}: short answers from port {port}")
            return r

        print(f"data: /data random {length >> 10} KiB ranges vs bare Flask sending the same "
              f"range (sendfile; 2 gevent workers each, wrk -t2 -c64, {seconds:g} s)", flush=True)
        return paired(name, lambda: run(port_a), lambda: run(port_b), "/data", "bare Flask",
                      repeats)
    finally:
        ours.stop()
        ref.stop()


#: the nginx modules nginx-direct's verifiers need (Debian's libnginx-mod-http-js, -perl;
#: htsgetr's own, which `make build` compiles when nginx-dev is installed)
MODULES = {v: installed_module(v, ROOT / "build" / "nginx") for v in VERIFIERS}
#: `bench_accel`'s runs in `make bench` and bench-check: (directory, mode, figure, verifier)
ACCEL_BENCHES = (
    ("accel", "nginx", "data.accel_64k", "njs"),
    ("direct", "nginx-direct", "data.direct_64k", "njs"),
    ("perl", "nginx-direct", "data.direct_perl_64k", "perl"),
    ("module", "nginx-direct", "data.direct_module_64k", "module"),
)
#: the data url secret of the nginx-direct bench (htsgetr, the check script and the listing)
BENCH_SECRET = {"HTSGET_DATA_URL_SECRET": "bench-direct-secret"}


def bench_accel(root: Path, tmp: Path, mode: str = "nginx", name: str = "data.accel_64k",
                seconds: float = 5, length: int = 64 << 10, repeats: int = REPEATS,
                urls: int = 20_000, verifier: str = "njs") -> dict[str, float]:
    """nginx in front of htsgetr vs nginx alone, random 64 KiB ranges of one file, the same
    requests to both.
    mode "nginx": htsgetr decides each /data request and answers with X-Accel-Redirect.
    mode "nginx-direct": nginx checks each url's signature itself (with `verifier`: njs,
    Perl or htsgetr's compiled module) and sends the range; `urls` distinct signed urls,
    each request one at random."""
    direct = mode == "nginx-direct"
    module = MODULES[verifier] if direct else None
    if shutil.which("wrk") is None or NGINX is None or (direct and module is None):
        print(f"{mode} ({verifier}): skipped (apt install wrk nginx-light "
              f"libnginx-mod-http-js libnginx-mod-http-perl nginx-dev; make build)")
        return {}
    sys.path.insert(0, str(ROOT))
    from htsgetr.api.accel import VERIFIERS, direct_script, nginx_server
    from htsgetr.config import load_config

    blob = make_blob(root)
    size = blob.stat().st_size
    port_h, port_n, port_a = free_port(), free_port(), free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / f"{mode}.toml"
    config_path.write_text(f'[ticket_server]\nallowed_hosts = ["*"]\n[data_server]\n'
                           f'accel = "{mode}"\n[[locations]]\nroot = "{root}"\n')
    config = load_config(str(config_path), env={})
    script = None
    if direct:
        script = tmp / VERIFIERS[verifier]
        script.write_text(direct_script(config, BENCH_SECRET, verifier))
        os.environ.update(BENCH_SECRET)  # htsgetr signs and checks with the same secret
    # nginx_server's text: its upstream, the server and (direct) the check's directives
    site = nginx_server(config, f"127.0.0.1:{port_a}", f"127.0.0.1:{port_h}",
                        str(script) if script else None, verifier)
    lua, args, first = _front_requests(tmp, direct, size, length, urls)
    procs = [htsgetr(root, port_h, config=config_path)]
    try:
        # the same requests to both (nginx alone ignores the query): wrk's own cost per
        # request (its Lua, on these cores too) is then the same on both sides
        procs.append(nginx(tmp / "nginx-alone", f"server {{ listen 127.0.0.1:{port_n}; "
                           f"location /data/ {{ alias {root}/; }} }}"))
        procs.append(nginx(tmp / mode, site, main=f"load_module {module};\n" if module else ""))
        probe = requests.get(f"http://127.0.0.1:{port_a}{first[0]}", headers={"Range": first[1]})
        start = int(first[1][6:].split("-")[0])
        if probe.status_code != 206 or probe.content != blob.read_bytes()[start:start + length]:
            raise RuntimeError(f"{mode}: nginx in front answered {probe.status_code}")
        seed = iter(range(1, 1000))

        cpu: dict[int, list[float]] = {port_a: [], port_n: []}

        def run(port: int, script: str, args: list[str], servers: list[Proc]
                ) -> dict[str, Any]:
            before = session_cpu(servers)
            r = wrk(f"http://127.0.0.1:{port}", script, [*args, str(next(seed))],
                    connections=64, seconds=seconds)
            if r["requests"] and r["bytes"] < r["requests"] * length:
                raise RuntimeError(f"{name}: short answers from port {port}")
            cpu[port].append((session_cpu(servers) - before) * 1e6 / max(r["requests"], 1))
            return r

        how = (f"nginx checking signed urls itself ({verifier} HMAC-SHA256, {urls} distinct "
               "urls)"
               if direct else "htsgetr deciding, X-Accel-Redirect")
        print(f"{mode}: nginx + htsgetr ({how}) vs nginx alone, random {length >> 10} KiB ranges"
              f" (wrk -t2 -c64, {seconds:g} s)", flush=True)
        # ours: the front nginx and htsgetr behind it; wrk's own CPU is neither's
        figures = paired(name, lambda: run(port_a, lua, args, [procs[0], procs[2]]),
                         lambda: run(port_n, lua, args, [procs[1]]),
                         f"nginx + htsgetr {mode}", "nginx alone", repeats)
        mine, theirs = statistics.median(cpu[port_a]), statistics.median(cpu[port_n])
        figures["cpu_us"] = record(f"{name}.cpu_us", mine, "us")
        figures["ref_cpu_us"] = record(f"{name}.ref_cpu_us", theirs, "us")
        figures["cpu_ratio"] = record(f"{name}.cpu_ratio", mine / theirs, "x", better="lower")
        print(f"  server CPU per request: {mine:.1f} us vs {theirs:.1f} us for nginx alone "
              f"({mine / theirs:.2f}x)", flush=True)
        return figures
    finally:
        for p in procs:
            p.stop()


def _front_requests(tmp: Path, signed: bool, size: int, length: int, urls: int
                    ) -> tuple[str, list[str], tuple[str, str]]:
    """The wrk script and its arguments (but the seed) for /data/blob.bam through the front
    nginx, and one (target, Range) to probe with: random ranges, or (`signed`) a listing of
    `urls` signed ones, each signing its own range."""
    import random

    from htsgetr.auth.signing import UrlSigner

    if not signed:
        return ("random_ranges.lua", ["/data/blob.bam", str(size), str(length)],
                ("/data/blob.bam", f"bytes=0-{length - 1}"))
    signer = UrlSigner([BENCH_SECRET["HTSGET_DATA_URL_SECRET"]], 3600)
    rng = random.Random(5)
    lines = []
    for _ in range(urls):
        start = rng.randrange(0, (size - length) // 4096) * 4096
        range_ = f"bytes={start}-{start + length - 1}"
        lines.append((f"/data/blob.bam?{signer.sign('blob.bam', range_)}", range_))
    listing = tmp / "signed.tsv"
    listing.write_text("".join(f"{target}\t{range_}\n" for target, range_ in lines))
    return "signed_ranges.lua", [str(listing)], lines[0]


def bench_http_inprocess(root: Path, id: str, refs: list[tuple[str, int]], name: str,
                         n: int = 300, spans: tuple[int, int] = (1000, 20000)
                         ) -> dict[str, float]:
    """The HTTP layer alone, in-process: WSGI calls of the app for random region tickets with
    the engine's answers computed beforehand (`Htsget.ticket` replaced by a lookup, so what
    is timed is routing, hooks, Host, parsing, JSON, the response), against WSGI calls of
    the bare Flask view on the same requests; and the engine's own time for the same
    tickets. CPU time, best of 5 passes each."""
    import random

    from werkzeug.test import EnvironBuilder

    sys.path.insert(0, str(ROOT))
    import bare_app

    from htsgetr.app import create_app
    from htsgetr.config import for_data_dir
    from htsgetr.protocol import Endpoint, parse_get

    app = create_app(for_data_dir(str(root)))
    engine = app.extensions["htsgetr"]
    ref_app = bare_app.make_app(str(root))
    rng = random.Random(9)
    queries = []
    for _ in range(n):
        ref, length = rng.choice(refs)
        span = rng.randint(*spans)
        start = rng.randrange(0, max(1, length - span))
        queries.append({"referenceName": ref, "start": str(start), "end": str(start + span)})
    environs = [EnvironBuilder(path=f"/reads/{id}", query_string=q,
                               headers={"Host": "127.0.0.1:8080"}).get_environ()
                for q in queries]
    parsed = [parse_get(Endpoint.READS, id, q) for q in queries]

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        if not status.startswith("200"):
            raise RuntimeError(f"{name}: {status}")

    def call(wsgi: Any) -> None:
        for environ in environs:
            body = wsgi(dict(environ), start_response)
            b"".join(body)
            getattr(body, "close", lambda: None)()

    def tickets() -> None:
        for q in parsed:
            engine.ticket(q)

    def best(fn: Callable[[], None]) -> float:  # CPU time: other load matters less
        times = []
        for _ in range(5):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return min(times) / n

    call(app)  # Flask serves the first request; caches warm
    t_engine = best(tickets)
    answers = {q: engine.ticket(q) for q in parsed}
    real = engine.ticket
    engine.ticket = lambda q, encryption=None: answers[q]  # the engine's answers, ready
    try:
        t_http = best(lambda: call(app))
    finally:
        engine.ticket = real
    t_bare = best(lambda: call(ref_app))
    size = sum(len(answers[q].to_json()["htsget"]["urls"]) for q in parsed) / n
    print(f"http in-process: {id} random region ticket: engine {t_engine * 1e6:6.0f} us + HTTP "
          f"layer {t_http * 1e6:5.0f} us ({size:.0f} urls per ticket);  bare Flask view "
          f"{t_bare * 1e6:5.0f} us;  HTTP layer / bare Flask {t_http / t_bare:5.2f}", flush=True)
    return {
        "engine_us": record(f"{name}.engine_us", t_engine * 1e6, "us"),
        "http_us": record(f"{name}.http_layer_us", t_http * 1e6, "us"),
        "bare_us": record(f"{name}.bare_flask_us", t_bare * 1e6, "us"),
        "ratio": record(f"{name}.http_layer_vs_bare", t_http / t_bare, "x (time)",
                        better="lower"),
    }
