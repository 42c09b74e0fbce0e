"""End to end: `uvicorn app.main:app` in a subprocess on a free 127.0.0.1 port, real HTTP.

- /verify and /embed give the same numbers as model/ code run offline on the same photos;
- 64 concurrent requests each get their own answer, and batches form across requests;
- a table of bad inputs, each with its status and error code, and the server stays healthy;
- with the default weights (when committed): verdicts on LFW pairsDevTest are mostly right.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import lfw_or_skip, lfw_photo
from tests.service_support import (
    DEFAULT_WEIGHTS,
    Reference,
    animated_gif,
    cmyk_jpeg,
    devtest_pairs,
    encode,
    exif_rotated_jpeg,
    gradient,
    png_bomb,
    running_server,
    sixteen_bit_png,
    two_faces,
)

pytestmark = pytest.mark.timeout(600)
MAX_UPLOAD = 512 * 1024
MAX_PIXELS = 4_000_000
BODY_GRACE_S = 1.0


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    lfw_or_skip()
    log = tmp_path_factory.mktemp("server") / "server.log"
    # No queue-time budget: these tests fire bursts of 64 requests and check every answer;
    # shedding under overload has its own test (a server with the budget on).
    with running_server(tiny_weights, log, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS,
                        body_rate_grace_s=BODY_GRACE_S, min_body_rate=1024,
                        max_batch_size=16, max_batch_delay_ms=40, detect_workers=2,
                        max_detect_wait_ms=0) as s:
        yield s


@pytest.fixture(scope="module")
def reference(tiny_weights, pipeline):
    return Reference(tiny_weights, pipeline)


@pytest.fixture(scope="module")
def pairs(reference):
    """16 pairsDevTest pairs (8 same, 8 different) whose four photos all have a face."""
    chosen = [p for p in devtest_pairs(lfw_or_skip(), 12, 12)
              if reference.distance(p[0], p[1]) is not None]
    same = [p for p in chosen if p[2]][:8]
    diff = [p for p in chosen if not p[2]][:8]
    assert len(same) == 8 and len(diff) == 8
    return same + diff


def files(a, b) -> dict:
    return {"image1": (a.name, a.read_bytes(), "image/jpeg"),
            "image2": (b.name, b.read_bytes(), "image/jpeg")}


def test_readiness_answers_only_503_then_200_during_startup(server):
    # Polled every 50 ms from the moment the port opened (the warm-up runs after that; the
    # deterministic not-ready check is in test_api.py).
    statuses = server.ready_statuses
    assert statuses[-1] == 200 and set(statuses[:-1]) <= {503}, statuses


def test_verify_matches_the_offline_pipeline(server, reference, pairs):
    card_threshold = reference.card["threshold"]["value"]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for a, b, _ in pairs[::3]:
            r = client.post("/verify", files=files(a, b))
            assert r.status_code == 200, r.text
            body = r.json()
            expected = reference.distance(a, b)
            assert body["distance"] == pytest.approx(expected, abs=1e-4)
            assert body["threshold"] == card_threshold
            assert body["verified"] == (body["distance"] < card_threshold)
            assert body["similarity"] == pytest.approx(1 - body["distance"] ** 2 / 2, abs=1e-6)
            ref_faces = reference.pair(a, b)[1]
            assert np.allclose(body["faces"][0]["box"], ref_faces[0].box, atol=0.05)
            assert np.allclose(body["faces"][1]["landmarks"], ref_faces[1].landmarks, atol=0.05)
            assert body["model"]["sha256"] == reference.card["weights_sha256"]
            assert {"decode", "detect", "queue", "encode", "total"} <= set(body["timings_ms"])
        a, b, _ = pairs[0]
        # JSON + base64, with a stricter request threshold: same distance, the request's
        # threshold (a caller may tighten the verdict freely, loosen it only to the cap).
        strict = round(card_threshold / 2, 4)
        r = client.post("/verify", json={
            "image1": base64.b64encode(a.read_bytes()).decode(),
            "image2": "data:image/jpeg;base64," + base64.b64encode(b.read_bytes()).decode(),
            "threshold": strict})
        assert r.status_code == 200, r.text
        assert r.json()["distance"] == pytest.approx(reference.distance(a, b), abs=1e-4)
        assert r.json()["threshold"] == strict
        assert r.json()["verified"] == (r.json()["distance"] < strict)
        r = client.post("/embed", files={"image": (a.name, a.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        emb = np.array(body["embedding"])
        assert body["dim"] == 32 == len(emb) and body["normalized"] is True
        assert abs(np.linalg.norm(emb) - 1) < 1e-5
        np.testing.assert_allclose(emb, reference.face(a)[0].numpy(), atol=1e-5)
        assert body["face"]["faces_found"] >= 1


def metric(text: str, name: str) -> float:
    """One sample's value from a /metrics page (0 when absent)."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def batches(text: str) -> tuple[float, float]:
    """(number of encoder batches, number of batches of more than one face)."""
    count = metric(text, "faceverify_batch_size_count")
    return count, count - metric(text, 'faceverify_batch_size_bucket{le="1.0"}')


