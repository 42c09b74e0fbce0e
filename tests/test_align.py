"""The face pipeline on real LFW photos: detection, alignment onto the template, fallbacks."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.face.align import TEMPLATE_112, apply_transform, similarity_transform
from model.face.imageio import decode_image
from model.face.pipeline import NoFaceError
from model.face.preprocess import DEFAULT_SPEC
from tests.conftest import lfw_photo

PHOTOS = [("Colin_Powell", 1), ("Serena_Williams", 2), ("Hugo_Chavez", 3), ("Laura_Bush", 1),
          ("Tony_Blair", 5), ("Hans_Blix", 2)]


def test_similarity_transform_recovers_a_known_transform():
    angle, scale, shift = np.deg2rad(17), 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = TEMPLATE_112
    dst = scale * src @ rot.T + shift
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], scale * rot) and np.allclose(m[:, 2], shift)
    assert np.allclose(apply_transform(m, src), dst)


def test_largest_face_is_aligned_with_eyes_on_the_template(pipeline):
    images = [decode_image(lfw_photo(n, i)) for n, i in PHOTOS]
    faces = pipeline.align(images)
    for face in faces:
        assert face.crop.shape == (112, 112, 3) and face.crop.dtype == np.uint8
        assert face.faces_found >= 1 and face.score > 0.9
        x1, y1, x2, y2 = face.box
        assert 60 < (x1 + x2) / 2 < 190 and 60 < (y1 + y2) / 2 < 190  # LFW: centred face
    # Detect again on the aligned crops (padded, so MTCNN sees some context): the eyes
    # are where the template puts them, within a few pixels.
    padded = []
    for face in faces:
        canvas = Image.new("RGB", (224, 224), (0, 0, 0))
        canvas.paste(Image.fromarray(face.crop), (56, 56))
        padded.append(canvas)
    redetected = pipeline.detector.detect(padded)
    errors = [np.linalg.norm(r[0].landmarks[:2] - 56 - TEMPLATE_112[:2], axis=1).max()
              for r in redetected]
    assert np.median(errors) < 3.0, errors
    assert max(errors) < 6.0, errors


def test_blank_image_raises_no_face(pipeline):
    with pytest.raises(NoFaceError):
        pipeline.align([Image.new("RGB", (250, 250), (128, 128, 128))])


def test_centred_fallback_gives_a_crop_for_a_faceless_image(pipeline):
    face = pipeline.align([Image.new("RGB", (250, 250), (10, 20, 30))], fallback="centre")[0]
    assert face.method == "centred_fallback" and face.faces_found == 0
    assert face.crop.shape == (112, 112, 3)


def test_exif_rotated_jpeg_aligns_like_its_upright_twin(pipeline):
    upright = Image.open(lfw_photo("Colin_Powell", 1)).convert("RGB")
    buf_up, buf_rot = io.BytesIO(), io.BytesIO()
    upright.save(buf_up, "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90° counter-clockwise; viewer must rotate it back
    upright.transpose(Image.Transpose.ROTATE_90).save(buf_rot, "JPEG", quality=95,
                                                      exif=exif.tobytes())
    a, b = pipeline.align([decode_image(buf_up.getvalue()), decode_image(buf_rot.getvalue())])
    diff = np.abs(a.crop.astype(int) - b.crop.astype(int)).mean()
    assert diff < 6, diff
    # EXIF is applied once: the decoded photo is upright, nothing more is turned
    assert (a.rotation, b.rotation) == (0, 0)
    # without honouring EXIF the pipeline itself finds the face turned (rotation 90), and
    # the crops differ a lot only when it is not allowed to (orient=False)
    raw = Image.open(io.BytesIO(buf_rot.getvalue())).convert("RGB")
    assert pipeline.align([raw])[0].rotation == 90
    from model.face.pipeline import FacePipeline
    plain = FacePipeline(device="cpu", spec=pipeline.spec, orient=False)
    c = plain.align([raw], fallback="centre")[0]
    assert np.abs(a.crop.astype(int) - c.crop.astype(int)).mean() > 3 * diff


def test_detect_false_only_resizes(pipeline):
    img = Image.new("RGB", (224, 224), (200, 10, 10))
    face = pipeline.align([img], detect=False)[0]
    assert face.method == "no_detect" and face.crop.shape == (112, 112, 3)
    assert face.crop[50, 50].tolist() == [200, 10, 10]


def test_batched_detection_matches_one_by_one(pipeline):
    images = [decode_image(lfw_photo(n, i)) for n, i in PHOTOS[:3]]
    batched = pipeline.align(images)
    single = [pipeline.align([im])[0] for im in images]
    for a, b in zip(batched, single):
        assert np.allclose(a.landmarks, b.landmarks, atol=0.05)


def test_crops_to_tensor_normalises_to_unit_range():
    crops = np.zeros((2, 112, 112, 3), np.uint8)
    crops[1] = 255
    t = DEFAULT_SPEC.to_tensor(crops)
    assert t.shape == (2, 3, 112, 112)
    assert float(t[0].max()) == -1.0 and float(t[1].min()) == 1.0


@pytest.mark.parametrize("spec", ["DEFAULT_SPEC", "DLIB_CHIP150"])
def test_the_numpy_normalisation_gives_to_tensors_values_bit_for_bit(spec):
    """The face workers (no torch) normalise with `to_array`; the batcher with `to_tensor`."""
    from model.face import preprocess
    spec = getattr(preprocess, spec)
    crops = np.random.default_rng(0).integers(0, 256, (3, spec.crop_size, spec.crop_size, 3),
                                              dtype=np.uint8)
    ours = spec.to_array(crops)
    assert ours.dtype == np.float32 and ours.shape == (3, 3, spec.crop_size, spec.crop_size)
    assert ours.tobytes() == spec.to_tensor(crops).numpy().tobytes()


def test_image_too_small_for_a_face_raises_no_face(pipeline):
    with pytest.raises(NoFaceError):
        pipeline.align([Image.new("RGB", (12, 12), (128, 128, 128))])


def test_huge_image_is_detected_on_a_downscaled_copy(pipeline):
    img = decode_image(lfw_photo("Colin_Powell", 1))
    big = img.resize((2000, 2000), Image.Resampling.BILINEAR)  # > max_detect_side
    small_face, big_face = pipeline.align([img]), pipeline.align([big])
    lm_small = np.array(small_face[0].landmarks) * 8
    assert np.abs(np.array(big_face[0].landmarks) - lm_small).max() < 16  # 2 px at 250 px
    diff = np.abs(small_face[0].crop.astype(int) - big_face[0].crop.astype(int)).mean()
    assert diff < 8, diff


def test_a_face_between_two_pyramid_scales_is_found_by_the_second_look(pipeline):
    """MTCNN's 0.709 pyramid misses Marilyn_Monroe_0001 (LFW's one such photo); the denser
    second look finds her, where the face is."""
    img = decode_image(lfw_photo("Marilyn_Monroe", 1))
    assert pipeline.detector.name == "mtcnn"
    assert pipeline.detector._find([np.asarray(img)], "detect") == [[]]
    face = pipeline.align([img])[0]
    x1, y1, x2, y2 = face.box
    assert face.method == "detected" and 60 < x1 < 110 and 150 < x2 < 210 and y2 - y1 > 90


def _face(box, score=1.0):
    from model.face.detect import Detection
    x1, y1, x2, y2 = box
    points = np.array([[x1 + 0.3 * (x2 - x1), y1 + 0.4 * (y2 - y1)]] * 5)
    return Detection(tuple(float(v) for v in box), points, score)


def test_face_choice_rules():
    """largest: by the area inside the image; central: nearest the centre of the faces at
    least half as large; "largest" looks first at the faces the detector is sure of."""
    from model.face.pipeline import choose_face
    sure = 0.98
    subject = _face((80, 70, 180, 190))                  # 12,000 px², centred
    cut = _face((-60, 60, 70, 210))                      # 19,500 px² box, 10,500 inside
    big_side = _face((150, 10, 290, 170))                # 100 px outside on the right
    assert choose_face([subject, cut], 250, 250, "largest", sure) is subject
    assert choose_face([big_side, subject], 250, 250, "largest", sure) is big_side
    assert choose_face([big_side, subject], 250, 250, "central", sure) is subject
    unsure = _face((100, 20, 240, 200), score=sure - 0.01)  # a hand, a print...
    assert choose_face([unsure, subject], 250, 250, "largest", sure) is subject
    assert choose_face([unsure], 250, 250, "largest", sure) is unsure  # still a face
    with pytest.raises(ValueError, match="unknown face choice"):
        choose_face([subject], 250, 250, "sharpest")


def test_faces_of_nearly_one_size_in_a_large_frame_are_chosen_as_in_the_photo(pipeline):
    """David_Wells_0006: a bystander nearly as large as the subject. On the frame's
    downscaled copy their order can swap; both are refined at full resolution first, so
    the frame gives the photo's choice wherever it is pasted."""
    from bench.large_frames import paste_into_canvas
    photo = Image.open(lfw_photo("David_Wells", 6))
    alone = pipeline.align([decode_image(lfw_photo("David_Wells", 6))])[0]
    for seed in range(3):
        rng = np.random.default_rng(seed)
        framed = pipeline.align([decode_image(paste_into_canvas(photo, rng))])[0]
        dx = np.array(framed.landmarks) - np.array(alone.landmarks)
        assert np.abs(dx - dx.mean(0)).max() < 3, (seed, framed.box, alone.box)


