"""A typed HTTP client for a running faceverify service (docs/api.md), on httpx.

    import uuid

    from faceverify import Client, FaceverifyError

    with Client("http://127.0.0.1:8000", api_key="s3cret") as fv:
        r = fv.verify("a.jpg", "b.jpg")              # a path, bytes or a binary file object
        print(r.verified, r.distance, r.threshold)
        fv.enroll("staff", "alice", "alice.jpg", idempotency_key=str(uuid.uuid4()))
        best = fv.identify("staff", "door.jpg", top_k=3).candidates[0]
        try:
            fv.embed(b"not an image")
        except FaceverifyError as e:
            print(e.status, e.code, e.field, e.message)   # 400 invalid_image image ...

`AsyncClient` has the same constructor and the same methods, as coroutines
(`async with AsyncClient(...) as fv: r = await fv.verify(...)`).

Every reply is a frozen dataclass that mirrors the server's JSON (app/schemas.py), with the
whole JSON kept in its `raw` field. Every non-2xx answer raises `FaceverifyError` with the
server's error code (`{"error": {"code", "message", "field"}}`). Transport failures (connection
refused, a timeout, a dropped connection) are not turned into `FaceverifyError`: they raise
httpx's own exceptions (`httpx.TransportError` and its subclasses, e.g. `httpx.ConnectError`,
`httpx.TimeoutException`), and are never retried, since an upload that was sent may have been
acted on.

Retry policy: a 503 (`not_ready`, `overloaded`, `store_unavailable`, `store_stale`) is retried
up to `max_retries` times, each time after the server's `Retry-After` (seconds, or an HTTP
date; 1 s when absent), capped at `max_retry_wait_s`; then it is raised. Only requests that
may be replayed are retried: verify, embed, identify, verify_subject, subjects and model, and
enroll when it carries an `idempotency_key`. An enroll without one and the deletes are sent
once: the server commits a gallery write before it re-reads its store, so a 503
`store_unavailable` can follow a write that did happen. A replayed enroll would then store a
second face, and a replayed delete would answer 404 `not_found` for a deletion that succeeded.
"""
from __future__ import annotations

import asyncio
import base64
import email.utils
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import quote

import httpx

__all__ = [
    "AsyncClient", "Candidate", "Client", "EmbedResult", "EnrollResult", "Face",
    "FaceverifyError", "IdentifyResult", "ImageInput", "ModelRef", "Subject",
    "SubjectVerifyResult", "SubjectsPage", "VerifyResult",
]

# A path (str or os.PathLike: a str is always a path, never image data), the image's bytes,
# or a binary file object open for reading (read from its current position).
ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]

DEFAULT_RETRY_WAIT_S = 1.0  # a 503 without Retry-After (a proxy's, say)
_USER_AGENT = "faceverify-client"


