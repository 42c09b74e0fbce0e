"""Face detection with 5 landmarks: MTCNN, whose weights ship inside facenet-pytorch 2.5.3."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Detection:
    """One detected face, in the pixel coordinates of the decoded image."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth, right mouth
    score: float

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' → the first CUDA device when there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FaceDetector:
    """Batched MTCNN. Images of equal size are detected in one pass (MTCNN's batching rule).

    Images smaller than `min_face_size` cannot hold a detectable face (and MTCNN's pyramid has
    no level for them): they get no faces. Images whose longer side exceeds
    `max_detect_side` are detected on a downscaled copy and the boxes and landmarks scaled
    back, so a huge upload costs no more than a large one; alignment still samples the
    full-resolution image.
    """

    def __init__(self, device: str | torch.device = "auto", min_face_size: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), max_detect_side: int = 1280):
        from facenet_pytorch import MTCNN  # heavy import; only where detection is needed

        self.device = resolve_device(device)
        self.min_face_size = min_face_size
        self.max_detect_side = max_detect_side
        self._mtcnn = MTCNN(
            min_face_size=min_face_size, thresholds=list(thresholds), keep_all=True,
            post_process=False, device=self.device,
        )
        self._mtcnn.eval()

    @torch.inference_mode()
    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """Return, for each image, its faces sorted by area (largest first)."""
        results: list[list[Detection]] = [[] for _ in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        scales: dict[int, float] = {}
        resized: dict[int, Image.Image] = {}
        for i, img in enumerate(images):
            if min(img.size) < self.min_face_size:
                continue
            scale = min(1.0, self.max_detect_side / max(img.size))
            if scale < 1.0:
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                resized[i] = img.resize(size, Image.Resampling.BILINEAR)
                scales[i] = img.width / size[0]
            by_size.setdefault(resized.get(i, img).size, []).append(i)
        for indices in by_size.values():
            batch = [np.asarray(resized.get(i, images[i])) for i in indices]
            boxes, probs, points = self._mtcnn.detect(np.stack(batch), landmarks=True)
            for i, b, p, pt in zip(indices, boxes, probs, points):
                if b is None:
                    continue
                k = scales.get(i, 1.0)
                faces = [
                    Detection(tuple(float(v) * k for v in box),
                              np.asarray(lm, dtype=np.float64) * k, float(score))
                    for box, score, lm in zip(b, p, pt)
                ]
                results[i] = sorted(faces, key=lambda f: f.area, reverse=True)
        return results
