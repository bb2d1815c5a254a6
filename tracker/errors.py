"""The one JSON error model: every failure a client sees is `{"error": {"code", "message"}}`.

Domain code raises a `TrackerError` subclass; `register_error_handlers` turns
it, Quart's own HTTP errors (unknown route, wrong method, body too large, body
timeout), validation errors and anything unexpected into that shape with the
right status. A traceback never reaches a client: an unexpected exception is
logged and answered 500 with a generic message.
"""

from __future__ import annotations

import logging

from quart import Quart, Response
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from tracker import jsoncodec

log = logging.getLogger("tracker")


class TrackerError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: object = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class BadRequest(TrackerError):
    status, code = 400, "bad_request"


class Unauthorized(TrackerError):
    status, code = 401, "unauthorized"


class Forbidden(TrackerError):
    status, code = 403, "forbidden"


class NotFound(TrackerError):
    status, code = 404, "not_found"


class Conflict(TrackerError):
    status, code = 409, "conflict"


class Gone(TrackerError):
    status, code = 410, "gone"


class PayloadTooLarge(TrackerError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(TrackerError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(TrackerError):
    status, code = 422, "invalid"


class RateLimited(TrackerError):
    status, code = 429, "rate_limited"

    def __init__(self, retry_after_seconds: int):
        super().__init__(
            f"too many requests; retry after {retry_after_seconds} s",
            headers={"Retry-After": str(retry_after_seconds)},
        )


STORAGE_RETRY_AFTER_SECONDS = 30


class StorageUnavailable(TrackerError):
    """The database cannot store now (disk full, I/O error, locked too long): retry later.

    Raised by the store's doors (tracker/store/__init__.py), which log it; the
    phone apps resend on any answer but 2xx, so a 503 with Retry-After loses nothing.
    """

    status, code = 503, "storage_unavailable"

    def __init__(self, reason: str, retry_after_seconds: int = STORAGE_RETRY_AFTER_SECONDS):
        super().__init__(
            f"the database cannot store data now ({reason}); retry in {retry_after_seconds} s",
            headers={"Retry-After": str(retry_after_seconds)},
        )
        self.reason = reason


def error_body(code: str, message: str, details: object = None) -> bytes:
    error: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return jsoncodec.dumps({"error": error})


def error_response(
    status: int, code: str, message: str, details: object = None, headers: dict | None = None
) -> Response:
    response = Response(
        error_body(code, message, details), status=status, content_type="application/json"
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def describe_validation_error(error: Exception) -> tuple[str, list[dict]]:
    """A pydantic ValidationError as a one-line message and a list naming each field."""
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return str(error), []
    fields = []
    for item in errors(include_url=False, include_input=False, include_context=False):
        location = ""
        for part in item["loc"]:
            location += f"[{part}]" if isinstance(part, int) else f".{part}" if location else part
        location = location or "body"
        fields.append({"field": location, "message": item["msg"]})
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return message or "invalid input", fields


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(TrackerError)
    async def _tracker_error(error: TrackerError) -> Response:
        return error_response(error.status, error.code, error.message, error.details, error.headers)

    @app.errorhandler(RequestSchemaValidationError)
    async def _schema_error(error: RequestSchemaValidationError) -> Response:
        message, fields = describe_validation_error(error.validation_error)
        return error_response(422, "invalid", message, fields or None)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = _HTTP_CODES.get(status, "error")
        message = error.description or error.name
        if status == 413:
            message = "request body too large"
        elif status == 408:
            message = "request body not received in time"
        headers = {}
        if status == 405 and getattr(error, "valid_methods", None):
            headers["Allow"] = ", ".join(error.valid_methods)
        return error_response(status, code, message, headers=headers)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unexpected error", exc_info=error)
        return error_response(500, "internal", "internal server error")
