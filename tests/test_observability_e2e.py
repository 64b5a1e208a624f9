"""A full run with auth on and JSON logs, both servers (tickets, and /data on its own bind):
every line either server wrote is a JSON object, every request has its one access line with
a request ID, and no token, signature, presigned query string or secret appears anywhere.

(The check was seen to fail once by hand: with `redact.redact_url` returning its input, the
signed /data urls' `sig=` values and the query-string token appear in the access lines.)"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authkit import Key, claims
from conftest import Server, free_port, make_bam, make_vcf, reassemble

pysam = pytest.importorskip("pysam")

DATA_SECRET = "data-url-secret-for-the-log-test"
MARKER = "subject-marker-that-must-not-be-logged"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("obs-e2e")
    (d / "data" / "cohort").mkdir(parents=True)
    make_bam(d / "data" / "cohort" / "s1.bam", seed=5, n_reads=1500)
    make_vcf(d / "data" / "cohort" / "calls.vcf.gz", seed=6, n=800)
    key = Key("RSA", "main")
    (d / "jwt.pub").write_bytes(key.public_pem())
    (d / "rules.json").write_text(json.dumps({"version": 1, "htsgetAuth": [
        {"location": {"prefix": "cohort/"}, "rules": [{"referenceName": "chr1"},
                                                       {"referenceName": "1"}]}]}))
    port, data_port = free_port(), free_port()
    config = d / "config.toml"
    config.write_text(f"""
[ticket_server]
port = {port}
workers = 2
[data_server]
separate = true
port = {data_port}
workers = 2
[[locations]]
root = "{d / 'data'}"
[logging]
format = "json"
level = "debug"
[auth]
validate_audience = ["htsget-test"]
validate_issuer = ["https://idp.test"]
[auth.jwt]
kind = "public_key"
path = "{d / 'jwt.pub'}"
[auth.authorization]
kind = "static"
path = "{d / 'rules.json'}"
[auth.data_urls]
secret = "{DATA_SECRET}"
""")
    srv = Server(["--config", str(config)], port)
    srv.start()
    data_url = f"http://127.0.0.1:{data_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(data_url + "/healthz", timeout=2)
            break
        except requests.RequestException:
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.1)
    yield {"server": srv, "key": key, "data_url": data_url}
    srv.stop()


def run_everything(world: dict[str, Any]) -> dict[str, list[str]]:
    """What clients do, right and wrong; returns the secrets they used, by kind."""
    srv: Server = world["server"]
    key: Key = world["key"]
    url = srv.url
    token = key.sign(claims(sub=MARKER))
    expired = key.sign(claims(sub=MARKER, ttl=-100))
    other = Key("RSA", "main").sign(claims(sub=MARKER))  # signed by a stranger
    secrets: dict[str, list[str]] = {"token": [token, expired, other], "sig": [],
                                     "secret": [DATA_SECRET, MARKER]}
    auth = {"Authorization": f"Bearer {token}"}
    rng = random.Random(3)
    tickets = []
    for i in range(6):
        start = rng.randint(0, 200_000)
        resp = requests.get(f"{url}/reads/cohort/s1?referenceName=chr1&start={start}"
                            f"&end={start + 20_000}", headers={**auth, "X-Request-ID": f"t{i}"},
                            timeout=30)
        assert resp.status_code == 200, resp.text
        tickets.append(resp.json())
    for path in ("/variants/cohort/calls?referenceName=1", "/reads/cohort/s1?class=header"):
        resp = requests.get(url + path, headers=auth, timeout=30)
        assert resp.status_code == 200, resp.text
        tickets.append(resp.json())
    resp = requests.post(f"{url}/reads/cohort/s1", headers=auth, timeout=30,
                         json={"regions": [{"referenceName": "chr1", "start": 1, "end": 9000}]})
    assert resp.status_code == 200, resp.text
    tickets.append(resp.json())
    for ticket in tickets:
        for block in ticket["htsget"]["urls"]:
            query = parse_qs(urlsplit(block["url"]).query)
            secrets["sig"] += query.get("sig", [])
        assert reassemble(ticket)  # every signed /data url, from the data server
    assert secrets["sig"]
    signed = next(b for t in tickets for b in t["htsget"]["urls"] if "sig=" in b["url"])
    tampered = signed["url"].replace("sig=", "sig=AAAA")
    assert requests.get(tampered, headers=signed.get("headers"), timeout=30).status_code == 403
    # refused tokens, and a token where no token belongs
    for bad in (expired, other, "not-a-jwt-" + MARKER):
        resp = requests.get(f"{url}/reads/cohort/s1", headers={"Authorization": f"Bearer {bad}"},
                            timeout=30)
        assert resp.status_code == 401
    resp = requests.get(f"{url}/reads/cohort/s1?access_token={token}", timeout=30)
    assert resp.status_code == 401
    presigned = "X-Amz-Credential=AKIAEXAMPLE%2F20260101&X-Amz-Signature=" + "f" * 64
    secrets["sig"] += ["AKIAEXAMPLE", "f" * 64]
    assert requests.get(f"{world['data_url']}/data/cohort/s1.bam?{presigned}",
                        timeout=30).status_code == 403
    assert requests.get(f"{world['data_url']}/data/cohort/s1.bam",
                        headers=auth, timeout=30).status_code == 403
    # operations endpoints: public
    for base in (url, world["data_url"]):
        for path in ("/healthz", "/readyz"):
            assert requests.get(base + path, timeout=30).status_code == 200
    assert requests.get(url + "/metrics", timeout=30).status_code == 200
    return secrets


def test_json_logs_of_a_full_run_carry_no_secret(world: dict[str, Any]) -> None:
    srv: Server = world["server"]
    secrets = run_everything(world)
    time.sleep(0.5)  # the last access lines
    log = srv.stop()
    lines = [line for line in log.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    for kind, values in secrets.items():
        for value in values:
            assert value not in log, f"a {kind} is in the log: {value[:12]}..."
    for token in secrets["token"]:
        for part in token.split("."):
            assert part not in log, "a part of a token is in the log"
    access = [r for r in records if r["logger"] == "access"]
    assert all(r["request_id"] for r in access)
    ticket_lines = [r for r in access if r["path"].startswith("/reads/cohort/s1?ref")]
    assert {r["request_id"] for r in ticket_lines} >= {f"t{i}" for i in range(6)}
    assert all(r["ticket"]["format"] == "BAM" and r["ticket"]["regions"] == 1
               for r in ticket_lines if r["status"] == 200)
    data_lines = [r for r in access if r["path"].startswith("/data/")]
    assert data_lines and any("sig=***" in r["path"] for r in data_lines)
    assert any("X-Amz-Signature=***" in r["path"] for r in data_lines)
    assert len({r["pid"] for r in data_lines} & {r["pid"] for r in ticket_lines}) == 0
    assert not [r for r in access if r["path"] in ("/healthz", "/readyz")]
