"""faceverify.Client and AsyncClient against the real service: the app in-process over
httpx's ASGI transport (real lifespan, the default weights, real LFW photos, a SQLite gallery
in a temporary directory) for the async client, and a real uvicorn subprocess
(bench.server.Server) for the blocking one. Nothing of the server is mocked; the 503s are
those of a server that is still warming up."""
from __future__ import annotations

import asyncio
import io
import itertools
import json
import math
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.keys import new_key
from faceverify import AsyncClient, Client, FaceverifyError
from faceverify.client import (
    EmbedResult,
    IdentifyResult,
    SubjectVerifyResult,
    VerifyResult,
    retry_after_s,
)
from tests.conftest import lfw_photo
from tests.service_support import DEFAULT_WEIGHTS, encode, gradient, running_server
from tests.test_api import serving, settings_for

pytestmark = pytest.mark.timeout(300)


def no_face_jpeg() -> bytes:
    return encode(gradient(), "JPEG")


class Recording(httpx.AsyncBaseTransport):
    """The ASGI transport, noting each answer's (path, status, time sent); `on_503` runs once,
    at the first 503."""

    def __init__(self, app, on_503=None):
        self.inner = httpx.ASGITransport(app=app)
        self.seen: list[tuple[str, int, float]] = []
        self.on_503 = on_503

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.monotonic()
        response = await self.inner.handle_async_request(request)
        self.seen.append((request.url.path, response.status_code, sent))
        if response.status_code == 503 and self.on_503 is not None:
            self.on_503, hook = None, self.on_503
            hook()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def client_for(app, api_key: str | None = None, **kw) -> AsyncClient:
    return AsyncClient("http://test", api_key, transport=httpx.ASGITransport(app=app), **kw)


# ----------------------------------------------------------------------- verify and embed
def test_async_client_verifies_embeds_and_reports_the_servers_errors():
    powell1, powell2 = lfw_photo("Colin_Powell", 1), lfw_photo("Colin_Powell", 2)

    async def go(file_object):
        async with serving(settings_for(DEFAULT_WEIGHTS)) as (app, _), client_for(app) as fv:
            assert await fv.health() is True
            card = await fv.model()
            # images as a Path, a str path, bytes and a binary file object
            same = await fv.verify(powell1, str(powell2))
            other = await fv.verify(lfw_photo("Tony_Blair", 1).read_bytes(), file_object)
            strict = await fv.verify(powell1, powell2, threshold=0.05, return_crops=True)
            e1 = await fv.embed(powell1)
            e2 = await fv.embed(io.BytesIO(powell2.read_bytes()))
            crop = (await fv.embed(powell1, return_crops=True)).crops[0]
            aligned = await fv.embed(crop, detect=False)
            errors = {}
            for name, call in {
                "not_an_image": fv.verify(b"this is not an image", powell2),
                "no_face": fv.verify(powell1, no_face_jpeg()),
                "loose_threshold": fv.verify(powell1, powell2, threshold=1.9),
                "empty": fv.embed(b""),
            }.items():
                with pytest.raises(FaceverifyError) as info:
                    await call
                errors[name] = info.value
        return card, same, other, strict, e1, e2, aligned, errors

    with open(powell2, "rb") as f:
        card, same, other, strict, e1, e2, aligned, errors = asyncio.run(go(f))
    assert card["name"] == "faceverify-encoder" and "threshold" in card

    assert isinstance(same, VerifyResult) and same.verified is True
    assert other.verified is False and other.distance > same.distance
    for r in (same, other):
        assert r.distance == r.raw["distance"] and r.threshold == r.raw["threshold"]
        assert math.isclose(r.similarity, 1 - r.distance ** 2 / 2, abs_tol=1e-3)
        assert len(r.faces) == 2 and r.faces[0].faces_found >= 1
        assert len(r.faces[0].box) == 4 and len(r.faces[0].landmarks) == 5
        assert r.faces[0].rotation == 0 and 0 < r.faces[0].score <= 1
        assert r.model.name == "faceverify-encoder" and len(r.model.sha256) == 64
        assert r.timings_ms["total"] > 0 and r.crops is None and "crops" not in r.raw
    assert strict.threshold == 0.05 and strict.verified is False
    assert [c[:8] for c in strict.crops] == [b"\x89PNG\r\n\x1a\n"] * 2

    assert isinstance(e1, EmbedResult) and e1.dim == len(e1.embedding) == 128
    assert e1.normalized and math.isclose(sum(x * x for x in e1.embedding), 1, abs_tol=1e-4)
    assert math.dist(e1.embedding, e2.embedding) == pytest.approx(same.distance, abs=1e-3)
    assert e1.face == same.faces[0] and e1.model == same.model
    # the aligned crop sent back with detect=False: no detection, the same face
    assert aligned.face.box is None and aligned.face.faces_found == 0
    assert math.dist(aligned.embedding, e1.embedding) < 0.1

    e = errors["not_an_image"]
    assert (e.status, e.code, e.field) == (400, "invalid_image", "image1")
    assert e.message and e.request_id and e.retry_after is None
    assert "400 invalid_image" in str(e)
    assert (errors["no_face"].status, errors["no_face"].code,
            errors["no_face"].field) == (422, "no_face_detected", "image2")
    assert (errors["loose_threshold"].status, errors["loose_threshold"].code,
            errors["loose_threshold"].field) == (422, "validation_error", "threshold")
    assert (errors["empty"].code, errors["empty"].field) == ("invalid_image", "image")


