"""Reading a request's images: multipart files or base64 strings in JSON.

The body size is enforced while it is read: a declared Content-Length over the limit is
refused before a byte is read, and a chunked body is counted as it streams in and refused as
soon as it passes the limit, so an oversized upload is never buffered whole. Each image is
then held to `max_upload_bytes` on its own.

The body's time is bounded too (`BodyLimits`): it must arrive within `timeout_s`, and at
`min_rate` bytes/s on average once `grace_s` has passed, or the request gets 408
request_timeout and its connection is closed. A client that trickles a byte a second is cut
off after the grace period instead of holding its connection forever. Body bytes are counted
across requests from their first byte until the request's answer (`BodyBytes`), so however
many uploads arrive at once, their bytes stay under one stated bound (503 overloaded past
it); the service's concurrency slot is only taken once the body is in (app/routes.py).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.errors import ServiceError

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
# The non-image fields a request may carry (each route reads the ones it takes).
EXTRA_FIELDS = ("threshold", "detect", "top_k")
_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


@dataclass
class Intake:
    images: dict[str, bytes]  # field name → file bytes, in the order asked for
    threshold: float | None
    detect: bool
    read_s: float
    release: Callable[[], None]  # gives the body's bytes back to BodyBytes; call once answered
    extra: dict[str, object] = dataclass_field(default_factory=dict)  # EXTRA_FIELDS, raw


@dataclass(frozen=True)
class BodyLimits:
    """How large, and how slow, a request body may be (from the service's settings)."""

    max_upload_bytes: int  # per image
    timeout_s: float = 120.0  # the whole body within this
    min_rate: float = 10_240.0  # bytes/s on average once grace_s has passed; 0 = no check
    grace_s: float = 5.0

    def wait_s(self, received: int, elapsed: float) -> float:
        """How long, from now, the next chunk may take before the body is too slow."""
        until = self.timeout_s
        if self.min_rate > 0:
            until = min(until, self.grace_s + received / self.min_rate)
        return until - elapsed


class BodyBytes:
    """Request-body bytes held at once across requests, from a body's first byte until its
    request is answered: the memory bound of uploads (docs/operations.md)."""

    def __init__(self, limit: int, retry_after_s: int = 1):
        self.limit, self.retry_after_s, self.held = limit, retry_after_s, 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise ServiceError("overloaded", f"too many request bodies in flight "
                               f"({self.held} bytes held); retry later",
                               headers={"Retry-After": str(self.retry_after_s),
                                        "Connection": "close"})  # the rest stays unread
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n


def _too_large(message: str, field: str | None = None,
               headers: dict[str, str] | None = None) -> ServiceError:
    return ServiceError("payload_too_large", message, field, headers)


class _Body:
    """The request's body stream, held to a size, a deadline, a rate and the shared bound."""

    def __init__(self, request: Request, limit: int, limits: BodyLimits, in_flight: BodyBytes):
        self.request, self.limit, self.limits, self.in_flight = request, limit, limits, in_flight
        self.received = 0  # bytes read, and held in `in_flight` until release()

    def _too_slow(self, elapsed: float) -> ServiceError:
        return ServiceError(
            "request_timeout",
            f"the request body was too slow: {self.received} bytes in {elapsed:.1f} s (send it "
            f"within {self.limits.timeout_s:g} s, at least {self.limits.min_rate:g} bytes/s)",
            headers={"Connection": "close"})

    async def stream(self) -> AsyncIterator[bytes]:
        started = time.monotonic()
        chunks = self.request.stream().__aiter__()
        while True:
            elapsed = time.monotonic() - started
            wait = self.limits.wait_s(self.received, elapsed)
            if wait <= 0:
                raise self._too_slow(elapsed)
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), wait)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise self._too_slow(time.monotonic() - started) from None
            if self.received + len(chunk) > self.limit:
                raise _too_large(f"request body is larger than {self.limit} bytes",
                                 headers={"Connection": "close"})  # the rest stays unread
            self.in_flight.take(len(chunk))
            self.received += len(chunk)
            yield chunk

    def release(self) -> None:
        self.in_flight.give(self.received)
        self.received = 0


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def body_limit(media_type: str, files: int, max_upload_bytes: int) -> int:
    per_file = max_upload_bytes if media_type == "multipart/form-data" \
        else math.ceil(max_upload_bytes / 3) * 4 + 4  # base64 expansion
    return files * per_file + MULTIPART_OVERHEAD


async def read_images(request: Request, fields: tuple[str, ...], limits: BodyLimits,
                      in_flight: BodyBytes) -> Intake:
    """Read `fields` (image uploads) and the optional `threshold` and `detect` fields. The
    body's bytes stay counted in `in_flight` until the caller calls `intake.release()`."""
    started = time.perf_counter()
    max_upload_bytes = limits.max_upload_bytes
    media = _media_type(request)
    if media == "multipart/form-data":
        kind = "multipart"
    elif media == "application/json" or (media.startswith("application/")
                                         and media.endswith("+json")):
        kind = "json"
    else:
        raise ServiceError(
            "unsupported_media_type",
            f"content type {media or '(none)'!r} is not accepted; send multipart/form-data "
            "with image files or application/json with base64 strings")
    limit = body_limit(media, len(fields), max_upload_bytes)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise ServiceError("validation_error", "invalid Content-Length header") from None
        if declared_n > limit:
            raise _too_large(f"request body of {declared_n} bytes is larger than the limit of "
                             f"{limit} bytes ({len(fields)} image(s) of at most "
                             f"{max_upload_bytes} bytes)")
    body = _Body(request, limit, limits, in_flight)
    try:
        if kind == "multipart":
            raw, extra = await _read_multipart(request, body.stream(), fields)
        else:
            raw, extra = await _read_json(body.stream(), fields)
        images = _check_images(raw, fields, max_upload_bytes)
        return Intake(images, parse_threshold(extra.get("threshold")),
                      parse_detect(extra.get("detect")), time.perf_counter() - started,
                      body.release, extra)
    except BaseException:
        body.release()
        raise


