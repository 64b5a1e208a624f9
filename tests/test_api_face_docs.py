"""docs/api.md runs: every ```python block, in order, in one namespace, against the example
data `make serve` generates and a real `htsgetr serve` on it."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Iterator

import pytest
from conftest import ROOT, Server, serve_dir

from htsgetr.examples import generate

DOC = ROOT / "docs" / "api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("notebook")
    generate(work / "example-data", n_reads=4000, n_variants=1500)
    return work


@pytest.fixture(scope="module")
def example_server(example_dir: Path) -> Iterator[Server]:
    yield from serve_dir(example_dir / "example-data")


def test_doc_examples_run(example_dir: Path, example_server: Server,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOC.read_text()
    blocks = BLOCK.findall(text)
    assert len(blocks) >= 5, "docs/api.md lost its examples"
    monkeypatch.chdir(example_dir)
    namespace: dict[str, object] = {"__name__": "docs_api"}
    printed = io.StringIO()
    for i, block in enumerate(blocks):
        code = block.replace("http://127.0.0.1:8080", example_server.url)
        with contextlib.redirect_stdout(printed):
            try:
                exec(compile(code, f"docs/api.md block {i + 1}", "exec"), namespace)
            except Exception as err:  # name the block that failed
                raise AssertionError(f"docs/api.md block {i + 1} failed: {err!r}\n{code}") from err
    out = printed.getvalue()
    assert "400 InvalidRange start (20000) must be less than end (10000)" in out
    assert "format VCF is not served on /reads (BAM, CRAM)" in out
    assert "no readable directory '/no/such/directory'" in out
    assert "HTTP 404 NotFound" in out
    assert os.path.getsize(example_dir / "chr1.bam") > 28
    assert not list(example_dir.glob("nothing.bam*")) and not list(example_dir.glob(".*.part"))