def test_images_and_names_the_client_refuses_before_sending():
    async def go():
        async with AsyncClient("http://127.0.0.1:9") as fv:  # nothing is sent
            with pytest.raises(TypeError, match="binary mode"):
                await fv.embed(io.StringIO("text"))
            with pytest.raises(TypeError, match="path, bytes or a binary file"):
                await fv.embed(12345)  # type: ignore[arg-type]
            for bad in ("a/b", "..", ""):
                with pytest.raises(ValueError):
                    await fv.delete_subject("staff", bad)
    asyncio.run(go())
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past
    assert retry_after_s({}) is None and retry_after_s({"retry-after": "soon"}) is None
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:9", max_retries=-1)


# ------------------------------------------------------------------------------ galleries
def test_async_client_galleries_with_scoped_keys(tmp_path):
    admin = new_key("admin", ["*"], ["*"])
    door = new_key("door", ["staff"], ["identify"])
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([admin["entry"], door["entry"]]))
    settings = settings_for(DEFAULT_WEIGHTS, gallery_url=f"sqlite:///{tmp_path}/gallery.db",
                            api_keys_file=keys_file)

    async def go():
        out = {}
        async with serving(settings) as (app, _):
            async with client_for(app, admin["key"]) as hr, \
                    client_for(app, door["key"]) as terminal:
                enrolled = {}
                for name in ("Colin_Powell", "George_W_Bush", "Tony_Blair"):
                    r = await hr.enroll("staff", name, lfw_photo(name, 1))
                    enrolled[name] = r
                first = await hr.enroll("staff", "Tony_Blair", lfw_photo("Tony_Blair", 2),
                                        idempotency_key="enroll-blair-2")
                again = await hr.enroll("staff", "Tony_Blair", lfw_photo("Tony_Blair", 2),
                                        idempotency_key="enroll-blair-2")
                out["enrolled"], out["first"], out["again"] = enrolled, first, again
                out["page1"] = await hr.subjects("staff", limit=2)
                out["page2"] = await hr.subjects("staff", limit=2, cursor=out["page1"].next)
                out["who"] = await terminal.identify("staff", lfw_photo("Tony_Blair", 3))
                out["top1"] = await terminal.identify("staff", lfw_photo("Colin_Powell", 3),
                                                      top_k=1, threshold=0.3)
                out["is_blair"] = await terminal.verify_subject(
                    "staff", "Tony_Blair", lfw_photo("Tony_Blair", 3))
                out["not_bush"] = await terminal.verify_subject(
                    "staff", "George_W_Bush", lfw_photo("Tony_Blair", 3))
                errors = {}
                for name, call in {
                    "door_enrolls": terminal.enroll("staff", "intruder",
                                                    lfw_photo("Laura_Bush", 1)),
                    "door_lists": terminal.subjects("staff"),
                    "other_gallery": terminal.identify("board", lfw_photo("Tony_Blair", 3)),
                    "conflict": hr.enroll("staff", "Colin_Powell", lfw_photo("Tony_Blair", 2),
                                          idempotency_key="enroll-blair-2"),
                    "bad_name": hr.subjects("sta ff"),
                    "bad_top_k": terminal.identify("staff", lfw_photo("Tony_Blair", 3),
                                                   top_k=101),
                }.items():
                    with pytest.raises(FaceverifyError) as info:
                        await call
                    errors[name] = info.value
                await hr.delete_face("staff", "Tony_Blair", first.face_id)
                await hr.delete_subject("staff", "George_W_Bush")
                out["after"] = await hr.subjects("staff")
                for name, call in {
                    "gone_subject": hr.delete_subject("staff", "George_W_Bush"),
                    "gone_face": hr.delete_face("staff", "Tony_Blair", first.face_id),
                }.items():
                    with pytest.raises(FaceverifyError) as info:
                        await call
                    errors[name] = info.value
                out["errors"] = errors
            async with client_for(app) as anonymous:
                with pytest.raises(FaceverifyError) as info:
                    await anonymous.subjects("staff")
                errors["no_key"] = info.value
        return out

    out = asyncio.run(go())
    enrolled, first, again = out["enrolled"], out["first"], out["again"]
    blair = enrolled["Tony_Blair"]
    assert (blair.gallery, blair.subject, blair.replayed) == ("staff", "Tony_Blair", False)
    assert len(blair.face_id) == 32 and blair.face.faces_found >= 1
    assert first.replayed is False and again.replayed is True
    assert again.face_id == first.face_id and again.raw == first.raw

    page1, page2 = out["page1"], out["page2"]
    assert [(s.subject, s.faces) for s in page1.subjects] == [("Colin_Powell", 1),
                                                              ("George_W_Bush", 1)]
    assert page1.next == "George_W_Bush" and page2.next is None
    assert [(s.subject, s.faces) for s in page2.subjects] == [("Tony_Blair", 2)]

    who = out["who"]
    assert isinstance(who, IdentifyResult)
    assert sorted(c.subject for c in who.candidates) == ["Colin_Powell", "George_W_Bush",
                                                         "Tony_Blair"]
    assert who.candidates[0].subject == "Tony_Blair"
    assert [c.distance for c in who.candidates] == sorted(c.distance for c in who.candidates)
    best = who.candidates[0]
    assert best.match is True and best.face_id in (blair.face_id, first.face_id)
    assert best.distance < who.threshold and sum(c.match for c in who.candidates) == 1
    assert (who.threshold_source, who.fpir_target, who.gallery_faces) == ("fpir", 0.01, 4)
    assert who.threshold_note is None and "search" in who.timings_ms
    top1 = out["top1"]
    assert len(top1.candidates) == 1 and top1.candidates[0].subject == "Colin_Powell"
    assert (top1.threshold, top1.threshold_source) == (0.3, "request")

    is_blair, not_bush = out["is_blair"], out["not_bush"]
    assert isinstance(is_blair, SubjectVerifyResult) and isinstance(is_blair, VerifyResult)
    assert is_blair.verified is True and is_blair.subject == "Tony_Blair"
    assert is_blair.face_id in (blair.face_id, first.face_id) and len(is_blair.faces) == 1
    assert not_bush.verified is False and not_bush.face_id == enrolled["George_W_Bush"].face_id

    assert [(s.subject, s.faces) for s in out["after"].subjects] == [("Colin_Powell", 1),
                                                                     ("Tony_Blair", 1)]
    errors = out["errors"]
    for name in ("door_enrolls", "door_lists", "other_gallery"):
        e = errors[name]
        assert (e.status, e.code, e.field) == (403, "forbidden", "X-API-Key"), name
        assert "door" in e.message
    assert (errors["conflict"].status, errors["conflict"].code) == (409, "idempotency_conflict")
    assert (errors["bad_name"].status, errors["bad_name"].code) == (422, "validation_error")
    assert (errors["bad_top_k"].code, errors["bad_top_k"].field) == ("validation_error", "top_k")
    for name in ("gone_subject", "gone_face"):
        assert (errors[name].status, errors[name].code) == (404, "not_found")
    assert (errors["no_key"].status, errors["no_key"].code) == (401, "unauthorized")