def _check_images(raw: dict[str, bytes], fields: tuple[str, ...], max_upload_bytes: int
                  ) -> dict[str, bytes]:
    images = {}
    for name in fields:
        data = raw.get(name)
        if data is None:
            raise ServiceError("validation_error", f"{name}: field required", name)
        if len(data) > max_upload_bytes:
            raise _too_large(f"{name} is {len(data)} bytes, more than the limit of "
                             f"{max_upload_bytes}", name)
        images[name] = data
    return images


async def _read_multipart(request: Request, stream, fields) -> tuple[dict, dict]:
    if "boundary=" not in request.headers.get("content-type", ""):
        raise ServiceError("validation_error", "multipart body without a boundary")
    parser = MultiPartParser(request.headers, stream, max_files=8, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServiceError("validation_error", f"malformed multipart body: {exc.message}"
                           ) from None
    raw: dict[str, bytes] = {}
    extra: dict[str, object] = {}
    try:
        for key, value in form.multi_items():
            if key in fields:
                if not isinstance(value, UploadFile):
                    raise ServiceError("validation_error",
                                       f"{key}: must be a file part (multipart) or a base64 "
                                       "string (JSON)", key)
                raw.setdefault(key, await value.read())
            elif key in EXTRA_FIELDS and isinstance(value, str):
                extra.setdefault(key, value)
    finally:
        await form.close()
    return raw, extra


async def _read_json(stream, fields) -> tuple[dict, dict]:
    """The JSON body's images, decoded one at a time: each copy of the body is let go as
    soon as the next exists (raw body → parsed strings → image bytes), so a request holds
    about its body's size twice at the peak, not the five copies a naive decode makes."""
    body = bytearray()
    async for chunk in stream:
        body += chunk
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServiceError("validation_error", f"body is not valid JSON: {exc}") from None
    finally:
        del body
    if not isinstance(doc, dict):
        raise ServiceError("validation_error", "JSON body must be an object")
    extra = _json_extra(doc)
    raw: dict[str, bytes] = {}
    for name in fields:
        value = doc.pop(name, None)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ServiceError("validation_error", f"{name}: must be a base64 string", name)
        raw[name] = decode_base64(value, name)
    return raw, extra


# JSON's own types for the other fields, as the OpenAPI schema declares them: a number is not a
# string there (multipart fields are text, parsed by parse_threshold/parse_flag/parse_int).
_JSON_TYPES = {"threshold": ((int, float), "a number"), "detect": (bool, "true or false"),
               "top_k": ((int, float), "an integer")}


def _json_extra(doc: dict) -> dict[str, object]:
    """The JSON body's EXTRA_FIELDS: null is the same as absent (the default), any other value
    must have the field's JSON type (its range is checked by the field's parser)."""
    extra = {}
    for name in EXTRA_FIELDS:
        value = doc.get(name)
        if value is None:
            continue
        types, what = _JSON_TYPES[name]
        if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
            raise ServiceError("validation_error", f"{name}: must be {what}", name)
        extra[name] = value
    return extra


_WHITESPACE = re.compile(r"\s")


def decode_base64(value: str, field: str) -> bytes:
    """Standard or URL-safe base64, with or without padding, line-wrapped or not, with or
    without a data: URL prefix. Copies of the text are made only for the forms that need
    them (plain standard base64 is decoded as it is)."""
    text = value.strip()
    if prefix := _DATA_URL.match(text):
        text = text[prefix.end():]
    if _WHITESPACE.search(text):
        text = "".join(text.split())  # line-wrapped base64 is fine
    if "-" in text or "_" in text:
        text = text.translate(_URL_SAFE)  # URL-safe alphabet
    if len(text) % 4:
        text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError("invalid_image", f"{field}: not valid base64", field) from None


_URL_SAFE = str.maketrans("-_", "+/")


def parse_threshold(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ServiceError("validation_error", "threshold: must be a number", "threshold")
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ServiceError("validation_error", "threshold: must be a number",
                           "threshold") from None
    if not math.isfinite(t) or not 0 < t <= 2:
        raise ServiceError("validation_error",
                           "threshold: must be in (0, 2] (Euclidean distance between unit "
                           "vectors)", "threshold")
    return t


def parse_int(value, field: str, default: int, low: int, high: int) -> int:
    """An integer field or query parameter in [low, high]; empty = default."""
    if value is None or value == "":
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON's 5.0 is the integer 5 (JSON Schema's `integer` too)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ServiceError("validation_error", f"{field}: must be an integer", field)
    try:
        n = int(value)
    except ValueError:
        raise ServiceError("validation_error", f"{field}: must be an integer", field) from None
    if not low <= n <= high:
        raise ServiceError("validation_error", f"{field}: must be from {low} to {high}", field)
    return n


def parse_detect(value) -> bool:
    return parse_flag(value, "detect", default=True)


def parse_flag(value, field: str, default: bool) -> bool:
    """A boolean field or query parameter: true/false, 1/0, yes/no, on/off; empty = default."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ServiceError("validation_error", f"{field}: must be true or false", field)