def test_64_concurrent_requests_each_get_their_own_answer(server, reference, pairs):
    """On the CPU the face workers also encode (FACEVERIFY_ENCODE_IN_DETECT_WORKERS): every
    request gets its own photos' faces and distance, and none of them used the batcher."""
    jobs = []
    for i in range(64):
        a, b, _ = pairs[i % len(pairs)]
        if i // len(pairs) % 2:
            a, b = b, a
        jobs.append((a, b))

    async def fire():
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as c:
            before = (await c.get("/metrics")).text
            responses = await asyncio.gather(*[c.post("/verify", files=files(a, b))
                                               for a, b in jobs])
            after = (await c.get("/metrics")).text
            return before, responses, after

    before, responses, after = asyncio.run(fire())
    for (a, b), r in zip(jobs, responses):
        assert r.status_code == 200, r.text
        body = r.json()
        # Its own photos (boxes differ by pixels from photo to photo) and its own distance.
        ref_faces = reference.pair(a, b)[1]
        assert np.allclose(body["faces"][0]["box"], ref_faces[0].box, atol=0.05)
        assert np.allclose(body["faces"][1]["box"], ref_faces[1].box, atol=0.05)
        assert body["distance"] == pytest.approx(reference.distance(a, b), abs=1e-4)
        assert body["timings_ms"]["batch_size"] == 1 and body["timings_ms"]["queue"] == 0
    ids = {r.headers["x-request-id"] for r in responses}
    assert len(ids) == 64
    encoded = 'faceverify_stage_duration_seconds_count{stage="encode"}'
    assert metric(after, encoded) - metric(before, encoded) == 64
    assert batches(after)[0] == batches(before)[0]  # the faces never reached the batcher
    assert 'faceverify_requests_total{route="/verify",status="200"}' in after
    assert metric(after, "faceverify_queue_depth") == 0
    assert re.search(r'^faceverify_model_info\{.*name="tiny".*\} 1.0$', after, re.MULTILINE)


def test_concurrent_detect_false_requests_are_batched_together(server, reference, pairs):
    """Already-aligned crops (detect=false) go through the dynamic batcher: 64 concurrent
    /embed calls share batches, and each gets its own crop's embedding."""
    photos = [p for a, b, _ in pairs for p in (a, b)][:32] * 2
    crops = {p: encode(Image.fromarray(reference.face(p)[1].crop), "PNG") for p in photos}

    async def fire():
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as c:
            before = (await c.get("/metrics")).text
            responses = await asyncio.gather(*[
                c.post("/embed", files={"image": ("crop.png", crops[p], "image/png")},
                       data={"detect": "false"}) for p in photos])
            after = (await c.get("/metrics")).text
            return before, responses, after

    before, responses, after = asyncio.run(fire())
    for p, r in zip(photos, responses):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["embedding"], reference.face(p)[0].numpy(),
                                   atol=1e-4)
    n0, big0 = batches(before)
    n1, big1 = batches(after)
    assert n1 - n0 < 64, "every request had a batch of its own"
    assert big1 - big0 >= 1, "no batch held more than one request's face"


