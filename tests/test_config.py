"""Configuration: parsing, precedence, sugar, substitution, validation, CLI, reload logic."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from htsgetr.cli import OPTIONS, cli_layer, default_toml, main
from htsgetr.config import (
    Config,
    ConfigError,
    LocationConfig,
    env_name,
    env_vars,
    fields_of,
    leaf_keys,
    load_config,
    parse_storage,
    redact,
)
from htsgetr.engine import Htsget
from htsgetr.protocol import Endpoint, Format, NotFound, Query
from htsgetr.storage.resolver import Resolver, mount_name, substitute, template_groups

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


def write(tmp_path: Path, text: str, name: str = "htsget.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load(tmp_path: Path, text: str, **kw: Any) -> Config:
    kw.setdefault("env", {})
    return load_config(write(tmp_path, text), **kw)


# --------------------------------------------------------------------------- parsing


def test_defaults_without_a_file() -> None:
    config = load_config(env={})
    assert config.ticket_server.port == 8080 and config.data_server.port == 8081
    assert [(loc.backend, loc.root) for loc in config.locations] == [("file", ".")]
    assert config.data_url() == "http://127.0.0.1:8080"


def test_full_file(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        max_post_bytes = 4096
        cache_entries = 3
        watch = true
        watch_interval = 1
        [ticket_server]
        host = "0.0.0.0"
        port = 9000
        base_url = "https://h.example.org/"
        cors_origins = ["https://igv.example.org"]
        [data_server]
        separate = true
        port = 9001
        tls_cert = "/c.pem"
        tls_key = "k.pem"
        [[locations]]
        name = "a"
        regex = '^a/(?P<s>.+)$'
        substitution = "x/${s}"
        root = "/data/a"
        formats = ["bam", "Cram"]
        fall_through = true
        [[locations]]
        backend = "s3"
        bucket = "b"
        region = "eu-west-1"
        mode = "presigned"
        [[locations]]
        backend = "url"
        url = "https://host/path/"
        headers = { X-Key = "v" }
        forward_headers = ["X-Request-Id"]
        [auth]
        jwt = { kind = "jwks", url = "https://idp.example/jwks" }
        validate_audience = ["htsget"]
        [ticket_server.cors]
        allow_origins = "Mirror"
        """,
    )
    assert config.max_post_bytes == 4096 and config.cache_entries == 3
    assert config.watch is True and config.watch_interval == 1.0
    assert isinstance(config.watch_interval, float)
    ts, ds = config.ticket_server, config.data_server
    assert (ts.host, ts.port, ts.url()) == ("0.0.0.0", 9000, "https://h.example.org")
    assert ts.cors_origins == ["https://igv.example.org"]
    assert ds.separate and config.data_url() == "https://127.0.0.1:9001"
    assert ds.tls_key == str(tmp_path / "k.pem")  # relative to the file
    a, b, c = config.locations
    assert (a.name, a.substitution, a.formats, a.fall_through) == (
        "a",
        "x/${s}",
        ["BAM", "CRAM"],
        True,
    )
    assert (b.backend, b.bucket, b.region) == ("s3", "b", "eu-west-1")
    assert (c.backend, c.url, c.headers, c.forward_headers) == (
        "url", "https://host/path/", {"X-Key": "v"}, ["X-Request-Id"],
    )  # fmt: skip
    assert config.auth is not None and config.auth.jwt is not None
    assert (config.auth.jwt.kind, config.auth.jwt.url) == ("jwks", "https://idp.example/jwks")
    assert config.auth.validate_audience == ["htsget"]
    assert config.auth_for("ticket") is config.auth and config.auth_for("data") is config.auth
    assert ts.cors.allow_origins == "Mirror"


def test_relative_root_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", '[[locations]]\nroot = "../data"\n')
    assert load_config(path, env={}).locations[0].root == str(tmp_path / "data")


