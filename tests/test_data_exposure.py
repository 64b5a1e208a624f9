"""/data serves only what a ticket can name, and each ticket url leads back to the file the
engine located (issue 9).

Secrets are planted where a working escape would find them: a file OUTSIDE the root (and
symlinks in the root to it and to its folder), a dotfile, `.ssh/id_rsa`, a server config
`htsget.toml`, files of other extensions, a data-named file in a hidden folder, a data file no
ID can reach. Every secret holds the same random marker; the tests assert that the marker's
bytes appear in no response (status codes alone would also pass a traversal that happens to
miss), through the Flask test client and, for paths a client library would normalise, raw
HTTP to a real gunicorn.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import quote, urlsplit

import pytest
from conftest import Server, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htsgetr.app import create_app
from htsgetr.config import Config, LocationConfig, for_data_dir
from htsgetr.engine import Htsget
from htsgetr.protocol import Format, NotFound
from htsgetr.storage.local import LocalStorage
from htsgetr.storage.resolver import Resolver, stem_pattern, substitute

MARKER = ("SECRET-" + secrets.token_hex(16)).encode()
SCALE = 20 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 1


# --------------------------------------------------------------------------- the planted tree


@pytest.fixture(scope="module")
def tree(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """root/ (served) next to outside/ (not): real data files, and secrets all around."""
    base = tmp_path_factory.mktemp("exposure")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    for name in ("sample.bam", "sample.bam.bai", "calls.vcf.gz", "calls.vcf.gz.tbi"):
        shutil.copy(data_dir / name, root / name)
    (root / "ref.fa").write_bytes(b">chr1\nACGTACGTAC\n")
    (root / "ref.fa.fai").write_bytes(b"chr1\t10\t6\t10\t11\n")
    (root / "cohort").mkdir()
    shutil.copy(data_dir / "sample.bam", root / "cohort" / "s1.bam")
    secret = MARKER + b"\n-----BEGIN OPENSSH PRIVATE KEY-----\n"
    # outside the root: the file, a data-named copy, and a folder of them
    for name in ("secret.txt", "secret.bam", "secret.fa"):
        (outside / name).write_bytes(secret)
    # inside the root
    plant = {
        ".hidden.bam": secret, ".env": secret, ".ssh/id_rsa": secret, ".ssh/key.bam": secret,
        ".git/config": secret, "cohort/.private.fa": secret, ".private/x.fa": secret,
        "htsget.toml": b"[auth]\nsecret = '" + secret + b"'\n", "notes.txt": secret,
        "data.bin": secret, "sample.bam.md5": secret, "SECRET.BAM": secret, "trail.bam.": secret,
        "x.bam.txt": secret, "x.fa~": secret, "x.fa.bak": secret, "x.fa.orig.swp": secret,
        "~root/.ssh/id_rsa": secret, "~0/.ssh/id_rsa": secret, "hidden.fa/.secret": secret,
        "back\\slash.fa": secret, "nul.fa.toml": secret,
    }
    for rel, content in plant.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    os.symlink(outside / "secret.bam", root / "escape.bam")  # a data name, leading out
    os.symlink(outside / "secret.fa", root / "escape.fa")
    os.symlink(outside, root / "outdir")  # a folder leading out
    os.symlink(root / "htsget.toml", root / "inside.fa")  # data name -> config, inside
    os.symlink(root / ".ssh" / "id_rsa", root / "key.fa")  # data name -> hidden file
    os.symlink(root / "loop.fa", root / "loop.fa")  # a symlink loop
    return {"root": root, "outside": outside, "base": base}


def assert_clean(resp: Any, *allowed: int) -> bytes:
    body = resp.get_data()
    assert MARKER not in body, (resp.status_code, body[:200])
    for value in resp.headers.values():
        assert MARKER.decode() not in value
    if allowed:
        assert resp.status_code in allowed, (resp.status_code, body[:300])
    return bytes(body)


def data_bytes(client: Any, block: dict[str, Any]) -> bytes:
    """The bytes of one ticket url, fetched through the Flask test client."""
    url = block["url"]
    if url.startswith("data:"):
        return base64.b64decode(url.split(",", 1)[1])
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    resp = client.get(path, headers=block.get("headers", {}))
    body = assert_clean(resp, 200, 206)
    return body


def ticket_bytes(client: Any, endpoint: str, id: str) -> Optional[bytes]:
    """The reassembled payload of a ticket for `id`, or None when there is no ticket."""
    resp = client.get(f"/{endpoint}/{id}")
    assert_clean(resp, 200, 400, 404, 500)
    if resp.status_code != 200:
        return None
    return b"".join(data_bytes(client, b) for b in resp.get_json()["htsget"]["urls"])


# --------------------------------------------------------------------------- /data tricks

#: paths after "/data/", as a client would put them on the request line (percent-encoded
#: where an encoding is the trick): traversal, encodings, mounts, hidden parts, other
#: extensions, case and trailing-dot games, unicode look-alikes, NUL, backslashes
TRICKS = [
    "../outside/secret.bam", "..%2Foutside%2Fsecret.bam", "%2E%2E/outside/secret.bam",
    "%2e%2e%2foutside%2fsecret.bam", "%252e%252e%252foutside%252fsecret.bam",
    "..%252Foutside%252Fsecret.bam", "..%5Coutside%5Csecret.bam", "cohort/../../outside/secret.bam",
    "cohort%2F..%2F..%2Foutside%2Fsecret.bam", "%2F" + quote(""), "%2Fetc%2Fpasswd",
    "escape.bam", "escape.fa", "outdir/secret.bam", "outdir/secret.fa", "outdir%2Fsecret.fa",
    "inside.fa", "key.fa", "loop.fa", ".hidden.bam", "%2Ehidden.bam", ".env", ".ssh/id_rsa",
    ".ssh/key.bam", "%2Essh%2Fkey.bam", ".git/config", "cohort/.private.fa", ".private/x.fa",
    "cohort/./s1.bam/../.private.fa", "./htsget.toml", "htsget.toml", "HTSGET.TOML",
    "htsget.toml.", "htsget.toml/", "htsget.toml%00.bam", "htsget.toml%00", "nul.fa.toml",
    "notes.txt", "data.bin", "sample.bam.md5", "SECRET.BAM", "trail.bam.", "trail.bam",
    "x.bam.txt", "x.fa~", "x.fa.bak", "x.fa.orig.swp", "back%5Cslash.fa", "back\\slash.fa",
    "~root/.ssh/id_rsa", "~/.ssh/id_rsa", "~0/.ssh/id_rsa", "~0/~0/.ssh/id_rsa",
    "%7E0/.ssh/id_rsa", "~0/htsget.toml", "~0/../outside/secret.bam", "~1/htsget.toml",
    "~0/.hidden.bam", "hidden.fa/.secret", "%EF%BD%88tsget.toml", "htsget%E2%80%A4toml",
    "h%CC%A7tsget.toml", "sample.bam/../htsget.toml", "sample.bam%2F..%2Fhtsget.toml",
    "cohort//s1.bam/../../htsget.toml", "ref.fa%00", "ref.fa%00.txt", "ref.fa/",
]


def test_data_serves_data_files(tree: dict[str, Path]) -> None:
    client = create_app(for_data_dir(str(tree["root"]))).test_client()
    for path in ("sample.bam", "sample.bam.bai", "calls.vcf.gz", "calls.vcf.gz.tbi", "ref.fa",
                 "ref.fa.fai", "cohort/s1.bam"):
        resp = client.get(f"/data/{path}", headers={"Range": "bytes=0-9"})
        assert resp.status_code == 206, path
        assert resp.get_data() == (tree["root"] / path).read_bytes()[:10]
        assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", TRICKS)
def test_data_tricks_get_no_secret(tree: dict[str, Path], path: str) -> None:
    client = create_app(for_data_dir(str(tree["root"]))).test_client()
    for method in (client.get, client.head):
        for headers in ({}, {"Range": "bytes=0-"}, {"Range": "bytes=-100"}):
            resp = method(f"/data/{path}", headers=headers)
            assert_clean(resp, 404, 400, 308)
            if resp.status_code == 404 and method == client.get:
                assert resp.get_json()["htsget"]["error"] == "NotFound"
                assert resp.headers["Cache-Control"] == "no-store"


def test_location_with_no_data_files_serves_nothing(tree: dict[str, Path]) -> None:
    """`htsgetr serve` with no location serves the working directory: a folder holding only
    the config, keys and notes yields nothing, not even a 200 for a directory."""
    empty = tree["base"] / "workdir"
    empty.mkdir(exist_ok=True)
    (empty / "htsget.toml").write_bytes(MARKER)
    (empty / ".ssh").mkdir(exist_ok=True)
    (empty / ".ssh" / "id_rsa").write_bytes(MARKER)
    (empty / "run.log").write_bytes(MARKER)
    client = create_app(for_data_dir(str(empty))).test_client()
    for path in ("htsget.toml", ".ssh/id_rsa", "run.log", "", ".", "~0/htsget.toml", ".ssh"):
        assert_clean(client.get(f"/data/{path}"), 404, 308)
    for endpoint, id in (("reads", "htsget"), ("sequences", "run"), ("reads", ".ssh/id_rsa")):
        assert ticket_bytes(client, endpoint, id) is None


def test_tickets_name_no_secret(tree: dict[str, Path]) -> None:
    """IDs that lead (or would lead, by traversal) to a secret: no ticket, or a ticket whose
    every url serves data bytes only."""
    client = create_app(for_data_dir(str(tree["root"]))).test_client()
    ids = ["escape", "outdir/secret", "inside", "key", "loop", ".hidden", ".ssh/key", ".ssh/id_rsa",
           "cohort/.private", ".private/x", "..%2Foutside%2Fsecret", "%2E%2E/outside/secret",
           "cohort/../escape", "htsget", "htsget.toml", "notes", "SECRET", "trail.bam",
           "~0/.ssh/id_rsa", "~root/.ssh/id_rsa", "hidden.fa/.secret", "back%5Cslash",
           "ref%00", "outdir%2Fsecret", "%252e%252e%252foutside%252fsecret"]
    for endpoint in ("reads", "variants", "sequences"):
        for id in ids:
            for suffix in ("", "?class=header", "?referenceName=chr1"):
                resp = client.get(f"/{endpoint}/{id}{suffix}")
                assert_clean(resp, 200, 400, 404, 500)
                if resp.status_code == 200:  # e.g. inside.fa: the ticket's url is refused
                    for block in resp.get_json()["htsget"]["urls"]:
                        url = block["url"]
                        if url.startswith("data:"):
                            assert MARKER not in base64.b64decode(url.split(",", 1)[1])
                        else:
                            got = client.get(urlsplit(url).path, headers=block.get("headers"))
                            assert_clean(got, 404)
    # hidden keys are not even located: no ticket whose url would then be refused
    for id in (".private/x", "cohort/.private", "hidden.fa/.secret"):
        assert_clean(client.get(f"/sequences/{id}"), 404)
    # the real files still work
    assert ticket_bytes(client, "reads", "sample") == (tree["root"] / "sample.bam").read_bytes()
    assert ticket_bytes(client, "sequences", "ref") == b">chr1\nACGTACGTAC\n"


def test_symlink_escapes_fail_for_the_right_reason(tree: dict[str, Path]) -> None:
    """The escape targets exist and hold the marker: a 404 is the guard, not a missing file."""
    root = tree["root"]
    for link in ("escape.bam", "escape.fa", "outdir/secret.fa", "inside.fa", "key.fa"):
        assert MARKER in (root / link).read_bytes(), link
    assert MARKER in (tree["outside"] / "secret.bam").read_bytes()


# --------------------------------------------------------------------------- the resolver


def only(regex: str, substitution: str, root: Path, **kw: Any) -> Any:
    config = Config(locations=[LocationConfig(regex=regex, substitution=substitution,
                                              root=str(root), **kw)])
    return create_app(config).test_client()


def test_only_keys_the_location_can_produce(tree: dict[str, Path]) -> None:
    """A data file beside the ones a location maps to is still not servable when no ID can
    produce its key."""
    root = tree["base"] / "produce"
    for rel in ("A/x.bam", "B/secret.bam", "bams/abc.bam", "bams/ABC1.bam", "top.bam"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        secret = "secret" in rel or "1" in rel
        (root / rel).write_bytes(MARKER if secret else b"data " + rel.encode())
    client = only("^cohortA/(.*)$", "A/$1", root)
    assert client.get("/data/A/x.bam").get_data() == b"data A/x.bam"
    for path in ("B/secret.bam", "top.bam", "bams/ABC1.bam", "A/../B/secret.bam"):
        assert_clean(client.get(f"/data/{path}"), 404)
    named = only("^(?P<s>[a-z]+)$", "bams/${s}", root)
    assert named.get("/data/bams/abc.bam").status_code == 200
    assert_clean(named.get("/data/bams/ABC1.bam"), 404)
    assert_clean(named.get("/data/B/secret.bam"), 404)
    caseless = only("(?i)^([a-z]+)$", "bams/$1", root)
    assert caseless.get("/data/bams/abc.bam").status_code == 200
    assert_clean(caseless.get("/data/bams/ABC1.bam"), 404)  # the digit: no ID gives it
    # formats restrict too: a VCF-only location serves no BAM
    vcf_only = only("(.*)", "$1", root, formats=["VCF"])
    assert_clean(vcf_only.get("/data/top.bam"), 404)


REGEXES = [
    ("(.*)", "$1"), ("^cohort/(.*)$", "c/$1"), ("^(?P<a>[a-z]+)/(?P<b>[0-9]+)$", "${b}/${a}"),
    ("(?i)^([a-z]+)-(x|y)?$", "$1$2/$$"), ("^([^/]+)/(.+)$", "$2_$1"), (r"^(\w+)\.(\d+)$", "$2/$1"),
    (r"^(a+)(?=b)(b*)$", "$1.$2"), (r"^(?:pre-)?(.+?)(-v\d+)?$", "$1"), (r"^(a|b)\1(c)$", "$2"),
    ("(?x) ^ ( [a-z]+ ) $", "v/$1"), ("^(.)(.)?$", "$2$1$0"), ("^([^/]+)$", "[$1]"),
]


@given(st.sampled_from(REGEXES), st.text(alphabet="abcxyABC0123-./_\\é", max_size=12))
@settings(max_examples=400 * SCALE, deadline=None)
def test_stem_pattern_admits_every_key_the_location_gives(
    rule: tuple[str, str], id: str
) -> None:
    """Soundness of `stem_pattern`: whatever key a location produces for an ID, the pattern
    admits (it may admit more, never less)."""
    regex, substitution = rule
    location = LocationConfig(regex=regex, substitution=substitution, root="/r")
    m = re.compile(regex).fullmatch(id)
    if m is not None:
        assert stem_pattern(location).fullmatch(substitute(substitution, m)), (id, regex)


# --------------------------------------------------------------------------- S3 / url backends


class FakeRemote:
    """A backend that would hand out any key it is asked for (as an upstream or a bucket
    under a prefix would), recording the keys it puts in ticket urls."""

    name = "fake"

    def __init__(self, mode: str, mount: str) -> None:
        self.mode, self.mount = mode, mount
        self.objects = {"sample.fa": b">s\nACGT\n", "htsget.toml": MARKER, ".env": MARKER,
                        "notes.txt": MARKER, "sample.fa.md5": MARKER, ".hidden.fa": MARKER}
        self.urls: list[str] = []

    def exists(self, key: str) -> bool:
        return key in self.objects

    def size(self, key: str) -> int:
        if key not in self.objects:
            raise NotFound(key)
        return len(self.objects[key])

    def version(self, key: str) -> str:
        return "1"

    def read(self, key: str, start: int, end: int) -> bytes:
        return self.objects[key][start:end]

    def stream(self, key: str, start: int, end: int) -> Iterator[bytes]:
        return iter([self.objects[key][start:end]])

    def block_url(self, key: str, start: int, end: int) -> tuple[str, dict[str, str]]:
        self.urls.append(key)
        if self.mode == "proxy":
            from htsgetr.storage.local import mount_path

            return "http://localhost/data/" + quote(mount_path(self.mount, key)), {}
        return f"https://bucket.example/{quote(key)}?X-Amz-Signature=x", {}


def remote_app(backend: str, mode: str) -> tuple[Any, FakeRemote]:
    loc = LocationConfig(name="up", backend=backend, mode=mode, url="http://up.example/",
                         bucket="bucket")
    config = Config(locations=[loc])
    made: list[FakeRemote] = []

    def factory(location: LocationConfig, mount: str, cfg: Config) -> Any:
        made.append(FakeRemote(mode, mount))
        return made[-1]

    engine = Htsget(config, Resolver(config, factory))
    return create_app(config, engine=engine).test_client(), made[0]


@pytest.mark.parametrize("backend,mode", [("url", "proxy"), ("s3", "proxy")])
def test_proxied_backends_serve_data_files_only(backend: str, mode: str) -> None:
    client, _ = remote_app(backend, mode)
    assert client.get("/data/~up/sample.fa").get_data() == b">s\nACGT\n"
    for path in ("htsget.toml", ".env", "notes.txt", "sample.fa.md5", ".hidden.fa",
                 "x/../htsget.toml", "%2Eenv", "~0/sample.fa", "~up/htsget.toml"):
        assert_clean(client.get(f"/data/~up/{path}"), 404, 308)
        assert_clean(client.get(f"/data/{path}"), 404, 308)


@pytest.mark.parametrize("backend,mode", [("url", "redirect"), ("s3", "presigned")])
def test_redirected_backends_serve_nothing_here_and_sign_data_keys_only(
    backend: str, mode: str
) -> None:
    """Tickets of these point at the store itself: /data serves none of their keys, and the
    engine only ever signs (presigns) keys of data files."""
    client, remote = remote_app(backend, mode)
    assert_clean(client.get("/data/~up/sample.fa"), 404)
    for id in ("sample", "htsget.toml", "htsget", ".env", ".hidden", "notes.txt", "sample.fa"):
        assert_clean(client.get(f"/sequences/{id}"), 200, 404)
    assert remote.urls == ["sample.fa"]
    fmt_exts = {e for h in Htsget(Config()).handlers.values() for e in h.extensions}
    assert all(k.endswith(tuple(fmt_exts)) for k in remote.urls)


# --------------------------------------------------------------------------- mounts


SEGMENTS = ["x", "y", "~a", "~b", "~0", "~1", "~2", "a", "~", "sub"]


@st.composite
def layouts(draw: Any) -> dict[str, Any]:
    """Locations (random names or none, separate or nested roots, a few regex shapes) and
    files in their roots, many in folders named like another location's mount."""
    n = draw(st.integers(1, 4))
    names = draw(st.lists(st.sampled_from([None, None, "a", "b", "x", "sub"]), min_size=n,
                          max_size=n))
    seen: set[str] = set()
    names = [None if (nm in seen or seen.add(nm)) and nm is not None else nm  # type: ignore[func-returns-value]
             for nm in names]
    rules = draw(st.lists(st.sampled_from([("(.*)", "$1"), ("^[^/]+/(.*)$", "$1"),
                                           ("(.*)", "~a/$1"), ("^(.*)$", "sub/$1")]),
                          min_size=n, max_size=n))
    parents = [None] + [draw(st.one_of(st.none(), st.integers(0, i - 1))) for i in range(1, n)]
    nest = [draw(st.sampled_from(SEGMENTS[:7] + ["sub"])) for _ in range(n)]
    falls = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    files = draw(st.lists(
        st.tuples(st.integers(0, n - 1), st.lists(st.sampled_from(SEGMENTS), min_size=1,
                                                  max_size=3)),
        min_size=1, max_size=12))
    return {"names": names, "rules": rules, "parents": parents, "nest": nest, "falls": falls,
            "files": files}


