"""The built-in viewer's HTTP side (htsgetr/viewer): off unless configured; the page is a
shell whose only inputs (the ID, the locus) cannot break out of its JSON block; a strict CSP;
igv.js served from the package, the pinned file byte for byte, and nothing else under
/viewer/_static. igv.js drawing reads through it: tests/browser/test_igv.py."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from htsgetr import create_app, load_config
from htsgetr.viewer.views import IGV_ASSET, IGV_VERSION

#: sha256 of igv 3.8.10's dist/igv.min.js as npm ships it
IGV_SHA256 = "87b991ae2a720978172e269dd5127c495e56df5af31144dff19c83124e2f5744"


def _client(tmp_path: Path, enabled: bool) -> Any:
    config = load_config(env={}, cli={"data_dir": str(tmp_path)})
    config.viewer.enabled = enabled
    return create_app(config).test_client()


def _config_of(page: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="viewer-config">(.*?)</script>', page,
                  re.S)
    assert m, page[:500]
    result: dict[str, Any] = json.loads(m.group(1))
    return result


def test_off_by_default(tmp_path: Path) -> None:
    assert load_config(env={}, cli={"data_dir": str(tmp_path)}).viewer.enabled is False
    client = _client(tmp_path, enabled=False)
    assert client.get("/viewer/sample").status_code == 404
    assert client.get(f"/viewer/_static/{IGV_ASSET}").status_code == 404


def test_enabled_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[viewer]\nenabled = true\n")
    config = load_config(path=str(cfg), env={}, cli={"data_dir": str(tmp_path)})
    assert config.viewer.enabled is True
    assert create_app(config).test_client().get("/viewer/x").status_code == 200


@pytest.mark.parametrize("id", ["sample", "cohort/NA12878/wgs", "a b", "x</script><script>"
                                "alert(1)</script>", "q\"'&<>"])
def test_page_is_a_shell_with_the_id_escaped(tmp_path: Path, id: str) -> None:
    client = _client(tmp_path, enabled=True)
    resp = client.get(f"/viewer/{id}", query_string={"locus": "chr1:1-100</script>"})
    assert resp.status_code == 200
    assert resp.content_type == "text/html; charset=utf-8"
    page = resp.get_data(as_text=True)
    assert _config_of(page) == {"id": id, "root": "", "locus": "chr1:1-100</script>",
                                "igvVersion": IGV_VERSION}
    assert "<script>alert" not in page and page.count("</script>") == 3
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    # assets by absolute path: an ID with slashes must not move them
    assert f'src="/viewer/_static/{IGV_ASSET}"' in page
    assert 'src="/viewer/_static/viewer.js"' in page


def test_igv_is_the_pinned_file_from_the_package(tmp_path: Path) -> None:
    client = _client(tmp_path, enabled=True)
    resp = client.get(f"/viewer/_static/{IGV_ASSET}")
    assert resp.status_code == 200 and resp.content_type.startswith("text/javascript")
    assert hashlib.sha256(resp.data).hexdigest() == IGV_SHA256
    assert IGV_ASSET == "igv-3.8.10.min.js"
    js = client.get("/viewer/_static/viewer.js")
    assert js.status_code == 200 and b"sourceType: \"htsget\"" in js.data
    assert b"https://" not in js.data  # no CDN, no other host


@pytest.mark.parametrize("name", ["views.py", "../views.py", "..%2Fviews.py", "viewer.html",
                                  "igv.min.js", "%2e%2e/__init__.py"])
def test_nothing_else_is_served_as_an_asset(tmp_path: Path, name: str) -> None:
    """A 404, or (a path with `..`) the page shell for that odd ID: never a package file."""
    resp = _client(tmp_path, enabled=True).get(f"/viewer/_static/{name}")
    if resp.status_code == 200:
        assert resp.content_type == "text/html; charset=utf-8"
        assert _config_of(resp.get_data(as_text=True))["id"].startswith("_static/")
        assert b"Blueprint" not in resp.data and b"import" not in resp.data
    else:
        assert resp.status_code == 404


def test_tickets_still_need_their_token(tmp_path: Path) -> None:
    """The page is public; what it shows comes through the ticket endpoints, which keep
    asking for the token (the browser test gives one and sees reads)."""
    from authkit import Key

    cfg = tmp_path / "c.toml"

    key = Key("RSA", "k")
    (tmp_path / "jwt.pub").write_bytes(key.public_pem())
    cfg.write_text(f"""
[viewer]
enabled = true
[auth]
validate_audience = ["a"]
validate_issuer = ["i"]
[auth.jwt]
kind = "public_key"
path = "{tmp_path / 'jwt.pub'}"
[auth.data_urls]
secret = "s"
""")
    client = create_app(load_config(path=str(cfg), env={}, cli={"data_dir": str(tmp_path)})
                        ).test_client()
    assert client.get("/viewer/sample").status_code == 200
    assert client.get("/reads/sample", query_string={"class": "header"}).status_code == 401
