"""Response models and OpenAPI examples for every route and every error."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.errors import ERROR_CODES

_FACE_EXAMPLE = {
    "box": [71.42, 62.9, 176.05, 197.33],
    "landmarks": [[101.2, 117.5], [146.8, 116.9], [125.3, 143.0], [106.1, 167.4],
                  [143.9, 166.8]],
    "score": 0.99982, "faces_found": 1, "rotation": 0,
}
_MODEL_EXAMPLE = {"name": "faceverify-encoder", "version": "0.3.0",
                  "sha256": "3f1c2a9e0b7d4c6a8e5f1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6"}


CROPS_DESCRIPTION = ("only with `?return_crops=true`: the aligned RGB crop of each face the "
                     "encoder compared (the model card's crop size: 150x150 for the default "
                     "encoder), as base64 PNG, in the order of the images; absent otherwise")
# A base64 string in JSON: `contentEncoding` is how OpenAPI 3.1 (JSON Schema 2020-12) says so,
# `format: byte` how OpenAPI 3.0 tools do.
BASE64 = {"type": "string", "format": "byte", "contentEncoding": "base64"}
Base64Png = Annotated[str, Field(json_schema_extra={**BASE64, "contentMediaType": "image/png"})]
RETURN_CROPS_PARAMETER = {
    "name": "return_crops", "in": "query", "required": False,
    "schema": {"type": "boolean", "default": False},
    "allowEmptyValue": True,  # `?return_crops=` is the default, false
    "description": "true: add `crops`, the aligned face crops the encoder saw (base64 "
                   "PNG), to the response (empty: false)",
}


class Face(BaseModel):
    """The face used from an image: the largest one when there are several."""

    box: list[float] | None = Field(None, description="[x1, y1, x2, y2] in the upright image's "
                                                      "pixels; null when detect=false")
    landmarks: list[list[float]] | None = Field(
        None, description="5 points [x, y]: left eye, right eye, nose, left and right mouth "
                          "corners; null when detect=false")
    score: float | None = Field(None, description="detector confidence; null when detect=false")
    faces_found: int = Field(..., description="faces detected in the image (0 when "
                                              "detect=false)")
    rotation: Literal[0, 90, 180, 270] = Field(0, description=(
        "degrees clockwise the (EXIF-upright) image was turned to find its face upright: "
        "non-zero for sideways or upside-down photos without an orientation tag; box and "
        "landmarks stay in the uploaded image's pixels"))
    model_config = ConfigDict(json_schema_extra={"example": _FACE_EXAMPLE})


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str
    model_config = ConfigDict(json_schema_extra={"example": _MODEL_EXAMPLE},
                              protected_namespaces=())


class Timings(BaseModel):
    read: float = Field(..., description="receiving and parsing the upload")
    detect_wait: float = Field(0.0, description="waiting for a detect worker to take up "
                                                "the request's first image")
    decode: float
    detect: float = Field(..., description="face detection and alignment of the image(s)")
    queue: float = Field(..., description="waiting in the dynamic batcher")
    encode: float = Field(..., description="the encoder forward pass of the batch")
    total: float = Field(..., description="the whole request inside the service")
    batch_size: int = Field(..., description="faces in the encoder batch this request rode in")


class VerifyResponse(BaseModel):
    verified: bool = Field(..., description="distance < threshold")
    distance: float = Field(..., description="Euclidean distance between the two unit "
                                             "embeddings, in [0, 2]")
    threshold: float = Field(..., description="the threshold used: the request's, else the "
                                              "server override, else the model card's")
    similarity: float = Field(..., description="cosine similarity, 1 - distance^2 / 2")
    model: ModelRef
    faces: list[Face]
    timings_ms: Timings
    crops: list[Base64Png] | None = Field(None, description=CROPS_DESCRIPTION)
    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"example": {
        "verified": True, "distance": 0.3124, "threshold": 0.4269, "similarity": 0.9512,
        "model": _MODEL_EXAMPLE, "faces": [_FACE_EXAMPLE, {**_FACE_EXAMPLE, "faces_found": 2}],
        "timings_ms": {"read": 0.4, "decode": 2.1, "detect": 61.7, "queue": 3.9,
                       "encode": 8.2, "total": 77.0, "batch_size": 6}}})


class EmbedResponse(BaseModel):
    embedding: list[float] = Field(..., description="the L2-normalised embedding")
    dim: int
    normalized: bool = True
    model: ModelRef
    face: Face
    timings_ms: Timings
    crops: list[Base64Png] | None = Field(None, description=CROPS_DESCRIPTION)
    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"example": {
        "embedding": [0.0132, -0.0871, 0.1204, "…"], "dim": 128, "normalized": True,
        "model": _MODEL_EXAMPLE, "face": _FACE_EXAMPLE,
        "timings_ms": {"read": 0.3, "decode": 1.2, "detect": 33.0, "queue": 2.5,
                       "encode": 5.1, "total": 43.0, "batch_size": 3}}})


# ------------------------------------------------------------------------------ galleries
class EnrollResponse(BaseModel):
    gallery: str
    subject: str
    face_id: str = Field(..., description="the stored face's id (for DELETE .../faces/{id})")
    face: Face
    model: ModelRef
    timings_ms: Timings
    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"example": {
        "gallery": "staff", "subject": "alice", "face_id": "9c1f0d3b6a2e4f7c8d5b1a0e3f6c9d2b",
        "face": _FACE_EXAMPLE, "model": _MODEL_EXAMPLE,
        "timings_ms": {"read": 0.3, "decode": 1.2, "detect": 3.9, "queue": 0.1,
                       "encode": 8.0, "total": 16.4, "batch_size": 1}}})


class Candidate(BaseModel):
    subject: str
    face_id: str = Field(..., description="the subject's enrolled face nearest the probe")
    distance: float = Field(..., description="Euclidean distance between unit embeddings")
    similarity: float = Field(..., description="cosine similarity, 1 - distance^2 / 2")
    match: bool = Field(..., description="distance < threshold")


class IdentifyTimings(Timings):
    search: float = Field(..., description="the exact search over the gallery's vectors")


class IdentifyResponse(BaseModel):
    candidates: list[Candidate] = Field(..., description="the top_k nearest subjects, each by "
                                                         "its nearest face, nearest first")
    threshold: float = Field(..., description="the match threshold used (see threshold_source)")
    threshold_source: Literal["fpir", "setting", "request", "card"] = Field(
        ..., description="fpir: the threshold that holds fpir_target at gallery_faces (the "
                         "model card's impostor table); setting: FACEVERIFY_GALLERY_THRESHOLD; "
                         "request: the request's own; card: the card's FAR 0.1 % threshold "
                         "(a card without an impostor table)")
    fpir_target: float | None = Field(..., description="the false-positive identification "
                                                       "rate the threshold holds (fpir only)")
    gallery_faces: int = Field(..., description="the gallery's searchable faces: N in "
                                                "FAR = fpir_target / N")
    threshold_note: str | None = Field(None, description="set when the gallery is too large "
                                                         "for the impostor table: its smallest "
                                                         "FAR's threshold is used")
    face: Face
    model: ModelRef
    timings_ms: IdentifyTimings
    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"example": {
        "candidates": [{"subject": "alice", "face_id": "9c1f0d3b6a2e4f7c8d5b1a0e3f6c9d2b",
                        "distance": 0.3012, "similarity": 0.9546, "match": True},
                       {"subject": "bob", "face_id": "0b7e1c2d3f4a5b6c7d8e9f0a1b2c3d4e",
                        "distance": 0.6633, "similarity": 0.78, "match": False}],
        "threshold": 0.3546, "threshold_source": "fpir", "fpir_target": 0.01,
        "gallery_faces": 80, "threshold_note": None, "face": _FACE_EXAMPLE,
        "model": _MODEL_EXAMPLE,
        "timings_ms": {"read": 0.3, "decode": 1.2, "detect": 3.9, "queue": 0.1,
                       "encode": 8.0, "search": 0.2, "total": 16.6, "batch_size": 1}}})


class SubjectVerifyResponse(VerifyResponse):
    """/verify's answer, against the subject's enrolled face nearest the probe."""

    subject: str
    face_id: str = Field(..., description="the enrolled face compared")


class Subject(BaseModel):
    subject: str
    faces: int


class SubjectsResponse(BaseModel):
    subjects: list[Subject]
    next: str | None = Field(..., description="cursor for the next page; null on the last")
    model_config = ConfigDict(json_schema_extra={"example": {
        "subjects": [{"subject": "alice", "faces": 3}, {"subject": "bob", "faces": 1}],
        "next": "bob"}})


class Live(BaseModel):
    status: str = "alive"
    model_config = ConfigDict(json_schema_extra={"example": {"status": "alive"}})


class Ready(BaseModel):
    status: str
    model: ModelRef
    device: str
    precision: str
    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"example": {
        "status": "ready", "model": _MODEL_EXAMPLE, "device": "cuda:0", "precision": "fp16"}})


class ErrorDetail(BaseModel):
    code: str = Field(..., description="one of: " + ", ".join(ERROR_CODES))
    message: str
    field: str | None = Field(None, description="the request field at fault, when there is one")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _err(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"value": {"error": {"code": code, "message": message, "field": field}}}


ERROR_EXAMPLES: dict[int, dict[str, dict[str, Any]]] = {
    400: {"invalid_image": _err("invalid_image", "image1: cannot decode image: image file is "
                                                 "truncated", "image1"),
          "bad_base64": _err("invalid_image", "image2: not valid base64", "image2")},
    401: {"unauthorized": _err("unauthorized", "missing API key", "X-API-Key")},
    403: {"forbidden": _err("forbidden", "key 'door' may not verify here", "X-API-Key")},
    404: {"not_found": _err("not_found", "no such route")},
    409: {"model_mismatch": _err("model_mismatch", "gallery 'staff' holds 12 face(s) embedded "
                                 "by other weights than the loaded ones (3f1c2a9e0b7d…); their "
                                 "vectors cannot be compared with this model's. Run `python -m"
                                 " app.gallery reembed` (needs stored crops), or delete and "
                                 "re-enroll those subjects")},
    408: {"request_timeout": _err("request_timeout", "the request body was too slow: 12 bytes "
                                  "in 5.0 s (send it within 120 s, at least 10240 bytes/s)")},
    413: {"payload_too_large": _err("payload_too_large", "image1 is 12582912 bytes, more "
                                    "than the limit of 10485760", "image1"),
          "decompression_bomb": _err("payload_too_large", "image2: image has 400000000 "
                                     "pixels, more than the limit of 40000000", "image2")},
    415: {"unsupported_media_type": _err("unsupported_media_type", "content type "
                                         "'text/plain' is not accepted; send multipart/form-"
                                         "data with image files or application/json with "
                                         "base64 strings"),
          "unsupported_format": _err("unsupported_media_type", "image1: image format PPM is "
                                     "not supported", "image1")},
    422: {"no_face_detected": _err("no_face_detected", "image2: no face detected in the "
                                   "image", "image2"),
          "validation_error": _err("validation_error", "image2: field required", "image2"),
          "threshold_above_cap": _err("validation_error", "threshold: 0.9 is looser than this "
                                      "server allows (at most 0.4305)", "threshold")},
    500: {"internal_error": _err("internal_error", "internal error (request id "
                                 "3b9f6c1e2a7d4f00)")},
    503: {"overloaded": _err("overloaded", "the encoder queue is full (256 of 256 faces "
                             "waiting)"),
          "not_ready": _err("not_ready", "the service is starting up; retry later")},
}
# what only the gallery routes answer
GALLERY_ERROR_EXAMPLES = {
    401: {"no_keys_configured": _err("unauthorized", "galleries hold biometric data and this "
                                     "server has no API keys: set FACEVERIFY_API_KEYS_FILE "
                                     "(scoped keys) or FACEVERIFY_API_KEYS", "X-API-Key")},
    403: {"forbidden": _err("forbidden", "key 'door' may not enroll in gallery 'staff'",
                            "X-API-Key")},
    409: {"idempotency_conflict": _err("idempotency_conflict", "Idempotency-Key was already "
                                       "used for another subject in this gallery",
                                       "Idempotency-Key")},
    503: {"store_unavailable": _err("store_unavailable", "the gallery store is unreachable; "
                                    "retry later"),
          "store_stale": _err("store_stale", "this replica has not reached its gallery store "
                              "for 16 s (more than 15 s): its copy may hold deleted faces; "
                              "retry later")},
}
_ERROR_DESCRIPTIONS = {
    400: "invalid_image: empty, truncated or not an image, or broken base64",
    401: "unauthorized: API keys are configured and none or an unknown one was sent (or, on "
         "the gallery routes, no keys are configured at all)",
    403: "forbidden: the key is valid but its scope does not cover this gallery or operation",
    404: "not_found: no such gallery, subject or face",
    409: "model_mismatch: the gallery holds faces embedded by other weights than the loaded "
         "ones (re-embed them: python -m app.gallery reembed); idempotency_conflict: the "
         "enroll's Idempotency-Key was used for another subject",
    408: "request_timeout: the body did not arrive within body_timeout_s, or slower than "
         "min_body_rate; the connection is closed",
    413: "payload_too_large: upload over max_upload_bytes, or more pixels than max_pixels",
    415: "unsupported_media_type: body is not multipart/form-data or JSON, or an image format "
         "that is not accepted",
    422: "no_face_detected, or validation_error (missing field, bad threshold/detect, a "
         "threshold above max_client_threshold, malformed body)",
    500: "internal_error (no details; see the server log line with the same request id)",
    503: "overloaded (queue full, too many requests in progress, too many bodies arriving, "
         "or the request waited longer than max_detect_wait_ms for a slot or a detect worker), "
         "not_ready (warming up), store_unavailable (the gallery database cannot be "
         "reached), or store_stale (this replica has not heard from its store within "
         "FACEVERIFY_GALLERY_MAX_STALENESS_S); has a Retry-After header",
}


def error_responses(*statuses: int, gallery: bool = False) -> dict[int, dict[str, Any]]:
    """OpenAPI responses for these statuses; `gallery`: with the gallery routes' own cases."""
    out: dict[int, dict[str, Any]] = {}
    for s in statuses:
        examples = ERROR_EXAMPLES.get(s, {}) | (GALLERY_ERROR_EXAMPLES.get(s, {}) if gallery
                                                else {})
        if gallery and s == 404:
            examples = {"not_found": _err("not_found", "no subject 'alice' in gallery 'staff'")}
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[s],
                                 "content": {"application/json": {"examples": examples}}}
        if s == 503:
            entry["headers"] = {"Retry-After": {"description": "seconds to wait",
                                                "schema": {"type": "integer"}}}
        out[s] = entry
    return out


