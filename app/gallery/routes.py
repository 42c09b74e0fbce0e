"""HTTP routes of the 1:N galleries (docs/api.md, "Galleries"): the same auth, body limits,
errors and metrics as /verify; the work is in app/gallery/service.py."""
from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from app.auth import require
from app.gallery.service import GalleryService
from app.intake import parse_int
from app.routes import request_timings, service_of, uploaded
from app.schemas import (
    EnrollResponse,
    IdentifyResponse,
    SubjectsResponse,
    SubjectVerifyResponse,
    error_responses,
    upload_request_body,
)
from app.service import ms

NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
MAX_TOP_K = 100
Name = Annotated[str, Path(pattern=NAME_PATTERN, description="1-64 of A-Z a-z 0-9 . _ -")]

router = APIRouter(prefix="/galleries", tags=["galleries"])
_ERRORS = error_responses(400, 401, 403, 404, 408, 409, 413, 415, 422, 500, 503, gallery=True)
_SMALL_ERRORS = error_responses(401, 403, 404, 422, 500, 503, gallery=True)


def scope(operation: str) -> list:
    """The route's key check (app/auth.py), run before the body is read."""
    return [Depends(require(operation, gallery_route=True))]


def gallery_of(request: Request) -> GalleryService:
    svc = service_of(request)
    svc.require_ready()
    return svc.gallery


@router.post("/{gallery}/subjects/{subject}/faces", status_code=201,
             response_model=EnrollResponse, responses=_ERRORS, dependencies=scope("enroll"),
             summary="Enroll the largest face of an image under a subject",
             openapi_extra={"requestBody": upload_request_body(["image"])},
             description="Detects, aligns and embeds the image's face (as /embed) and stores "
                         "its vector under (gallery, subject); the gallery is created by its "
                         "first face. Committed before the 201. With an `Idempotency-Key`, a "
                         "retry (same key, same subject, within 24 h) gets the first answer "
                         "again, with `Idempotent-Replayed: true`, and stores nothing new.")
async def enroll(request: Request, gallery: Name, subject: Name,
                 idempotency_key: Annotated[str | None, Header(
                     alias="Idempotency-Key", min_length=1, max_length=255,
                     description="any unique string (a UUID) chosen by the client per "
                                 "enrollment; kept 24 h")] = None) -> JSONResponse:
    started = time.perf_counter()
    svc = service_of(request)
    g = gallery_of(request)

    def answer(face_id: str, probe) -> dict:
        return EnrollResponse(
            gallery=gallery, subject=subject, face_id=face_id, face=probe.face.describe(),
            model=svc.model_ref,
            timings_ms=request_timings(probe.timings_ms, intake.read_s, started)
        ).model_dump(mode="json")

    async with uploaded(request, ("image",)) as intake:
        body, replayed = await g.enroll(gallery, subject, intake.images["image"],
                                        intake.detect, idempotency_key, answer)
    return JSONResponse(body, status_code=201,
                        headers={"Idempotent-Replayed": "true"} if replayed else None)


@router.post("/{gallery}/identify", response_model=IdentifyResponse, responses=_ERRORS,
             dependencies=scope("identify"),
             summary="Who is this? The gallery's nearest subjects",
             openapi_extra={"requestBody": upload_request_body(
                 ["image"], options=("top_k", "threshold", "detect"))},
             description="Embeds the image's face and searches the gallery exactly: the "
                         "`top_k` nearest subjects, each by its nearest face. `match` is "
                         "`distance < threshold`. The default threshold holds a false-positive "
                         "identification rate (FACEVERIFY_GALLERY_FPIR, 1 %) at the gallery's "
                         "current size, so it tightens as the gallery grows; the reply's "
                         "`threshold`, `threshold_source`, `fpir_target` and `gallery_faces` "
                         "say which was used and why.")
async def identify(request: Request, gallery: Name) -> JSONResponse:
    started = time.perf_counter()
    svc = service_of(request)
    g = gallery_of(request)
    async with uploaded(request, ("image",)) as intake:
        top_k = parse_int(intake.extra.get("top_k", request.query_params.get("top_k")),
                          "top_k", 5, 1, MAX_TOP_K)
        th = svc.identify_thresholds.resolve(intake.threshold, g.faces_in(gallery))
        hits, probe, search_s = await g.identify(gallery, intake.images["image"], top_k,
                                                 intake.detect)
    body = IdentifyResponse(
        candidates=[{"subject": h.subject, "face_id": h.face_id, "distance": h.distance,
                     "similarity": h.similarity, "match": h.distance < th.value}
                    for h in hits],
        threshold=th.value, threshold_source=th.source, fpir_target=th.fpir_target,
        gallery_faces=th.gallery_faces, threshold_note=th.note,
        face=probe.face.describe(), model=svc.model_ref,
        timings_ms=request_timings({**probe.timings_ms, "search": ms(search_s)},
                                   intake.read_s, started))
    return JSONResponse(body.model_dump(mode="json"))


@router.post("/{gallery}/subjects/{subject}/verify", response_model=SubjectVerifyResponse,
             responses=_ERRORS, dependencies=scope("identify"),
             summary="Is this the subject? /verify against the subject's "
                                        "nearest enrolled face",
             openapi_extra={"requestBody": upload_request_body(
                 ["image"], options=("threshold", "detect"))})
async def verify_subject(request: Request, gallery: Name, subject: Name) -> JSONResponse:
    started = time.perf_counter()
    svc = service_of(request)
    g = gallery_of(request)
    async with uploaded(request, ("image",)) as intake:
        threshold = svc.check_threshold(intake.threshold)
        hit, probe = await g.nearest(gallery, subject, intake.images["image"], intake.detect)
    body = SubjectVerifyResponse(
        verified=hit.distance < threshold, distance=hit.distance, threshold=threshold,
        similarity=hit.similarity, model=svc.model_ref, faces=[probe.face.describe()],
        timings_ms=request_timings(probe.timings_ms, intake.read_s, started),
        subject=subject, face_id=hit.face_id)
    return JSONResponse(body.model_dump(mode="json", exclude={"crops"}))


@router.get("/{gallery}/subjects", response_model=SubjectsResponse,
            responses=_SMALL_ERRORS, dependencies=scope("list"),
            summary="The gallery's subjects and their number of faces, by name")
async def list_subjects(request: Request, gallery: Name,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                        cursor: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None
                        ) -> SubjectsResponse:
    rows, nxt = await gallery_of(request).subjects(gallery, limit, cursor)
    return SubjectsResponse(subjects=[{"subject": s, "faces": n} for s, n in rows], next=nxt)


@router.delete("/{gallery}/subjects/{subject}", status_code=204,
               responses=_SMALL_ERRORS, dependencies=scope("delete"),
               summary="Delete a subject and all its faces (from the store and every "
                       "replica's search)")
async def delete_subject(request: Request, gallery: Name, subject: Name) -> Response:
    await gallery_of(request).delete_subject(gallery, subject)
    return Response(status_code=204)


@router.delete("/{gallery}/subjects/{subject}/faces/{face_id}", status_code=204,
               responses=_SMALL_ERRORS, dependencies=scope("delete"), summary="Delete one face")
async def delete_face(request: Request, gallery: Name, subject: Name,
                      face_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]) -> Response:
    await gallery_of(request).delete_face(gallery, subject, face_id)
    return Response(status_code=204)
