"""`pip install .` builds the extension and the installed `htsgetr serve` works outside the tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import requests
from conftest import ROOT, free_port, reassemble, wait_for


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    prefix = tmp_path_factory.mktemp("prefix")
    src = tmp_path_factory.mktemp("src") / "htsgetr"
    # build from a clean copy so in-tree build products cannot leak into the install
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.so", "_ranges.c", "_records.c", "__pycache__", "*.egg-info",
        "example-data", ".*_cache", ".hypothesis"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--ignore-installed",  # never uninstall the developer's own (editable) install
         "--prefix", str(prefix), str(src)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    site = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    env = {**os.environ, "PYTHONPATH": site}
    return prefix, env


def test_version_and_extension(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    prefix, env = installed
    out = subprocess.run([str(prefix / "bin" / "htsgetr"), "--version"], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("htsgetr ")
    code = "import htsgetr, htsgetr._ranges as r; print(htsgetr.__file__, r.__file__)"
    out = subprocess.run([sys.executable, "-c", code],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(prefix) in out.stdout and str(ROOT / "htsgetr") not in out.stdout
    # nginx-direct's verifiers, which `htsgetr config nginx` / `config nginx-module` read
    api = Path(env["PYTHONPATH"]) / "htsgetr" / "api"
    for name in ("nginx_direct.js", "nginx_direct.pm", "nginx_module/config",
                 "nginx_module/build.sh", "nginx_module/ngx_http_htsgetr_direct_module.c"):
        assert (api / name).is_file(), name


def test_installed_serve(installed: tuple[Path, dict[str, str]], data_dir: Path,
                         tmp_path: Path) -> None:
    prefix, env = installed
    port = free_port()
    proc = subprocess.Popen([str(prefix / "bin" / "htsgetr"), "serve", "--data-dir", str(data_dir),
                             "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/service-info", proc)
        t = requests.get(f"http://127.0.0.1:{port}/reads/sample?referenceName=chr1&end=5000",
                         timeout=10).json()
        payload = reassemble(t)
        assert payload[:4] == b"\x1f\x8b\x08\x04" and len(payload) > 1000
        pm = subprocess.run([sys.executable, "-m", "htsgetr", "--version"], capture_output=True,
                            text=True, env=env, cwd=tmp_path)
        assert pm.returncode == 0 and "htsgetr" in pm.stdout
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(15)


def test_plain_gunicorn_wsgi_app(data_dir: Path, tmp_path: Path) -> None:
    """`gunicorn htsgetr.wsgi:app` with configuration from the environment."""
    port = free_port()
    env = {**os.environ, "HTSGET_DATA_DIR": str(data_dir), "HTSGET_PORT": str(port),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "2", "-b",
                             f"127.0.0.1:{port}", "htsgetr.wsgi:app"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/service-info", proc)
        t = requests.get(f"http://127.0.0.1:{port}/variants/calls?referenceName=2&start=0&end=5000",
                         timeout=10).json()
        assert all(u["url"].startswith(("data:", f"http://127.0.0.1:{port}/data/"))
                   for u in t["htsget"]["urls"])
        payload = reassemble(t)
        assert payload[:2] == b"\x1f\x8b" and len(payload) > 28
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(15)
