"""faceverify in-process: `Verifier` verifies, embeds and finds faces without a server.

    from faceverify import Verifier

    v = Verifier()                                   # the shipped encoder, int8 on the CPU
    result = v.verify("alice_1.jpg", "alice_2.jpg")
    result.verified, result.distance                 # True, 0.28
    v.embed("alice_1.jpg")                           # (128,) float32, unit length
    [f.box for f in v.faces("group.jpg")]            # every face, largest first

It is the service's face path, called directly: the same decode (EXIF orientation, size
limits), the same face pipeline (YuNet, dlib's landmarks and chip, the turn check for sideways
photos), the same encoder (`app.inference.open_encoder`: the int8 graph beside the weights,
torch-free) and the same threshold (the model card's). So `Verifier().verify(a, b)` gives the
numbers `POST /verify` gives for the same two files.

Inputs: a path (str or os.PathLike), the file's bytes, a PIL image, or a numpy array of RGB
pixels, (H, W, 3) or greyscale (H, W), uint8, as `face_recognition.load_image_file` returns.

Errors are `faceverify.FaceverifyError` with the code and the HTTP status the service would
answer with (`no_face_detected` 422, `invalid_image` 400, `unsupported_media_type` 415,
`payload_too_large` 413), the same exception type as the HTTP client's.

Threads: one `Verifier` may be shared; each thread gets its own face pipeline (built on its
first call), and the encoder's ONNX Runtime session runs concurrent calls.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from faceverify.client import FaceverifyError

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


@dataclass(frozen=True)
class Face:
    """A face found in an image, in that image's pixels (as the service reports it)."""

    box: list[float] | None  # x1, y1, x2, y2
    landmarks: list[list[float]] | None  # YuNet's 5 points: eyes, nose tip, mouth corners
    score: float | None  # the detector's confidence
    faces_found: int  # faces the detector found in the image
    rotation: int = 0  # degrees clockwise the image was turned to make the face upright

    @classmethod
    def of(cls, aligned) -> Face:
        return cls(**aligned.describe())


@dataclass(frozen=True)
class Verification:
    """`POST /verify`'s answer: are the two images' faces the same person?"""

    verified: bool  # distance < threshold
    distance: float  # Euclidean, between unit embeddings: [0, 2]
    similarity: float  # cosine, 1 - distance² / 2
    threshold: float
    model: dict[str, str]  # name, version, sha256 of what made the embeddings
    faces: list[Face]
    timings_ms: dict[str, float] = field(default_factory=dict)


