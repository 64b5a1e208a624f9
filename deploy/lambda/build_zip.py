"""`make lambda-zip`: a deployment package for the AWS Lambda Python 3.11 runtime (x86_64).

    python deploy/lambda/build_zip.py [--config FILE] [--output build/htsgetr-lambda.zip]

What the zip assumes, and this script checks:
- the runtime is python3.11 on x86_64 (Amazon Linux 2, glibc 2.26): the dependencies are
  binary wheels for manylinux2014 / manylinux_2_24 / _2_26 x86_64, CPython 3.11 (pip `--platform
  ... --only-binary=:all:`); dependencies published only as source are built here as
  wheels and must be pure Python (py3-none-any), else the build stops;
- htsgetr's own Cython extensions are the ones built in place (`make build`) by this
  machine's CPython 3.11 (the file names say cpython-311-x86_64-linux-gnu) and need no
  glibc symbol newer than 2.26 (checked with objdump when it is installed);
- the handlers are htsgetr.aws_lambda.ticket_handler and htsgetr.aws_lambda.data_handler;
  a configuration given with --config goes in as htsgetr.toml (what the functions read
  when HTSGET_CONFIG is unset), else the functions need HTSGET_STORAGE or HTSGET_CONFIG.
- unzipped it must stay under Lambda's 250 MB (checked).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_26_x86_64"]
PYTHON = "3.11"
EXT_SUFFIX = ".cpython-311-x86_64-linux-gnu.so"
MAX_GLIBC = (2, 26)
MAX_UNZIPPED = 250 * 1024 * 1024
#: the `lambda` extra, if pyproject.toml has none
EXTRA = ["apig-wsgi>=2"]
#: server-only dependencies left out: gevent is gunicorn's worker class, imported only by
#: `htsgetr serve` (its wheels need glibc 2.28). The rest stay, needed or small and pure.
SERVER_ONLY = {"gevent"}
PACKAGE_FILES = ("*.py", "*.pyi", "py.typed", f"*{EXT_SUFFIX}")


def requirements() -> list[str]:
    """htsgetr's runtime dependencies (pyproject.toml) and the `lambda` extra, pinned to
    the versions installed here: the zip runs what the tests ran."""
    from importlib.metadata import PackageNotFoundError, version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [r for r in project["dependencies"] if "python_version < " not in r]
    reqs += list(project.get("optional-dependencies", {}).get("lambda", EXTRA))
    pinned = []
    for req in reqs:
        name = re.match(r"[A-Za-z0-9_.\-]+", req.split(";")[0].strip())
        assert name is not None, req
        if name.group(0).lower() in SERVER_ONLY:
            continue
        try:
            pinned.append(f"{name.group(0)}=={version(name.group(0))}")
        except PackageNotFoundError:
            pinned.append(req)
    return pinned


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True,
                          text=True)


def binary_args() -> list[str]:
    out = ["--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON,
           "--abi", "cp311"]
    for platform in PLATFORMS:
        out += ["--platform", platform]
    return out


def pure_wheel(requirement: str, wheels: Path) -> None:
    """Build a dependency published only as source; refuse it unless pure Python."""
    before = set(wheels.glob("*.whl"))
    out = pip("wheel", "--no-deps", "-q", "-w", str(wheels), requirement)
    if out.returncode != 0:
        raise SystemExit(f"cannot build {requirement}: {out.stderr[-2000:]}")
    for wheel in set(wheels.glob("*.whl")) - before:
        if not wheel.name.endswith("-none-any.whl"):
            raise SystemExit(f"{wheel.name}: no wheel for {PLATFORMS} exists and the one built"
                             " here is not pure Python")
        print(f"built pure-Python wheel {wheel.name}")


def install_dependencies(target: Path, wheels: Path) -> None:
    reqs = requirements()
    for req in reqs:  # top-level dependencies with no binary wheel for the platform
        out = pip("download", "--no-deps", "-q", "-d", str(wheels), *binary_args(), req)
        if out.returncode != 0:
            pure_wheel(req, wheels)
    for _ in range(5):  # and transitive ones, named by pip's resolver
        out = pip("install", "-q", "--target", str(target), "--find-links", str(wheels),
                  "--upgrade", *binary_args(), *reqs)
        if out.returncode == 0:
            return
        missing = set(re.findall(r"No matching distribution found for ([A-Za-z0-9_.\-]+)",
                                 out.stderr))
        block = re.search(r"no matching distributions available for your environment:"
                          r"((?:\n {4}\S+)+)", out.stderr)
        if block:
            missing |= set(block.group(1).split())
        if not missing:
            raise SystemExit(out.stderr[-3000:])
        for name in sorted(missing):
            pure_wheel(name, wheels)
    raise SystemExit(out.stderr[-3000:])


def glibc_needed(path: Path) -> tuple[int, ...]:
    objdump = shutil.which("objdump")
    if objdump is None:
        return ()
    text = subprocess.run([objdump, "-T", str(path)], capture_output=True, text=True).stdout
    versions = [tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)", text)]
    return max(versions, default=())


def copy_package(target: Path) -> None:
    source = ROOT / "htsgetr"
    if sysconfig.get_config_var("EXT_SUFFIX") != EXT_SUFFIX:
        raise SystemExit(f"build with CPython {PYTHON} on x86_64 Linux (the Lambda runtime):"
                         f" this is {sysconfig.get_config_var('EXT_SUFFIX')}")
    extensions = sorted(source.glob(f"*{EXT_SUFFIX}"))
    if len(extensions) < 2:
        raise SystemExit("the Cython extensions are not built: run `make build` first")
    for ext in extensions:
        need = glibc_needed(ext)
        if need and need > MAX_GLIBC:
            raise SystemExit(f"{ext.name} needs glibc {'.'.join(map(str, need))}: more than"
                             " Lambda's python3.11 runtime has (2.26)")
    dest = target / "htsgetr"
    if dest.exists():
        shutil.rmtree(dest)
    for directory, _, _ in os.walk(source):
        rel = Path(directory).relative_to(source)
        if "__pycache__" in rel.parts:
            continue
        for pattern in PACKAGE_FILES:
            for path in Path(directory).glob(pattern):
                (dest / rel).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest / rel / path.name)


def write_zip(target: Path, output: Path) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    tmp = output.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(target.rglob("*")):
            rel = path.relative_to(target)
            if path.is_dir() or "__pycache__" in rel.parts or rel.parts[0] == "bin":
                continue
            info = zipfile.ZipInfo(str(rel), date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = path.read_bytes()
            total += len(data)
            zf.writestr(info, data)
    if total > MAX_UNZIPPED:
        tmp.unlink()
        raise SystemExit(f"{total / 2**20:.0f} MB unzipped: over Lambda's 250 MB")
    tmp.replace(output)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="bundle this TOML file as htsgetr.toml")
    parser.add_argument("--output", default=str(ROOT / "build" / "htsgetr-lambda.zip"))
    parser.add_argument("--work", default=str(ROOT / "build" / "lambda"),
                        help="staging directory (dependencies are reused between builds)")
    args = parser.parse_args()
    work = Path(args.work)
    target, wheels = work / "package", work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    install_dependencies(target, wheels)
    copy_package(target)
    bundled = target / "htsgetr.toml"
    if args.config:
        shutil.copy2(args.config, bundled)
    elif bundled.exists():
        bundled.unlink()
    with tempfile.TemporaryDirectory():
        total = write_zip(target, Path(args.output))
    size = Path(args.output).stat().st_size
    print(f"{args.output}: {size / 2**20:.1f} MB zipped, {total / 2**20:.1f} MB unzipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
