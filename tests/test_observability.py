"""Logs and request IDs (observability/logs.py, middleware.py): one access line per request,
fast path included, in text or JSON, with the ticket's ID, format, class and region count and
never a secret; X-Request-ID validated, echoed, carried by the log lines of its request;
gunicorn's own access line replaced, not doubled; tracing free when off."""

from __future__ import annotations

import contextvars
import datetime
import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from htsgetr.app import create_app
from htsgetr.config import ConfigError, for_data_dir, load_config
from htsgetr.observability import REDACTED, logs, redact_text, redact_url
from htsgetr.observability.middleware import Observe, _Finishing, endpoint_of
from htsgetr.observability.redact import _SECRET_PARAM
from htsgetr.observability.schema import LoggingConfig

TICKET = "/reads/sample?referenceName=chr1&start=1000&end=90000"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logs.ACCESS_LOGGER]


def get(app: Any, path: str, **kw: Any) -> Any:
    """A test-client request whose response is closed (the end of the request: `finish`)."""
    resp = app.test_client().get(path, **kw)
    resp.close()
    return resp


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize("text", [
    "GET /data/x.bam?exp=1&sig=SECRET HTTP/1.1",
    "/x?X-Amz-Signature=SECRET&X-Amz-Credential=SECRET%2Fabc&X-Amz-Security-Token=SECRET",
    "/reads/x?access_token=SECRET&token=SECRET&id_token=SECRET",
    "fetching https://user:SECRET@example.org/x",
    "Authorization: Bearer SECRET.SECRET.SECRET",
    "sig=SECRET",
    "?AWSAccessKeyId=SECRET&Signature=SECRET&x-goog-signature=SECRET",
])
def test_redact_text_removes_every_secret(text: str) -> None:
    out = redact_text(text)
    assert "SECRET" not in out and REDACTED in out


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from([
    "sig", "SIG", "ſig", "Sıg", "signature", "x-amz-date", "X-AMZ-", "token", "access_token",
    "ID_TOKEN", "key", "KEY", "Key", "code", "password", "secret", "AWSAccessKeyId",
    "x-goog-sig", "=", "&", ";", "?", "/", " ", '"', "a", "start", "1", "é", "İ", "ß", "%2F",
]), max_size=14).map("".join))
def test_redact_url_shortcut_is_the_regex(text: str) -> None:
    """`redact_url` skips its case-blind regex when no secret name can be in the text: the
    answer is the regex's own, whatever the case (Unicode folding included)."""
    assert redact_url(text) == _SECRET_PARAM.sub(r"\1" + REDACTED, text)


def test_redact_keeps_what_is_not_secret() -> None:
    line = "/reads/x?referenceName=chr1&start=1&design=sig&mysig=1&format=BAM"
    assert redact_url(line) == line
    assert redact_text("no secret here: a=b") == "no secret here: a=b"


# --------------------------------------------------------------------------- request IDs


@pytest.mark.parametrize("given, kept", [
    ("abc-123", True), ("0af7651916cd43dd8448eb211c80319c", True),
    ("trace:span/1@host+x=y.z_w", True), ("x" * 128, True),
    ("x" * 129, False), ("", False), ("with space", False), ('quote"d', False),
    ("new\nline", False), ("é", False), ("a;b", False),
])
def test_request_id_is_kept_only_when_safe(given: str, kept: bool) -> None:
    rid = logs.new_request_id({"HTTP_X_REQUEST_ID": given})
    if kept:
        assert rid == given
    else:
        assert rid != given and len(rid) == 32 and int(rid, 16) >= 0


def test_request_ids_are_echoed_and_new_ones_differ(data_dir: Path) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    for path in (TICKET, "/data/sample.bam", "/reads/missing", "/service-info", "/healthz",
                 "/nowhere"):
        resp = get(app, path, headers={"X-Request-ID": "client-id-1"})
        assert resp.headers["X-Request-ID"] == "client-id-1", path
    ids = {get(app, TICKET).headers["X-Request-ID"] for _ in range(20)}
    assert len(ids) == 20
    bad = get(app, TICKET, headers={"X-Request-ID": "x" * 500})
    assert len(bad.headers["X-Request-ID"]) == 32