# ------------------------------------------------------------------- 503 and Retry-After
def test_503_is_retried_after_retry_after_and_writes_are_not_replayed(monkeypatch):
    """A server still warming up answers 503 not_ready with Retry-After: 2. The client
    raises it at once with max_retries=0, caps its waits at max_retry_wait_s, never replays
    an enroll without an idempotency key nor a delete, and, once the warm-up goes on
    (released at the first 503 of the last part), waits Retry-After and gets the answer."""
    from app.faces import FaceStage
    gate, entered = threading.Event(), threading.Event()
    real_warm_up = FaceStage.warm_up

    def held_warm_up(self):
        entered.set()
        assert gate.wait(60)
        real_warm_up(self)

    monkeypatch.setattr(FaceStage, "warm_up", held_warm_up)
    powell1, powell2 = lfw_photo("Colin_Powell", 1), lfw_photo("Colin_Powell", 2)
    settings = settings_for(DEFAULT_WEIGHTS, retry_after_s=2, gallery_allow_anonymous=True)

    async def go():
        out = {}
        async with serving(settings, ready=False) as (app, _):
            try:
                assert await asyncio.to_thread(entered.wait, 60)

                async def attempt(name, max_retries, call, **kw):
                    rec = Recording(app)
                    async with AsyncClient("http://test", transport=rec,
                                           max_retries=max_retries, **kw) as fv:
                        started = time.monotonic()
                        try:
                            out[name] = await call(fv)
                        except FaceverifyError as exc:
                            out[name] = exc
                        out[name + "_s"] = time.monotonic() - started
                    out[name + "_seen"] = rec.seen

                await attempt("health", 3, lambda fv: fv.health())
                await attempt("no_retries", 0, lambda fv: fv.verify(powell1, powell2))
                await attempt("capped", 2, lambda fv: fv.verify(powell1, powell2),
                              max_retry_wait_s=0.1)
                await attempt("enroll", 3, lambda fv: fv.enroll("staff", "alice", powell1))
                await attempt("delete", 3, lambda fv: fv.delete_subject("staff", "alice"))

                # the last part: the first 503 lets the warm-up go on
                rec = Recording(app, on_503=gate.set)
                async with AsyncClient("http://test", transport=rec, max_retries=10) as fv:
                    started = time.monotonic()
                    out["verify"], out["keyed"] = await asyncio.gather(
                        fv.verify(powell1, powell2),
                        fv.enroll("staff", "alice", powell1, idempotency_key="alice-1"))
                    out["verify_s"] = time.monotonic() - started
                    out["ready"] = await fv.health()
                out["verify_seen"] = rec.seen
            finally:
                gate.set()
        return out

    out = asyncio.run(go())
    assert out["health"] is False and len(out["health_seen"]) == 1  # health is not retried

    e = out["no_retries"]
    assert isinstance(e, FaceverifyError)
    assert (e.status, e.code, e.retry_after) == (503, "not_ready", 2.0)
    assert [s for _, s, _ in out["no_retries_seen"]] == [503]

    e = out["capped"]
    assert (e.status, e.code) == (503, "not_ready")
    assert [s for _, s, _ in out["capped_seen"]] == [503, 503, 503]  # 1 + max_retries
    assert out["capped_s"] < 1.5  # two waits of 0.1 s, not of 2 s

    for name in ("enroll", "delete"):
        e = out[name]
        assert (e.status, e.code) == (503, "not_ready"), name
        assert [s for _, s, _ in out[name + "_seen"]] == [503], name  # sent once

    assert isinstance(out["verify"], VerifyResult) and out["verify"].verified is True
    assert out["keyed"].subject == "alice" and out["keyed"].replayed is False
    assert out["ready"] is True
    seen = out["verify_seen"]
    for path in ("/verify", "/galleries/staff/subjects/alice/faces"):
        tries = [(status, t) for p, status, t in seen if p == path]
        assert tries[0][0] == 503 and tries[-1][0] in (200, 201), (path, tries)
        assert all(status == 503 for status, _ in tries[:-1])
        gaps = [b - a for (_, a), (_, b) in itertools.pairwise(tries)]
        assert gaps and all(g >= 1.9 for g in gaps), gaps  # Retry-After: 2 honoured
    assert out["verify_s"] >= 1.9


