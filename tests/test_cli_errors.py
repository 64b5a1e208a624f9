"""The command line as a whole: every user mistake is one line on stderr, no traceback,
exit 2 (usage, configuration) or 1 (runtime); broken pipes end quietly; --version,
completion, unknown HTSGET_* variables, --data-dir beside --config, missing roots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import ROOT, Server, free_port

from htsgetr import __version__

HTSGETR = [sys.executable, "-m", "htsgetr"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HTSGET_")}
    return {**env, **extra}


def run(*args: str, env: Optional[dict[str, str]] = None, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([*HTSGETR, *args], capture_output=True, text=True, timeout=120,
                          env=env or clean_env(), **kw)


def one_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exactly `code`, no traceback, one line on stderr naming the problem."""
    err = proc.stderr
    assert "Traceback" not in err, err
    assert proc.returncode == code, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cfg")
    (d / "bad.toml").write_text("this is = = not toml\n")
    (d / "missing_root.toml").write_text('[[locations]]\nroot = "/no/such/root"\n')
    return d


def test_fetch_mistakes(tmp_path: Path) -> None:
    out = str(tmp_path / "x.bam")
    port = free_port()  # nothing listens there
    one_line(run("fetch", "localhost:8080/reads/x", "-o", out), 2, "not an http(s) URL")
    one_line(run("fetch", "ftp://h/reads/x", "-o", out), 2, "not an http(s) URL")
    one_line(run("fetch", f"http://127.0.0.1:{port}/reads/x", "-o", out), 1,
             "connection refused")
    one_line(run("fetch", f"http://127.0.0.1:{port}/reads/x", "-o", out, "-r", "chr1:500-100"),
             2, "chr1:500-100", "start")
    one_line(run("fetch", f"http://127.0.0.1:{port}/reads/x", "-o", out, "--token-file",
                 str(tmp_path / "nope")), 2, "nope", "No such file")
    one_line(run("fetch", f"http://127.0.0.1:{port}/reads/x", "-o",
                 str(tmp_path / "no" / "dir" / "x.bam")), 2, "no such directory")
    one_line(run("fetch", f"http://127.0.0.1:{port}/reads/x", "-o", out, "-H", "nocolon"), 2,
             "nocolon")
    both = run("fetch", "http://h/x", "-o", out, "--token", "a", "--token-file", "b")
    assert both.returncode == 2 and "Traceback" not in both.stderr  # argparse's usage error
    assert list(tmp_path.iterdir()) == []


def test_fetch_htsget_error_and_missing_id(server: Server, tmp_path: Path) -> None:
    line = one_line(run("fetch", f"{server.url}/reads/nope", "-o", str(tmp_path / "n")), 1,
                    "404 NotFound")
    assert "nope" in line
    one_line(run("fetch", f"{server.url}/reads/sample?referenceName=chr1&start=9&end=1",
                 "-o", str(tmp_path / "n")), 1, "400 InvalidRange")
    assert list(tmp_path.iterdir()) == []


def test_config_mistakes(toml: Path, tmp_path: Path) -> None:
    one_line(run("config", "show", "--config", str(toml / "nothere.toml")), 2,
             "nothere.toml", "cannot read")
    one_line(run("config", "check", str(toml / "bad.toml")), 2, "bad.toml", "invalid TOML")
    one_line(run("config", "show", "--set", "nokey"), 2, "KEY=VALUE")
    one_line(run("config", "show", "--set", "ticket_server.prot=1", "--data-dir",
                 str(tmp_path)), 2, "prot")
    one_line(run("serve", "--data-dir", "/no/such/dir", "--port", str(free_port())), 2,
             "/no/such/dir", "no readable directory")
    one_line(run("serve", "--config", str(toml / "missing_root.toml"), "--port",
                 str(free_port())), 2, "/no/such/root", "locations[0]")
    one_line(run("serve", "--config", str(toml / "bad.toml")), 2, "invalid TOML")
    one_line(run("ticket", "reads", "x", "--config", str(toml / "bad.toml")), 2)