def test_log_lines_of_a_request_carry_its_id(data_dir: Path, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    """A line logged while a request is served (here: a 5xx of the engine) names it."""
    app = create_app(for_data_dir(str(data_dir)))
    engine = app.extensions["htsgetr"]

    def broken(*_: Any, **__: Any) -> Any:
        from htsgetr.protocol import InternalError

        raise InternalError("the disk is on fire")

    engine.ticket = broken
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logging.getLogger("htsgetr").addHandler(handler)
    try:
        with caplog.at_level(logging.INFO):
            resp = get(app, TICKET, headers={"X-Request-ID": "fire-1"})
    finally:
        logging.getLogger("htsgetr").removeHandler(handler)
    assert resp.status_code == 500
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    errors = [r for r in lines if r["level"] == "error"]
    assert errors and errors[0]["request_id"] == "fire-1"
    assert "the disk is on fire" in errors[0]["message"]
    assert logs.request_id.get() is None  # not left behind for the next request


# --------------------------------------------------------------------------- access lines


def test_one_access_line_per_request_fast_path_included(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    get(app, "/service-info")  # Flask serves the first request: the fast path is then on
    shortcut = app.wsgi_app.app
    served = shortcut.served
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=logs.ACCESS_LOGGER):
        paths = [TICKET + "&sig=SECRETSIG", "/data/sample.bam", "/reads/missing",
                 "/variants/calls?class=header", "/nowhere"]
        for path in paths:
            get(app, path, headers={"Range": "bytes=0-99", "X-Request-ID": "r-" + str(len(path))})
    assert shortcut.served - served >= 3  # ticket, /data and the 404 went the fast way
    lines = access_lines(caplog)
    assert len(lines) == len(paths)
    text = [r.getMessage() for r in lines]
    assert "SECRETSIG" not in "".join(text) and "sig=***" in text[0]
    assert '"GET /reads/sample?referenceName=chr1&start=1000&end=90000&sig=*** HTTP/1.1" 200' \
        in text[0]
    assert 'ticket_id="sample" format=BAM class=all regions=1' in text[0]
    assert f"request_id=r-{len(paths[0])}" in text[0]
    assert '"GET /data/sample.bam HTTP/1.1" 206 100 ' in text[1]
    assert " 404 " in text[2] and 'ticket_id="missing" format=BAM' in text[2]
    assert "format=VCF class=header regions=0" in text[3]
    assert " 404 " in text[4] and "ticket_id" not in text[4]


def test_json_access_line(data_dir: Path) -> None:
    config = for_data_dir(str(data_dir))
    config.logging = LoggingConfig(format="json")
    app = create_app(config)
    stream, foreign = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    other = logging.StreamHandler(foreign)  # a handler of somebody else's (AWS Lambda's)
    other.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    access = logging.getLogger(logs.ACCESS_LOGGER)
    access.addHandler(handler)
    access.addHandler(other)
    old = access.level
    access.setLevel(logging.INFO)
    logs.CONFIG = config.logging  # as `logs.configure` sets it in a server process
    try:
        resp = app.test_client().post(
            "/reads/sample", headers={"X-Request-ID": "post-1", "Authorization": "Bearer SECRET",
                                      "User-Agent": "probe?token=SECRET"},
            json={"format": "BAM", "regions": [{"referenceName": "chr1", "start": 1, "end": 2},
                                               {"referenceName": "chr2"}]})
        resp.close()
    finally:
        access.removeHandler(handler)
        access.removeHandler(other)
        access.setLevel(old)
        logs.CONFIG = LoggingConfig()
    line = json.loads(stream.getvalue())
    assert line["logger"] == "access" and line["level"] == "info"
    assert line["method"] == "POST" and line["status"] == 200
    assert line["path"] == "/reads/sample" and line["user_agent"] == "probe?token=***"
    assert line["request_id"] == "post-1" and line["bytes"] == len(resp.data)
    assert line["duration_ms"] > 0
    assert line["ticket"] == {"id": "sample", "format": "BAM", "class": "all", "regions": 2,
                              "urls": len(resp.get_json()["htsget"]["urls"])}
    assert "SECRET" not in stream.getvalue()
    assert line["message"] == "POST /reads/sample 200"
    assert len(stream.getvalue().splitlines()) == 1
    assert foreign.getvalue().startswith("[INFO] {")  # the fields, whoever formats them
    fields = json.loads(foreign.getvalue()[len("[INFO] "):])
    assert fields["request_id"] == "post-1" and fields["ticket"]["regions"] == 2


def test_excluded_paths_write_no_line(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=logs.ACCESS_LOGGER):
        get(app, "/healthz")
        get(app, "/readyz")
        get(app, "/service-info")
    assert [r.getMessage().split('"')[1] for r in access_lines(caplog)] == \
        ["GET /service-info HTTP/1.1"]
    config = for_data_dir(str(data_dir))
    config.logging.access_log = False
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=logs.ACCESS_LOGGER):
        get(create_app(config), "/service-info")
    assert access_lines(caplog) == []