def test_example_file_loads_and_documents_every_key() -> None:
    config = load_config(str(EXAMPLE), env={})
    assert [loc.name for loc in config.locations] == ["cohortA", "cohortB", "public", None]
    assert config.locations[2].regex == "public/(.*)" and config.locations[2].backend == "url"
    assert config.locations[3].root == "/srv/htsget/data"
    assert config.service_info["organization"]["name"] == "Example Genomics"
    assert config.service_info["createdAt"] == "2024-01-15T09:00:00Z"
    text = EXAMPLE.read_text()
    keys = {k.rsplit(".", 1)[-1] for k in leaf_keys()} | set(fields_of(LocationConfig))
    keys |= {"storage", "id_prefix", "separate", "contactUrl", "documentationUrl", "createdAt"}
    missing = sorted(k for k in keys if not re.search(rf"(?m)^(#? ?{k} = |\[{k}\])", text))
    assert not missing, f"config.example.toml does not document {missing}"


def test_default_file_round_trips(tmp_path: Path) -> None:
    text = default_toml()
    assert load(tmp_path, text) == load_config(env={})
    for key in leaf_keys():
        assert env_name(key) in text, key
    for name in fields_of(LocationConfig):
        assert f"# {name} = " in text, name


def test_locations_string_and_list_sugar(tmp_path: Path) -> None:
    config = load(tmp_path, 'locations = "file:///srv/data"')
    assert [(loc.backend, loc.root) for loc in config.locations] == [("file", "/srv/data")]
    config = load(
        tmp_path,
        'locations = ["s3://bkt/some/prefix", { id_prefix = "web/", storage = "https://h/p/" }]',
    )
    s3, web = config.locations
    assert (s3.backend, s3.bucket, s3.prefix, s3.regex) == ("s3", "bkt", "some/prefix/", "(.*)")
    assert (web.backend, web.url, web.regex, web.substitution) == (
        "url",
        "https://h/p/",
        "web/(.*)",
        "$1",
    )


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("file:///abs/dir", {"backend": "file", "root": "/abs/dir"}),
        ("file://localhost/abs", {"backend": "file", "root": "/abs"}),
        ("file://rel/dir", {"backend": "file", "root": "rel/dir"}),
        ("/plain/path", {"backend": "file", "root": "/plain/path"}),
        ("s3://bucket", {"backend": "s3", "bucket": "bucket", "prefix": ""}),
        ("s3://bucket/a/b/", {"backend": "s3", "bucket": "bucket", "prefix": "a/b/"}),
        ("https://host/path", {"backend": "url", "url": "https://host/path"}),
        ("http://host:8000/x/?k=v", {"backend": "url", "url": "http://host:8000/x/?k=v"}),
        ("cohortA/=file:///d", {"id_prefix": "cohortA/", "backend": "file", "root": "/d"}),
        ("B=s3://bk/p", {"id_prefix": "B", "backend": "s3", "bucket": "bk", "prefix": "p/"}),
    ],
)
def test_parse_storage(spec: str, expected: dict[str, Any]) -> None:
    assert parse_storage(spec) == expected


@pytest.mark.parametrize("spec", ["ftp://host/x", "s3://", "file://"])
def test_parse_storage_refuses(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_storage(spec)


# --------------------------------------------------------------------------- precedence


FILE = """
[ticket_server]
port = 1000
workers = 3
threads = 5
[[locations]]
root = "/from/file"
"""


def test_precedence_cli_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    env = {"HTSGET_TICKET_SERVER_PORT": "2000", "HTSGET_TICKET_SERVER_WORKERS": "4"}
    config = load(tmp_path, FILE, env=env, cli={"ticket_server.port": 3000})
    ts = config.ticket_server
    assert (ts.port, ts.workers, ts.threads, ts.timeout) == (3000, 4, 5, 60)
    assert config.locations[0].root == "/from/file"


def test_config_file_from_env_and_locations_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, FILE)
    env = {"HTSGET_CONFIG": path, "HTSGET_DATA_DIR": "/from/env"}
    config = load_config(env=env)
    assert config.ticket_server.port == 1000
    # HTSGET_DATA_DIR / HTSGET_STORAGE / --data-dir / --storage add locations after the
    # file's, never replace them (issue 14); the command line's replace the variables'
    assert [loc.root for loc in config.locations] == ["/from/file", "/from/env"]
    env = {"HTSGET_CONFIG": path, "HTSGET_STORAGE": "a/=file:///x s3://b/p"}
    f, a, b = load_config(env=env).locations
    assert (f.root, a.regex, a.root, b.bucket) == ("/from/file", "a/(.*)", "/x", "b")
    cli = {"data_dir": "/cli", "storage": ["https://h/"]}
    f, c, d = load_config(env=env, cli=cli).locations
    assert (f.root, c.root, d.url) == ("/from/file", "/cli", "https://h/")