# ------------------------------------------------------------------------------------ errors
class FaceverifyError(Exception):
    """A non-2xx answer from the service.

    Attributes:
        status: the HTTP status (e.g. 422).
        code: the server's error code (`no_face_detected`, `invalid_image`,
            `validation_error`, `unauthorized`, `forbidden`, `not_found`, `overloaded`,
            `not_ready`, ...; docs/api.md "Errors"), or None when the answer did not carry
            the service's error shape (e.g. an HTML page from a proxy in front of it).
        message: the server's message (or the start of a body without the error shape).
        field: the request field at fault (`image1`, `threshold`, `X-API-Key`, ...) or None.
        retry_after: seconds from the `Retry-After` header (503s carry one), else None.
        request_id: the `X-Request-ID` the server answered with: the id of its log line.
    """

    def __init__(self, message: str, *, status: int, code: str | None = None,
                 field: str | None = None, retry_after: float | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(f"{status} {code or 'error'}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.request_id = request_id

    @classmethod
    def from_response(cls, response: httpx.Response) -> FaceverifyError:
        """The error an answer stands for (its body read already)."""
        code = message = fld = None
        try:
            body = response.json()
        except ValueError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            code = err.get("code") if isinstance(err.get("code"), str) else None
            message = err.get("message") if isinstance(err.get("message"), str) else None
            fld = err.get("field") if isinstance(err.get("field"), str) else None
        if message is None:
            message = response.text.strip()[:200] or response.reason_phrase
        return cls(message, status=response.status_code, code=code, field=fld,
                   retry_after=retry_after_s(response.headers),
                   request_id=response.headers.get("x-request-id"))


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date; never negative), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# ----------------------------------------------------------------------------------- results
@dataclass(frozen=True, kw_only=True)
class ModelRef:
    """The weights that answered: `model` in every reply."""

    name: str
    version: str
    sha256: str

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> ModelRef:
        return cls(name=d["name"], version=d["version"], sha256=d["sha256"])


@dataclass(frozen=True, kw_only=True)
class Face:
    """The face used from an image (the largest, by default, when there are several).

    `box` is (x1, y1, x2, y2) and `landmarks` 5 (x, y) points (eyes, nose, mouth corners),
    in the uploaded image's pixels; `box`, `landmarks` and `score` are None with
    detect=False. `faces_found`: faces detected in the image (0 with detect=False).
    `rotation`: degrees clockwise the image was turned to find the face upright."""

    box: tuple[float, ...] | None
    landmarks: tuple[tuple[float, ...], ...] | None
    score: float | None
    faces_found: int
    rotation: int = 0

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> Face:
        box, marks = d.get("box"), d.get("landmarks")
        return cls(box=None if box is None else tuple(box),
                   landmarks=None if marks is None else tuple(tuple(p) for p in marks),
                   score=d.get("score"), faces_found=d["faces_found"],
                   rotation=d.get("rotation", 0))


def _crops(d: Mapping[str, Any]) -> tuple[bytes, ...] | None:
    crops = d.get("crops")
    return None if crops is None else tuple(base64.b64decode(c) for c in crops)


@dataclass(frozen=True, kw_only=True)
class VerifyResult:
    """`POST /verify`: are the two faces the same person?

    `verified` is `distance < threshold`; `distance` is the Euclidean distance between the
    two unit embeddings (in [0, 2]); `similarity` the cosine, 1 - distance**2 / 2;
    `threshold` the one used (the request's, else the server's). `faces`: the face used from
    each image. `timings_ms`: the server's stage times (read, decode, detect, queue, encode,
    total, batch_size, ...). `crops`: with return_crops=True, the aligned face crops the
    encoder compared, as PNG bytes; else None. `raw`: the whole JSON reply."""

    verified: bool
    distance: float
    threshold: float
    similarity: float
    model: ModelRef
    faces: tuple[Face, ...]
    timings_ms: dict[str, float]
    crops: tuple[bytes, ...] | None = None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> VerifyResult:
        return cls(**_verify_fields(d))


def _verify_fields(d: dict[str, Any]) -> dict[str, Any]:
    return {"verified": d["verified"], "distance": d["distance"],
            "threshold": d["threshold"], "similarity": d["similarity"],
            "model": ModelRef.of(d["model"]), "faces": tuple(Face.of(f) for f in d["faces"]),
            "timings_ms": dict(d["timings_ms"]), "crops": _crops(d), "raw": d}


@dataclass(frozen=True, kw_only=True)
class SubjectVerifyResult(VerifyResult):
    """`POST /galleries/{gallery}/subjects/{subject}/verify`: /verify's answer against the
    subject's enrolled face nearest the probe (`face_id`); `faces` holds the probe's face."""

    subject: str
    face_id: str

    @classmethod
    def of(cls, d: dict[str, Any]) -> SubjectVerifyResult:
        return cls(**_verify_fields(d), subject=d["subject"], face_id=d["face_id"])


@dataclass(frozen=True, kw_only=True)
class EmbedResult:
    """`POST /embed`: the unit embedding (`dim` floats) of the image's face. Embeddings
    compare by Euclidean distance, as /verify compares them."""

    embedding: tuple[float, ...]
    dim: int
    normalized: bool
    model: ModelRef
    face: Face
    timings_ms: dict[str, float]
    crops: tuple[bytes, ...] | None = None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> EmbedResult:
        return cls(embedding=tuple(d["embedding"]), dim=d["dim"],
                   normalized=d.get("normalized", True), model=ModelRef.of(d["model"]),
                   face=Face.of(d["face"]), timings_ms=dict(d["timings_ms"]), crops=_crops(d),
                   raw=d)


@dataclass(frozen=True, kw_only=True)
class EnrollResult:
    """`POST /galleries/{gallery}/subjects/{subject}/faces` (201): the stored face's id
    (for `delete_face`). `replayed`: True when the server answered a retry of an earlier
    enrollment with the same `idempotency_key` and stored nothing new."""

    gallery: str
    subject: str
    face_id: str
    face: Face
    model: ModelRef
    timings_ms: dict[str, float]
    replayed: bool = False
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, d: dict[str, Any], replayed: bool = False) -> EnrollResult:
        return cls(gallery=d["gallery"], subject=d["subject"], face_id=d["face_id"],
                   face=Face.of(d["face"]), model=ModelRef.of(d["model"]),
                   timings_ms=dict(d["timings_ms"]), replayed=replayed, raw=d)


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One subject of an identify, by its enrolled face nearest the probe;
    `match` is `distance < threshold`."""

    subject: str
    face_id: str
    distance: float
    similarity: float
    match: bool

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> Candidate:
        return cls(subject=d["subject"], face_id=d["face_id"], distance=d["distance"],
                   similarity=d["similarity"], match=d["match"])


@dataclass(frozen=True, kw_only=True)
class IdentifyResult:
    """`POST /galleries/{gallery}/identify`: the `top_k` nearest subjects, nearest first.

    `threshold_source` says where `threshold` came from: `fpir` (holds `fpir_target`, the
    false-positive identification rate, at `gallery_faces` enrolled faces), `setting`,
    `request` or `card`; `threshold_note` is set when the gallery outgrew the model card's
    impostor table. `face`: the probe's face. `timings_ms` includes `search`."""

    candidates: tuple[Candidate, ...]
    threshold: float
    threshold_source: str
    fpir_target: float | None
    gallery_faces: int
    threshold_note: str | None
    face: Face
    model: ModelRef
    timings_ms: dict[str, float]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> IdentifyResult:
        return cls(candidates=tuple(Candidate.of(c) for c in d["candidates"]),
                   threshold=d["threshold"], threshold_source=d["threshold_source"],
                   fpir_target=d.get("fpir_target"), gallery_faces=d["gallery_faces"],
                   threshold_note=d.get("threshold_note"), face=Face.of(d["face"]),
                   model=ModelRef.of(d["model"]), timings_ms=dict(d["timings_ms"]), raw=d)


