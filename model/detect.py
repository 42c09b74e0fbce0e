"""Face detection with 5 landmarks: MTCNN, whose weights ship inside facenet-pytorch 2.5.3."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image


# What the detector finds, as a name: caches of aligned crops (model/data.py) are keyed by it.
DETECTOR_VERSION = "mtcnn-0.709,second-look-0.8"


@dataclass(frozen=True)
class Detection:
    """One detected face, in the pixel coordinates of the decoded image."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth, right mouth
    score: float

    def visible_area(self, width: int, height: int) -> float:
        """The area of the box inside the image: a face cut by the frame's edge counts by
        what shows of it (MTCNN's box reaches past the edge to where the face would end)."""
        x1, y1, x2, y2 = self.box
        return (max(0.0, min(x2, width) - max(x1, 0.0))
                * max(0.0, min(y2, height) - max(y1, 0.0)))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _detections(boxes, probs, points, scale: float = 1.0,
                offset: tuple[float, float] = (0.0, 0.0)) -> list[Detection]:
    """MTCNN's output for one image, in the coordinates of the image it was cut or scaled
    from: x * scale + offset."""
    ox, oy = offset
    return [Detection((float(b[0]) * scale + ox, float(b[1]) * scale + oy,
                       float(b[2]) * scale + ox, float(b[3]) * scale + oy),
                      np.asarray(lm, dtype=np.float64) * scale + [ox, oy], float(score))
            for b, score, lm in zip(boxes, probs, points)]


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
    full-resolution image, and `refine_candidates` re-detects the faces that could be chosen
    in crops around them at (up to) LFW's scale, so a small face in a large frame gets the
    box and landmarks it would get in a photo of its own.
    """

    # An image where MTCNN's pyramid (scale step 0.709) finds no face is searched again with a
    # denser one: faces that fall between two of its scales are found (LFW's
    # Marilyn_Monroe_0001 is the one such photo of 13,233). It costs time only on images
    # without a face.
    SECOND_LOOK_SCALE_STEP = 0.8

    # refine(): the crop is REFINE_CONTEXT times the face's box side, resized to at most
    # REFINE_CROP_PX a side (a face of ~128 px, as in a 250x250 LFW photo).
    REFINE_CONTEXT = 2.5
    REFINE_CROP_PX = 320

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
        self._second_look = MTCNN(
            min_face_size=min_face_size, thresholds=list(thresholds), keep_all=True,
            factor=self.SECOND_LOOK_SCALE_STEP, post_process=False, device=self.device,
        )
        self._second_look.eval()
        # The refiner looks for one face that fills ~40 % of its crop: a large smallest face
        # keeps its image pyramid short.
        self._refiner = MTCNN(min_face_size=40, thresholds=list(thresholds), keep_all=True,
                              post_process=False, device=self.device)
        self._refiner.eval()

    def needs_refining(self, image: Image.Image) -> bool:
        """Was this image detected on a downscaled copy?"""
        return max(image.size) > self.max_detect_side

    @torch.inference_mode()
    def refine(self, image: Image.Image, face: Detection) -> Detection:
        """`face` detected again in a crop around it, at up to REFINE_CROP_PX a side; the
        original detection when the crop shows no face near its centre."""
        x1, y1, x2, y2 = face.box
        half = self.REFINE_CONTEXT * max(x2 - x1, y2 - y1) / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = max(0, round(cx - half)), max(0, round(cy - half))
        right = min(image.width, round(cx + half))
        bottom = min(image.height, round(cy + half))
        if right - left < 40 or bottom - top < 40:
            return face
        crop = image.crop((left, top, right, bottom))
        scale = min(1.0, self.REFINE_CROP_PX / max(crop.size))
        if scale < 1.0:
            crop = crop.resize((max(1, round(crop.width * scale)),
                                max(1, round(crop.height * scale))), Image.Resampling.BILINEAR)
        boxes, probs, points = self._refiner.detect(np.asarray(crop)[None], landmarks=True)
        if boxes[0] is None:
            return face
        found = _detections(boxes[0], probs[0], points[0], 1.0 / scale, (left, top))
        best = max(found, key=lambda f: _iou(f.box, face.box))
        if _iou(best.box, face.box) < 0.4:
            return face  # not the same face
        return best

    def refine_candidates(self, image: Image.Image, faces: Sequence[Detection],
                          min_share: float, most: int = 3
                          ) -> tuple[list[Detection], list[Detection]]:
        """`faces` (largest first) with the likely choices, those at least `min_share` of
        the largest's visible area (at most `most`), refined at full resolution and the
        list sorted again (on the downscaled copy, two faces of nearly one size can swap
        order); and the refined ones. A face chosen from outside them still needs `refine`."""
        w, h = image.size
        biggest = faces[0].visible_area(w, h)
        # faces come largest first, so the candidates are a prefix
        candidates = [f for f in faces[:most] if f.visible_area(w, h) >= min_share * biggest]
        refined = [self.refine(image, f) for f in candidates]
        everyone = refined + list(faces[len(candidates):])
        return sorted(everyone, key=lambda f: f.visible_area(w, h), reverse=True), refined

    @torch.inference_mode()
    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """Return, for each image, its faces sorted by visible area (largest first)."""
        results: list[list[Detection]] = [[] for _ in images]
        by_size: dict[tuple[int, int], list[int]] = {}
        scales: dict[int, float] = {}
        resized: dict[int, Image.Image] = {}
        for i, img in enumerate(images):
            if min(img.size) < self.min_face_size:
                continue
            if self.needs_refining(img):  # detected on a downscaled copy
                scale = self.max_detect_side / max(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                resized[i] = img.resize(size, Image.Resampling.BILINEAR)
                scales[i] = img.width / size[0]
            by_size.setdefault(resized.get(i, img).size, []).append(i)
        for mtcnn in (self._mtcnn, self._second_look):
            for indices in by_size.values():
                batch = [np.asarray(resized.get(i, images[i])) for i in indices]
                boxes, probs, points = mtcnn.detect(np.stack(batch), landmarks=True)
                for i, b, p, pt in zip(indices, boxes, probs, points):
                    if b is None:
                        continue
                    faces = _detections(b, p, pt, scales.get(i, 1.0))
                    w, h = images[i].size
                    results[i] = sorted(faces, key=lambda f: f.visible_area(w, h),
                                        reverse=True)
            # the second look: only the images still without a face
            by_size = {size: missing for size, indices in by_size.items()
                       if (missing := [i for i in indices if not results[i]])}
        return results