def test_ticket_mistakes(data_dir: Path) -> None:
    one_line(run("ticket", "reads", "nope", "--data-dir", str(data_dir)), 1, "NotFound", "nope")
    one_line(run("ticket", "reads", "sample", "--data-dir", str(data_dir), "--reference-name",
                 "chr1", "--start", "9", "--end", "1"), 2, "InvalidRange")
    one_line(run("ticket", "reads", "sample", "--data-dir", str(data_dir), "--format", "VCF"),
             2, "UnsupportedFormat")
    bad = run("ticket", "nowhere", "x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "invalid choice" in bad.stderr


@pytest.mark.parametrize("args", [
    ["config", "default"],
    ["ticket", "reads", "sample", "--reference-name", "chr1"],
    ["fetch", "-o", "-", "{server}/reads/sample"],
])
def test_broken_pipe_is_quiet(args: list[str], server: Server, data_dir: Path) -> None:
    """stdout closed before the command writes (`... | head -1` with a fast head)."""
    args = [a.replace("{server}", server.url) for a in args]
    if args[0] == "ticket":
        args += ["--data-dir", str(data_dir)]
    proc = subprocess.Popen([*HTSGETR, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=clean_env())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(120)
    assert err == "" and proc.returncode == 1, (proc.returncode, err)


def test_pipe_into_head(data_dir: Path) -> None:
    """As a shell runs it: the first line, and nothing on stderr."""
    cmd = " ".join([*HTSGETR, "config", "show", "--data-dir", str(data_dir)]) + " | head -1"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60,
                          env=clean_env())
    assert proc.stdout.count("\n") == 1 and proc.stderr == "", proc.stderr


def test_version_help_and_no_command() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"htsgetr {__version__}"
    proc = run()
    assert proc.returncode == 2 and "fetch" in proc.stderr and "Traceback" not in proc.stderr


def test_shell_completion(tmp_path: Path) -> None:
    script = run("completion", "bash")
    assert script.returncode == 0 and "complete" in script.stdout and "htsgetr" in script.stdout
    answers = tmp_path / "answers"
    for line, want in (("htsgetr fe", {"fetch"}), ("htsgetr fetch --tok", {"--token",
                                                                          "--token-file"}),
                       ("htsgetr config ", {"check", "show", "default"})):
        env = clean_env(_ARGCOMPLETE="1", _ARGCOMPLETE_SHELL="bash", COMP_LINE=line,
                        COMP_POINT=str(len(line)), _ARGCOMPLETE_STDOUT_FILENAME=str(answers))
        proc = run(env=env)
        assert proc.returncode == 0, proc.stderr
        got = {w.strip() for w in answers.read_text().replace("\v", " ").split()}
        assert want <= got, (line, got)


def test_unknown_variable_is_reported_with_a_suggestion(data_dir: Path) -> None:
    env = clean_env(HTSGET_TICKET_SERVER_PROT="9000", HTSGET_DATA_DIR=str(data_dir),
                    HTSGET_NO_SUCH_THING="1")
    proc = run("config", "show", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert ("htsgetr: warning: HTSGET_TICKET_SERVER_PROT is not an htsgetr variable (did you "
            "mean HTSGET_TICKET_SERVER_PORT?); ignored") in lines
    assert any(line.startswith("htsgetr: warning: HTSGET_NO_SUCH_THING is not") and
               "did you mean" not in line for line in lines)
    # the known ones stay silent
    quiet = run("config", "show", env=clean_env(HTSGET_TICKET_SERVER_PORT="9000",
                                                HTSGET_DATA_DIR=str(data_dir),
                                                HTSGET_DATA_URL_SECRET="x"))
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_data_dir_beside_config_adds_a_location(data_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "alt.bam").write_bytes((data_dir / "sample.bam").read_bytes())
    (other / "alt.bam.bai").write_bytes((data_dir / "sample.bam.bai").read_bytes())
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[locations]]\nregex = "^cohort/(.*)$"\nroot = "{other}"\n')
    both = ["--config", str(cfg), "--data-dir", str(data_dir)]
    shown = run("config", "show", *both)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert shown.stdout.count("[[locations]]") == 2
    assert shown.stdout.index(str(other)) < shown.stdout.index(str(data_dir))
    for id in ("cohort/alt", "sample"):  # one from the file's location, one from --data-dir
        proc = run("ticket", "reads", id, *both)
        assert proc.returncode == 0, proc.stderr
    # a file location that takes every ID first: the added one is never reached, and said so
    cfg.write_text(f'[[locations]]\nroot = "{other}"\n')
    proc = run("config", "show", *both)
    assert proc.returncode == 0 and "never reached" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_module_and_installed_command_agree() -> None:
    exe = ROOT / ".venv" / "bin" / "htsgetr"
    if not exe.exists():
        pytest.skip("no .venv/bin/htsgetr (not installed by make)")
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"htsgetr {__version__}"


def test_example_data_is_made_quietly(tmp_path: Path) -> None:
    """`make serve`'s example data: no htslib error or warning on the way (the CRAM is
    written without a reference), and every example ID has its files."""
    proc = subprocess.run([sys.executable, "-m", "htsgetr.examples", str(tmp_path / "ex")],
                          capture_output=True, text=True, timeout=300, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert "[E::" not in proc.stderr and "[W::" not in proc.stderr, proc.stderr
    names = sorted(p.name for p in (tmp_path / "ex").iterdir())
    for name in ("example.bam", "example.bam.bai", "example.cram", "example.cram.crai",
                 "example.vcf.gz", "example.vcf.gz.tbi", "example.bcf", "example.fa"):
        assert name in names
    view = subprocess.run(["samtools", "view", "-c", str(tmp_path / "ex" / "example.cram")],
                          capture_output=True, text=True, timeout=60)
    assert view.returncode == 0 and int(view.stdout) > 0 and "[E::" not in view.stderr


def test_serve_refuses_a_busy_port_and_bad_tls(data_dir: Path, tmp_path: Path,
                                               cert: tuple[Path, Path]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_line(run("serve", "--data-dir", str(data_dir), "--port", str(port)), 1,
                 f"127.0.0.1:{port}", "in use")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    port = free_port()
    one_line(run("serve", "--data-dir", str(data_dir), "--port", str(port), "--tls-cert",
                 str(tmp_path / "none.pem"), "--tls-key", str(bad)), 2, "none.pem", "tls_cert")
    one_line(run("serve", "--data-dir", str(data_dir), "--port", str(port), "--tls-cert",
                 str(bad), "--tls-key", str(bad)), 2, "tls_cert")
    crt, key = cert
    one_line(run("config", "show", "--data-dir", str(data_dir), "--tls-cert", str(crt),
                 "--tls-key", str(crt)), 2, "tls_cert")  # a key that is not the key
    ok = run("config", "show", "--data-dir", str(data_dir), "--tls-cert", str(crt),
             "--tls-key", str(key))
    assert ok.returncode == 0, ok.stderr


def test_every_variable_the_code_reads_is_known() -> None:
    """An HTSGET_* name spelt in the package is never reported as unknown (a feature that
    reads its own variable must list it in config.OTHER_ENV), and README names each."""
    import re

    from htsgetr.config import unknown_env

    names = set()
    for path in (ROOT / "htsgetr").rglob("*.py"):
        names |= set(re.findall(r"[\"'](HTSGET_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text()))
    assert {"HTSGET_CONFIG", "HTSGET_DATA_DIR", "HTSGET_DATA_URL_SECRET"} <= names
    assert unknown_env({n: "1" for n in names}) == []
    readme = (ROOT / "README.md").read_text()
    for name in sorted(names):
        assert name in readme, f"README does not name {name}"
    assert unknown_env({"HTSGET_TICKET_SERVER_PROT": "1"}) == [
        "HTSGET_TICKET_SERVER_PROT is not an htsgetr variable (did you mean "
        "HTSGET_TICKET_SERVER_PORT?); ignored"]
