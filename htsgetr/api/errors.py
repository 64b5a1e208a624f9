"""Every error leaves as htsget JSON with the right status; tracebacks stay in the log."""

from __future__ import annotations

import json
import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from ..protocol import (
    CONTENT_TYPE,
    HtsgetError,
    InternalError,
    InvalidAuthentication,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)

log = logging.getLogger("htsgetr")

_BY_STATUS: dict[int, type[HtsgetError]] = {
    404: NotFound, 400: InvalidInput, 413: PayloadTooLarge, 415: UnsupportedMediaType,
}


def error_response(err: HtsgetError) -> Response:
    resp = Response(json.dumps(err.to_json()), status=err.status, content_type=CONTENT_TYPE)
    if isinstance(err, InvalidAuthentication):  # RFC 6750: say how to authenticate
        resp.headers["WWW-Authenticate"] = 'Bearer realm="htsget", error="invalid_token"'
    return resp


def register(app: Flask) -> None:
    @app.errorhandler(HtsgetError)
    def _htsget(err: HtsgetError) -> Response:
        if err.status >= 500:
            log.error("%s: %s", err.error, err.message)
        return error_response(err)

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Response:
        status = err.code or 500
        cls = _BY_STATUS.get(status)
        if cls is None:
            mapped = HtsgetError(err.description or err.name, status)
            mapped.error = err.name.replace(" ", "")
        else:
            mapped = cls(err.description or err.name)
        resp = error_response(mapped)
        if status == 405 and hasattr(err, "valid_methods") and err.valid_methods:
            resp.headers["Allow"] = ", ".join(err.valid_methods)
        return resp

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(InternalError("internal server error"))
