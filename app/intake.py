"""Reading a request's images: multipart files or base64 strings in JSON.

The body size is enforced while it is read: a declared Content-Length over the limit is
refused before a byte is read, and a chunked body is counted as it streams in and refused as
soon as it passes the limit, so an oversized upload is never buffered whole. Each image is
then held to `max_upload_bytes` on its own.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.errors import ServiceError

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


@dataclass
class Intake:
    images: dict[str, bytes]  # field name → file bytes, in the order asked for
    threshold: float | None
    detect: bool
    read_s: float


def _too_large(message: str, field: str | None = None) -> ServiceError:
    return ServiceError("payload_too_large", message, field)


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise _too_large(f"request body is larger than {limit} bytes")
        yield chunk


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def body_limit(media_type: str, files: int, max_upload_bytes: int) -> int:
    per_file = max_upload_bytes if media_type == "multipart/form-data" \
        else math.ceil(max_upload_bytes / 3) * 4 + 4  # base64 expansion
    return files * per_file + MULTIPART_OVERHEAD


async def read_images(request: Request, fields: tuple[str, ...], max_upload_bytes: int
                      ) -> Intake:
    """Read `fields` (image uploads) and the optional `threshold` and `detect` fields."""
    started = time.perf_counter()
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
    stream = _limited(request.stream(), limit)
    if kind == "multipart":
        raw, extra = await _read_multipart(request, stream, fields)
    else:
        raw, extra = await _read_json(stream, fields)
    images = {}
    for name in fields:
        data = raw.get(name)
        if data is None:
            raise ServiceError("validation_error", f"{name}: field required", name)
        if len(data) > max_upload_bytes:
            raise _too_large(f"{name} is {len(data)} bytes, more than the limit of "
                             f"{max_upload_bytes}", name)
        images[name] = data
    return Intake(images, parse_threshold(extra.get("threshold")),
                  parse_detect(extra.get("detect")), time.perf_counter() - started)


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
            elif key in ("threshold", "detect") and isinstance(value, str):
                extra.setdefault(key, value)
    finally:
        await form.close()
    return raw, extra


async def _read_json(stream, fields) -> tuple[dict, dict]:
    body = bytearray()
    async for chunk in stream:
        body += chunk
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServiceError("validation_error", f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ServiceError("validation_error", "JSON body must be an object")
    raw: dict[str, bytes] = {}
    for name in fields:
        value = doc.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ServiceError("validation_error", f"{name}: must be a base64 string", name)
        raw[name] = decode_base64(value, name)
    return raw, {k: doc[k] for k in ("threshold", "detect") if k in doc}


def decode_base64(value: str, field: str) -> bytes:
    text = _DATA_URL.sub("", value.strip(), count=1)
    text = "".join(text.split())  # line-wrapped base64 is fine
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")  # URL-safe alphabet
    text += "=" * (-len(text) % 4) if not text.endswith("=") else ""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError("invalid_image", f"{field}: not valid base64", field) from None


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