def test_short_env_aliases_and_full_names(tmp_path: Path) -> None:
    env = {"HTSGET_PORT": "1", "HTSGET_HOST": "::", "HTSGET_BASE_URL": "http://x/",
           "HTSGET_WORKERS": "7", "HTSGET_TICKET_SERVER_WORKERS": "8"}  # fmt: skip
    ts = load_config(env=env).ticket_server
    assert (ts.port, ts.host, ts.base_url, ts.workers) == (1, "::", "http://x/", 8)


def test_env_values_are_parsed_into_the_field_types() -> None:
    env = {
        "HTSGET_DATA_SERVER_SEPARATE": "yes",
        "HTSGET_TICKET_SERVER_CORS_ORIGINS": "https://a, https://b",
        "HTSGET_DATA_SERVER_CORS_ORIGINS": '["https://c"]',
        "HTSGET_WATCH_INTERVAL": "0.5",
        "HTSGET_TICKET_SERVER_BASE_URL": "",
        "HTSGET_SERVICE_INFO": '{"name": "from env", "reads": {"formats": ["bam"]}}',
        "HTSGET_DATA_SERVER_PORT": "9999",
    }
    config = load_config(env=env)
    assert config.data_server.separate is True
    assert config.ticket_server.cors_origins == ["https://a", "https://b"]
    assert config.data_server.cors_origins == ["https://c"]
    assert config.watch_interval == 0.5 and config.ticket_server.base_url is None
    assert config.service_info == {"name": "from env", "reads": {"formats": ["BAM"]}}


@pytest.mark.parametrize(
    "var, value, message",
    [
        ("HTSGET_PORT", "http", "HTSGET_PORT: ticket_server.port: expected an integer"),
        ("HTSGET_WATCH", "maybe", "HTSGET_WATCH: watch: expected a boolean"),
        ("HTSGET_DATA_SERVER_PORT", "70000", "data_server.port: must be at most 65535"),
        ("HTSGET_AUTH", "{nope", "HTSGET_AUTH: auth: expected JSON"),
        ("HTSGET_STORAGE", "ftp://x", "HTSGET_STORAGE: locations[0].storage: unsupported"),
    ],
)
def test_env_errors_name_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(env={var: value})


def test_every_cli_option_has_a_key_and_an_env_var() -> None:
    variables = env_vars()
    for flag, (key, _kw) in OPTIONS.items():
        assert key in set(leaf_keys()), flag
        assert env_name(key) in variables, flag
    args = main.__globals__["_parser"]().parse_args(
        ["serve", "--port", "5", "--separate-data-server", "--cors-origin", "a", "--cors-origin",
         "b", "--set", "cache_entries=9", "--set", 'service_info.name="n"', "--storage", "/x"]
    )  # fmt: skip
    layer = cli_layer(args)
    assert layer == {
        "ticket_server.port": 5, "data_server.separate": True,
        "ticket_server.cors_origins": ["a", "b"], "cache_entries": 9,
        "service_info.name": "n", "storage": ["/x"],
    }  # fmt: skip
    config = load_config(env={}, cli=layer)
    assert config.service_info == {"name": "n"} and config.cache_entries == 9


def test_cross_key_checks_see_every_layer(tmp_path: Path) -> None:
    text = '[ticket_server]\ntls_cert = "/c.pem"\n'
    env = {"HTSGET_TICKET_SERVER_TLS_KEY": "/k.pem"}  # the key's path from the environment
    assert load(tmp_path, text, env=env).ticket_server.tls_key == "/k.pem"
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env={"HTSGET_PORT": "1"}, cli={"cache_entries": 1})
    assert str(info.value) == (
        f"{tmp_path / 'htsget.toml'} (with HTSGET_PORT, command line): "
        "ticket_server.tls_key: tls_cert and tls_key go together"
    )


