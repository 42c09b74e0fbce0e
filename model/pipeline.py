"""The shared face pipeline: decoded image → detected face → aligned 112x112 crop → tensor.

Training, evaluation and the service all call `FacePipeline`, so a face is preprocessed the
same way everywhere. `PIPELINE_VERSION` names that preprocessing; caches of aligned crops and
model cards carry it, and a change here must bump it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from model.align import CROP_SIZE, align_face, centred_face_landmarks, resize_crop
from model.detect import Detection, FaceDetector

PIPELINE_VERSION = "mtcnn5-sim112-v1"
# Pixel normalisation applied after alignment: uint8 [0, 255] → float [-1, 1].
PIXEL_MEAN = 127.5
PIXEL_STD = 127.5


class NoFaceError(ValueError):
    """No face was found in an image where one was required (the service answers 422)."""

    def __init__(self, message: str = "no face detected in the image", index: int | None = None):
        super().__init__(message)
        self.index = index


@dataclass
class AlignedFace:
    """An aligned crop and where it came from."""

    crop: np.ndarray  # (112, 112, 3) uint8 RGB
    box: list[float] | None
    landmarks: list[list[float]] | None
    score: float | None
    faces_found: int
    method: str = "detected"  # "detected" | "centred_fallback" | "no_detect"
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """The JSON shape of a face in the HTTP contract."""
        return {"box": self.box, "landmarks": self.landmarks, "score": self.score,
                "faces_found": self.faces_found}


def crops_to_tensor(crops: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float32 normalised to [-1, 1]."""
    if isinstance(crops, torch.Tensor):
        t = crops
    else:
        arr = crops if isinstance(crops, np.ndarray) else np.stack(list(crops))
        if not (arr.flags.writeable and arr.flags.c_contiguous):
            arr = np.array(arr)  # e.g. a slice of the read-only memory-mapped crop cache
        t = torch.from_numpy(arr)
    return (t.permute(0, 3, 1, 2).float() - PIXEL_MEAN) / PIXEL_STD


class FacePipeline:
    """Detect and align faces. Detection is batched and runs on the given device."""

    def __init__(self, device: str | torch.device = "auto", min_face_size: int = 20):
        self.detector = FaceDetector(device=device, min_face_size=min_face_size)

    def align(self, images: Sequence[Image.Image], detect: bool = True,
              fallback: str = "raise") -> list[AlignedFace]:
        """Align each image's largest face.

        fallback: what to do when no face is found: "raise" (NoFaceError, the service's
        behaviour) or "centre" (assume a face-centred photo, as evaluation does for LFW).
        """
        if not detect:
            return [AlignedFace(resize_crop(img), None, None, None, 0, "no_detect") for img in images]
        detections = self.detector.detect(images)
        out = []
        for i, (img, faces) in enumerate(zip(images, detections)):
            if faces:
                out.append(_aligned_from_detection(img, faces[0], len(faces)))
            elif fallback == "centre":
                lm = centred_face_landmarks(*img.size)
                out.append(AlignedFace(align_face(img, lm), None, None, None, 0, "centred_fallback"))
            else:
                raise NoFaceError(index=i)
        return out


def _aligned_from_detection(img: Image.Image, face: Detection, faces_found: int) -> AlignedFace:
    return AlignedFace(
        crop=align_face(img, face.landmarks),
        box=[round(v, 2) for v in face.box],
        landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
        score=round(face.score, 5),
        faces_found=faces_found,
    )
