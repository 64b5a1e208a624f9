"""[auth] and cors configuration: htsget-rs spellings, checks at start, redaction, CORS."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from authkit import Key

from htsgetr.app import create_app
from htsgetr.cli import main
from htsgetr.config import ConfigError, load_config


def write(tmp_path: Path, text: str, name: str = "htsget.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_htsget_rs_auth_file_loads_unchanged(tmp_path: Path) -> None:
    """htsget-rs's docs/examples/auth.toml auth tables, as they are."""
    config = load_config(write(tmp_path, """
[auth]
jwt = { kind = "jwks", url = "https://www.example.com/jwks" }
validate_audience = ["htsget-server"]
validate_issuer = ["https://www.example.com"]
validate_subject = "htsget"

[auth.authorization]
kind = "callout"
url = "https://www.example.com/authorize"

[auth.authorization.forward]
headers.allow = ["Authorization"]

[auth.authorization.forward.context]
endpoint_type = true
id = true

[data_server.auth]
jwt = { kind = "public_key", path = "key.pem" }
"""), env={})
    auth = config.auth
    assert auth is not None and auth.jwt is not None and auth.authorization is not None
    assert auth.validate_subject == "htsget"
    assert auth.authorization.forward.context.id is True
    assert config.auth_for("ticket") is auth
    data = config.auth_for("data")
    assert data is not None and data.jwt is not None
    assert data.jwt.path == str(tmp_path / "key.pem")  # relative to the file


@pytest.mark.parametrize("text, message", [
    ('[auth]\njwt = { kind = "jwks" }', "auth.jwt.url: required"),
    ('[auth]\njwt = { kind = "jwks", url = "ftp://x" }', "auth.jwt.url: expected an http"),
    ('[auth]\njwt = { kind = "magic", url = "https://x" }', "auth.jwt.kind"),
    ("[auth]\nvalidate_issuer = 'x'", "auth.validate_issuer: expected an array"),
    ('[auth]\nalgorithms = ["HS256"]\njwt = { kind = "jwks", url = "https://x" }',
     "'HS256' is not allowed"),
    ('[auth]\nalgorithms = ["none"]\njwt = { kind = "jwks", url = "https://x" }',
     "'none' is not allowed"),
    ("[auth]\nsuppress_errors = true", "auth: needs jwt, authorization or passports"),
    ('[auth.authorization]\nkind = "static"', "auth.authorization.path: required"),
    ('[auth]\njwt = { kind = "jwks", url = "https://x" }\npublic_endpoints = ["data"]',
     "auth.public_endpoints[0]"),
    ('[ticket_server.cors]\nallow_origins = "Some"', "ticket_server.cors.allow_origins"),
    ('[auth]\njwt = { kind = "jwks", url = "https://x", colour = 1 }', "auth.jwt.colour"),
])
def test_bad_auth_tables_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, text), env={})


def test_config_check_reads_the_key_and_restrictions_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "jwt.pub"
    good.write_bytes(Key("EC").public_pem())
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"version": 1, "htsgetAuth": [{"location": {"prefix": "a/"}}]}))
    base = (f'[auth.authorization]\nkind = "static"\npath = "{rules}"\n'
            '[auth.jwt]\nkind = "public_key"\n')
    assert main(["config", "check", write(tmp_path, base + f'path = "{good}"')]) == 0
    pem = "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"
    (tmp_path / "bad.pub").write_text(pem)
    for path in (tmp_path / "bad.pub", tmp_path / "missing.pub"):
        assert main(["config", "check", write(tmp_path, base + f'path = "{path}"')]) == 2
        assert str(path) in capsys.readouterr().err
    rules.write_text("{not json")
    assert main(["config", "check", write(tmp_path, base + f'path = "{good}"')]) == 2
    assert str(rules) in capsys.readouterr().err
    rules.write_text(json.dumps({"version": 1, "htsgetAuth": []}))
    assert main(["config", "check", write(tmp_path, base + f'path = "{good}"')]) == 2
    assert "htsgetAuth" in capsys.readouterr().err


def test_auth_from_the_environment(tmp_path: Path) -> None:
    env = {"HTSGET_AUTH": json.dumps({"jwt": {"kind": "jwks", "url": "https://idp/jwks"},
                                      "data_urls": {"expires": 60}}),
           "HTSGET_TICKET_SERVER_CORS_ALLOW_ORIGINS": "Mirror"}
    config = load_config(env=env)
    assert config.auth is not None and config.auth.data_urls.expires == 60
    assert config.ticket_server.cors.allow_origins == "Mirror"


# --------------------------------------------------------------------------- CORS


@pytest.mark.parametrize("cors, origin, allowed", [
    ({}, "https://any.example", "*"),
    ({"allow_origins": "Mirror"}, "https://any.example", "https://any.example"),
    ({"allow_origins": ["https://igv.example"]}, "https://igv.example", "https://igv.example"),
    ({"allow_origins": ["https://igv.example"]}, "https://evil.example", None),
    ({"allow_origins": "All", "allow_credentials": True}, "https://a.example",
     "https://a.example"),
])
def test_cors_keys(tmp_path: Path, cors: dict[str, object], origin: str,
                   allowed: str | None) -> None:
    config = load_config(env={}, cli={"data_dir": str(tmp_path)})
    for k, v in cors.items():
        setattr(config.ticket_server.cors, k, v)
    client = create_app(config).test_client()
    for path in ("/reads/x", "/data/x.bam"):
        r = client.options(path, headers={"Origin": origin,
                                          "Access-Control-Request-Method": "GET",
                                          "Access-Control-Request-Headers": "Range"})
        assert r.headers.get("Access-Control-Allow-Origin") == allowed, path
        if allowed:
            assert "range" in r.headers["Access-Control-Allow-Headers"].lower()
            assert r.headers["Access-Control-Max-Age"] == "2592000"  # 30 days (htsget spec)
        if cors.get("allow_credentials"):
            assert r.headers["Access-Control-Allow-Credentials"] == "true"