# The JSON example of an image field: a complete image (a 1x1 PNG), so that the example is valid
# base64 of a decodable image (its answer is the documented 422 no_face_detected).
EXAMPLE_IMAGE_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+k"
                     "cQAAAABJRU5ErkJggg==")
IMAGE_FORMATS = "JPEG, PNG, WebP, BMP, TIFF, GIF"
THRESHOLD_DESCRIPTION = ("verification threshold (Euclidean distance between unit embeddings); "
                         "default: the server override or the model card's; at most the "
                         "server's max_client_threshold (422 above it; this server's value is "
                         "the `maximum` of the schema a running server serves)")
IDENTIFY_THRESHOLD_DESCRIPTION = ("match threshold (Euclidean distance); default: the one that "
                                  "holds FACEVERIFY_GALLERY_FPIR at the gallery's size; at most "
                                  "the identify cap, which depends on the gallery's size (422 "
                                  "above it)")


def upload_request_body(fields: list[str], example_b64: str = EXAMPLE_IMAGE_B64,
                        options: tuple[str, ...] | None = None) -> dict:
    """The OpenAPI requestBody for an image route: multipart files or JSON base64 strings,
    with the `options` fields (default: threshold and detect for two images, detect for
    one). The threshold's `maximum` is the widest the schema knows (2); a running server
    declares its own cap (`declare_server_limits`)."""
    file_props = {f: {"type": "string", "format": "binary",
                      "contentMediaType": "application/octet-stream",
                      "description": f"image file ({IMAGE_FORMATS})"} for f in fields}
    b64_props = {f: {**BASE64, "description": f"base64 image ({IMAGE_FORMATS}); the URL-safe "
                     "alphabet, missing padding, line breaks and a data: URL prefix are also "
                     "accepted; anything else is 400 invalid_image"} for f in fields}
    threshold = {"type": "number", "exclusiveMinimum": 0, "maximum": 2,
                 "description": IDENTIFY_THRESHOLD_DESCRIPTION if "top_k" in (options or ())
                 else THRESHOLD_DESCRIPTION}
    common = {
        "threshold": threshold,
        "detect": {"type": "boolean", "default": True,
                   "description": "false: the image is already an aligned face crop "
                                  "(resized to the model card's crop size, no detection)"},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5,
                  "description": "how many subjects to return (each by its nearest face)"},
    }
    if options is None:
        options = ("threshold", "detect") if len(fields) > 1 else ("detect",)
    common = {k: common[k] for k in options}
    # form fields are text: a boolean is also read from 1/0, yes/no, on/off, and an empty field
    # is the default; in JSON, null is the default (any other value needs the JSON type)
    form = {k: v if k != "detect" else {**v, "description": v["description"] + "; as text: "
                                        "true/false, 1/0, yes/no or on/off, empty: the default"}
            for k, v in common.items()}
    json_fields = {k: {**v, "type": [v["type"], "null"],
                       "description": v["description"] + "; null: the default"}
                   for k, v in common.items()}
    return {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": fields,
                                           "properties": {**file_props, **form}}},
        "application/json": {
            "schema": {"type": "object", "required": fields,
                       "properties": {**b64_props, **json_fields}},
            "example": {**{f: example_b64 for f in fields},
                        **({"threshold": 0.4} if "threshold" in options else {})}},
    }}


