"""Photos in any orientation (issue 25): sideways and upside-down photos without an EXIF tag
are turned upright before alignment, in the one face pipeline that training, evaluation,
serving and galleries share; upright photos are untouched; an EXIF tag is applied once."""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from model.face.pipeline import FacePipeline, NoFaceError, turned, unturn_point
from tests.conftest import lfw_photo
from tests.service_support import DEFAULT_WEIGHTS, encode, exif_rotated_jpeg, gradient
from tests.test_api import serving, settings_for

# Not every photo: YuNet scores ~1 % of upside-down faces as surely as upright ones (Hans
# Blix's first photo at 0.966), and those stay unturned (docs/accuracy.md measures the rate).
PEOPLE = [("Colin_Powell", 1), ("Laura_Bush", 2), ("Tony_Blair", 2), ("Serena_Williams", 3)]


@pytest.fixture(scope="module")
def pipelines():
    return FacePipeline(device="cpu"), FacePipeline(device="cpu", orient=False)


def as_uploaded(img: Image.Image, turn_cw: int) -> Image.Image:
    """The photo as a user sends it: turned `turn_cw` degrees clockwise, so that turning it
    back (360 - turn_cw) makes it upright."""
    return turned(img, turn_cw)


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_a_turned_photo_gives_the_upright_photos_face(pipelines, turn):
    orient, _ = pipelines
    for name, i in PEOPLE:
        img = Image.open(lfw_photo(name, i)).convert("RGB")
        upright = orient.align([img])[0]
        uploaded = as_uploaded(img, turn)
        face = orient.align([uploaded])[0]
        assert face.rotation == (360 - turn) % 360, name
        np.testing.assert_array_equal(face.crop, upright.crop)  # lossless turns: the same
        # box and points are in the uploaded photo's pixels: the upright ones, turned as the
        # upload is
        there = [unturn_point(x, y, face.rotation, *uploaded.size)
                 for x, y in upright.landmarks]
        np.testing.assert_allclose(face.landmarks, there, atol=0.02)
        assert face.describe()["rotation"] == face.rotation
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= uploaded.width and 0 <= y1 < y2 <= uploaded.height


def test_upright_photos_are_untouched(pipelines):
    orient, plain = pipelines
    for name, i in PEOPLE + [("George_W_Bush", 7), ("Tony_Blair", 4)]:
        img = Image.open(lfw_photo(name, i)).convert("RGB")
        a, b = orient.align([img])[0], plain.align([img])[0]
        assert a.rotation == 0 and a.box == b.box
        np.testing.assert_array_equal(a.crop, b.crop)


def test_a_photo_without_a_face_in_any_orientation_is_still_refused(pipelines):
    orient, _ = pipelines
    with pytest.raises(NoFaceError):
        orient.align([gradient()])


def test_the_service_answers_turned_photos_right_and_says_so(tmp_path):
    powell = Image.open(lfw_photo("Colin_Powell", 1)).convert("RGB")

    def jpeg(img):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        return buf.getvalue()

    async def go():
        settings = settings_for(DEFAULT_WEIGHTS, gallery_url=f"sqlite:///{tmp_path}/g.db")
        async with serving(settings) as (_, c):
            out = {}
            for turn in (0, 90, 180, 270):
                r = await c.post("/verify", files={
                    "image1": ("a.jpg", lfw_photo("Colin_Powell", 2).read_bytes(), "image/jpeg"),
                    "image2": ("b.jpg", jpeg(as_uploaded(powell, turn)), "image/jpeg")})
                assert r.status_code == 200, r.text
                out[turn] = r.json()
            # an EXIF-tagged photo is turned by its tag, once: rotation 0
            r = await c.post("/embed", files={"image": (
                "e.jpg", exif_rotated_jpeg(lfw_photo("Colin_Powell", 1)), "image/jpeg")})
            exif = r.json()
            # a photo without any face, in any orientation: still 422
            r = await c.post("/embed", files={"image": ("g.png", encode(gradient(), "PNG"),
                                                         "image/png")})
            return out, exif, r
    out, exif, blank = asyncio.run(go())
    for turn, body in out.items():
        assert body["verified"] is True, turn
        assert body["faces"][1]["rotation"] == (360 - turn) % 360
        assert body["faces"][0]["rotation"] == 0
        # the same face; only JPEG re-encoding of the turned pixels differs
        assert body["distance"] == pytest.approx(out[0]["distance"], abs=0.01)
    assert exif["face"]["rotation"] == 0
    assert blank.status_code == 422 and blank.json()["error"]["code"] == "no_face_detected"
