"""`?return_crops=true` on /verify and /embed (in-process, real weights and MTCNN): the
aligned crops the encoder compared come back as base64 112x112 PNGs; without the parameter
the reply has no `crops` key at all; the demo page's own files are served."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from model.face.imageio import decode_image
from tests.conftest import lfw_photo
from tests.service_support import encode, gradient
from tests.test_api import pair_files, run, serving, settings_for

pytestmark = pytest.mark.timeout(300)


def decode_png(b64: str) -> Image.Image:
    data = base64.b64decode(b64, validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG"
    return img


def test_return_crops_adds_112x112_pngs_and_is_off_by_default(tiny_weights, pipeline):
    async def go():
        async with serving(settings_for(tiny_weights)) as (_, client):
            plain = await client.post("/verify", files=pair_files())
            with_crops = await client.post("/verify?return_crops=true", files=pair_files())
            embed = await client.post("/embed", params={"return_crops": "1"},
                                      files={"image": pair_files()["image1"]})
            embed_plain = await client.post("/embed", files={"image": pair_files()["image1"]})
            aligned = await client.post(
                "/embed?return_crops=true", data={"detect": "false"},
                files={"image": ("c.png", encode(gradient(200, 150), "PNG"), "image/png")})
            off = await client.post("/verify?return_crops=false", files=pair_files())
            bad = await client.post("/verify?return_crops=maybe", files=pair_files())
            return plain, with_crops, embed, embed_plain, aligned, off, bad
    plain, with_crops, embed, embed_plain, aligned, off, bad = run(go())

    # Off by default (and with =false): the reply is exactly as before, no `crops` key.
    for r in (plain, off, embed_plain):
        assert r.status_code == 200, r.text
        assert "crops" not in r.json()
    assert set(plain.json()) == {"verified", "distance", "threshold", "similarity", "model",
                                 "faces", "timings_ms"}

    body = with_crops.json()
    assert with_crops.status_code == 200, with_crops.text
    assert len(body["crops"]) == 2
    # Same numbers as without crops: asking for them changes nothing else.
    assert body["distance"] == pytest.approx(plain.json()["distance"], abs=1e-5)
    assert body["faces"] == plain.json()["faces"]
    crops = [decode_png(c) for c in body["crops"]]
    for img in crops:
        assert img.size == (112, 112) and img.mode == "RGB"
    # They are the crops model/'s pipeline aligns from the same photos (as the encoder saw
    # them; PNG is lossless).
    expected = pipeline.align([decode_image(lfw_photo("Colin_Powell", 1)),
                               decode_image(lfw_photo("Colin_Powell", 2))], fallback="raise")
    for img, face in zip(crops, expected):
        diff = np.abs(np.asarray(img, np.int16) - face.crop.astype(np.int16))
        assert diff.mean() < 1.0, diff.mean()

    assert embed.status_code == 200, embed.text
    (one,) = embed.json()["crops"]
    assert decode_png(one).size == (112, 112)
    assert np.array_equal(np.asarray(decode_png(one)), np.asarray(crops[0])) or \
        np.abs(np.asarray(decode_png(one), np.int16) - np.asarray(crops[0], np.int16)).mean() < 1

    # detect=false: the crop is the image resized to 112x112.
    assert aligned.status_code == 200, aligned.text
    assert decode_png(aligned.json()["crops"][0]).size == (112, 112)

    assert bad.status_code == 422
    assert bad.json()["error"] == {"code": "validation_error", "field": "return_crops",
                                   "message": "return_crops: must be true or false"}


def test_return_crops_is_in_the_openapi_schema():
    from app.config import Settings
    from app.main import create_app
    app = create_app(Settings(weights="missing.safetensors", device="cpu"))
    spec = app.openapi()
    for path, model in (("/verify", "VerifyResponse"), ("/embed", "EmbedResponse")):
        params = spec["paths"][path]["post"]["parameters"]
        assert {"name": "return_crops", "in": "query", "required": False,
                "schema": {"type": "boolean", "default": False}}.items() <= \
            next(p for p in params if p["name"] == "return_crops").items()
        assert "crops" in spec["components"]["schemas"][model]["properties"]


def test_demo_page_and_its_files_are_served_from_this_origin_only(tiny_weights):
    async def go():
        async with serving(settings_for(tiny_weights, api_keys="k1"), ready=False) as (_, c):
            return (await c.get("/"), await c.get("/static/app.js"),
                    await c.get("/static/style.css"), await c.get("/static/../config.py"),
                    await c.get("/static/index.html"))
    page, js, css, escape, other = run(go())
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert escape.status_code == 404 and other.status_code == 404
    # No external assets: nothing is loaded from another origin.
    for text in (page.text, js.text, css.text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
        assert "@import" not in text and "@font-face" not in text
