"""HTTP routes: /verify, /embed, /health/*, /metrics, /model, and the demo page."""
from __future__ import annotations

import base64
import io
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image

from app.auth import require
from app.errors import ServiceError, error_response
from app.intake import parse_flag, read_images
from app.schemas import (
    RETURN_CROPS_PARAMETER,
    EmbedResponse,
    Live,
    Ready,
    VerifyResponse,
    error_responses,
    upload_request_body,
)
from app.service import Service, ms
from model.encoder.weights import json_safe

router = APIRouter()
STATIC_DIR = Path(__file__).with_name("static")
DEMO_PAGE = STATIC_DIR / "index.html"
# The demo page's own files (no build step, nothing fetched from elsewhere).
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
# Only this origin: the page loads no external script, style, font or image, and talks only
# to this service (photos are previewed from blob: URLs, crops from data: URLs).
DEMO_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def service_of(request: Request) -> Service:
    return request.app.state.service


def wants_crops(request: Request) -> bool:
    return parse_flag(request.query_params.get("return_crops"), "return_crops", default=False)


def crop_png_base64(crop: np.ndarray) -> str:
    """An aligned (S, S, 3) uint8 RGB crop as base64 PNG (lossless: the encoder's input)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop), "RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def reply_with_crops(model, faces, with_crops: bool):
    """The response model; with `?return_crops=true` it also carries the crops. Without it
    the JSON has no `crops` key at all, so the default reply is exactly as before."""
    if not with_crops:
        return JSONResponse(model.model_dump(mode="json", exclude={"crops"}))
    model.crops = [crop_png_base64(f.crop) for f in faces]
    return JSONResponse(model.model_dump(mode="json"))


@asynccontextmanager
async def uploaded(request: Request, fields: tuple[str, ...]):
    """The request's images, read under the body limits; their bytes count against
    `max_body_bytes_in_flight` until the answer. The service's concurrency slot is taken only
    after this (Service.embed_images), so a slow upload holds its bytes, never a slot an
    honest request needs."""
    svc = service_of(request)
    svc.require_ready()
    intake = await read_images(request, fields, svc.body_limits, svc.body_bytes)
    svc.metrics.stage_duration.labels(stage="read").observe(intake.read_s)
    try:
        yield intake
    finally:
        intake.release()


def request_timings(service_ms: dict, read_s: float, started: float) -> dict:
    return {"read": ms(read_s), **service_ms, "total": ms(time.perf_counter() - started)}


UPLOAD_ERRORS = error_responses(400, 401, 403, 408, 413, 415, 422, 500, 503)


@router.post(
    "/verify", response_model=VerifyResponse, responses=UPLOAD_ERRORS, tags=["faces"],
    dependencies=[Depends(require("verify"))],
    summary="Are the two faces the same person?",
    openapi_extra={"requestBody": upload_request_body(["image1", "image2"]),
                   "parameters": [RETURN_CROPS_PARAMETER]},
    description="Detects the largest face in each image (of the faces the detector is sure "
                "of; FACEVERIFY_FACE_CHOICE), aligns it, embeds both (in the face workers "
                "on the CPU, in one encoder batch on a GPU), and compares the unit "
                "embeddings: `verified` is `distance < threshold`.")
async def verify(request: Request) -> VerifyResponse:
    started = time.perf_counter()
    with_crops = wants_crops(request)
    svc = service_of(request)
    async with uploaded(request, ("image1", "image2")) as intake:
        v = await svc.verify(intake.images["image1"], intake.images["image2"], intake.detect,
                             intake.threshold, keep_crops=with_crops)
    return reply_with_crops(VerifyResponse(
        verified=v.verified, distance=v.distance, threshold=v.threshold,
        similarity=v.similarity, model=svc.model_ref, faces=[f.describe() for f in v.faces],
        timings_ms=request_timings(v.timings_ms, intake.read_s, started)), v.faces, with_crops)


@router.post(
    "/embed", response_model=EmbedResponse, responses=UPLOAD_ERRORS, tags=["faces"],
    dependencies=[Depends(require("verify"))],
    summary="The unit embedding of the largest face in an image",
    openapi_extra={"requestBody": upload_request_body(["image"]),
                   "parameters": [RETURN_CROPS_PARAMETER]})
async def embed(request: Request) -> EmbedResponse:
    started = time.perf_counter()
    with_crops = wants_crops(request)
    svc = service_of(request)
    async with uploaded(request, ("image",)) as intake:
        out = await svc.embed(intake.images["image"], intake.detect, keep_crops=with_crops)
    vec = out.embeddings[0].tolist()
    return reply_with_crops(EmbedResponse(embedding=vec, dim=len(vec), normalized=True,
                                model=svc.model_ref, face=out.faces[0].describe(),
                                timings_ms=request_timings(out.timings_ms, intake.read_s, started)),
                  out.faces, with_crops)


@router.get("/health/live", response_model=Live, tags=["health"],
            responses=error_responses(500, 503),
            summary="The process is up (503 only when warm-up failed)")
async def live(request: Request):
    svc = service_of(request)
    if svc.warmup_error:  # restart me; the reason is in the server log, never in a reply
        return error_response("not_ready", "warm-up failed; see the server log")
    return Live()


@router.get("/health/ready", response_model=Ready, tags=["health"],
            responses=error_responses(500, 503),
            summary="Weights loaded and warmed up (else 503 not_ready)")
async def ready(request: Request):
    svc = service_of(request)
    if not svc.ready:
        try:
            svc.require_ready()
        except ServiceError as exc:
            request.state.error_code = exc.code
            return error_response(exc.code, exc.message, headers=exc.headers)
    return Ready(status="ready", model=svc.model_ref, device=str(svc.device),
                 precision=svc.runner.precision)


@router.get("/metrics", tags=["health"], response_class=Response,
            summary="Prometheus metrics (text format)",
            responses={200: {"content": {"text/plain": {"example":
                       "faceverify_batch_size_bucket{le=\"4.0\"} 12.0\n"}}},
                       **error_responses(500)})
async def metrics(request: Request) -> Response:
    m = service_of(request).metrics
    return Response(m.render(), media_type=m.content_type)


@router.get("/model", tags=["model"], dependencies=[Depends(require(None))],
            responses={200: {"description": "the model card (JSON written beside the weights)",
                             "content": {"application/json": {"example": {
                                 "name": "faceverify-encoder", "version": "0.2.0",
                                 "embedding_dim": 128, "threshold": {"value": 1.04},
                                 "weights_sha256": "3f1c…"}}}},
                       **error_responses(401, 500, 503)},
            summary="The model card of the loaded weights")
async def model_card(request: Request):
    svc = service_of(request)
    if svc.card is None:
        svc.require_ready()
    return JSONResponse(json_safe(svc.card))


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
async def demo_page() -> HTMLResponse:
    return HTMLResponse(DEMO_PAGE.read_text(encoding="utf-8"), headers=DEMO_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
async def demo_static(name: str) -> FileResponse:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise ServiceError("not_found", f"no static file {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=DEMO_HEADERS)