def build_layout(base: Path, layout: dict[str, Any]) -> tuple[Config, list[str]]:
    roots: list[Path] = []
    for i, parent in enumerate(layout["parents"]):
        root = base / f"r{i}" if parent is None else roots[parent] / layout["nest"][i]
        root.mkdir(parents=True, exist_ok=True)
        roots.append(root)
    ids: set[str] = set()
    for n, (i, segments) in enumerate(layout["files"]):
        rel = "/".join(segments)
        path = roots[i] / (rel + ".fa")
        if path.is_dir() or any(p.is_file() for p in path.parents):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f">f{n}\n{i}:{rel}:{os.urandom(4).hex()}\n".encode())
        ids.update({rel, "p/" + rel, segments[-1]})
        if len(segments) > 1:
            ids.add("/".join(segments[1:]))
    locations = [
        LocationConfig(name=name, regex=rule[0], substitution=rule[1], root=str(root),
                       fall_through=fall)
        for name, rule, root, fall in zip(layout["names"], layout["rules"], roots,
                                          layout["falls"])
    ]
    return Config(locations=locations), sorted(ids)


@given(layouts())
@settings(max_examples=150 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_ticket_urls_lead_back_to_the_located_file(layout: dict[str, Any]) -> None:
    """Over random layouts: the bytes served for every ticket url are the bytes of the file
    the engine located for that ticket, fetched through the real Flask app."""
    base = Path(tempfile.mkdtemp(prefix="mounts-"))
    try:
        config, ids = build_layout(base, layout)
        engine = Htsget(config)
        client = create_app(config, engine=engine).test_client()
        for id in ids:
            resp = client.get(f"/sequences/{quote(id)}")
            try:
                source = engine.locate(id, Format.FASTA)
            except Exception:
                assert resp.status_code in (400, 404), (id, resp.get_data()[:200])
                continue
            assert resp.status_code == 200, (id, resp.get_data()[:200])
            assert isinstance(source.storage, LocalStorage)
            want = Path(source.storage.path(source.key)).read_bytes()
            got = b"".join(data_bytes(client, b) for b in resp.get_json()["htsget"]["urls"])
            assert got == want, (id, source.storage.root, source.key)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_mount_collision_example(tmp_path: Path) -> None:
    """The case the issue saw: an unnamed first location holding a folder named like another
    location's mount. Its ticket url must serve its own file."""
    first, other = tmp_path / "first", tmp_path / "other"
    (first / "~b").mkdir(parents=True)
    other.mkdir()
    (first / "~b" / "x.fa").write_bytes(b">first\nAAAA\n")
    (other / "x.fa").write_bytes(b">other\nCCCC\n" + MARKER)
    config = Config(locations=[
        LocationConfig(regex="(.*)", root=str(first), fall_through=True),
        LocationConfig(name="b", regex="^b/(.*)$", root=str(other)),
    ])
    client = create_app(config).test_client()
    ticket = client.get("/sequences/~b/x").get_json()
    assert [u["url"] for u in ticket["htsget"]["urls"]] == ["http://localhost/data/~0/~b/x.fa"]
    assert b"".join(data_bytes(client, u) for u in ticket["htsget"]["urls"]) == b">first\nAAAA\n"
    assert client.get("/data/~b/x.fa").get_data().startswith(b">other")  # b's own url
    assert client.get("/sequences/b/x").get_json()["htsget"]["urls"][0]["url"].endswith(
        "/data/~b/x.fa")
    plain = client.get("/sequences/~b/x").get_json()["htsget"]["urls"][0]["url"]
    assert "/data/~b/" not in plain


# --------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def real(tree: dict[str, Path]) -> Iterator[Server]:
    port = free_port()
    srv = Server(["--data-dir", str(tree["root"]), "--port", str(port), "--workers", "1"], port)
    srv.start()
    yield srv
    srv.stop()


def raw_get(server: Server, target: str, headers: Optional[dict[str, str]] = None
            ) -> tuple[int, bytes]:
    """GET with the request target sent exactly as given (no client normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", f"127.0.0.1:{server.port}")
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_tricks_through_gunicorn(real: Server) -> None:
    for path in TRICKS:
        if "\\" in path:
            path = path.replace("\\", "%5C")
        status, body = raw_get(real, "/data/" + path, {"Range": "bytes=0-"})
        assert MARKER not in body, path
        assert status in (400, 404, 308), (path, status)
    for target in ("/data/../outside/secret.bam", "/data/./../../outside/secret.fa",
                   "/data//" + str(real and "etc/passwd"), "/data/%2e%2e/%2e%2e/outside/secret.fa",
                   "/reads/..%2Foutside%2Fsecret", "/sequences/escape", "/sequences/inside"):
        status, body = raw_get(real, target)
        assert MARKER not in body, target
    status, body = raw_get(real, "/data/sample.bam", {"Range": "bytes=0-3"})
    assert status == 206 and body == b"\x1f\x8b\x08\x04"
