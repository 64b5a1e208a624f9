"""Ticket urls name only an allowed Host; Forwarded / X-Forwarded-* count only from trusted
proxies; tickets and /data answers are never stored by a cache (issue 9)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Server

from htsgetr.app import create_app
from htsgetr.config import ConfigError, for_data_dir, load_config
from htsgetr.hosts import forwarded, host_policy, split_host

CT = "application/vnd.ga4gh.htsget.v1.3.0+json"


def app(data_dir: Path, **server: Any) -> Any:
    return create_app(for_data_dir(str(data_dir), **server)).test_client()


def urls(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return [u["url"] for u in resp.get_json()["htsget"]["urls"] if not u["url"].startswith("data:")]


def refused(resp: Any) -> None:
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.content_type == CT
    assert resp.get_json()["htsget"]["error"] == "InvalidInput"
    assert resp.headers["Cache-Control"] == "no-store"


def bases(resp: Any) -> set[str]:
    return {u.split("/data/", 1)[0] for u in urls(resp)}


# --------------------------------------------------------------------------- allowed_hosts


def test_default_allows_loopback_and_machine_names_on_the_bind_port(data_dir: Path) -> None:
    client = app(data_dir)  # bound to 127.0.0.1:8080
    ok = {
        "localhost": "http://localhost", "localhost:8080": "http://localhost:8080",
        "127.0.0.1:8080": "http://127.0.0.1:8080", "[::1]:8080": "http://[::1]:8080",
        "LOCALHOST:8080": "http://localhost:8080", "localhost:80": "http://localhost",
        f"{socket.gethostname()}:8080": f"http://{socket.gethostname().lower()}:8080",
        f"{socket.getfqdn()}:8080": f"http://{socket.getfqdn().lower().rstrip('.')}:8080",
    }
    for host, base in ok.items():
        assert bases(client.get("/reads/sample", headers={"Host": host})) == {base}, host
    for host in ("evil.example", "evil.example:8080", "localhost:9000", "127.0.0.1:8081",
                 "localhost.evil.example:8080", "localhost:8080@evil.example", "evil@localhost",
                 "localhost:8080/evil", "local host", "localhost:0", "localhost:65536",
                 "[::1", "[::1]x", "0.0.0.0:8080", "localhost:80:80", "localhost:+80",
                 "xn--80ak6aa92e.com:8080", "localhost%2f:8080", "*:8080", "localhost:8080 "):
        resp = client.get("/reads/sample", headers={"Host": host})
        if resp.status_code == 200:  # e.g. trailing space stripped by the client layer
            assert bases(resp) <= {"http://localhost:8080"}, host
        else:
            refused(resp)
    # POST is checked too, before the body is read
    refused(client.post("/reads/sample", json={}, headers={"Host": "evil.example"}))


def test_wildcard_bind_adds_the_machine_addresses(data_dir: Path) -> None:
    client = app(data_dir, host="0.0.0.0", port=9000)
    name = socket.gethostname()
    assert bases(client.get("/reads/sample", headers={"Host": f"{name}:9000"})) == {
        f"http://{name.lower()}:9000"}
    refused(client.get("/reads/sample", headers={"Host": "0.0.0.0:9000"}))
    refused(client.get("/reads/sample", headers={"Host": "localhost:8080"}))


def test_configured_allowed_hosts_replace_the_defaults(data_dir: Path) -> None:
    client = app(data_dir, allowed_hosts=["htsget.example.org", "*.lab.example:*",
                                          "[2001:db8::1]:9443", "other.example:9000"])
    for host, base in {
        "htsget.example.org": "http://htsget.example.org",
        "htsget.example.org:8080": "http://htsget.example.org:8080",
        "a.lab.example:1234": "http://a.lab.example:1234",
        "b.c.lab.example": "http://b.c.lab.example",
        "[2001:DB8:0::1]:9443": "http://[2001:db8::1]:9443",
        "other.example:9000": "http://other.example:9000",
    }.items():
        assert bases(client.get("/reads/sample", headers={"Host": host})) == {base}, host
    for host in ("localhost", "localhost:8080", "htsget.example.org:9000", "lab.example",
                 "evil-lab.example", "other.example", "other.example:8080", "[2001:db8::1]"):
        refused(client.get("/reads/sample", headers={"Host": host}))


def test_star_opts_out(data_dir: Path) -> None:
    client = app(data_dir, allowed_hosts=["*"])
    assert bases(client.get("/reads/sample", headers={"Host": "anything.example:1"})) == {
        "http://anything.example:1"}
    # still a host: no url can be bent by a Host that is not one
    refused(client.get("/reads/sample", headers={"Host": "a/b@c"}))


def test_base_url_ignores_the_host(data_dir: Path) -> None:
    client = app(data_dir, base_url="https://public.example/htsget")
    for host in ("evil.example", "localhost:1"):
        assert bases(client.get("/reads/sample", headers={"Host": host})) == {
            "https://public.example/htsget"}


# --------------------------------------------------------------------------- proxies


FORWARDS = {"X-Forwarded-Host": "htsget.example.org", "X-Forwarded-Proto": "https"}


def test_forwarded_headers_ignored_from_untrusted_peers(data_dir: Path) -> None:
    client = app(data_dir, allowed_hosts=["htsget.example.org", "localhost"])
    for peer in ("127.0.0.1", "10.1.2.3"):
        env = {"REMOTE_ADDR": peer}
        resp = client.get("/reads/sample", headers={"Host": "localhost", **FORWARDS},
                          environ_base=env)
        assert bases(resp) == {"http://localhost"}
        resp = client.get("/reads/sample", environ_base=env, headers={
            "Host": "localhost", "Forwarded": "host=htsget.example.org;proto=https"})
        assert bases(resp) == {"http://localhost"}
        # the WSGI server may already have believed X-Forwarded-Proto (gunicorn does, from
        # loopback): the scheme comes from our bind then
        resp = client.get("/reads/sample", environ_base={**env, "wsgi.url_scheme": "https"},
                          headers={"Host": "localhost", "X-Forwarded-Proto": "https"})
        assert bases(resp) == {"http://localhost"}


def test_forwarded_headers_from_trusted_proxies(data_dir: Path) -> None:
    client = app(data_dir, allowed_hosts=["htsget.example.org", "htsget.example.org:8443"],
                 trusted_proxies=["10.0.0.0/8", "::1"])
    env = {"REMOTE_ADDR": "10.1.2.3"}
    get = lambda headers, e=env: client.get(  # noqa: E731
        "/reads/sample", headers={"Host": "internal:8080", **headers}, environ_base=e)
    assert bases(get(FORWARDS)) == {"https://htsget.example.org"}
    assert bases(get({**FORWARDS, "X-Forwarded-Port": "8443"})) == {
        "https://htsget.example.org:8443"}
    assert bases(get({**FORWARDS, "X-Forwarded-Port": "443"})) == {"https://htsget.example.org"}
    assert bases(get({"X-Forwarded-Host": "evil.example, htsget.example.org"})) == {
        "http://htsget.example.org"}  # the nearest proxy's value
    assert bases(get({"Forwarded": 'for=1.2.3.4;host=evil.example, for=10.0.0.9;'
                                   'host="htsget.example.org:8443";proto=HTTPS'})) == {
        "https://htsget.example.org:8443"}
    assert bases(get(FORWARDS, {"REMOTE_ADDR": "::1"})) == {"https://htsget.example.org"}
    refused(get({"X-Forwarded-Host": "evil.example"}))
    refused(get({"Forwarded": "host=evil.example"}))
    refused(get({**FORWARDS, "X-Forwarded-Proto": "gopher"}))
    refused(get({**FORWARDS, "X-Forwarded-Port": "9999"}))
    # a proxy that sends nothing: the Host itself, checked
    refused(get({}))
    # an untrusted peer behind the same headers
    assert get(FORWARDS, {"REMOTE_ADDR": "192.168.1.1"}).status_code == 400  # Host internal


def test_forwarded_parsing() -> None:
    assert forwarded({"forwarded": 'for="[::1]:80";proto=https;host="a.example:1"'}) == (
        "https", "a.example:1")
    # quoted commas stay inside their element; the last element names neither
    assert forwarded({"forwarded": 'host="a,b";proto=http, for=x'}) == (None, None)
    assert forwarded({"forwarded": 'for=x, host="b.example";proto=http'}) == (
        "http", "b.example")
    assert forwarded({"x-forwarded-host": "a, b", "x-forwarded-port": "81"}) == (None, "b:81")
    assert split_host("[::1]:80") == ("::1", 80) and split_host("Example.ORG.") == (
        "example.org", None)


# --------------------------------------------------------------------------- configuration


def test_config_keys_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    for bad, key in (('allowed_hosts = ["bad host"]', "allowed_hosts"),
                     ('allowed_hosts = ["a:99999"]', "allowed_hosts"),
                     ('trusted_proxies = ["10.0.0.0/33"]', "trusted_proxies"),
                     ('trusted_proxies = ["proxy.example"]', "trusted_proxies")):
        path.write_text(f"[ticket_server]\n{bad}\n")
        with pytest.raises(ConfigError) as err:
            load_config(str(path), env={})
        assert f"ticket_server.{key}" in str(err.value)
    config = load_config(env={"HTSGET_TICKET_SERVER_ALLOWED_HOSTS": "a.example, b.example:9000",
                              "HTSGET_TICKET_SERVER_TRUSTED_PROXIES": "10.0.0.1,fd00::/8"})
    assert config.ticket_server.allowed_hosts == ["a.example", "b.example:9000"]
    assert config.ticket_server.trusted_proxies == ["10.0.0.1", "fd00::/8"]
    assert load_config(env={}).ticket_server.allowed_hosts is None


def test_policy_cached_and_ipv4_mapped_peers() -> None:
    policy = host_policy(None, "127.0.0.1", 8080, False, ("127.0.0.1",))
    assert policy is host_policy(None, "127.0.0.1", 8080, False, ("127.0.0.1",))
    assert policy.trusts("::ffff:127.0.0.1") and not policy.trusts("127.0.0.2")
    assert not policy.trusts(None) and not policy.trusts("not-an-address")


# --------------------------------------------------------------------------- Cache-Control


def test_no_store_on_tickets_and_data(data_dir: Path) -> None:
    client = app(data_dir)
    for resp in (client.get("/reads/sample"), client.post("/reads/sample", json={}),
                 client.get("/reads/nope"), client.get("/reads/sample?start=5"),
                 client.get("/variants/calls"), client.put("/reads/sample"),
                 client.get("/data/sample.bam", headers={"Range": "bytes=0-9"}),
                 client.head("/data/sample.bam"), client.get("/data/missing.bam"),
                 client.get("/data/sample.bam", headers={"Range": "bytes=999999999-"}),
                 client.get("/data/")):
        assert resp.headers.get("Cache-Control") == "no-store", resp.request.path
    assert "no-store" not in client.get("/service-info").headers.get("Cache-Control", "")


# --------------------------------------------------------------------------- real server


def test_hosts_under_gunicorn(server: Server) -> None:
    """gunicorn believes X-Forwarded-Proto from loopback by default; tickets must not."""
    port = server.port
    ok = requests.get(f"{server.url}/reads/sample", timeout=10)
    assert ok.headers["Cache-Control"] == "no-store"
    assert {u["url"].split("/data/")[0] for u in ok.json()["htsget"]["urls"]
            if not u["url"].startswith("data:")} == {f"http://127.0.0.1:{port}"}
    spoofed = requests.get(f"{server.url}/reads/sample", timeout=10, headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example",
        "Forwarded": "host=evil.example;proto=https"})
    assert {u["url"].split("/data/")[0] for u in spoofed.json()["htsget"]["urls"]
            if not u["url"].startswith("data:")} == {f"http://127.0.0.1:{port}"}
    evil = requests.get(f"{server.url}/reads/sample", headers={"Host": "evil.example"},
                        timeout=10)
    assert evil.status_code == 400 and evil.json()["htsget"]["error"] == "InvalidInput"
    assert "evil.example" not in evil.json()["htsget"].get("urls", "")