@dataclass(frozen=True, kw_only=True)
class Subject:
    """A gallery's subject and how many faces it has enrolled."""

    subject: str
    faces: int


@dataclass(frozen=True, kw_only=True)
class SubjectsPage:
    """`GET /galleries/{gallery}/subjects`: one page of subjects, by name. `next` is the
    cursor for the following page (pass it as `cursor`), None on the last page."""

    subjects: tuple[Subject, ...]
    next: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, d: dict[str, Any]) -> SubjectsPage:
        return cls(subjects=tuple(Subject(subject=s["subject"], faces=s["faces"])
                                  for s in d["subjects"]), next=d.get("next"), raw=d)


# ------------------------------------------------------------------------- requests (shared)
@dataclass
class _Call:
    """One request, described once for both clients: sent (and re-sent) as is."""

    method: str
    path: str
    retry: bool
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] | None = None


def _segment(name: str) -> str:
    """A gallery, subject or face id as one percent-encoded URL path segment. The server
    judges names (1-64 of A-Z a-z 0-9 . _ -, else 422), except the ones it could not see as
    sent, which are refused here: it decodes `%2F` back into a path separator, and `.` and
    `..` are dot segments that URL normalisation removes."""
    if not isinstance(name, str):
        raise TypeError(f"a gallery, subject or face id must be a str, not "
                        f"{type(name).__name__}")
    if name in ("", ".", "..") or "/" in name:
        raise ValueError(f"{name!r} cannot be a gallery, subject or face id (1-64 of "
                         "A-Z a-z 0-9 . _ -)")
    return quote(name, safe="")