# ------------------------------------------------------------- the blocking client, uvicorn
def test_blocking_client_against_a_real_uvicorn_server(tmp_path: Path):
    key = "client-test-key"
    powell1, powell2 = lfw_photo("Colin_Powell", 1), lfw_photo("Colin_Powell", 2)
    with running_server(DEFAULT_WEIGHTS, tmp_path / "server.log", detect_workers=2,
                        api_keys=key) as server:
        with Client(server.url, api_key=key, timeout=60) as fv:
            assert fv.health() is True
            with open(powell2, "rb") as f:
                same = fv.verify(powell1, f)
            other = fv.verify(str(powell1), lfw_photo("Hans_Blix", 1).read_bytes())
            with pytest.raises(FaceverifyError) as no_face:
                fv.verify(no_face_jpeg(), powell2)
            with pytest.raises(FaceverifyError) as bad_image:
                fv.embed(b"this is not an image")
            # the galleries, through the same client (FACEVERIFY_API_KEYS may do everything)
            enrolled = fv.enroll("door", "Colin_Powell", powell1)
            who = fv.identify("door", powell2, top_k=1)
            listed = fv.subjects("door")
            fv.delete_subject("door", "Colin_Powell")
            with pytest.raises(FaceverifyError) as gone:
                fv.subjects("door")
        for wrong in ("not-the-key", None):
            with Client(server.url, api_key=wrong) as stranger:
                with pytest.raises(FaceverifyError) as unauthorized:
                    stranger.verify(powell1, powell2)
                e = unauthorized.value
                assert (e.status, e.code, e.field) == (401, "unauthorized", "X-API-Key")
                assert stranger.health() is True  # health stays open
    assert same.verified is True and other.verified is False
    assert same.distance < same.threshold < other.distance
    assert same.faces[1].faces_found >= 1 and same.model.name == "faceverify-encoder"
    e = no_face.value
    assert (e.status, e.code, e.field) == (422, "no_face_detected", "image1")
    e = bad_image.value
    assert (e.status, e.code, e.field) == (400, "invalid_image", "image")
    assert who.candidates[0].subject == "Colin_Powell" and who.candidates[0].match
    assert who.candidates[0].face_id == enrolled.face_id
    assert [(s.subject, s.faces) for s in listed.subjects] == [("Colin_Powell", 1)]
    assert (gone.value.status, gone.value.code) == (404, "not_found")  # the gallery is gone