def test_overload_is_shed_early_with_503_and_the_accepted_requests_wait_within_budget(
        tiny_weights, reference, pairs, tmp_path):
    """One detect thread and a 30 ms queue-time budget against a burst of 64 /verify calls:
    every answer is a correct 200 or a 503 `overloaded` with Retry-After (nothing else, no
    mixed-up answers); no accepted request waited for a detect thread longer than the budget;
    and the server answers normally once the burst is over."""
    jobs = [pairs[i % len(pairs)][:2] for i in range(64)]
    with running_server(tiny_weights, tmp_path / "server.log", detect_workers=1,
                        max_detect_wait_ms=30) as srv:
        async def fire():
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(base_url=srv.url, timeout=300, limits=limits) as c:
                return await asyncio.gather(*[c.post("/verify", files=files(a, b))
                                              for a, b in jobs])
        responses = asyncio.run(fire())
        after = httpx.post(srv.url + "/verify", files=files(*jobs[0]), timeout=60)
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    for (a, b), r in zip(jobs, responses):
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "overloaded" and "Retry-After" in r.headers
        else:
            assert r.json()["distance"] == pytest.approx(reference.distance(a, b), abs=1e-4)
            assert r.json()["timings_ms"]["detect_wait"] <= 30 + 1
    assert after.status_code == 200, after.text