# ------------------------------------------------------------- what a running server declares
IDENTIFY_PATH = "/galleries/{gallery}/identify"


def install_openapi(app) -> None:
    """`app.openapi()` (and so /openapi.json and /docs) with what this server enforces: who
    must send a key (from the settings), and once the weights are loaded, the threshold caps
    (from the model card). FastAPI still builds and caches the schema; the declaration is
    written into it on each call (a few keys), so it is right whenever it is asked for."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        return declare_server_limits(build(), app)

    app.openapi = openapi


def declare_server_limits(spec: dict[str, Any], app) -> dict[str, Any]:
    """Write into `spec` what this server enforces: no `security` on the routes with a key
    check (app/auth.py) that are open here (no keys configured: /verify, /embed, /model; and
    the galleries when anonymous ones are allowed), and the `maximum` of each `threshold`:
    /verify's and subject verify's `max_client_threshold`, identify's widest cap (a gallery
    of one face: the cap tightens as the gallery grows). Before the weights are loaded the
    thresholds keep the schema's (0, 2]."""
    settings = app.state.settings
    keys_configured = bool(settings.api_keys) or settings.api_keys_file is not None
    svc = app.state.service
    for path, ops in spec.get("paths", {}).items():
        for op in ops.values():
            # a route with a key check (app/auth.py) is open where no key is asked for
            gallery_route = path.startswith("/galleries/")
            if "security" in op and not keys_configured and not (
                    gallery_route and not settings.gallery_allow_anonymous):
                del op["security"]
            for media in op.get("requestBody", {}).get("content", {}).values():
                th = media.get("schema", {}).get("properties", {}).get("threshold")
                if th is None or svc.max_client_threshold is None:
                    continue
                if path == IDENTIFY_PATH:
                    th["maximum"], text = identify_cap(svc.identify_thresholds)
                else:
                    th["maximum"] = svc.max_client_threshold
                    text = (f"verification threshold (Euclidean distance between unit "
                            f"embeddings); default: {svc.threshold:g}; at most "
                            f"{svc.max_client_threshold:g}, this server's max_client_threshold "
                            "(a looser one is 422 validation_error)")
                th["description"] = text + ("; null: the default" if th["type"] != "number" else "")
    return spec


def identify_cap(thresholds) -> tuple[float, str]:
    """The loosest threshold identify accepts in any gallery, and the rule, in words."""
    widest = thresholds.cap(1)  # N counts as at least 1; the cap only tightens as N grows
    if thresholds.table is None:
        rule = (f"at most {widest:g} in every gallery (the model card has no impostor table: "
                "/verify's max_client_threshold)")
    else:
        rule = (f"at most the identify cap for the gallery's N faces: the model card's "
                f"impostor-table distance at FAR = {thresholds.max_client_fpir:g} / N "
                "(FACEVERIFY_GALLERY_MAX_CLIENT_FPIR), never below the default threshold; "
                f"it tightens as the gallery grows, so `maximum` ({widest:g}) is its value "
                "for a gallery of one face, and a larger gallery may answer 422 "
                "validation_error below it (the message quotes that gallery's cap)")
    return widest, (f"match threshold (Euclidean distance); default: {thresholds.rule} (the "
                    f"answer's `threshold_source` says which was used); {rule}")