def _read_image(image: ImageInput) -> tuple[str, bytes]:
    """(file name, bytes) of an image given as a path, bytes or a binary file object."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "image", bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.name or "image", path.read_bytes()
    read = getattr(image, "read", None)
    if read is None:
        raise TypeError(f"an image must be a path, bytes or a binary file object, not "
                        f"{type(image).__name__}")
    data = read()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("the image's file object must be opened in binary mode ('rb')")
    name = getattr(image, "name", None)
    return (os.path.basename(name) if isinstance(name, str) and name else "image"), bytes(data)


def _files(images: _Images) -> dict[str, tuple[str, bytes, str]]:
    # The server reads the image format from the bytes; the part only has to be a file part.
    return {k: (name, data, "application/octet-stream") for k, (name, data) in images.items()}


def _form(threshold: float | None = None, detect: bool = True,
          top_k: int | None = None) -> dict[str, str]:
    data: dict[str, str] = {} if detect else {"detect": "false"}
    if threshold is not None:
        data["threshold"] = repr(float(threshold))
    if top_k is not None:
        data["top_k"] = str(int(top_k))
    return data


def _crops_param(return_crops: bool) -> dict[str, str] | None:
    return {"return_crops": "true"} if return_crops else None


_Images = dict[str, tuple[str, bytes]]  # field → (file name, bytes)


def _verify_call(images: _Images, threshold: float | None, detect: bool,
                 return_crops: bool) -> _Call:
    return _Call("POST", "/verify", True, files=_files(images), data=_form(threshold, detect),
                 params=_crops_param(return_crops))


def _embed_call(images: _Images, detect: bool, return_crops: bool) -> _Call:
    return _Call("POST", "/embed", True, files=_files(images), data=_form(detect=detect),
                 params=_crops_param(return_crops))


def _enroll_call(gallery: str, subject: str, images: _Images, detect: bool,
                 idempotency_key: str | None) -> _Call:
    return _Call("POST", f"/galleries/{_segment(gallery)}/subjects/{_segment(subject)}/faces",
                 idempotency_key is not None, files=_files(images), data=_form(detect=detect),
                 headers=None if idempotency_key is None
                 else {"Idempotency-Key": idempotency_key})


def _identify_call(gallery: str, images: _Images, top_k: int | None,
                   threshold: float | None, detect: bool) -> _Call:
    return _Call("POST", f"/galleries/{_segment(gallery)}/identify", True,
                 files=_files(images), data=_form(threshold, detect, top_k))


def _verify_subject_call(gallery: str, subject: str, images: _Images,
                         threshold: float | None, detect: bool) -> _Call:
    return _Call("POST", f"/galleries/{_segment(gallery)}/subjects/{_segment(subject)}/verify",
                 True, files=_files(images), data=_form(threshold, detect))


def _subjects_call(gallery: str, limit: int | None, cursor: str | None) -> _Call:
    params: dict[str, str] = {}
    if limit is not None:
        params["limit"] = str(int(limit))
    if cursor is not None:
        params["cursor"] = cursor
    return _Call("GET", f"/galleries/{_segment(gallery)}/subjects", True, params=params or None)


def _delete_subject_call(gallery: str, subject: str) -> _Call:
    return _Call("DELETE", f"/galleries/{_segment(gallery)}/subjects/{_segment(subject)}", False)


def _delete_face_call(gallery: str, subject: str, face_id: str) -> _Call:
    return _Call("DELETE", f"/galleries/{_segment(gallery)}/subjects/{_segment(subject)}"
                           f"/faces/{_segment(face_id)}", False)


_HEALTH = _Call("GET", "/health/ready", False)
_MODEL = _Call("GET", "/model", True)


def _replayed(response: httpx.Response) -> bool:
    return response.headers.get("idempotent-replayed", "").lower() == "true"


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": _USER_AGENT}
    if api_key is not None:
        headers["X-API-Key"] = api_key
    return headers


class _Base:
    def __init__(self, max_retries: int, max_retry_wait_s: float) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if max_retry_wait_s < 0:
            raise ValueError("max_retry_wait_s must be >= 0")
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s

    def _wait_before_retry(self, call: _Call, response: httpx.Response,
                           attempt: int) -> float | None:
        """Seconds to wait before sending `call` again, or None to answer with `response`."""
        if response.status_code != 503 or not call.retry or attempt >= self.max_retries:
            return None
        wait = retry_after_s(response.headers)
        return min(DEFAULT_RETRY_WAIT_S if wait is None else wait, self.max_retry_wait_s)

    @staticmethod
    def _checked(response: httpx.Response) -> httpx.Response:
        if not response.is_success:
            raise FaceverifyError.from_response(response)
        return response


# -------------------------------------------------------------------------------- the clients
class Client(_Base):
    """A blocking client for a faceverify service.

    Args:
        base_url: the service's address, e.g. "http://127.0.0.1:8000".
        api_key: sent as `X-API-Key` on every request (docs/api.md "Authentication");
            None sends none (the open routes of a server without keys).
        timeout: seconds for each of connecting, sending, waiting and reading (httpx's).
        max_retries: how many times a 503 is retried (0: never); see the module's policy.
        max_retry_wait_s: the longest wait before one retry, whatever `Retry-After` says.
        transport: an httpx transport to send through instead of httpx's default one
            (e.g. `httpx.HTTPTransport(verify=ssl_context, cert=...)`, or a proxy's).

    Every method raises `FaceverifyError` for a non-2xx answer, and httpx's own exceptions
    for transport failures. Use it as a context manager, or call `close()`.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 3, max_retry_wait_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(max_retries, max_retry_wait_s)
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key),
                                  timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        self._http.close()

    def _send(self, call: _Call, check: bool = True) -> httpx.Response:
        attempt = 0
        while True:
            response = self._http.request(call.method, call.path, files=call.files,
                                          data=call.data, params=call.params,
                                          headers=call.headers)
            wait = self._wait_before_retry(call, response, attempt)
            if wait is None:
                return self._checked(response) if check else response
            time.sleep(wait)
            attempt += 1

    def verify(self, image1: ImageInput, image2: ImageInput, *, threshold: float | None = None,
               detect: bool = True, return_crops: bool = False) -> VerifyResult:
        """Are the faces in the two images the same person? (`POST /verify`)

        Args:
            image1, image2: a path, bytes, or a binary file object each.
            threshold: a Euclidean-distance threshold in (0, 2] instead of the server's;
                a looser one than the server allows is 422 `validation_error`.
            detect: False when the images are already aligned face crops.
            return_crops: also return the aligned crops the encoder compared (PNG bytes).
        """
        images = {"image1": _read_image(image1), "image2": _read_image(image2)}
        return VerifyResult.of(self._send(
            _verify_call(images, threshold, detect, return_crops)).json())

    def embed(self, image: ImageInput, *, detect: bool = True,
              return_crops: bool = False) -> EmbedResult:
        """The unit embedding of the image's face (`POST /embed`); arguments as `verify`."""
        return EmbedResult.of(self._send(
            _embed_call({"image": _read_image(image)}, detect, return_crops)).json())

    def health(self) -> bool:
        """Whether the service is ready to serve (`GET /health/ready`: 200 True, 503 False;
        not retried). Any other answer raises `FaceverifyError`, a connection failure
        httpx's exception."""
        response = self._send(_HEALTH, check=False)
        if response.status_code == 503:
            return False
        return self._checked(response).status_code == 200

    def model(self) -> dict[str, Any]:
        """The model card of the loaded weights (`GET /model`), as JSON."""
        return self._send(_MODEL).json()

    def enroll(self, gallery: str, subject: str, image: ImageInput, *,
               idempotency_key: str | None = None, detect: bool = True) -> EnrollResult:
        """Enroll the image's face under `subject` in `gallery`
        (`POST /galleries/{gallery}/subjects/{subject}/faces`; the gallery is created by its
        first face).

        Without `idempotency_key` the request is sent once, never retried: each enroll stores
        a face. With one (any unique string up to 255 characters, e.g. `str(uuid.uuid4())`,
        reused for the same enrollment), 503s are retried and a replay of an enrollment the
        server already stored returns its first answer (`replayed=True`) and stores nothing.
        """
        response = self._send(_enroll_call(gallery, subject, {"image": _read_image(image)},
                                           detect, idempotency_key))
        return EnrollResult.of(response.json(), _replayed(response))

    def identify(self, gallery: str, image: ImageInput, *, top_k: int | None = None,
                 threshold: float | None = None, detect: bool = True) -> IdentifyResult:
        """Who is this? The gallery's nearest subjects (`POST /galleries/{gallery}/identify`).

        Args:
            top_k: how many subjects (1-100); None: the server's default, 5.
            threshold: the match threshold instead of the gallery's default (which holds a
                1 % false-positive identification rate at the gallery's size).
        """
        return IdentifyResult.of(self._send(_identify_call(
            gallery, {"image": _read_image(image)}, top_k, threshold, detect)).json())

    def verify_subject(self, gallery: str, subject: str, image: ImageInput, *,
                       threshold: float | None = None, detect: bool = True
                       ) -> SubjectVerifyResult:
        """Is this `subject`? /verify against the subject's enrolled face nearest the image
        (`POST /galleries/{gallery}/subjects/{subject}/verify`); /verify's threshold."""
        return SubjectVerifyResult.of(self._send(_verify_subject_call(
            gallery, subject, {"image": _read_image(image)}, threshold, detect)).json())

    def subjects(self, gallery: str, *, limit: int | None = None,
                 cursor: str | None = None) -> SubjectsPage:
        """One page of the gallery's subjects, by name (`GET /galleries/{gallery}/subjects`).
        `limit`: 1-1000 (None: the server's 100); `cursor`: the previous page's `next`."""
        return SubjectsPage.of(self._send(_subjects_call(gallery, limit, cursor)).json())

    def delete_subject(self, gallery: str, subject: str) -> None:
        """Delete the subject and all its faces (`DELETE /galleries/{gallery}/subjects/
        {subject}`). Sent once, never retried: a 503 can follow a deletion that was
        committed, and a replay would answer 404 `not_found`."""
        self._send(_delete_subject_call(gallery, subject))

    def delete_face(self, gallery: str, subject: str, face_id: str) -> None:
        """Delete one enrolled face (`DELETE /galleries/{gallery}/subjects/{subject}/faces/
        {face_id}`). Sent once, never retried (as `delete_subject`)."""
        self._send(_delete_face_call(gallery, subject, face_id))


class AsyncClient(_Base):
    """The asyncio client: `Client`'s constructor (with an `httpx.AsyncBaseTransport`, e.g.
    `httpx.ASGITransport(app=app)`) and its methods, as coroutines. Use it as an async
    context manager, or call `aclose()`. Files and paths are read in a worker thread."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 3, max_retry_wait_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(max_retries, max_retry_wait_s)
        self.base_url = base_url
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key),
                                       timeout=timeout, transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        await self._http.aclose()

    async def _send(self, call: _Call, check: bool = True) -> httpx.Response:
        attempt = 0
        while True:
            response = await self._http.request(call.method, call.path, files=call.files,
                                                data=call.data, params=call.params,
                                                headers=call.headers)
            wait = self._wait_before_retry(call, response, attempt)
            if wait is None:
                return self._checked(response) if check else response
            await asyncio.sleep(wait)
            attempt += 1

    @staticmethod
    async def _read(image: ImageInput) -> tuple[str, bytes]:
        if isinstance(image, (bytes, bytearray, memoryview)):
            return _read_image(image)
        return await asyncio.to_thread(_read_image, image)

    async def verify(self, image1: ImageInput, image2: ImageInput, *,
                     threshold: float | None = None, detect: bool = True,
                     return_crops: bool = False) -> VerifyResult:
        """Are the faces in the two images the same person? See `Client.verify`."""
        images = {"image1": await self._read(image1), "image2": await self._read(image2)}
        return VerifyResult.of((await self._send(
            _verify_call(images, threshold, detect, return_crops))).json())

    async def embed(self, image: ImageInput, *, detect: bool = True,
                    return_crops: bool = False) -> EmbedResult:
        """The unit embedding of the image's face. See `Client.embed`."""
        return EmbedResult.of((await self._send(
            _embed_call({"image": await self._read(image)}, detect, return_crops))).json())

    async def health(self) -> bool:
        """Whether the service is ready (200 True, 503 False). See `Client.health`."""
        response = await self._send(_HEALTH, check=False)
        if response.status_code == 503:
            return False
        return self._checked(response).status_code == 200

    async def model(self) -> dict[str, Any]:
        """The model card of the loaded weights. See `Client.model`."""
        return (await self._send(_MODEL)).json()

    async def enroll(self, gallery: str, subject: str, image: ImageInput, *,
                     idempotency_key: str | None = None, detect: bool = True) -> EnrollResult:
        """Enroll the image's face; retried only with an `idempotency_key`. See
        `Client.enroll`."""
        response = await self._send(_enroll_call(
            gallery, subject, {"image": await self._read(image)}, detect, idempotency_key))
        return EnrollResult.of(response.json(), _replayed(response))

    async def identify(self, gallery: str, image: ImageInput, *, top_k: int | None = None,
                       threshold: float | None = None, detect: bool = True
                       ) -> IdentifyResult:
        """The gallery's nearest subjects. See `Client.identify`."""
        return IdentifyResult.of((await self._send(_identify_call(
            gallery, {"image": await self._read(image)}, top_k, threshold, detect))).json())

    async def verify_subject(self, gallery: str, subject: str, image: ImageInput, *,
                             threshold: float | None = None, detect: bool = True
                             ) -> SubjectVerifyResult:
        """/verify against one enrolled subject. See `Client.verify_subject`."""
        return SubjectVerifyResult.of((await self._send(_verify_subject_call(
            gallery, subject, {"image": await self._read(image)}, threshold, detect))).json())

    async def subjects(self, gallery: str, *, limit: int | None = None,
                       cursor: str | None = None) -> SubjectsPage:
        """One page of the gallery's subjects. See `Client.subjects`."""
        return SubjectsPage.of((await self._send(_subjects_call(gallery, limit, cursor))).json())

    async def delete_subject(self, gallery: str, subject: str) -> None:
        """Delete a subject and its faces; never retried. See `Client.delete_subject`."""
        await self._send(_delete_subject_call(gallery, subject))

    async def delete_face(self, gallery: str, subject: str, face_id: str) -> None:
        """Delete one enrolled face; never retried. See `Client.delete_face`."""
        await self._send(_delete_face_call(gallery, subject, face_id))
