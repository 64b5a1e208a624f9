"""`[data_server] accel = "nginx-direct"` end to end: a real nginx, its whole configuration
written by `htsgetr config nginx --main`, in front of a real `htsgetr serve` — once with
each verifier (njs, `nginx_direct.js`; nginx's embedded Perl, `nginx_direct.pm`; the
compiled module, `nginx_module/`).

nginx checks a /data url's signature itself (the same HMAC-SHA256) and sends signed ranges
of plain local files without asking htsgetr; everything it does not vouch for goes to
htsgetr. Checked: who answered each request (nginx's access log records
the upstream), the bytes and the records clients reassemble, and that no tampered, expired
or odd request gets more from nginx than the signed range.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

import pytest
import requests
from conftest import (
    DIRECT_MODULE,
    NGINX_BIN,
    NGINX_PERL,
    NJS,
    VERIFIER_MODULES,
    Server,
    assert_records,
    assert_ticket_records,
    free_port,
    htslib_records,
    make_accel_tree,
    make_bam,
    make_vcf,
    nginx_t,
    reassemble,
    start_nginx,
)

from htsgetr.api.accel import VERIFIERS
from htsgetr.auth.signing import UrlSigner

pytestmark = pytest.mark.skipif(NGINX_BIN is None or NJS is None, reason="nginx with the njs module"
                                " is not installed (make test installs libnginx-mod-http-js)")

SECRET, OLD_SECRET = "direct-test-secret", "the-secret-before"
RESTRICTIONS = {"version": 1, "htsgetAuth": [{"location": {"prefix": ""}, "rules": [{}]}]}
LOG = ("'$request_method $request_uri $status up=[$upstream_addr]"
       " x=[$upstream_http_x_accel_redirect]'")


def _nginx_conf(tmp: Path, config: Path, port: int, nginx_port: int,
                env: Optional[dict[str, str]] = None, verifier: str = "njs") -> Path:
    """`htsgetr config nginx --main` for this config, with an access log that says who
    answered (and `user root` when the tests run as root: workers read the pytest tmp dir)."""
    conf = tmp / "nginx.conf"
    made = subprocess.run(
        [sys.executable, "-m", "htsgetr", "config", "nginx", "--config", str(config), "--main",
         "--verifier", verifier, "--js-module", str(NJS), "--perl-module", str(NGINX_PERL),
         "--direct-module", str(DIRECT_MODULE),
         "--temp-dir", str(tmp), "--upstream", f"127.0.0.1:{port}",
         "--listen", f"127.0.0.1:{nginx_port}", "-o", str(conf)],
        capture_output=True, text=True, env={**os.environ, **(env or {})})
    assert made.returncode == 0, made.stderr
    text = conf.read_text()
    assert "access_log /dev/stdout;" in text
    text = text.replace("access_log /dev/stdout;",
                        f"log_format who {LOG};\n    access_log {tmp}/access.log who;")
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}daemon off;\n{text}")
    return conf


def _skip_without(verifier: str) -> None:
    if VERIFIER_MODULES[verifier] is None:
        pytest.skip(f"nginx's module for the {verifier} verifier is not there (make test"
                    " installs libnginx-mod-http-perl and nginx-dev, and builds htsgetr's)")


@pytest.fixture(scope="module", params=["njs", "perl", "module"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, Any]]:
    verifier = request.param
    _skip_without(verifier)
    d = tmp_path_factory.mktemp("direct")
    root, other = d / "data", d / "other"
    make_accel_tree(root)
    other.mkdir()
    make_vcf(root / "calls.vcf.gz", n=40_000)  # blocks past the inline budget
    make_bam(other / "more.bam", seed=7)
    shutil.copy(root / "sample.bam", root / "doomed.bam")
    (root / ".hidden").mkdir()
    shutil.copy(root / "sample.bam", root / ".hidden" / "sample.bam")
    shutil.copy(root / "sample.bam.bai", root / "doomed.bam.bai")
    (d / "restrictions.json").write_text(json.dumps(RESTRICTIONS))
    port, nginx_port = free_port(), free_port()
    config = d / "config.toml"
    config.write_text(f"""