# ------------------------------------------------------------------ dlib's chip (0.3 encoder)
@pytest.fixture(scope="module")
def chip_pipeline():
    from model.face.pipeline import FacePipeline
    from model.face.preprocess import DLIB_CHIP150
    return FacePipeline(device="cpu", spec=DLIB_CHIP150)


def test_dlib_chip_spec_gives_150px_chips_close_to_face_recognitions(chip_pipeline):
    """Our path (MTCNN box → our port of dlib's 5-point predictor → dlib's chip) against
    face_recognition's (HOG box → dlib's predictor → dlib's chip), through dlib's ResNet:
    the descriptors differ only by where the two detectors put the box."""
    from model.nn.checkpoint import load_encoder
    from model.train.teacher import lookup, open_store
    from tests.conftest import ROOT
    encoder, _ = load_encoder(ROOT / "weights" / "faceverify-encoder.safetensors")
    paths = [lfw_photo(n, i) for n, i in PHOTOS]
    faces = chip_pipeline.align([decode_image(p) for p in paths])
    assert all(f.crop.shape == (150, 150, 3) and f.method == "detected" for f in faces)
    assert all(len(f.extra["dlib_landmarks"]) == 5 for f in faces)
    store, _ = open_store()
    try:
        teacher = lookup(store, paths)[:, 0]
    except Exception as exc:  # no dlib and no precomputed vectors for these photos
        pytest.skip(f"teacher vectors unavailable: {exc}")
    teacher = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    with torch.inference_mode():
        ours = encoder(encoder.prepare(np.stack([f.crop for f in faces]))).numpy()
    gap = np.linalg.norm(ours - teacher, axis=1)
    assert np.median(gap) < 0.06 and gap.max() < 0.15, gap  # same-person pairs: ~0.5-0.8


def test_dlib_chip_fallback_and_detect_false_use_the_specs_size(chip_pipeline):
    blank = Image.new("RGB", (250, 250), (10, 20, 30))
    face = chip_pipeline.align([blank], fallback="centre")[0]
    assert face.method == "centred_fallback" and face.crop.shape == (150, 150, 3)
    face = chip_pipeline.align([Image.new("RGB", (300, 300), (200, 10, 10))], detect=False)[0]
    assert face.crop.shape == (150, 150, 3) and face.crop[70, 70].tolist() == [200, 10, 10]
