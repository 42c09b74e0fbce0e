"""Face detection with 5 landmarks, by one of two detectors (`DETECTORS`):
- `yunet`: YuNet (OpenCV Zoo, MIT), converted into weights/detector-yunet.onnx by
  model/convert/yunet.py and run by ONNX Runtime (model/face/yunet.py). ~3.3 ms a 250 px photo on
  one core with its mirror-image pass. The default for dlib5 specs.
- `mtcnn`: MTCNN, whose weights ship inside facenet-pytorch 2.5.3. ~45 ms a 250 px photo.
Both give boxes and points in the same convention, so alignment (model/face/pipeline.py) is
shared; what differs per detector is kept on its class.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported where it runs: the YuNet face path runs without it
    import torch


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


def _detections(boxes, probs, points) -> list[Detection]:
    """A detector's arrays for one image as Detections."""
    return [Detection((float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                      np.asarray(lm, dtype=np.float64), float(score))
            for b, score, lm in zip(boxes, probs, points)]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' → the first CUDA device when there is one, else the CPU."""
    import torch
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _in_inference_context(method):
    """Run a detector method under its `inference_context()`."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.inference_context():
            return method(self, *args, **kwargs)
    return wrapper


class FaceDetector:
    """What every detector shares: the resolution policy and the refining of faces found on
    a downscaled copy. A subclass says how to find faces in a batch of pixel arrays.

    Images smaller than `min_face_size` cannot hold a detectable face: they get no faces.
    Images whose longer side exceeds `max_detect_side` are detected on a downscaled copy and
    the boxes and landmarks scaled back, so a huge upload costs no more than a large one; the
    smallest face found in such an image is then about `min_face_size` / `max_detect_side` of
    its longer side. Alignment still samples the full-resolution image, and
    `refine_candidates` re-detects the faces that could be chosen in crops around them at (up
    to) LFW's scale, so a small face in a large frame gets the box and landmarks it would get
    in a photo of its own.
    """

    name: str = ""
    # What the detector finds, as a name: caches of aligned crops (model/train/data.py) are
    # keyed by it.
    version: str = ""
    # "largest" (model.face.pipeline.choose_face) looks at faces scored at least this when there is
    # one: the detectors' scores live on different scales.
    sure_score: float = 0.0

    # The second look's copy of an image where the first found no face (see `detect`);
    # None: the same copy as the first look's.
    SECOND_LOOK_SIDE: int | None = None

    # refine(): the crop is REFINE_CONTEXT times the face's box side, resized to at most
    # REFINE_CROP_PX a side (a face of ~128 px, as in a 250x250 LFW photo).
    REFINE_CONTEXT = 2.5
    REFINE_CROP_PX = 320

    def __init__(self, device: str | torch.device = "auto", min_face_size: int = 20,
                 max_detect_side: int = 1280):
        self.device = device  # resolved by the detectors that run on one (MTCNN)
        self.min_face_size = min_face_size
        self.max_detect_side = max_detect_side

    def _find(self, pixels: Sequence[np.ndarray], purpose: str = "detect"
              ) -> list[list[Detection]]:
        """Faces in each of `pixels` (RGB uint8 arrays of one size), in their coordinates.
        purpose: "detect", "second-look" (an image where "detect" found none) or "refine" (a
        crop around one face)."""
        raise NotImplementedError

    def needs_refining(self, image: Image.Image) -> bool:
        """Was this image detected on a downscaled copy?"""
        return max(image.size) > self.max_detect_side

    def inference_context(self) -> contextlib.AbstractContextManager:
        """What a detection runs under (torch's inference mode for a torch network)."""
        return contextlib.nullcontext()

    @_in_inference_context
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
        found = [_rescaled(f, 1.0 / scale, (left, top))
                 for f in self._find([np.asarray(crop)], "refine")[0]]
        if not found:
            return face
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

    @_in_inference_context
    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """Return, for each image, its faces sorted by visible area (largest first).

        An image where the first look finds no face gets a second: on a copy of up to
        SECOND_LOOK_SIDE when the detector has one (a larger copy than the first look's,
        so only for images that were downscaled), else on the same copy with the
        detector's "second-look" purpose."""
        results: list[list[Detection]] = [[] for _ in images]
        firsts = {i: _downscaled(img, self.max_detect_side) for i, img in enumerate(images)
                  if min(img.size) >= self.min_face_size}
        self._look(images, firsts, "detect", results)
        if self.SECOND_LOOK_SIDE is None:
            seconds = {i: firsts[i] for i in firsts if not results[i]}
        else:
            seconds = {i: _downscaled(images[i], self.SECOND_LOOK_SIDE) for i in firsts
                       if not results[i] and self.needs_refining(images[i])}
        self._look(images, seconds, "second-look", results)
        return results

    def _look(self, images: Sequence[Image.Image],
              copies: dict[int, tuple[Image.Image, float]], purpose: str,
              results: list[list[Detection]]) -> None:
        """Detect on each image's copy (copies of one size in one batch) and store its faces,
        in the image's coordinates, largest first."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, (copy, _) in copies.items():
            by_size.setdefault(copy.size, []).append(i)
        for indices in by_size.values():
            found = self._find([np.asarray(copies[i][0]) for i in indices], purpose)
            for i, faces in zip(indices, found):
                w, h = images[i].size
                results[i] = sorted((_rescaled(f, copies[i][1]) for f in faces),
                                    key=lambda f: f.visible_area(w, h), reverse=True)


def _downscaled(img: Image.Image, side: int) -> tuple[Image.Image, float]:
    """`img` with its longer side at most `side`, and the factor back to its coordinates.
    reducing_gap: an integer box reduction first, then bilinear: ~2x faster on a 12 MP
    frame than bilinear alone, and less aliasing."""
    if max(img.size) <= side:
        return img, 1.0
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return (img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0),
            img.width / size[0])


def _rescaled(face: Detection, scale: float, offset: tuple[float, float] = (0.0, 0.0)
              ) -> Detection:
    """`face` in the coordinates of the image it was cut or scaled from: x * scale + offset."""
    if scale == 1.0 and offset == (0.0, 0.0):
        return face
    ox, oy = offset
    x1, y1, x2, y2 = face.box
    return Detection((x1 * scale + ox, y1 * scale + oy, x2 * scale + ox, y2 * scale + oy),
                     face.landmarks * scale + [ox, oy], face.score)


class MtcnnDetector(FaceDetector):
    """Batched MTCNN (facenet-pytorch). Images of equal size are detected in one pass."""

    name = "mtcnn"
    version = "mtcnn-0.709,second-look-0.8,reduce-2"
    # `python -m bench.face_choice`: on LFW, "largest" picked a face other than the subject
    # 66 times with no score floor and 49 times with 0.98 (the best of 0.8-0.995).
    sure_score = 0.98

    # An image where MTCNN's pyramid (scale step 0.709) finds no face is searched again with a
    # denser one: faces that fall between two of its scales are found (LFW's
    # Marilyn_Monroe_0001 is the one such photo of 13,233). It costs time only on images
    # without a face.
    SECOND_LOOK_SCALE_STEP = 0.8

    def __init__(self, device: str | torch.device = "auto", min_face_size: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), max_detect_side: int = 1280):
        from facenet_pytorch import MTCNN  # heavy import; only where detection is needed

        super().__init__(resolve_device(device), min_face_size, max_detect_side)
        common = {"thresholds": list(thresholds), "keep_all": True, "post_process": False,
                  "device": self.device}
        self._nets = {
            "detect": MTCNN(min_face_size=min_face_size, **common),
            "second-look": MTCNN(min_face_size=min_face_size,
                                 factor=self.SECOND_LOOK_SCALE_STEP, **common),
            # the refiner looks for one face that fills ~40 % of its crop: a large smallest
            # face keeps its image pyramid short
            "refine": MTCNN(min_face_size=40, **common),
        }
        for net in self._nets.values():
            net.eval()

    def inference_context(self) -> contextlib.AbstractContextManager:
        import torch
        return torch.inference_mode()

    def _find(self, pixels: Sequence[np.ndarray], purpose: str = "detect"
              ) -> list[list[Detection]]:
        boxes, probs, points = self._nets[purpose].detect(np.stack(pixels), landmarks=True)
        return [[] if b is None else _detections(b, p, pt)
                for b, p, pt in zip(boxes, probs, points)]


class YunetDetector(FaceDetector):
    """YuNet through ONNX Runtime (model/face/yunet.py). A batch is padded to its largest image.

    max_detect_side 640: YuNet finds faces from ~10 px, so a downscaled frame still shows
    faces of ~2 % of its longer side, and a 640 px pass costs ~7 ms on one core.
    """

    name = "yunet"
    version = "yunet-2023mar-f32,t0.6,flip-vote,sure-0.85,side-640,second-look-1280"
    # also detect on the mirror image and merge by box voting (model/face/yunet.py)
    flip = True
    # `python -m bench.face_choice --detector yunet`: on LFW, "largest" picked a face other than
    # the subject 36 times with no floor, 26 with 0.85 and 23 with 0.88, but 31 with 0.9 and
    # 108 with 0.92 (YuNet's sure faces score ~0.9-0.95); on celeba-extra 1 with 0.85, 2
    # with 0.88. 0.85 keeps a margin from that cliff.
    sure_score = 0.85

    def __init__(self, device: str | torch.device = "auto", min_face_size: int = 10,
                 max_detect_side: int = 640, threshold: float = 0.6, threads: int = 1,
                 path: str | Path | None = None):
        from model.face.yunet import DEFAULT_YUNET, YuNet
        super().__init__(device, min_face_size, max_detect_side)
        self._net = YuNet(path or DEFAULT_YUNET, threshold=threshold, threads=threads,
                          flip=self.flip)

    # A frame downscaled to 640 px where YuNet finds no face is searched again on a copy of
    # up to 1,280 px: LFW's Marilyn_Monroe_0001 pasted into a 2000x1500 frame
    # (bench.large_frames) is found at 1,280 px and not at 640. Costs time only on images
    # without a face.
    SECOND_LOOK_SIDE = 1280

    def _find(self, pixels: Sequence[np.ndarray], purpose: str = "detect"
              ) -> list[list[Detection]]:
        # one network for every purpose: the second look differs by its larger copy
        return [_detections(b, s, p) for b, p, s in self._net.detect(pixels)]


DETECTORS: dict[str, type[FaceDetector]] = {"yunet": YunetDetector, "mtcnn": MtcnnDetector}
DEFAULT_DETECTOR = "yunet"


def make_detector(name: str = DEFAULT_DETECTOR, device: str | torch.device = "auto",
                  **kw) -> FaceDetector:
    """The detector called `name` (see DETECTORS)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {sorted(DETECTORS)}")
    return DETECTORS[name](device=device, **kw)
