"""The distillation teacher: a store keyed by image content and view, seeded from the shared
precomputed vectors, filled by dlib itself, and centred before use."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from model.train import teacher
from tests.conftest import LFW_DIR, ROOT, lfw_photo

PRECOMPUTED = ROOT.parent / "shared" / "data" / "teacher" / "dlib-teacher.npz"


def precomputed_or_skip():
    if not PRECOMPUTED.is_file():
        pytest.skip(f"precomputed teacher vectors not found at {PRECOMPUTED}")
    return PRECOMPUTED


def dlib_or_skip():
    if not teacher.teacher_available():
        pytest.skip("dlib not installed (pip install '.[distill]')")


def small_precomputed(tmp_path, wanted: list[str]):
    """A precomputed file of the shared layout holding only these names."""
    with np.load(precomputed_or_skip()) as z:
        names = z["names"].tolist()
        rows = [names.index(n) for n in wanted]
        np.savez(tmp_path / "pre.npz", names=z["names"][rows], emb=z["emb"][rows],
                 detected=z["detected"][rows])
    return tmp_path / "pre.npz"


def test_store_is_keyed_by_image_content_and_survives_a_reload(tmp_path):
    photo = lfw_photo("Colin_Powell", 1)
    copy = tmp_path / "renamed.jpg"
    shutil.copy(photo, copy)
    assert teacher.image_key(copy) == teacher.image_key(photo)
    assert teacher.image_key(lfw_photo("Colin_Powell", 2)) != teacher.image_key(photo)

    store = teacher.TeacherStore(tmp_path / "store.npz")
    vectors = np.random.default_rng(0).normal(size=(2, 128)).astype(np.float32)
    store.put(teacher.image_key(photo), vectors)
    store.save()
    again = teacher.TeacherStore(tmp_path / "store.npz")
    assert len(again) == 1
    np.testing.assert_array_equal(again.get(teacher.image_key(copy), view=1), vectors[1])
    with pytest.raises(ValueError):
        store.put("x", np.zeros(128))


def test_seeding_from_the_precomputed_file_maps_names_to_files(tmp_path):
    names = ["lfw/Colin_Powell/Colin_Powell_0001.jpg", "lfw/Tony_Blair/Tony_Blair_0003.jpg",
             "lfw/Hans_Blix/Hans_Blix_0002.jpg"]
    pre = small_precomputed(tmp_path, names)
    store = teacher.TeacherStore(tmp_path / "store.npz")
    added = store.import_precomputed(pre, {"lfw": LFW_DIR / "lfw-deepfunneled"})
    assert added == 3
    with np.load(pre) as z:
        first = z["emb"][0]
    np.testing.assert_array_equal(store.get(teacher.image_key(lfw_photo("Colin_Powell", 1))), first)
    # unknown prefixes and missing files are skipped, not guessed
    assert teacher.TeacherStore(tmp_path / "other.npz").import_precomputed(pre, {"celeba": tmp_path}) == 0


def test_our_dlib_recipe_reproduces_the_precomputed_vectors(tmp_path):
    """Both views, for a photo where HOG finds the face and one where the centre box is used."""
    dlib_or_skip()
    with np.load(precomputed_or_skip()) as z:
        names, detected = z["names"], z["detected"]
        picks = [int(np.flatnonzero(detected & np.char.startswith(names, "lfw/"))[0]),
                 int(np.flatnonzero(~detected & np.char.startswith(names, "lfw/"))[0])]
        expected = z["emb"][picks]
    for name, want in zip(names[picks], expected):
        got = teacher.teacher_vectors(LFW_DIR / "lfw-deepfunneled" / str(name).split("/", 1)[1])
        assert got.shape == (2, 128)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_missing_images_go_through_the_teacher_once(tmp_path):
    dlib_or_skip()
    store = teacher.TeacherStore(tmp_path / "store.npz")
    photos = [lfw_photo("Tony_Blair", 1), lfw_photo("Tony_Blair", 2)]
    assert teacher.compute_missing(store, photos, workers=2) == 2
    assert teacher.compute_missing(store, photos, workers=2) == 0  # cached now
    vec = teacher.lookup(teacher.TeacherStore(tmp_path / "store.npz"), photos)
    assert vec.shape == (2, 2, 128)
    same_person = teacher.unit(vec[0, 0]) @ teacher.unit(vec[1, 0])
    assert np.linalg.norm(vec[0, 0] - vec[1, 0]) < 0.6  # dlib's own "same person" tolerance
    assert same_person > 0.9


def test_centring_removes_the_shared_direction_and_keeps_unit_length():
    rng = np.random.default_rng(0)
    shared = teacher.unit(rng.normal(size=128))
    raw = teacher.unit(6 * shared + rng.normal(size=(500, 2, 128)) / 4)
    assert np.linalg.norm(raw.reshape(-1, 128).mean(0)) > 0.8
    centred, mean = teacher.centred_targets(raw)
    assert np.allclose(np.linalg.norm(centred, axis=-1), 1, atol=1e-5)
    assert np.linalg.norm(centred.reshape(-1, 128).mean(0)) < 0.1
    again, _ = teacher.centred_targets(raw[:10], mean)  # the training set's mean is reusable
    np.testing.assert_allclose(again, centred[:10], atol=1e-6)


def test_the_service_never_imports_the_teacher():
    """Not at import, and not while it aligns a face for the default encoder: dlib's
    landmarks and chip come from the converted weights/landmarks-dlib5.safetensors (run by
    dlib's compiled code or our ports), never from the teacher's model files."""
    code = ("import sys, app.main; from PIL import Image; "
            "from model.face.pipeline import FacePipeline; from model.face.preprocess import DLIB_CHIP150; "
            "p = FacePipeline(device='cpu', spec=DLIB_CHIP150); "
            f"p.align([Image.open({str(lfw_photo('Colin_Powell', 1))!r}).convert('RGB')]); "
            "p.align([Image.new('RGB', (250, 250))], fallback='centre'); "
            "print(any(m.startswith(('model.train.teacher', 'face_recognition_models')) "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