class Verifier:
    """Face verification in this process.

    Args:
        weights: the encoder's safetensors file (its model card beside it; its int8 graph
            beside it runs on the CPU). Default: the shipped encoder.
        threshold: the distance under which two faces are the same person. Default: the
            model card's calibrated threshold (FAR 0.1 % on LFW View 2's impostors; 0.4233
            for the shipped int8 graph).
        face_choice: which face of a photo with several counts: "largest" or "central".
        detector: "auto" (YuNet for the shipped encoder) | "yunet" | "mtcnn" (needs torch).
        orient: look for faces in sideways and upside-down photos.
        device: "cpu", or "cuda"/"cuda:N" with the `gpu` extra (the torch encoder).
        int8: "auto" | "on" | "off" (off needs torch: the float32 module).
        threads: the encoder's threads (0: the cores this process may use).
        max_pixels: larger images are refused (payload_too_large), before decoding.
    """

    def __init__(self, weights: str | os.PathLike | None = None, *,
                 threshold: float | None = None, face_choice: str = "largest",
                 detector: str = "auto", orient: bool = True, device: str = "cpu",
                 int8: str = "auto", threads: int = 0, max_pixels: int = 40_000_000,
                 decode_min_side: int = 1280):
        from app.faces import PipelineConfig
        from app.inference import EncoderError, open_encoder, serving_device
        from model.face.pipeline import detector_for
        from model.shipped import WEIGHTS_DIR
        self.weights = Path(weights) if weights else WEIGHTS_DIR / "faceverify-encoder.safetensors"
        try:
            encoder = open_encoder(self.weights, serving_device(device), int8=int8,
                                   threads=threads)
        except EncoderError as exc:
            raise FaceverifyError(str(exc), status=503, code="not_ready") from None
        self._runner = encoder.runner
        self.card: dict[str, Any] = encoder.card
        self.spec = encoder.spec
        self.model: dict[str, str] = dict(encoder.model_ref)
        card_threshold = (self.card.get("threshold") or {}).get("value")
        if threshold is None and card_threshold is None:
            raise FaceverifyError("the model card has no calibrated threshold: pass one",
                                  status=503, code="not_ready")
        self.threshold = float(threshold if threshold is not None else card_threshold)
        self.max_pixels = max_pixels
        self.decode_min_side = decode_min_side or None
        self._config = PipelineConfig(self.spec, face_choice, detector_for(self.spec, detector),
                                      orient=orient)
        self._local = threading.local()

    # -- the public calls -------------------------------------------------------------------
    def verify(self, image1: ImageInput, image2: ImageInput,
               threshold: float | None = None) -> Verification:
        """Are the faces of two images the same person? `threshold`: this call's own (default:
        the Verifier's)."""
        t0 = time.perf_counter()
        faces, embeddings = zip(*(self._embed_one(img, name) for name, img in
                                  (("image1", image1), ("image2", image2))))
        e = np.stack(embeddings).astype(np.float64)
        distance = float(np.linalg.norm(e[0] - e[1]))
        similarity = max(-1.0, min(1.0, float(e[0] @ e[1])))
        limit = self.threshold if threshold is None else float(threshold)
        return Verification(distance < limit, distance, similarity, limit, dict(self.model),
                            [Face.of(f) for f in faces],
                            {"total": round((time.perf_counter() - t0) * 1000, 3)})

    def embed(self, image: ImageInput) -> np.ndarray:
        """The image's face (the largest, or as `face_choice` says) as a (D,) float32 unit
        vector; two vectors' Euclidean distance is what `verify` thresholds."""
        return self._embed_one(image, "image")[1]

    def embed_faces(self, image: ImageInput) -> tuple[list[Face], np.ndarray]:
        """Every face of the image, largest first, and their (n, D) embeddings ((0, D) when
        there is none: no error)."""
        img, scale = self._image(image, "image")
        aligned = self._pipeline().align_every(img)
        if not aligned:
            return [], np.zeros((0, self._runner.embedding_dim), np.float32)
        vectors = self._runner(np.stack([f.crop for f in aligned]))
        return [Face.of(f.scaled(scale)) for f in aligned], vectors

    def faces(self, image: ImageInput) -> list[Face]:
        """Every face the detector finds in the image, largest first ([] when none)."""
        img, scale = self._image(image, "image")
        return [Face.of(f.scaled(scale)) for f in self._pipeline().align_every(img)]

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """The Euclidean distance of two embeddings (what `verify` thresholds)."""
        return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))

    # -- the face path ----------------------------------------------------------------------
    def _pipeline(self):
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            pipeline = self._local.pipeline = self._config.build()
        return pipeline

    def _embed_one(self, image: ImageInput, name: str):
        from model.face.pipeline import NoFaceError
        img, scale = self._image(image, name)
        try:
            face = self._pipeline().align([img], fallback="raise")[0]
        except NoFaceError:
            raise FaceverifyError(f"{name}: no face detected in the image", status=422,
                                  code="no_face_detected", field=name) from None
        return face.scaled(scale), self._runner(face.crop[None])[0]

    def _image(self, image: ImageInput, name: str) -> tuple[Image.Image, int]:
        """An upright RGB image and the factor back to the input's pixels."""
        from app.errors import ServiceError
        from app.faces import decode_upload
        if isinstance(image, np.ndarray):
            return _from_array(image, name), 1
        if isinstance(image, Image.Image):
            return ImageOps.exif_transpose(image).convert("RGB"), 1
        if isinstance(image, (str, os.PathLike)):
            try:
                image = Path(image).read_bytes()
            except OSError as exc:
                raise FaceverifyError(f"{name}: cannot read {image}: {exc.strerror}",
                                      status=400, code="invalid_image", field=name) from None
        if not isinstance(image, (bytes, bytearray, memoryview)):
            raise TypeError(f"{name}: a path, bytes, a PIL image or a numpy array, not "
                            f"{type(image).__name__}")
        try:
            return decode_upload(name, bytes(image), self.max_pixels, self.decode_min_side)
        except ServiceError as exc:
            raise FaceverifyError(exc.message, status=exc.status, code=exc.code,
                                  field=exc.field) from None


def _from_array(pixels: np.ndarray, name: str) -> Image.Image:
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (
            pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise FaceverifyError(f"{name}: a numpy image is (H, W, 3) RGB, (H, W, 4) RGBA or "
                              f"(H, W) greyscale uint8, not {pixels.dtype} {pixels.shape}",
                              status=400, code="invalid_image", field=name)
    return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
