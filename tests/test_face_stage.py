"""The service's face stage (app/faces.py) on real photos: reduced decoding reports faces in the
upload's pixels, and a request's images are worked on side by side but not in vain."""
from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
from PIL import Image

from app.errors import ServiceError
from app.faces import FaceStage
from model.face.imageio import decode_image, decode_reduced
from tests.conftest import lfw_photo
from tests.service_support import DEFAULT_WEIGHTS


@pytest.fixture(scope="module")
def chip_pipeline():
    from model.face.pipeline import FacePipeline
    from model.face.preprocess import DLIB_CHIP150
    return FacePipeline(device="cpu", spec=DLIB_CHIP150)


def _big_jpeg(factor: int = 12) -> bytes:
    """Tony_Blair_0005 enlarged `factor` times (3000x3000 at 12), as a JPEG."""
    photo = Image.open(lfw_photo("Tony_Blair", 5)).convert("RGB")
    big = photo.resize((photo.width * factor, photo.height * factor), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_a_big_jpeg_is_decoded_reduced_with_the_factor_back_to_its_pixels():
    data = _big_jpeg()
    img, scale = decode_reduced(data, min_side=1280)
    assert scale == 2 and img.size == (1500, 1500)
    img, scale = decode_reduced(data, min_side=700)
    assert scale == 4 and img.size == (750, 750)
    assert decode_reduced(data)[1] == 1 and decode_image(data).size == (3000, 3000)


def test_faces_found_in_a_reduced_decode_are_reported_in_the_uploads_pixels(chip_pipeline):
    small = chip_pipeline.align([decode_image(lfw_photo("Tony_Blair", 5))])[0]
    data = _big_jpeg()
    for min_side in (1280, None):
        stage = FaceStage(chip_pipeline, workers=2, max_pixels=40_000_000,
                          decode_min_side=min_side)
        try:
            face = asyncio.run(stage.prepare({"image": data}, detect=True)).faces[0]
        finally:
            stage.shutdown()
        # within 5 % of the face's size (a missing factor of 2 would be off by half the image)
        tol = 0.05 * 12 * (small.box[2] - small.box[0])
        assert np.allclose(face.box, np.array(small.box) * 12, rtol=0, atol=tol)
        assert np.allclose(face.landmarks, np.array(small.landmarks) * 12, rtol=0, atol=tol)
        assert np.allclose(face.extra["dlib_landmarks"],
                           np.array(small.extra["dlib_landmarks"]) * 12, rtol=0, atol=tol)


def test_an_undecodable_image_is_the_answer_and_its_sibling_is_not_detected(chip_pipeline):
    """image1 is junk, image2 a large photo: the request's answer is image1's 400, and image2
    (decoded on the other thread meanwhile) is dropped before detection."""
    calls = []

    class Counting:  # the real pipeline, counting what it is asked to align
        def __init__(self, inner):
            self.inner, self.detector = inner, inner.detector

        def align(self, images, **kw):
            calls.append(len(images))
            return self.inner.align(images, **kw)

    junk_failed = threading.Event()

    class JunkFirst(FaceStage):
        """image2's decoding starts once image1's has failed (on a busy machine the pool's
        first thread can start late, and the test is about what happens after)."""

        def _decode(self, name, data):
            if name == "image2":
                assert junk_failed.wait(30)
            try:
                return super()._decode(name, data)
            except ServiceError:
                junk_failed.set()
                raise

    stage = JunkFirst(Counting(chip_pipeline), workers=2, max_pixels=40_000_000)
    try:
        with pytest.raises(ServiceError) as err:
            asyncio.run(stage.prepare({"image1": b"not an image", "image2": _big_jpeg()},
                                      detect=True))
    finally:
        stage.shutdown()
    assert err.value.code == "invalid_image" and err.value.field == "image1"
    assert calls == []


@pytest.fixture(scope="module")
def int8_graph() -> bytes:
    from model.encoder.weights import int8_graph_for
    path = int8_graph_for(DEFAULT_WEIGHTS)
    if not path.exists():
        pytest.skip(f"{path} is not committed")
    return path.read_bytes()


def test_worker_processes_encode_the_faces_they_align(chip_pipeline, int8_graph):
    """Given the encoder's graph, each worker embeds the face it aligned: the same vector as
    the offline pipeline's crop through the same graph; the crop itself comes back only
    when asked; already-aligned images (detect=false) are left to the batcher."""
    from app.faces import PipelineConfig
    from model.encoder.onnx_session import CropEncoder
    photos = {"image1": lfw_photo("Tony_Blair", 5).read_bytes(),
              "image2": lfw_photo("Colin_Powell", 1).read_bytes()}
    offline = chip_pipeline.align([decode_image(p) for p in photos.values()])
    want = CropEncoder(int8_graph, chip_pipeline.spec)(np.stack([f.crop for f in offline]))
    config = PipelineConfig(chip_pipeline.spec, "largest", "yunet", encoder_graph=int8_graph)
    stage = FaceStage(chip_pipeline, workers=2, max_pixels=40_000_000, processes=config)
    try:
        assert stage.encodes
        bare = asyncio.run(stage.prepare(photos, detect=True, keep_crops=False))
        kept = asyncio.run(stage.prepare(photos, detect=True))
        aligned = asyncio.run(stage.prepare({"image": encode_png(offline[0].crop)},
                                            detect=False))
    finally:
        stage.shutdown()
    for got in (bare, kept):
        assert got.embeddings.shape == want.shape and got.embeddings.dtype == np.float32
        np.testing.assert_allclose(got.embeddings, want, atol=1e-6)
        assert got.encode_s > 0
        assert [f.box for f in got.faces] == [f.box for f in offline]
    assert all(f.crop is None for f in bare.faces)
    assert all(np.array_equal(f.crop, o.crop) for f, o in zip(kept.faces, offline))
    assert aligned.embeddings is None and aligned.faces[0].crop.shape == (150, 150, 3)


def encode_png(crop: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, "PNG")
    return buf.getvalue()
