"""GET /healthz and /readyz (api/health.py): public even with auth on, JSON, 200 or 503;
readiness follows the locations (a root gone, a storage that does not answer), storage probes
only when asked and then kept `probe_interval` seconds; no path or error text in the body."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from htsgetr.app import create_app
from htsgetr.config import LocationConfig, for_data_dir, load_config
from htsgetr.engine import Htsget


def test_healthz_and_readyz(data_dir: Path) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    client = app.test_client()
    alive = client.get("/healthz")
    assert (alive.status_code, alive.get_json()) == (200, {"status": "ok"})
    assert alive.headers["Content-Type"] == "application/json"
    assert alive.headers["Cache-Control"] == "no-store"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "config": "loaded", "locations": [
        {"location": 0, "backend": "file", "status": "ok"}]}
    assert client.head("/readyz").status_code == 200
    assert client.post("/healthz").status_code == 405


@pytest.mark.parametrize("role", ["ticket", "data", "all"])
def test_every_role_answers(data_dir: Path, role: str) -> None:
    client = create_app(for_data_dir(str(data_dir)), role).test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_a_root_gone_makes_the_server_unready(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "gone"
    root.mkdir()
    config = for_data_dir(str(data_dir))
    config.locations.append(LocationConfig(name="cohort", regex="cohort/(.*)", root=str(root)))
    client = create_app(config).test_client()
    assert client.get("/readyz").status_code == 200
    shutil.rmtree(root)
    resp = client.get("/readyz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["status"] == "not ready"
    assert body["locations"][1] == {"location": "cohort", "backend": "file", "status": "missing"}
    assert str(tmp_path) not in resp.get_data(as_text=True)  # no path in a public answer
    config.allow_missing = True  # a root that may be missing is reported, not fatal
    resp = create_app(config).test_client().get("/readyz")
    assert resp.status_code == 200 and resp.get_json()["locations"][1]["status"] == "missing"


class _Remote:
    """A remote-looking storage whose `check` is counted and can fail."""

    def __init__(self) -> None:
        self.checks = 0
        self.fail = False

    def check(self) -> None:
        self.checks += 1
        if self.fail:
            raise ValueError("bucket 'b' cannot be used: S3 endpoint unreachable")


def _remote_app(data_dir: Path, probe: bool, interval: float = 60.0) -> tuple[Any, _Remote]:
    config = for_data_dir(str(data_dir))
    config.locations.append(LocationConfig(name="s3", regex="s3/(.*)", backend="url",
                                           url="https://store.example/"))
    config.health.probe_storage = probe
    config.health.probe_interval = interval
    config.metrics.enabled = False
    engine = Htsget(config)
    remote = _Remote()
    _, location, _ = engine.resolver.rules[1]
    engine.resolver.rules[1] = (engine.resolver.rules[1][0], location, remote)  # type: ignore
    return create_app(config, engine=engine).test_client(), remote


def test_remote_storage_is_probed_only_when_asked(data_dir: Path) -> None:
    client, remote = _remote_app(data_dir, probe=False)
    remote.fail = True
    resp = client.get("/readyz")
    assert resp.status_code == 200 and remote.checks == 0
    assert resp.get_json()["locations"][1] == {"location": "s3", "backend": "url",
                                               "status": "unchecked"}


def test_storage_probes_are_kept_probe_interval(data_dir: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    client, remote = _remote_app(data_dir, probe=True, interval=60.0)
    for _ in range(5):
        assert client.get("/readyz").status_code == 200
    assert remote.checks == 1
    client, remote = _remote_app(data_dir, probe=True, interval=0.0)
    remote.fail = True
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["locations"][1]["status"] == "unavailable"
    assert "unreachable" not in resp.get_data(as_text=True)  # logged, not answered
    assert "unreachable" in caplog.text
    remote.fail = False
    assert client.get("/readyz").status_code == 200 and remote.checks == 2


def test_public_with_auth_on(data_dir: Path, tmp_path: Path) -> None:
    """No token, no signature, any Host: probes come from kubelets and load balancers."""
    toml = tmp_path / "c.toml"
    toml.write_text(f"""
[[locations]]
root = "{data_dir}"
[ticket_server]
allowed_hosts = ["htsget.example"]
[auth]
[auth.jwt]
kind = "jwks"
url = "https://idp.example/jwks"
[auth.data_urls]
secret = "s"
[data_server.auth.jwt]
kind = "jwks"
url = "https://idp.example/jwks"
""")
    config = load_config(str(toml), env={})
    for role in ("all", "ticket", "data"):
        client = create_app(config, role).test_client()
        for path in ("/healthz", "/readyz"):
            resp = client.get(path, headers={"Host": "10.0.0.7:8080"})
            assert resp.status_code == 200, (role, path, resp.get_data(as_text=True))
    client = create_app(config).test_client()
    assert client.get("/reads/sample", headers={"Host": "htsget.example"}).status_code == 401