def test_control_characters_cannot_forge_a_line(data_dir: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    with caplog.at_level(logging.INFO, logger=logs.ACCESS_LOGGER):
        get(app, "/reads/a%0a127.0.0.1 forged")
    (line,) = access_lines(caplog)
    assert "\n" not in line.getMessage() and "\\n127.0.0.1 forged" in line.getMessage()


class _GunicornResp:
    status = "200 OK"
    sent = 1234
    headers: list[tuple[str, str]] = []


class _GunicornReq:
    headers = [("HOST", "127.0.0.1"), ("AUTHORIZATION", "Bearer SECRET")]


def _gunicorn_logger(fmt: str) -> tuple[Any, io.StringIO]:
    from gunicorn.config import Config as GunicornConfig

    logs.CONFIG = LoggingConfig(format=fmt)
    cfg = GunicornConfig()
    cfg.set("accesslog", "-")
    logger = logs.RedactingLogger(cfg)
    stream = io.StringIO()
    for handler in logger.access_log.handlers:
        if getattr(handler, "_gunicorn", False):
            handler.setStream(stream)  # type: ignore[attr-defined]
    return logger, stream


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_gunicorn_writes_our_line_and_only_it(data_dir: Path, fmt: str) -> None:
    """Under gunicorn (a `gunicorn.socket` in the environ and our logger class) the body
    goes out untouched and gunicorn's access call writes htsgetr's one line."""
    logger, stream = _gunicorn_logger(fmt)
    try:
        app = create_app(for_data_dir(str(data_dir)))
        environ = {
            "REQUEST_METHOD": "GET", "PATH_INFO": "/reads/sample", "SERVER_NAME": "127.0.0.1",
            "QUERY_STRING": "referenceName=chr1&sig=SECRET", "SERVER_PORT": "8080",
            "HTTP_HOST": "127.0.0.1:8080", "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr, "gunicorn.socket": None, "HTTP_X_REQUEST_ID": "g-1",
            "HTTP_AUTHORIZATION": "Bearer SECRET",
        }
        seen: list[Any] = []
        body = app.wsgi_app(environ, lambda status, headers, exc=None: seen.append(headers))
        assert not isinstance(body, _Finishing)  # as the app gave it: sendfile(2) stays
        assert ("X-Request-ID", "g-1") in seen[0]
        assert stream.getvalue() == ""
        logger.access(_GunicornResp, _GunicornReq, environ,
                      datetime.timedelta(milliseconds=3))
    finally:
        logs.CONFIG = LoggingConfig()
        logs.GUNICORN_LOGGER = False
    out = stream.getvalue()
    assert len(out.splitlines()) == 1 and "SECRET" not in out
    if fmt == "json":
        line = json.loads(out)
        assert (line["status"], line["bytes"], line["request_id"]) == (200, 1234, "g-1")
        assert line["duration_ms"] == 3.0 and line["ticket"]["id"] == "sample"
    else:
        assert '"GET /reads/sample?referenceName=chr1&sig=*** HTTP/1.1" 200 1234 3.00ms' in out


def test_gunicorn_lines_of_other_apps_stay_gunicorns_redacted() -> None:
    logger, stream = _gunicorn_logger("text")
    logs.GUNICORN_LOGGER = False
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/x?sig=SECRET", "PATH_INFO": "/x",
               "QUERY_STRING": "sig=SECRET", "SERVER_PROTOCOL": "HTTP/1.1",
               "REMOTE_ADDR": "127.0.0.1", "HTTP_AUTHORIZATION": "Bearer SECRET"}
    logger.access(_GunicornResp, _GunicornReq, environ, datetime.timedelta(milliseconds=3))
    out = stream.getvalue()
    assert "GET /x?sig=*** HTTP/1.1" in out and "SECRET" not in out


def test_formatters_cut_secrets_from_any_record() -> None:
    # outside any request: a fresh context, whatever request an earlier test in this
    # process left unclosed (its id would be on the line, as it would be on a real one)
    contextvars.Context().run(_formatters_cut_secrets)