[ticket_server]
allowed_hosts = ["127.0.0.1:*"]
[data_server]
accel = "nginx-direct"
[[locations]]
regex = "^(?!w/)(.*)$"
substitution_string = "$1"
root = "{root}"
[[locations]]
name = "w"
regex = "^w/(.*)$"
substitution_string = "$1"
root = "{other}"
[data_server.auth.authorization]
kind = "static"
path = "{d / 'restrictions.json'}"
[data_server.auth.data_urls]
secret = "{SECRET}"
previous_secrets = ["{OLD_SECRET}"]
""")
    tmp = d / "nginx"
    tmp.mkdir()
    conf = _nginx_conf(tmp, config, port, nginx_port, verifier=verifier)
    script = tmp / VERIFIERS[verifier]
    srv = Server(["--config", str(config), "--port", str(port), "--workers", "1"], port).start()
    url = f"http://127.0.0.1:{nginx_port}"
    try:  # an nginx that does not start (a module it cannot load) leaves no server behind
        nginx = start_nginx(conf, url)
        try:
            yield {"url": url, "root": root, "other": other, "log": tmp / "access.log",
                   "conf": conf, "script": script, "tmp": d, "verifier": verifier,
                   "nginx": nginx}
        finally:
            os.killpg(nginx.pid, signal.SIGTERM)
            nginx.wait(10)
    finally:
        srv.stop()


def _lines(world: dict[str, Any], method: str, target: str) -> list[str]:
    return [x for x in world["log"].read_text().splitlines()
            if x.startswith(f"{method} {target} ")]


def _who(world: dict[str, Any], method: str, target: str, before: int = 0) -> tuple[int, str]:
    """(status, "nginx" or "htsgetr") of the request for `target` logged after the `before`
    ones already there (nginx writes the line after the answer: wait for it)."""
    for _ in range(100):
        lines = _lines(world, method, target)
        if len(lines) > before:
            break
        time.sleep(0.02)
    assert len(lines) > before, target
    parts = lines[before].split(" ")
    return int(parts[2]), "nginx" if "up=[-]" in lines[before] else "htsgetr"


def _ask(world: dict[str, Any], target: str, headers: list[tuple[str, str]],
         method: str = "GET") -> tuple[int, bytes, dict[str, str], tuple[int, str]]:
    """`_raw_get`, and who answered it."""
    before = len(_lines(world, method, target))
    status, body, got = _raw_get(world, target, headers, method)
    return status, body, got, _who(world, method, target, before)


def _ticket(world: dict[str, Any], path: str) -> dict[str, Any]:
    r = requests.get(f"{world['url']}{path}", timeout=10)
    assert r.status_code == 200, r.text
    ticket: dict[str, Any] = r.json()
    return ticket


def _target(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + "?" + parts.query


def _first_range(world: dict[str, Any], id: str = "sample") -> tuple[str, str]:
    ticket = _ticket(world, f"/reads/{id}?referenceName=chr1&start=1000&end=90000")
    block = next(b for b in ticket["htsget"]["urls"] if b["url"].startswith("http"))
    return block["url"], block["headers"]["Range"]


@pytest.mark.parametrize("id,name,by", [
    ("sample", "data/sample.bam", "nginx"),
    ("dir with space/x y", "data/dir with space/x y.bam", "nginx"),
    ("w/more", "other/more.bam", "nginx"),
    ("linked", "data/sample.bam", "htsgetr"),  # a symlink: htsgetr resolves it, X-Accel
])
def test_signed_ranges_are_sent_by_nginx(world: dict[str, Any], id: str, name: str,
                                         by: str) -> None:
    path = world["tmp"] / name
    data = path.read_bytes()
    region = ("chr1", 1000, 90000)
    ticket = _ticket(world, f"/reads/{id}?referenceName=chr1&start=1000&end=90000")
    fetched = 0
    for block in ticket["htsget"]["urls"]:
        if block["url"].startswith("data:"):
            continue
        assert block["url"].startswith(world["url"] + "/data/") and "&sig=" in block["url"]
        before = len(_lines(world, "GET", _target(block["url"])))
        r = requests.get(block["url"], headers=block["headers"], timeout=10)
        first, last = (int(x) for x in block["headers"]["Range"][6:].split("-"))
        assert r.status_code == 206, r.text
        assert r.content == data[first:last + 1]
        assert r.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert _who(world, "GET", _target(block["url"]), before) == (206, by)
        fetched += 1
    assert fetched
    assert_ticket_records(reassemble(ticket), world["tmp"], path, [region])


def test_samtools_and_bcftools_read_through_nginx(world: dict[str, Any]) -> None:
    """Real clients: every /data request of their tickets is answered by nginx alone, and
    the records are htslib's for the region, the whole list."""
    for tool, url, path, region in (
            ("samtools", "/reads/sample?referenceName=chr1&start=30000&end=90000",
             "sample.bam", ("chr1", 30000, 90000)),
            ("bcftools", "/variants/calls?referenceName=1&start=1000",
             "calls.vcf.gz", ("1", 1000, None))):
        ranges = [b for b in _ticket(world, url)["htsget"]["urls"] if b["url"].startswith("h")]
        assert ranges
        before = len(world["log"].read_text().splitlines())
        args = ["view", "-H"] if tool == "bcftools" else ["view"]
        out = subprocess.run([tool, *args, world["url"] + url], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        got = [x for x in out.stdout.splitlines() if x]
        want = [x.rstrip("\n") for x in htslib_records(world["root"] / path, [region])]
        assert want
        assert_records(got, want, f"{tool} through nginx-direct")
        time.sleep(0.1)
        data = [x for x in world["log"].read_text().splitlines()[before:]
                if x.startswith("GET /data/")]
        assert len(data) >= len(ranges), data
        assert all("up=[-]" in x and " 206 " in x for x in data), data


def _raw_get(world: dict[str, Any], target: str, headers: list[tuple[str, str]],
             method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    """A request with exactly these header lines (repeats included)."""
    parts = urlsplit(world["url"])
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def _signed(world: dict[str, Any], path: str, rng: str, key: str = SECRET,
            at: Optional[float] = None) -> str:
    """A /data target signed as htsgetr signs it (`key`, made at time `at`)."""
    signer = UrlSigner([key], 600, clock=(lambda: at) if at else time.time)
    return f"/data/{path}?" + signer.sign(path.replace("%20", " "), rng)


def test_what_nginx_does_not_vouch_for_goes_to_htsgetr(world: dict[str, Any]) -> None:
    url, rng = _first_range(world)
    target = _target(url)
    data = (world["root"] / "sample.bam").read_bytes()
    first, last = (int(x) for x in rng[6:].split("-"))
    exact = data[first:last + 1]
    path = target.split("?", 1)[0]
    cases: list[tuple[str, str, list[tuple[str, str]], int, Optional[bytes]]] = [
        # (why, target, headers, status htsgetr answers, body expected)
        ("another range", target, [("Range", f"bytes={first}-{last + 5000}")], 403, None),
        ("no range: the whole file", target, [], 403, None),
        ("unsigned", path, [("Range", rng)], 403, None),
        ("bad signature", target[:-2] + ("AA" if not target.endswith("AA") else "BB"),
         [("Range", rng)], 403, None),
        ("a short signature", target[:-20], [("Range", rng)], 403, None),
        ("a long signature", target + "AA", [("Range", rng)], 403, None),
        ("signature of another file", target.replace("sample.bam", "doomed.bam"),
         [("Range", rng)], 403, None),
        ("expired", _signed(world, "sample.bam", rng, at=time.time() - 3600),
         [("Range", rng)], 403, None),
        # its expiry a second or less before now (the signer's 600 s lifetime, floored)
        ("expired a moment ago", _signed(world, "sample.bam", rng, at=time.time() - 601),
         [("Range", rng)], 403, None),
        ("the range twice", target, [("Range", rng), ("Range", rng)], 403, None),
        ("a second, wider range", target, [("Range", rng), ("Range", "bytes=0-")], 403, None),
        # nginx drops the Range for an If-Range it cannot match and sends the whole file
        ("If-Range", target, [("Range", rng), ("If-Range", '"x"')], 206, exact),
        ("If-Range date", target, [("Range", rng),
                                   ("If-Range", "Mon, 01 Jan 1990 00:00:00 GMT")], 206, exact),
        ("a browser (CORS)", target, [("Range", rng), ("Origin", "https://igv.example")], 206,
         exact),
        # (HTTP's optional whitespace is not part of a header's value: nginx's, below)
        ("spaces around the range", target, [("Range", f" {rng}  ")], 206, exact),
        ("two ranges in one", target, [("Range", f"{rng},0-10")], 403, None),
        # htsgetr never signs two (nginx's check refuses them all the same): htsgetr
        # answers as without nginx, the whole file (RFC 9110 allows it)
        ("two ranges in one, signed", _signed(world, "sample.bam", f"{rng},0-10"),
         [("Range", f"{rng},0-10")], 200, data),
        ("a file no ticket names", target.replace("sample.bam", "secret.txt"),
         [("Range", rng)], 403, None),
        ("signed, but a file no ticket names", _signed(world, "secret.txt", "bytes=0-5"),
         [("Range", "bytes=0-5")], 404, None),
        ("signed, through a symlink", _signed(world, "linked.bam", rng), [("Range", rng)], 206,
         exact),
        ("signed, hidden", _signed(world, ".hidden/sample.bam", rng), [("Range", rng)], 404,
         None),
        ("signed, climbing out", _signed(world, "x/../sample.bam", rng), [("Range", rng)],
         404, None),
    ]
    for why, tgt, headers, status, body in cases:
        got_status, got_body, got_headers, who = _ask(world, tgt, headers)
        by = "nginx" if why.startswith("spaces") else "htsgetr"
        if "range" in why and len(headers) > 1 and world["verifier"] == "perl" and (
                who[1] == "nginx"):
            # nginx's Perl reads a repeated Range as nginx's range filter does, the first
            # one (nginx 1.22; from 1.23 it joins them, and the check refuses that): the
            # signed range, and no more
            status, body, by = 206, exact, "nginx"
        assert (got_status, who[1]) == (status, by), (why, got_body)
        if body is not None:
            assert got_body == body, why
        else:
            assert json.loads(got_body)["htsget"]["error"] in ("PermissionDenied", "NotFound"), why
        if why == "a browser (CORS)":
            assert got_headers["access-control-allow-origin"] in ("*", "https://igv.example")
    # other methods
    status, _, _, who = _ask(world, target, [("Range", rng)], method="POST")
    assert status in (403, 405) and who[1] == "htsgetr"
    # and the untouched url, after all that: nginx's
    status, body, _, who = _ask(world, target, [("Range", rng)])
    assert (status, body, who) == (206, exact, (206, "nginx"))
    status, body, headers, who = _ask(world, target, [("Range", rng)], method="HEAD")
    assert (status, body) == (206, b"") and int(headers["content-length"]) == len(exact)
    assert who == (206, "nginx")


def _workers(master: int) -> set[int]:
    """nginx's worker processes (a crashed one is replaced under a new pid)."""
    out = set()
    for entry in os.scandir("/proc"):
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                if entry.name.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == master:
                    out.add(int(entry.name))
        except OSError:
            continue
    return out


def _mutants(rnd: random.Random, target: str, rng: str
             ) -> Iterator[tuple[str, str, list[tuple[str, str]]]]:
    """(method, target, headers) variations of one signed request: its query, path, Range,
    method and headers changed a piece at a time, some still valid, most not."""
    path, _, query = target.partition("?")
    args = dict(a.split("=", 1) for a in query.split("&"))
    exp, sig = args["exp"], args["sig"]
    flipped = sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
    queries = [
        f"sig={sig}&exp={exp}", f"exp={exp}&sig={sig}&x=1", f"exp=1&exp={exp}&sig={sig}",
        f"exp={exp}&exp=1&sig={sig}", f"EXP={exp}&SIG={sig}", f"exp={exp}&sig={flipped}",
        f"exp={exp}&sig=%{ord(sig[0]):02X}{sig[1:]}", f"exp={exp}&sig=", f"exp={exp}",
        f"exp=0{exp}&sig={sig}", f"exp={'9' * 30}&sig={sig}", f"exp=-{exp}&sig={sig}",
        f"exp={exp}&sig={sig}{sig}", f"exp={exp}%00&sig={sig}", f"exp={exp}&&sig={sig}#x",
        f"exp={exp}&sig={sig[:-1]}", f"exp={exp}&sig={sig}&sig={flipped}",
    ]
    first, last = rng[6:].split("-")
    ranges = [rng, f"bytes=0{first}-{last}", f"bytes={first}-", f"Bytes={first}-{last}",
              f"bytes={first}-{last},{first}-{last}", f"bytes = {first}-{last}", "",
              f"bytes={first}-{int(last) + 1}", f"bytes={'9' * 19}-{last}", "bytes=-500"]
    paths = [path, path.replace("sample", "%73ample"), path.replace("/data/", "/data//"),
             path.replace("/data/", "/data/./"), path.replace("/data/", "/data/x/../"),
             path + "%00", path.replace(".bam", ".BAM"), path + "/", path.upper(),
             path.replace("/data/", "/data/%2e%2e/data/")]
    extra = [[], [("Origin", "https://x.example")], [("If-Range", '"x"')],
             [("Range", rng)], [("range", rng)], [("X-Forwarded-For", "1.2.3.4")]]
    for _ in range(400):
        method = rnd.choice(["GET"] * 8 + ["HEAD", "POST", "PUT", "DELETE", "OPTIONS"])
        headers = [("Range", r) for r in [rnd.choice(ranges)] if r] + rnd.choice(extra)
        yield method, f"{rnd.choice(paths)}?{rnd.choice(queries)}", headers


def test_mutated_signed_requests_get_only_signed_bytes(world: dict[str, Any]) -> None:
    """Hundreds of mutations of signed requests (query, path, Range, method, headers), sent
    to nginx with each verifier: every 2xx answer, whoever gave it, is exactly a range a url
    signed, of the file it signed; and nginx's workers live through all of it."""
    rnd = random.Random(12)
    data = (world["root"] / "sample.bam").read_bytes()
    master = world["nginx"].pid
    workers = _workers(master)
    assert workers
    signed = []
    for at in (None, None, None, time.time() - 700):  # the last one expired
        first = rnd.randrange(0, len(data) - 5000)
        rng = f"bytes={first}-{first + rnd.randrange(0, 4000)}"
        signed.append((_signed(world, "sample.bam", rng, at=at), rng, at is None))
    answered = {"nginx": 0, "htsgetr": 0}
    for target, rng, live in signed:
        first, last = (int(x) for x in rng[6:].split("-"))
        for method, tgt, headers in _mutants(rnd, target, rng):
            status, body, _ = _raw_get(world, tgt, headers, method)
            why = (method, tgt, headers)
            if 200 <= status < 300 and method not in ("GET", "HEAD"):
                assert body == b"", why  # a CORS preflight's answer
            elif 200 <= status < 300:
                assert status == 206 and live, why
                assert body == (data[first:last + 1] if method == "GET" else b""), why
                assert any(h.lower() == "range" and v == rng for h, v in headers), why
    time.sleep(0.1)
    for line in world["log"].read_text().splitlines():
        answered["nginx" if "up=[-]" in line else "htsgetr"] += 1
    assert answered["nginx"] and answered["htsgetr"]  # both kinds were reached
    assert _workers(master) == workers, "an nginx worker died"


def test_previous_secret_still_verifies_in_nginx(world: dict[str, Any]) -> None:
    data = (world["root"] / "sample.bam").read_bytes()
    for key in (OLD_SECRET, SECRET):
        tgt = _signed(world, "sample.bam", "bytes=100-199", key=key)
        status, body, _, who = _ask(world, tgt, [("Range", "bytes=100-199")])
        assert (status, body, who) == (206, data[100:200], (206, "nginx"))
    tgt = _signed(world, "sample.bam", "bytes=100-199", key="not-a-secret-of-ours")
    status, _, _, who = _ask(world, tgt, [("Range", "bytes=100-199")])
    assert (status, who[1]) == (403, "htsgetr")


def test_a_file_gone_after_its_ticket_gets_htsgets_404(world: dict[str, Any]) -> None:
    url, rng = _first_range(world, "doomed")
    (world["root"] / "doomed.bam").unlink()
    status, body, _, who = _ask(world, _target(url), [("Range", rng)])
    assert status == 404 and json.loads(body)["htsget"]["error"] == "NotFound"
    assert who == (404, "htsgetr")


def test_the_check_script_holds_the_secrets_for_nginx_only(world: dict[str, Any]) -> None:
    script = world["script"]
    assert script.stat().st_mode & 0o777 == 0o600
    text = script.read_text()
    conf = world["conf"].read_text()
    assert SECRET not in conf and SECRET.encode().hex() not in conf
    if world["verifier"] == "module":
        assert text == f"{SECRET.encode().hex()}\n{OLD_SECRET.encode().hex()}\n"
        assert f'htsgetr_direct_secrets "{script}";' in conf
        assert f'load_module "{DIRECT_MODULE}";' in conf
    elif world["verifier"] == "perl":
        assert f"('{SECRET.encode().hex()}', '{OLD_SECRET.encode().hex()}')" in text
        assert "perl_modules" not in conf and f'perl_require "{script}";' in conf
        assert f'load_module "{NGINX_PERL}";' in conf
    else:
        assert json.dumps([SECRET, OLD_SECRET]) in text
        assert f'js_import htsgetr_direct from "{script}"' in conf


def test_without_auth_urls_are_signed_all_the_same(tmp_path: Path) -> None:
    """accel = "nginx-direct" signs /data urls with auth off (the signature is what tells
    nginx which files a ticket named): htsgetr refuses unsigned ones, nginx sends signed ones;
    the secret must be set where nginx can be told it."""
    root = tmp_path / "data"
    root.mkdir()
    make_bam(root / "sample.bam", seed=3)
    (root / "notes.txt").write_text("private")
    config = tmp_path / "config.toml"
    config.write_text(f'[ticket_server]\nallowed_hosts = ["127.0.0.1:*"]\n[data_server]\n'
                      f'accel = "nginx-direct"\n[[locations]]\nroot = "{root}"\n')
    port, nginx_port = free_port(), free_port()
    env = {"HTSGET_DATA_URL_SECRET": "env-secret"}
    no_secret = {k: v for k, v in os.environ.items() if k != "HTSGET_DATA_URL_SECRET"}
    refused = subprocess.run(
        [sys.executable, "-m", "htsgetr", "config", "nginx", "--config", str(config), "-o",
         str(tmp_path / "x.conf")], capture_output=True, text=True, env=no_secret)
    assert refused.returncode == 2 and "HTSGET_DATA_URL_SECRET" in refused.stderr
    assert not (tmp_path / "htsgetr-direct.js").exists()
    tmp = tmp_path / "nginx"
    tmp.mkdir()
    conf = _nginx_conf(tmp, config, port, nginx_port, env)
    srv = Server(["--config", str(config), "--port", str(port), "--workers", "1"], port,
                 env=env).start()
    url = f"http://127.0.0.1:{nginx_port}"
    nginx = start_nginx(conf, url)
    try:
        world = {"url": url, "log": tmp / "access.log"}
        ticket = _ticket(world, "/reads/sample?referenceName=chr1&start=1&end=50000")
        blocks = [b for b in ticket["htsget"]["urls"] if b["url"].startswith("http")]
        assert blocks and all("&sig=" in b["url"] for b in blocks)
        assert_ticket_records(reassemble(ticket), tmp_path, root / "sample.bam",
                              [("chr1", 1, 50000)])
        for b in blocks:
            assert _who(world, "GET", _target(b["url"])) == (206, "nginx")
        for path in ("/data/sample.bam", "/data/notes.txt"):
            status, body, _, who = _ask(world, path, [("Range", "bytes=0-9")])
            assert status == 403 and json.loads(body)["htsget"]["error"] == "PermissionDenied"
            assert who == (403, "htsgetr")
    finally:
        os.killpg(nginx.pid, signal.SIGTERM)
        nginx.wait(10)
        srv.stop()
    # htsgetr itself will not start with urls signed by a secret of its own making
    lonely = subprocess.run([sys.executable, "-m", "htsgetr", "serve", "--config", str(config),
                             "--port", str(free_port())], capture_output=True, text=True,
                            env=no_secret, timeout=60)
    assert lonely.returncode != 0
    assert 'accel = "nginx-direct": set auth.data_urls.secret or HTSGET_DATA_URL_SECRET' in (
        lonely.stdout + lonely.stderr)


@pytest.mark.parametrize("verifier", ["njs", "perl", "module"])
def test_a_rotated_secret_reaches_nginx_on_reload(tmp_path: Path, verifier: str) -> None:
    """The rotation README describes: a new secret, the old one as previous; `htsgetr config
    nginx` writes the verifier's file again and nginx reloads (SIGHUP): urls of both secrets
    are then nginx's, and once the old one is dropped its urls go to htsgetr."""
    _skip_without(verifier)
    root = tmp_path / "data"
    root.mkdir()
    make_bam(root / "sample.bam", seed=5)
    data = (root / "sample.bam").read_bytes()
    port, nginx_port = free_port(), free_port()
    config, rules = tmp_path / "config.toml", tmp_path / "restrictions.json"
    rules.write_text(json.dumps(RESTRICTIONS))

    def configure(secret: str, previous: list[str]) -> Path:
        config.write_text(
            f'[ticket_server]\nallowed_hosts = ["127.0.0.1:*"]\n[data_server]\n'
            f'accel = "nginx-direct"\n[[locations]]\nroot = "{root}"\n'
            f'[data_server.auth.authorization]\nkind = "static"\npath = "{rules}"\n'
            f'[data_server.auth.data_urls]\nsecret = "{secret}"\n'
            f"previous_secrets = {json.dumps(previous)}\n")
        return _nginx_conf(tmp, config, port, nginx_port, verifier=verifier)

    def who(key: str) -> tuple[int, str]:
        target = _signed(world, "sample.bam", "bytes=10-99", key=key)
        status, body, _, answered = _ask(world, target, [("Range", "bytes=10-99")])
        assert status != 206 or body == data[10:100]
        return answered

    tmp = tmp_path / "nginx"
    tmp.mkdir()
    conf = configure("one", [])
    srv = Server(["--config", str(config), "--port", str(port), "--workers", "1"], port).start()
    world = {"url": f"http://127.0.0.1:{nginx_port}", "log": tmp / "access.log"}
    nginx = start_nginx(conf, world["url"])
    try:
        assert [who("one"), who("two")] == [(206, "nginx"), (403, "htsgetr")]
        for secret, previous, nginx_sends in (("two", ["one"], {"one", "two"}),
                                              ("two", [], {"two"})):
            configure(secret, previous)
            os.kill(nginx.pid, signal.SIGHUP)
            want = {key: key in nginx_sends for key in ("one", "two", "three")}
            for _ in range(200):  # until the old workers have left (they finish gracefully)
                got = {key: who(key)[1] == "nginx" for key in want}
                if got == want:
                    break
                time.sleep(0.05)
            assert got == want, previous
    finally:
        os.killpg(nginx.pid, signal.SIGTERM)
        nginx.wait(10)
        srv.stop()


def test_the_module_reads_its_secrets_file_or_refuses_to_start(tmp_path: Path) -> None:
    """The compiled verifier reads its secrets when nginx reads its configuration: one hex
    secret per line (blank lines and CRLF allowed); anything else stops nginx with the
    reason, not a verifier that vouches for nothing (or for everything)."""
    _skip_without("module")
    assert DIRECT_MODULE is not None
    names = 'htsgetr_direct_names "\\\\A[a-z]+\\\\.bam\\\\z";\n'
    keys = tmp_path / "keys"
    good = f"{SECRET.encode().hex()}\r\n\n{OLD_SECRET.encode().hex().upper()}\n"
    cases = {
        "good": (good, None),
        "empty": ("\n\n", "holds no secret"),
        "odd": ("abc\n", "holds a line that is not hex"),
        "not hex": ("zz11\n", "holds a line that is not hex"),
        "spaces": (f" {SECRET.encode().hex()}\n", "holds a line that is not hex"),
        "too big": ("00" * 40_000, "is not a file of at most 65536 bytes"),
    }
    for why, (text, error) in cases.items():
        keys.write_text(text, newline="")
        out = nginx_t(tmp_path, DIRECT_MODULE, f'htsgetr_direct_secrets "{keys}";\n{names}')
        if error is None:
            assert out.returncode == 0, (why, out.stderr)
        else:
            assert out.returncode != 0 and error in out.stderr, (why, out.stderr)
    for why, block, error in (
        ("missing", f'htsgetr_direct_secrets "{tmp_path}/nope";\n{names}', "failed"),
        ("a directory", f'htsgetr_direct_secrets "{tmp_path}";\n{names}', "is not a file"),
        ("twice", f'htsgetr_direct_secrets "{keys}";\n' * 2 + names, "is duplicate"),
        ("bad names", f'htsgetr_direct_secrets "{keys}";\nhtsgetr_direct_names "(";\n',
         "pcre2_compile"),
        ("names twice", f'htsgetr_direct_secrets "{keys}";\n{names}{names}', "is duplicate"),
        ("no names", f'htsgetr_direct_secrets "{keys}";\n', "one is missing"),
        ("no secrets", names, "one is missing"),
    ):
        keys.write_text(good)
        out = nginx_t(tmp_path, DIRECT_MODULE, block)
        assert out.returncode != 0 and error in out.stderr, (why, out.stderr)


def test_config_nginx_module_refuses_what_is_not_an_nginx_source_tree(tmp_path: Path) -> None:
    """`htsgetr config nginx-module` says what it needs (the build itself:
    tests/test_deploy.py, the nginx-direct image's step, through this command)."""
    refused = subprocess.run([sys.executable, "-m", "htsgetr", "config", "nginx-module",
                              "--source", str(tmp_path), "-o", str(tmp_path)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "is not an nginx source tree" in refused.stderr
    assert not list(tmp_path.iterdir())


def test_the_module_has_no_memory_errors_under_hostile_requests(tmp_path: Path) -> None:
    """nginx with the compiled verifier, run under valgrind's memcheck (one process), reads
    its secrets and answers the mutated signed requests: no invalid read or write, no use
    of uninitialised memory, and the valid ones still sent by nginx."""
    _skip_without("module")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        pytest.skip("valgrind is not installed (make test installs it)")
    root = tmp_path / "data"
    root.mkdir()
    make_bam(root / "sample.bam", seed=9)
    data = (root / "sample.bam").read_bytes()
    config = tmp_path / "config.toml"
    config.write_text(f'[ticket_server]\nallowed_hosts = ["127.0.0.1:*"]\n[data_server]\n'
                      f'accel = "nginx-direct"\n[[locations]]\nroot = "{root}"\n')
    port, nginx_port = free_port(), free_port()  # nothing listens on `port`: htsgetr's 502
    tmp = tmp_path / "nginx"
    tmp.mkdir()
    conf = _nginx_conf(tmp, config, port, nginx_port, {"HTSGET_DATA_URL_SECRET": SECRET},
                       verifier="module")
    # one process; its error log (a line per htsgetr-bound request) to a file, not the pipe
    conf.write_text("master_process off;\n" + conf.read_text().replace(
        "error_log stderr;", f"error_log {tmp}/error.log;"))
    report = tmp_path / "memcheck.log"
    world = {"url": f"http://127.0.0.1:{nginx_port}", "log": tmp / "access.log"}
    proc = start_nginx(conf, world["url"],
                       wrapper=[valgrind, "--error-exitcode=9", f"--log-file={report}"])
    try:
        rnd = random.Random(4)
        sent = 0
        for at in (None, time.time() - 700):
            first = rnd.randrange(0, len(data) - 5000)
            rng = f"bytes={first}-{first + 999}"
            for method, tgt, headers in _mutants(rnd, _signed(world, "sample.bam", rng, at=at),
                                                 rng):
                status, body, _ = _raw_get(world, tgt, headers, method)
                if status == 206 and method == "GET":
                    assert at is None and body == data[first:first + 1000]
                    sent += 1
        assert sent  # some mutations keep a request valid: nginx sent those
    finally:
        # nginx's own exit (fast shutdown), so valgrind writes its summary. Under valgrind
        # a signal can wait until nginx's next system call: a connection wakes it
        os.killpg(proc.pid, signal.SIGTERM)
        for _ in range(30):
            try:
                socket.create_connection(("127.0.0.1", nginx_port), timeout=1).close()
            except OSError:
                pass
            try:
                proc.wait(1)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = report.read_text()
    assert "ERROR SUMMARY: 0 errors" in text, text[-3000:]
    assert proc.returncode == 0, text[-3000:]