def _bad_inputs():
    """(name, route, request kwargs, expected status, code or None for 200, field)."""
    good = lfw_photo("Colin_Powell", 1)
    good2 = lfw_photo("Colin_Powell", 2)
    g = good.read_bytes()
    g64 = base64.b64encode(g).decode()

    def pair(img1: bytes, name1="x.jpg", ctype="image/jpeg", img2: bytes | None = None):
        return {"files": {"image1": (name1, img1, ctype),
                          "image2": ("y.jpg", img2 if img2 is not None else good2.read_bytes(),
                                     "image/jpeg")}}

    def stalled_body():  # the start of a multipart upload, then nothing for 3 s
        yield (b"--stall\r\nContent-Disposition: form-data; name=\"image1\"; "
               b"filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n" + g[:100])
        time.sleep(BODY_GRACE_S + 2)
        yield g[100:] + b"\r\n--stall--\r\n"

    big = bytes(MAX_UPLOAD + 1024)
    huge = bytes(3 * MAX_UPLOAD)

    def chunked_big():
        boundary = b"----fvboundary"
        yield (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image1"; '
               b'filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n')
        for _ in range(2 * MAX_UPLOAD // 65536 + 4):
            yield bytes(65536)
        yield b"\r\n--" + boundary + b"--\r\n"

    return [
        ("empty file", "/verify", pair(b""), 400, "invalid_image", "image1"),
        ("truncated JPEG", "/verify", pair(g[: len(g) // 2]), 400, "invalid_image", "image1"),
        ("text renamed .jpg", "/verify", pair(b"just some text, honestly\n" * 20, "face.jpg"),
         400, "invalid_image", "image1"),
        ("1x1 image", "/verify", pair(encode(gradient(1, 1), "PNG"), "dot.png", "image/png"),
         422, "no_face_detected", "image1"),
        ("PNG decompression bomb", "/verify", pair(png_bomb(), "bomb.png", "image/png"), 413,
         "payload_too_large", "image1"),
        ("oversized image", "/verify", pair(big), 413, "payload_too_large", "image1"),
        ("oversized body (refused from Content-Length)", "/verify", pair(huge), 413,
         "payload_too_large", None),
        ("oversized chunked upload", "/verify",
         {"content": chunked_big(),
          "headers": {"content-type": "multipart/form-data; boundary=----fvboundary"}},
         413, "payload_too_large", None),
        ("missing field", "/verify", {"files": {"image1": ("a.jpg", g, "image/jpeg")}}, 422,
         "validation_error", "image2"),
        ("wrong content type", "/verify",
         {"content": g, "headers": {"content-type": "image/jpeg"}}, 415,
         "unsupported_media_type", None),
        ("no content type", "/verify", {"content": b"image1=abc"}, 415,
         "unsupported_media_type", None),
        ("broken base64", "/verify", {"json": {"image1": "!!not*base64!!", "image2": g64}},
         400, "invalid_image", "image1"),
        ("base64 field not a string", "/verify", {"json": {"image1": 12, "image2": g64}}, 422,
         "validation_error", "image1"),
        ("invalid JSON", "/verify",
         {"content": b'{"image1": ', "headers": {"content-type": "application/json"}}, 422,
         "validation_error", None),
        ("JSON not an object", "/verify", {"json": [g64, g64]}, 422, "validation_error", None),
        ("image as a text field", "/verify",
         {"data": {"image1": g64}, "files": {"image2": ("b.jpg", g, "image/jpeg")}}, 422,
         "validation_error", "image1"),
        ("threshold not a number", "/verify", {**pair(g), "data": {"threshold": "high"}}, 422,
         "validation_error", "threshold"),
        ("threshold out of range", "/verify", {"json": {"image1": g64, "image2": g64,
                                                        "threshold": 3}},
         422, "validation_error", "threshold"),
        ("body that stalls past the grace period", "/verify",
         {"content": stalled_body(),
          "headers": {"content-type": "multipart/form-data; boundary=stall"}}, 408,
         "request_timeout", None),
        ("threshold looser than the server's cap", "/verify",
         {**pair(g), "data": {"threshold": "1.99"}}, 422, "validation_error", "threshold"),
        ("detect not a boolean", "/verify", {**pair(g), "data": {"detect": "maybe"}}, 422,
         "validation_error", "detect"),
        ("unsupported image format (PPM)", "/verify",
         pair(encode(gradient(), "PPM"), "x.ppm", "image/x-portable-pixmap"), 415,
         "unsupported_media_type", "image1"),
        ("image with no face", "/verify", pair(g, img2=encode(gradient(), "JPEG")), 422,
         "no_face_detected", "image2"),
        ("embed: image with no face", "/embed",
         {"files": {"image": ("g.png", encode(gradient(), "PNG"), "image/png")}}, 422,
         "no_face_detected", "image"),
        ("embed: missing field", "/embed", {"files": {"img": ("a.jpg", g, "image/jpeg")}}, 422,
         "validation_error", "image"),
        ("GET on /verify", "/verify", {"method": "GET"}, 405, "method_not_allowed", None),
        ("unknown route", "/compare", {}, 404, "not_found", None),
        # Unusual but valid images: answered normally.
        ("16-bit PNG", "/verify", pair(sixteen_bit_png(good), "g.png", "image/png"), 200,
         None, None),
        ("CMYK JPEG", "/verify", pair(cmyk_jpeg(good)), 200, None, None),
        ("animated GIF", "/verify", pair(animated_gif(good), "a.gif", "image/gif"), 200, None,
         None),
        ("EXIF-rotated photo", "/verify", pair(exif_rotated_jpeg(good)), 200, None, None),
        ("image with several faces", "/verify",
         pair(two_faces(good, lfw_photo("Tony_Blair", 1))), 200, None, None),
        ("already-aligned crop, detect=false", "/embed",
         {"files": {"image": ("c.png", encode(gradient(112, 112), "PNG"), "image/png")},
          "data": {"detect": "false"}}, 200, None, None),
    ]


def test_bad_inputs_get_their_own_status_and_code_and_the_server_stays_healthy(server,
                                                                              reference):
    cases = _bad_inputs()
    assert len(cases) >= 20
    results = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for name, route, kwargs, status, code, field in cases:
            kwargs = dict(kwargs)
            method = kwargs.pop("method", "POST")
            try:
                r = client.request(method, route, **kwargs)
            except httpx.TransportError as exc:  # the server must answer, not hang up
                pytest.fail(f"{name}: no response ({exc!r})")
            results[name] = r
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            assert r.headers.get("x-request-id"), name
            body = r.json()
            if code is None:
                assert "error" not in body, (name, body)
                continue
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
            assert body["error"]["code"] == code, (name, body)
            assert body["error"]["field"] == field, (name, body)
            assert "Traceback" not in r.text
        # The server is still healthy and answers a good request.
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 200
        a, b = lfw_photo("Colin_Powell", 1), lfw_photo("Colin_Powell", 2)
        good = client.post("/verify", files=files(a, b))
        assert good.status_code == 200
        assert good.json()["distance"] == pytest.approx(reference.distance(a, b), abs=1e-4)

    upright_box = reference.pair(lfw_photo("Colin_Powell", 1),
                                 lfw_photo("Colin_Powell", 2))[1][0].box
    rotated = results["EXIF-rotated photo"].json()["faces"][0]["box"]
    assert np.allclose(rotated, upright_box, atol=3), (rotated, upright_box)
    assert results["image with several faces"].json()["faces"][0]["faces_found"] >= 2
    assert results["animated GIF"].json()["faces"][0]["faces_found"] >= 1
    crop = results["already-aligned crop, detect=false"].json()
    assert crop["face"] == {"box": None, "landmarks": None, "score": None, "faces_found": 0,
                            "rotation": 0}
    assert "more than the limit" in results["PNG decompression bomb"].json()["error"]["message"]
    cap = results["threshold looser than the server's cap"].json()["error"]["message"]
    limit = float(re.search(r"at most ([0-9.]+)\)", cap).group(1))
    with httpx.Client(base_url=server.url, timeout=60) as client:  # the quoted limit is allowed
        a, b = lfw_photo("Colin_Powell", 1), lfw_photo("Colin_Powell", 2)
        at_cap = client.post("/verify", files=files(a, b), data={"threshold": str(limit)})
    assert at_cap.status_code == 200 and at_cap.json()["threshold"] == limit, at_cap.text


def test_logs_are_json_one_line_per_request_without_image_bytes(server):
    lines = server.log_lines()
    assert all("raw" not in x for x in lines), [x for x in lines if "raw" in x][:3]
    access = [x for x in lines if x.get("msg") == "request"]
    assert access and all(re.fullmatch(r"[0-9a-f]{32}|[\w.:-]+", x["request_id"])
                          for x in access)
    assert all(len(json.dumps(x)) < 2000 for x in lines)  # no bodies
    text = server.log_path.read_text()
    photo = lfw_photo("Colin_Powell", 1).read_bytes()
    assert base64.b64encode(photo).decode()[:40] not in text
    assert any(x.get("status") == 413 for x in access)


# ------------------------------------------------------------------ the default weights
@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    lfw_or_skip()
    if not DEFAULT_WEIGHTS.exists():
        pytest.skip(f"default weights {DEFAULT_WEIGHTS.relative_to(DEFAULT_WEIGHTS.parents[1])}"
                    " not committed yet (they are trained with `make weights` / python -m "
                    "model.train.loop and committed with their model card); LFW verdict quality "
                    "on the default weights needs them")
    log = tmp_path_factory.mktemp("default_server") / "server.log"
    # float32: the serving path is checked against model/'s to 1e-4 (the int8 graph the CPU
    # runs by default is checked in tests/test_quantize.py and by model.evaluate.protocols)
    with running_server(DEFAULT_WEIGHTS, log, max_batch_delay_ms=20, max_detect_wait_ms=0,
                        int8="off") as s:
        yield s


def test_default_weights_verdicts_on_lfw_devtest_pairs(default_server, pipeline):
    ref = Reference(DEFAULT_WEIGHTS, pipeline)
    chosen = [p for p in devtest_pairs(lfw_or_skip(), 30, 30)
              if ref.distance(p[0], p[1]) is not None]
    assert len(chosen) >= 50

    async def fire():
        async with httpx.AsyncClient(base_url=default_server.url, timeout=300) as c:
            return await asyncio.gather(*[c.post("/verify", files=files(a, b))
                                          for a, b, _ in chosen])

    responses = asyncio.run(fire())
    right_same = right_diff = n_same = n_diff = 0
    for (a, b, same), r in zip(chosen, responses):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["distance"] == pytest.approx(ref.distance(a, b), abs=1e-4)
        if same:
            n_same += 1
            right_same += body["verified"]
        else:
            n_diff += 1
            right_diff += not body["verified"]
    assert right_same / n_same >= 0.8, (right_same, n_same)
    assert right_diff / n_diff >= 0.8, (right_diff, n_diff)
    assert responses[0].json()["threshold"] == ref.card["threshold"]["value"]