def test_cli_set_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="command line: ticket_server.prot: unknown key"):
        load_config(env={}, cli={"ticket_server.prot": 1})
    with pytest.raises(ConfigError, match="command line: watch: is not a table"):
        load_config(env={}, cli={"watch.x": 1})
    with pytest.raises(ConfigError, match="command line: cache_entries: expected an integer"):
        load_config(env={}, cli={"cache_entries": "many"})


# --------------------------------------------------------------------------- substitution


def test_substitute() -> None:
    m = re.fullmatch(r"(?P<cohort>\w+)/(\w+)(?:\.(v\d))?", "cb/s1")
    assert m is not None
    assert substitute("$1/$2", m) == "cb/s1"
    assert substitute("${cohort}-${2}-$0", m) == "cb-s1-cb/s1"
    assert substitute("$3|$$1|cost$$", m) == "|$1|cost$"  # unmatched group -> ""
    assert template_groups("$1 ${name} ${02} $$3") == ["1", "name", "2"]


def test_resolver_order_formats_and_mounts(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        [[locations]]
        regex = '^vcf/(.*)$'
        root = "/v"
        formats = ["VCF"]
        [[locations]]
        name = "named"
        regex = '^(?P<c>[ab])/(?P<rest>.+)$'
        substitution = "${c}-${rest}"
        root = "/n"
        [[locations]]
        backend = "s3"
        bucket = "$1"
        regex = '^s3/([a-z0-9-]+)/(.+)$'
        substitution = "$2"
        [[locations]]
        regex = "(.*)"
        root = "/all"
        """,
    )
    made: list[tuple[str, str]] = []

    def factory(loc: LocationConfig, mount: str, cfg: Config) -> Any:
        made.append((mount, loc.root or loc.backend))
        return mount

    resolver = Resolver(config, factory)
    assert made == [("", "/v"), ("~named", "/n"), ("~2", "s3"), ("~3", "/all")]
    hits = [(m.storage, m.key) for m in resolver.matches("vcf/x", Format.VCF)]
    assert hits == [("", "x"), ("~3", "vcf/x")]
    assert [(m.storage, m.key) for m in resolver.matches("vcf/x", Format.BAM)] == [("~3", "vcf/x")]
    assert [m.key for m in resolver.matches("a/s1")] == ["a-s1", "a/s1"]
    assert [m.key for m in resolver.matches("s3/my-bucket/k/x")][0] == "my-bucket/k/x"
    assert resolver.mount_for("~named/a-s1.bam") == ("~named", "a-s1.bam")
    assert resolver.mount_for("plain/x.bam") == ("", "plain/x.bam")
    # a "~" path always names a mount, never a key of the bare one (issue 9: collisions)
    assert resolver.mount_for("~nope/x.bam") == (None, "~nope/x.bam")
    assert resolver.mount_for("~0/~named/x.bam") == ("", "~named/x.bam")
    assert mount_name(0, config.locations[1]) == "~named"
    assert mount_name(0, config.locations[0]) == ""


def test_first_match_wins_unless_fall_through(data_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    text = f"""
    [[locations]]
    regex = '^x/(.*)$'
    root = "{empty}"
    fall_through = FT
    [[locations]]
    regex = '^x/(.*)$'
    root = "{data_dir}"
    """
    query = Query(Endpoint.READS, "x/sample", Format.BAM)
    stops = Htsget(load(tmp_path, text.replace("FT", "false")))
    with pytest.raises(NotFound):
        stops.ticket(query)
    falls = Htsget(load(tmp_path, text.replace("FT", "true")))
    urls = falls.ticket(query).to_json()["htsget"]["urls"]
    assert any(u["url"].endswith("/data/~1/sample.bam") for u in urls)


# --------------------------------------------------------------------------- validation


ERRORS = [
    ("colour = 1", "colour: unknown key"),
    ("[ticket_server]\nprot = 1", "ticket_server.prot: unknown key (did you mean 'port'?)"),
    ("[[locations]]\nrot = '/'", "locations[0].rot: unknown key (did you mean 'root'?)"),
    (
        "[ticket_server]\nport = '80'",
        "ticket_server.port: expected an integer, got a string ('80')",
    ),
    ("[ticket_server]\nport = true", "ticket_server.port: expected an integer, got a boolean"),
    ("[ticket_server]\nhost = 1", "ticket_server.host: expected a string, got an integer (1)"),
    ("[ticket_server]\ncors_origins = '*'", "ticket_server.cors_origins: expected an array"),
    ("[ticket_server]\ncors_origins = [1]", "ticket_server.cors_origins[0]: expected a string"),
    ("ticket_server = 3", "ticket_server: expected a table, got an integer"),
    ("watch = 'yes'", "watch: expected a boolean"),
    ("max_post_bytes = 1.5", "max_post_bytes: expected an integer, got a float"),
    ("service_info = []", "service_info: expected a table"),
    ("locations = 3", "locations: expected an array"),
    ("locations = [3]", "locations[0]: expected a table, got an integer"),
    ("[ticket_server]\nport = 65536", "ticket_server.port: must be at most 65535"),
    ("[ticket_server]\nworkers = 0", "ticket_server.workers: must be at least 1"),
    ("[ticket_server]\nbase_url = 'h.org'", "ticket_server.base_url: expected an http(s):// URL"),
    ("[ticket_server]\ntls_cert = 'c'", "ticket_server.tls_key: tls_cert and tls_key go together"),
    ("[data_server]\ntls_key = 'k'", "data_server.tls_cert: tls_cert and tls_key go together"),
    ("[data_server]\nseparate = true\nport = 8080", "data_server.port: the separate data server"),
    ("[[locations]]\nregex = '('\nroot = '/'", "locations[0].regex: bad regular expression '('"),
    ("[[locations]]\nregex = '(?P<a>x'\nroot = '/'", "locations[0].regex: bad regular"),
    (
        "[[locations]]\nroot='/'\n[[locations]]\nregex = '(a)(b)'\nsubstitution = '$3'\nroot='/'",
        "locations[1].substitution: names group '3', which the regex '(a)(b)' lacks (groups: 1, 2)",
    ),
    (
        "[[locations]]\nregex = '(?P<s>x)'\nsubstitution = '${sample}'\nroot = '/'",
        "locations[0].substitution: names group 'sample', which the regex '(?P<s>x)' lacks",
    ),
    (
        "[[locations]]\nregex = '(x)'\nbackend = 's3'\nbucket = '${b}'",
        "locations[0].bucket: names group 'b'",
    ),
    ("[[locations]]\nbackend = 'ftp'", "locations[0].backend: 'ftp' is not one of file, s3, url"),
    ("[[locations]]\nroot='/'\nmode = 'copy'", "locations[0].mode: 'copy' is not one of"),
    ("[[locations]]\nbackend='url'\nurl='https://h'\nmode='presigned'", "locations[0].mode:"),
    ("[[locations]]\nroot='/'\nformats = ['SAM']", "locations[0].formats[0]: unknown format 'SAM'"),
    ("[[locations]]\nregex = '(.*)'", "locations[0].root: required by backend 'file'"),
    ("[[locations]]\nbackend = 's3'", "locations[0].bucket: required by backend 's3'"),
    ("[[locations]]\nbackend = 'url'", "locations[0].url: required by backend 'url'"),
    ("[[locations]]\nbackend = 'url'\nurl = 'ftp://h'", "locations[0].url: expected an http(s)"),
    ("[[locations]]\nroot='/'\nexpires = 0", "locations[0].expires: must be at least 1"),
    ("[[locations]]\nroot='/'\nheaders = { A = 1 }", "locations[0].headers.A: expected a string"),
    ("[[locations]]\nroot='/'\nname = 'a/b'", "locations[0].name: 'a/b': start with a letter"),
    ("[[locations]]\nroot='/'\nname = '2'", "locations[0].name: '2': start with a letter"),
    (
        "[[locations]]\nroot='/'\nname='a'\n[[locations]]\nroot='/'\nname='a'",
        "locations[1].name: 'a' repeats locations[0]",
    ),
    ("[[locations]]\nstorage = 'ftp://x'", "locations[0].storage: unsupported storage URL"),
    ("[[locations]]\nstorage = 3", "locations[0].storage: expected a string"),
    ("[[locations]]\nstorage = '/d'\nroot = '/e'", "locations[0].root: conflicts with storage"),
    ("[[locations]]\nid_prefix = 'a/'\nregex = 'x'\nroot='/'", "locations[0].id_prefix: give"),
    ("[service_info]\ntype = 'x'", "service_info.type: is derived by the server"),
    ("[service_info]\nhtsget = {}", "service_info.htsget: is derived by the server"),
    ("[service_info]\nname = 3", "service_info.name: expected a string, got an integer"),
    ("[service_info]\ncontact_url = 'x'", "service_info.contact_url: unknown key (did you mean"),
    ("[service_info]\ncreatedat = 'x'", "service_info.createdat: unknown key (did you mean"),
    ("[service_info]\norganization = 'x'", "service_info.organization: expected a table"),
    ("[service_info.organization]\nemail = 'x'", "service_info.organization.email: unknown key"),
    ("[service_info.reads]\ndatatype = 'x'", "service_info.reads.datatype: unknown key"),
    ("[service_info.reads]\nformats = 'BAM'", "service_info.reads.formats: expected an array"),
    ("[service_info.variants]\nformats = ['BAM']", "service_info.variants.formats[0]: 'BAM' is"),
    ("x = ", "invalid TOML"),
]


@pytest.mark.parametrize("text, message", ERRORS, ids=[m.split(":")[0] for _, m in ERRORS])
def test_validation_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert str(info.value).startswith(str(tmp_path / "htsget.toml") + ": "), str(info.value)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: cannot read the file"):
        load_config(str(tmp_path / "nope.toml"), env={})


# --------------------------------------------------------------------------- service info


def test_service_info_passes_to_the_endpoints(tmp_path: Path, data_dir: Path) -> None:
    from htsgetr.app import create_app

    config = load(
        tmp_path,
        f"""
        [[locations]]
        root = "{data_dir}"
        [service_info]
        id = "org.example.x"
        name = "Configured"
        contactUrl = "mailto:a@b"
        createdAt = 2024-01-02
        updatedAt = 2024-03-04T05:06:07Z
        myCustom = {{ nested = true }}
        organization = {{ name = "Org", url = "https://org" }}
        reads = {{ formats = ["bam"] }}
        """,
    )
    client = create_app(config).test_client()
    body = client.get("/reads/service-info").get_json()
    assert body["id"] == "org.example.x" and body["name"] == "Configured"
    assert body["contactUrl"] == "mailto:a@b" and body["myCustom"] == {"nested": True}
    assert (body["createdAt"], body["updatedAt"]) == ("2024-01-02", "2024-03-04T05:06:07Z")
    assert body["organization"] == {"name": "Org", "url": "https://org"}
    assert body["htsget"]["datatype"] == "reads" and body["htsget"]["formats"] == ["BAM"]
    assert body["type"]["artifact"] == "htsget" and "reads" not in body
    variants = client.get("/variants/service-info").get_json()
    assert variants["htsget"]["formats"] == ["VCF", "BCF"]


# --------------------------------------------------------------------------- redaction


def test_redact() -> None:
    doc = {
        "locations": [{"headers": {"X-Api-Key": "s3cret"}, "url": "https://u:pw@h/x"}],
        "auth": {"client_secret": "abc", "issuer": "https://idp", "keys": {"token": {"a": "b"}}},
        "crypt4gh": {"private_key": "/k", "passphrase": "p"},
    }
    out = redact(doc)
    assert out["locations"][0] == {"headers": {"X-Api-Key": "***"}, "url": "https://u:***@h/x"}
    assert out["auth"] == {"client_secret": "***", "issuer": "https://idp",
                           "keys": {"token": {"a": "***"}}}  # fmt: skip
    assert out["crypt4gh"] == {"private_key": "***", "passphrase": "***"}
    assert "s3cret" not in json.dumps(out) and "pw@" not in json.dumps(out)


# --------------------------------------------------------------------------- CLI


def test_cli_config_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(
        tmp_path, f'[[locations]]\nroot = "{tmp_path}"\n[[locations]]\nroot = "/nonexistent-x"\n'
    )
    assert main(["config", "check", good]) == 2  # a root that is not there is refused
    out, err = capsys.readouterr()
    assert "locations[1]: no readable directory '/nonexistent-x'" in err and out == ""
    assert main(["config", "check", "--allow-missing", good]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{good}: OK (2 locations)"
    bad = write(tmp_path, "[[locations]]\nregex = '(x'\nroot = '/'\n", "bad.toml")
    assert main(["config", "check", bad]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"htsgetr: error: {bad}: locations[0].regex: bad regular expression")
    assert "Traceback" not in err and out == ""
    assert main(["config", "check", "--allow-missing", str(EXAMPLE)]) == 0


def test_cli_config_check_builds_backends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "[[locations]]\nbackend = 's3'\nbucket = 'no'\n")
    assert main(["config", "check", bad]) == 2
    assert f"{bad}: locations[0]: " in capsys.readouterr().err


def test_cli_config_show(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    path = write(
        tmp_path,
        """
        [[locations]]
        backend = "url"
        url = "https://user:hunter2@h/p/"
        mode = "proxy"
        headers = { Authorization = "Bearer xyz" }
        [auth]
        jwt = { kind = "jwks", url = "https://idp.example/jwks" }
        data_urls.secret = "abc"
        data_urls.previous_secrets = ["abc2"]
        """,
    )
    monkeypatch.setenv("HTSGET_WORKERS", "6")
    assert main(["config", "show", "--config", path, "--port", "1234"]) == 0
    out = capsys.readouterr().out
    for secret in ("hunter2", "xyz", "abc"):
        assert secret not in out
    assert 'Authorization = "***"' in out and 'secret = "***"' in out
    shown = write(tmp_path, out, "shown.toml")
    config = load_config(shown, env={})
    assert (config.ticket_server.port, config.ticket_server.workers) == (1234, 6)


def test_cli_config_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "default"]) == 0
    assert capsys.readouterr().out == default_toml()


def test_cli_errors_exit_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    bad = write(tmp_path, "[ticket_server]\nport = 'x'\n")
    assert main(["serve", "--config", bad]) == 2  # refused before gunicorn starts
    assert capsys.readouterr().err == (
        f"htsgetr: error: {bad}: ticket_server.port: expected an integer, got a string ('x')\n"
    )
    monkeypatch.setenv("HTSGET_CONFIG", bad)
    assert main(["ticket", "reads", "x"]) == 2
    assert main(["serve", "--set", "nokey"]) == 2
    assert "--set: expected KEY=VALUE" in capsys.readouterr().err


def test_cli_ticket_from_a_config(tmp_path: Path, data_dir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    path = write(tmp_path, f"[[locations]]\nid_prefix = 'A/'\nroot = '{data_dir}'\n")
    assert main(["ticket", "reads", "A/sample", "--config", path, "--reference-name", "chr1"]) == 0
    urls = json.loads(capsys.readouterr().out)["htsget"]["urls"]
    assert urls[0]["url"].startswith("http://127.0.0.1:8080/data/sample.bam")
    assert main(["ticket", "reads", "sample", "--storage", f"file://{data_dir}",
                 "--base-url", "https://pub.example"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["htsget"]["urls"][0]["url"].startswith(
        "https://pub.example/data/sample.bam"
    )


# --------------------------------------------------------------------------- server reload


def test_server_reload_keeps_old_config_when_new_one_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from htsgetr.server import HtsgetrServer

    path = write(tmp_path, "[ticket_server]\nport = 1111\nworkers = 1\n")
    server = HtsgetrServer(load_config(path, env={}), lambda: load_config(path, env={}))
    assert server.cfg.bind == ["127.0.0.1:1111"] and server.cfg.workers == 1
    write(tmp_path, "[ticket_server]\nport = 1111\nworkers = 3\n")
    server.reload()  # what gunicorn's arbiter does on SIGHUP
    assert server.config.ticket_server.workers == 3 and server.cfg.workers == 3
    write(tmp_path, "[ticket_server]\nport = 'broken'\n")
    with caplog.at_level(logging.ERROR, logger="htsgetr"):
        server.reload()
    assert server.config.ticket_server.port == 1111 and server.cfg.bind == ["127.0.0.1:1111"]
    assert "reload refused" in caplog.text and "ticket_server.port" in caplog.text
    caplog.clear()
    # a new port would drop every live connection: refused, the old bind keeps serving
    write(tmp_path, "[ticket_server]\nport = 2222\nworkers = 2\n")
    with caplog.at_level(logging.ERROR, logger="htsgetr"):
        server.reload()
    assert server.cfg.bind == ["127.0.0.1:1111"] and server.cfg.workers == 3
    assert "need a restart" in caplog.text and "ticket_server.port" in caplog.text
    caplog.clear()
    # a root that disappeared: refused the same way
    write(tmp_path, f"[ticket_server]\nport = 1111\n[[locations]]\nroot = '{tmp_path}/gone'\n")
    from htsgetr.cli import load as cli_load

    server.reload_config = lambda: cli_load(path, {}, env={})
    with caplog.at_level(logging.ERROR, logger="htsgetr"):
        server.reload()
    assert "no readable directory" in caplog.text and server.cfg.workers == 3


def test_server_roles_and_data_bind(tmp_path: Path) -> None:
    from htsgetr.server import HtsgetrServer

    config = load(tmp_path, "[data_server]\nseparate = true\nport = 3333\nthreads = 1\n"
                            "worker_class = 'sync'\n")
    ticket = HtsgetrServer(config)
    assert ticket.role == "ticket" and ticket.spawn_data
    assert "gevent" in ticket.cfg.worker_class_str.lower()  # the default: slow clients
    data = HtsgetrServer(config, role="data")
    assert data.cfg.bind == ["127.0.0.1:3333"] and data.cfg.worker_class_str == "sync"


def test_wsgi_reads_htsget_config(tmp_path: Path, data_dir: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from gunicorn.errors import AppImportError

    path = write(tmp_path, f"[[locations]]\nroot = '{data_dir}'\n[service_info]\nname = 'W'\n")
    monkeypatch.setenv("HTSGET_CONFIG", path)
    monkeypatch.setenv("HTSGET_ROLE", "ticket")
    sys.modules.pop("htsgetr.wsgi", None)
    wsgi = importlib.import_module("htsgetr.wsgi")
    client = wsgi.app.test_client()
    assert client.get("/service-info").get_json()["name"] == "W"
    assert client.get("/data/sample.bam").status_code == 404  # ticket role: no /data
    write(tmp_path, "[[locations]]\nroot = 1\n")
    sys.modules.pop("htsgetr.wsgi", None)
    with pytest.raises(AppImportError, match="locations\\[0\\].root: expected a string"):
        importlib.import_module("htsgetr.wsgi")
    sys.modules.pop("htsgetr.wsgi", None)


def test_schema_fields_all_have_docs() -> None:
    for cls in (Config, LocationConfig, type(Config().ticket_server), type(Config().data_server)):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name}"


def test_htsget_rs_location_prefix_sugar(tmp_path: Path) -> None:
    """`{ location = "file://dir", prefix = "bam" }`: IDs starting with bam, appended whole."""
    from htsgetr.config import load_config
    from htsgetr.storage.resolver import Resolver

    (tmp_path / "d1" / "bam").mkdir(parents=True)
    (tmp_path / "d2" / "cram").mkdir(parents=True)
    cfg = tmp_path / "c.toml"
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    cfg.write_text(
        f'locations = [ {{ location = "file://{d1}", prefix = "bam" }},\n'
        f'              {{ location = "file://{d2}", prefix = "cram" }} ]\n'
    )
    config = load_config(str(cfg), env={})
    matches = list(Resolver(config).matches("bam/htsnexus_test_NA12878"))
    assert [m.key for m in matches] == ["bam/htsnexus_test_NA12878"]
    assert matches[0].storage.root == str(tmp_path / "d1")
    matches = list(Resolver(config).matches("cram/x"))
    assert [m.key for m in matches] == ["cram/x"]
    assert matches[0].storage.root == str(d2)
    assert list(Resolver(config).matches("vcf/x")) == []