# --------------------------------------------------------------------------- passports, data auth


@pytest.fixture()
def idp(tmp_path: Path):
    from authkit import Service

    svc = Service()
    keys = {"a": Key("EC", "visa-a"), "b": Key("RSA", "visa-b"), "main": Key("RSA", "main")}
    svc.routes["/a/jwks"] = lambda h: (200, {}, {"keys": [keys["a"].jwk()]})
    svc.routes["/b/jwks"] = lambda h: (200, {}, {"keys": [keys["b"].jwk()]})
    (tmp_path / "main.pub").write_bytes(keys["main"].public_pem())
    (tmp_path / "cohort").mkdir()
    from conftest import make_bam

    make_bam(tmp_path / "cohort" / "s.bam", n_reads=200)
    yield svc, keys
    svc.close()


def visa(key: Key, iss: str, value: str, ttl: int = 600, **extra: object) -> str:
    import time

    now = int(time.time())
    body = {"type": "ControlledAccessGrants", "value": value, "source": "https://dac",
            "by": "dac", "asserted": now - 100, **extra}
    return key.sign({"iss": iss, "sub": "alice", "iat": now, "exp": now + ttl,
                     "ga4gh_visa_v1": body})


def test_passport_visas_open_datasets(tmp_path: Path, idp) -> None:
    from authkit import claims

    svc, keys = idp
    config = load_config(write(tmp_path, f"""
[[locations]]
root = "{tmp_path}"
[auth]
jwt = {{ kind = "public_key", path = "{tmp_path / 'main.pub'}" }}
[auth.passports]
trusted_issuers = [{{ iss = "https://visas-a", jwks = "{svc.url}/a/jwks" }}]
userinfo_url = "{svc.url}/userinfo"
[auth.passports.datasets]
"https://ds/cohort" = {{ prefix = "cohort/" }}
[auth.data_urls]
secret = "s"
"""), env={})
    client = create_app(config).test_client()

    def ticket(token: str) -> int:
        r = client.get("/reads/cohort/s", headers={"Authorization": f"Bearer {token}"})
        return r.status_code

    main_key = keys["main"]
    good = visa(keys["a"], "https://visas-a", "https://ds/cohort")
    assert ticket(main_key.sign(claims(ga4gh_passport_v1=[good]))) == 200
    for name, bad in {
        "untrusted issuer": visa(keys["b"], "https://visas-b", "https://ds/cohort"),
        "claims another's issuer": visa(keys["b"], "https://visas-a", "https://ds/cohort"),
        "expired": visa(keys["a"], "https://visas-a", "https://ds/cohort", ttl=-3600),
        "other dataset": visa(keys["a"], "https://visas-a", "https://ds/other"),
        "conditions": visa(keys["a"], "https://visas-a", "https://ds/cohort",
                           conditions=[[{"type": "AffiliationAndRole", "value": "x"}]]),
    }.items():
        assert ticket(main_key.sign(claims(ga4gh_passport_v1=[bad]))) == 403, name
    # no passport in the token: the userinfo endpoint holds it
    svc.routes["/userinfo"] = lambda h: (200, {}, {"ga4gh_passport_v1": [good]})
    assert ticket(main_key.sign(claims())) == 200
    svc.routes["/userinfo"] = lambda h: (200, {}, {"ga4gh_passport_v1": []})
    assert ticket(main_key.sign(claims())) == 403


def test_data_server_auth_also_demands_a_token(tmp_path: Path, idp) -> None:
    from authkit import claims

    _, keys = idp
    pub = tmp_path / "main.pub"
    config = load_config(write(tmp_path, f"""
[[locations]]
root = "{tmp_path}"
[auth]
jwt = {{ kind = "public_key", path = "{pub}" }}
[data_server.auth]
jwt = {{ kind = "public_key", path = "{pub}" }}
"""), env={})
    client = create_app(config).test_client()
    token = {"Authorization": f"Bearer {keys['main'].sign(claims())}"}
    t = client.get("/reads/cohort/s?referenceName=chr1", headers=token).get_json()
    block = next(b for b in t["htsget"]["urls"] if not b["url"].startswith("data:"))
    path = block["url"].split("://", 1)[1].split("/", 1)[1]
    assert client.get("/" + path, headers=block["headers"]).status_code == 401
    assert client.get("/" + path, headers={**block["headers"], **token}).status_code == 206
    unsigned = "/" + path.split("?")[0]
    assert client.get(unsigned, headers={**block["headers"], **token}).status_code == 403


def test_public_endpoints(tmp_path: Path, idp) -> None:
    pub = tmp_path / "main.pub"
    base = (f'[[locations]]\nroot = "{tmp_path}"\n'
            f'[auth]\njwt = {{ kind = "public_key", path = "{pub}" }}\n')
    client = create_app(load_config(write(tmp_path, base), env={})).test_client()
    assert client.get("/service-info").status_code == 200
    assert client.get("/reads/service-info").status_code == 200
    assert client.get("/reads/cohort/s").status_code == 401
    config = load_config(write(tmp_path, base + 'public_endpoints = ["reads"]'), env={})
    client = create_app(config).test_client()
    assert client.get("/service-info").status_code == 401
    assert client.get("/variants/cohort/s").status_code == 401
    t = client.get("/reads/cohort/s?referenceName=chr1")
    assert t.status_code == 200
    block = next(b for b in t.get_json()["htsget"]["urls"] if not b["url"].startswith("data:"))
    assert "sig=" in block["url"]  # data urls stay signed on a public endpoint
