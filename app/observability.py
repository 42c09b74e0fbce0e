"""Structured JSON logs and the request middleware (request id, access log, metrics, 500s).

One log line per request: request id, method, route (the template, e.g.
`/galleries/{gallery}/identify`: gallery and subject names never reach the log), status,
duration, error code, and the name of the API key that made it. Never the path itself, the
body or headers (so no image bytes, names or API keys reach the log).
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response
from app.metrics import Metrics

access_log = logging.getLogger("faceverify.access")
log = logging.getLogger("faceverify")

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message", "taskName"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
KNOWN_ROUTES = {"/verify", "/embed", "/health/live", "/health/ready", "/metrics", "/model",
                "/docs", "/openapi.json", "/", "/docs/oauth2-redirect", "/redoc"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for our loggers and uvicorn's; uvicorn's access log is replaced
    by ours (one line per request, with the request id)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._faceverify = True  # type: ignore[attr-defined]
    lvl = getattr(logging, level.upper(), logging.INFO)
    lg = logging.getLogger("faceverify")
    lg.handlers = [h for h in lg.handlers if not getattr(h, "_faceverify", False)] + [handler]
    lg.setLevel(lvl)
    lg.propagate = False
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn's own lines, as JSON too
        uv = logging.getLogger(name)
        uv.handlers = [handler] if name == "uvicorn" else []
        uv.propagate = name != "uvicorn"
        uv.setLevel(lvl)
    logging.getLogger("uvicorn.access").disabled = True


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    return scope.get("path", "") if scope.get("path") in KNOWN_ROUTES else "unmatched"


class RequestMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware, so streaming and cancellation work)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = None
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                incoming = v.decode("latin-1")
                break
        rid = incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = {"code": 0, "sent": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        error = None
        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            status["code"] = status["code"] or 499  # client went away mid-upload
            error = "client_disconnected"
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid})
            error = "internal_error"
            if not status["sent"]:
                resp = error_response("internal_error",
                                      f"internal error (request id {rid})")
                await resp(scope, receive, send_wrapper)
            else:
                status["code"] = status["code"] or 500
        duration = time.perf_counter() - started
        route = route_label(scope)
        code = status["code"]
        self.metrics.requests.labels(route=route, status=str(code)).inc()
        self.metrics.request_duration.labels(route=route).observe(duration)
        extra = {"request_id": rid, "method": scope.get("method"), "route": route,
                 "status": code, "duration_ms": round(duration * 1000, 2)}
        if state.get("key_name"):
            extra["key"] = state["key_name"]
        error = error or state.get("error_code")
        if error:
            extra["error_code"] = error
        client = scope.get("client")
        if client:
            extra["client"] = client[0]
        level = logging.ERROR if code >= 500 and error == "internal_error" else logging.INFO
        access_log.log(level, "request", extra=extra)