def _formatters_cut_secrets() -> None:
    record = logging.LogRecord("botocore", logging.WARNING, __file__, 1,
                               "retrying https://b.s3/x?X-Amz-Signature=%s", ("SECRET",), None)
    for formatter in (logs.TextFormatter(), logs.JsonFormatter()):
        out = formatter.format(record)
        assert "SECRET" not in out and "X-Amz-Signature=***" in out
    line = json.loads(logs.JsonFormatter().format(record))
    assert set(line) == {"time", "level", "logger", "pid", "message"}
    assert line["level"] == "warning" and line["time"].endswith("Z")
    refusal = logging.LogRecord("gunicorn.error", logging.WARNING, __file__, 1,
                                "Invalid request from ip=1.2.3.4: Invalid header 'Bearer x'",
                                (), None)
    assert "Bearer" not in logs.TextFormatter().format(refusal)


def test_configure_owns_the_root_handler_only_when_nobody_else_does() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        root.handlers = []
        stream = io.StringIO()
        logs.configure(LoggingConfig(format="json", level="debug"), stream)
        logs.configure(LoggingConfig(format="json", level="warning"), stream)  # a reload
        assert len(root.handlers) == 1
        logging.getLogger("htsgetr").warning("x?sig=%s", "SECRET")
        logging.getLogger("htsgetr").info("not at warning")
        logging.getLogger("somelib").info("libraries: warning and up")
        out = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [o["message"] for o in out] == ["x?sig=***"]
        root.handlers = [logging.NullHandler()]  # somebody else's logging: left alone
        logs.configure(LoggingConfig(format="text"))
        assert root.handlers[0].__class__ is logging.NullHandler
    finally:
        root.handlers, level = saved
        root.setLevel(level)
        logging.getLogger("htsgetr").setLevel(logging.NOTSET)
        logging.getLogger(logs.ACCESS_LOGGER).setLevel(logging.NOTSET)
        logs.CONFIG = LoggingConfig()


# --------------------------------------------------------------------------- small parts


@pytest.mark.parametrize("path, endpoint", [
    ("/reads/x", "reads"), ("/reads/a/b/c", "reads"), ("/variants/x", "variants"),
    ("/sequences/x", "sequences"), ("/reads/service-info", "service-info"),
    ("/service-info", "service-info"), ("/data/x.bam", "data"), ("/healthz", "health"),
    ("/readyz", "health"), ("/metrics", "metrics"), ("/", "other"), ("/favicon.ico", "other"),
    ("/reads", "reads"), ("", "other"),
])
def test_endpoint_labels_are_bounded(path: str, endpoint: str) -> None:
    assert endpoint_of(path, "/metrics") == endpoint


@pytest.mark.parametrize("toml, message", [
    ("[logging]\nformat = 'xml'\n", "not one of text, json"),
    ("[logging]\nlevel = 'loud'\n", "not one of"),
    ("[logging]\naccess_exclude = ['healthz']\n", "starting with '/'"),
    ("[metrics]\npath = '/data/metrics'\n", "a URL path of its own"),
    ("[metrics]\npath = '/reads'\n", "a URL path of its own"),
    ("[metrics]\npath = 'metrics'\n", "a URL path of its own"),
    ("[metrics]\nport = 70000\n", "at most 65535"),
    ("[tracing]\nendpoint = 'collector:4318'\n", r"http\(s\)://"),
    ("[tracing]\nsample_ratio = 2\n", "at most 1.0"),
    ("[tracing]\nexporter = 'jaeger'\n", "not one of"),
    ("[health]\nprobe_interval = -1\n", "at least 0"),
])
def test_bad_tables_are_refused(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path), env={})


def test_tables_from_the_environment(tmp_path: Path) -> None:
    config = load_config(env={"HTSGET_LOGGING_FORMAT": "json", "HTSGET_METRICS_PORT": "9100",
                              "HTSGET_TRACING_ENABLED": "true",
                              "HTSGET_HEALTH_PROBE_STORAGE": "yes"})
    assert config.logging.format == "json" and config.metrics.port == 9100
    assert config.tracing.enabled and config.health.probe_storage


def test_observe_is_the_outermost_layer(data_dir: Path) -> None:
    app = create_app(for_data_dir(str(data_dir)))
    assert isinstance(app.wsgi_app, Observe)
    assert app.wsgi_app.served == 0  # the fast path's counter, through the layer


def test_tracing_is_free_when_off(data_dir: Path) -> None:
    """Off (the default): OpenTelemetry is never imported, the fast path stays on."""
    code = f"""
import sys
from htsgetr.app import create_app
from htsgetr.config import for_data_dir
app = create_app(for_data_dir({str(data_dir)!r}))
c = app.test_client()
for _ in range(3):
    c.get("/reads/sample?referenceName=chr1").close()
assert app.wsgi_app.served == 2, app.wsgi_app.served
assert not [m for m in sys.modules if m.startswith("opentelemetry")]
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
