"""The service's error shape, `{"error": {"code", "message", "field"}}`, and its handlers.

Every failure a client can see goes through `error_response`; nothing else writes an error
body, and no stack trace ever reaches a client (500 internal_error carries only the request
id, which the server log line for that request also holds).
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("faceverify.errors")

# code → (HTTP status, default message); the complete list of error codes.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_image": (400, "the upload is not a readable image"),
    "unauthorized": (401, "a valid API key is required"),
    "forbidden": (403, "this API key may not do that"),
    "not_found": (404, "no such route"),
    "method_not_allowed": (405, "method not allowed on this route"),
    "request_timeout": (408, "the request body did not arrive in time"),
    "payload_too_large": (413, "the upload is too large"),
    "unsupported_media_type": (415, "unsupported content type or image format"),
    "model_mismatch": (409, "stored vectors were embedded by other weights"),
    "idempotency_conflict": (409, "this Idempotency-Key was used for another request"),
    "no_face_detected": (422, "no face detected in the image"),
    "validation_error": (422, "the request is not valid"),
    "internal_error": (500, "internal error"),
    "overloaded": (503, "the service is overloaded; retry later"),
    "not_ready": (503, "the service is starting up; retry later"),
    "store_unavailable": (503, "the gallery store is unreachable; retry later"),
    "store_stale": (503, "this replica's copy of the gallery is out of date; retry later"),
}


class ServiceError(Exception):
    """An error with its contract code; raise it anywhere in a request."""

    def __init__(self, code: str, message: str | None = None, field: str | None = None,
                 headers: dict[str, str] | None = None, status: int | None = None):
        default_status, default_message = ERROR_CODES[code]
        super().__init__(message or default_message)
        self.code = code
        self.message = message or default_message
        self.field = field
        self.status = status or default_status
        self.headers = headers or {}


def error_body(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(code: str, message: str | None = None, field: str | None = None,
                   headers: dict[str, str] | None = None, status: int | None = None
                   ) -> JSONResponse:
    default_status, default_message = ERROR_CODES[code]
    resp = JSONResponse(error_body(code, message or default_message, field),
                        status_code=status or default_status, headers=headers)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _loc_to_field(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path")]
    return ".".join(parts) or None


async def _service_error(request: Request, exc: ServiceError):
    request.state.error_code = exc.code
    return error_response(exc.code, exc.message, exc.field, exc.headers, exc.status)


async def _validation_error(request: Request, exc: RequestValidationError):
    errors = exc.errors()
    first = errors[0] if errors else {}
    field = _loc_to_field(first.get("loc", ()))
    message = first.get("msg", "invalid request")
    request.state.error_code = "validation_error"
    return error_response("validation_error", f"{field}: {message}" if field else message, field)


async def _http_error(request: Request, exc: StarletteHTTPException):
    code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            413: "payload_too_large", 415: "unsupported_media_type",
            503: "not_ready"}.get(exc.status_code)
    if code is None:
        code = "validation_error" if 400 <= exc.status_code < 500 else "internal_error"
    request.state.error_code = code
    message = exc.detail if isinstance(exc.detail, str) and exc.status_code not in (404, 405) \
        else None
    return error_response(code, message, headers=getattr(exc, "headers", None),
                          status=exc.status_code)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Unexpected exceptions are turned into 500 internal_error by the request middleware
    # (app/observability.py), which also logs them with the request id.
