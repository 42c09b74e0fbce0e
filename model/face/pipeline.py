"""The shared face pipeline: decoded image → detected face → aligned crop → tensor.

Training, evaluation and the service all call `FacePipeline`, so a face is preprocessed the
same way everywhere. What "aligned" means is the encoder's preprocessing spec
(model/face/preprocess.py), which the weights and the model card carry:
- `template112`: MTCNN's 5 points → similarity onto the 112x112 template (model/face/align.py);
- `dlib-chip`: the detector's box → dlib's 5-point shape predictor (our port,
  model/face/dlib_landmarks.py) in the box dlib's HOG detector would have drawn (`dlib_box`) →
  dlib's 150x150 face chip (model/face/dlib_chip.py).
Which detector finds the faces is `detector_for(spec)` unless chosen (YuNet for `dlib5` specs,
MTCNN for `mtcnn5` ones); which face of a photo counts is the pipeline's `face_choice`. Caches
of aligned crops (model/train/data.py) are keyed by the spec's version, the face choice and the
detector's version.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # never imported here: the YuNet face path runs without torch
    import torch

from model.face.align import CENTRE_BOX_250, align_face, centred_face_landmarks, resize_crop
from model.face.detect import DEFAULT_DETECTOR, Detection, make_detector
from model.face.dlib_chip import chip_details_from_points, extract_chip, extract_image_chip
from model.face.preprocess import DEFAULT_SPEC, PreprocessSpec

# MTCNN's box and points → the box dlib's HOG detector draws around the same face, in which
# dlib's shape predictor was trained to start. A linear model of the HOG box's centre offset
# and log size (in units of sqrt(MTCNN box area), relative to its centre) on [1, w/s, the 5
# points' x, the 5 points' y], least squares over 1,440 celeba-extra photos where both
# detectors found the face (never LFW): `python -m bench.fit_dlib_box`. Residual on held-out photos: 0.032 / 0.039 / 0.074
# (x, y, log size), against 0.078 / 0.045 / 0.077 for constant offsets.
DLIB_BOX_FROM_MTCNN = np.array([
    [-0.0346, -0.1408, -0.3472], [0.0730, -0.0723, 0.2826],
    [0.2511, -0.4204, 0.7117], [0.2902, 0.3965, -0.3385], [0.1523, 0.0711, -0.1568],
    [0.1106, -0.1991, -0.2393], [0.0258, 0.1220, 0.1341],
    [0.1062, 0.1904, -0.3400], [-0.0169, 0.1596, -0.1810], [-0.0268, 0.1086, -0.2591],
    [0.0444, 0.1364, 0.4949], [-0.1335, 0.1228, 0.0050]])


# MTCNN's own 5 points (eye centres, nose tip, mouth corners) where they sit, on average, in
# dlib's 150x150 chip (padding 0.25): the median over 670 celeba-extra photos (never LFW) of
# MTCNN's points mapped into the chip dlib's predictor + HOG box gave. For the `mtcnn5` +
# `dlib-chip` spec: dlib's chip geometry without the shape predictor (the alternative measured
# in docs/accuracy.md, not shipped; the fit was a one-off script).
MTCNN5_IN_DLIB_CHIP150 = np.array([[47.962, 45.623], [102.033, 45.402], [74.836, 79.342],
                                   [50.88, 102.602], [99.051, 102.664]])


class NoFaceError(ValueError):
    """No face was found in an image where one was required (the service answers 422)."""

    def __init__(self, message: str = "no face detected in the image", index: int | None = None):
        super().__init__(message)
        self.index = index


@dataclass
class AlignedFace:
    """An aligned crop and where it came from."""

    crop: np.ndarray | None  # (S, S, 3) uint8 RGB, S = the spec's crop size; None once dropped
    # (the service's face workers keep it only when asked: the embedding is made)
    box: list[float] | None
    landmarks: list[list[float]] | None
    score: float | None
    faces_found: int
    method: str = "detected"  # "detected" | "centred_fallback" | "no_detect"
    extra: dict = field(default_factory=dict)
    rotation: int = 0  # degrees clockwise the image was turned to make the face upright

    def scaled(self, factor: float) -> AlignedFace:
        """The same face with its coordinates multiplied by `factor`: found in an image
        decoded at 1/factor of the upload's size, reported in the upload's pixels."""
        if factor == 1:
            return self

        def times(points):
            return [[round(x * factor, 2), round(y * factor, 2)] for x, y in points]
        extra = dict(self.extra)
        if "dlib_landmarks" in extra:
            extra["dlib_landmarks"] = times(extra["dlib_landmarks"])
        return replace(self, box=None if self.box is None else
                       [round(v * factor, 2) for v in self.box],
                       landmarks=None if self.landmarks is None else times(self.landmarks),
                       extra=extra)

    def unturned(self, cw: int, width: int, height: int) -> AlignedFace:
        """The same face found in the image turned `cw` degrees clockwise, its coordinates
        mapped back into the `width` x `height` image it was turned from."""
        def back(points):
            return [[round(x, 2), round(y, 2)] for x, y in
                    (unturn_point(x, y, cw, width, height) for x, y in points)]
        extra = dict(self.extra)
        if "dlib_landmarks" in extra:
            extra["dlib_landmarks"] = back(extra["dlib_landmarks"])
        box = None
        if self.box is not None:
            corners = np.array(back([self.box[:2], self.box[2:]]))
            box = [*corners.min(0).tolist(), *corners.max(0).tolist()]
        return replace(self, box=box, extra=extra, rotation=cw,
                       landmarks=None if self.landmarks is None else back(self.landmarks))

    def describe(self) -> dict:
        """The JSON shape of a face in the HTTP contract."""
        return {"box": self.box, "landmarks": self.landmarks, "score": self.score,
                "faces_found": self.faces_found, "rotation": self.rotation}


# Photos without an EXIF orientation tag may come sideways or upside down (scans placed
# sideways, canvases that drop the tag, cameras mounted upside down). YuNet finds most
# upside-down faces, but places its five points as if the face were upright (measured: the
# eyes-to-mouth line of 10 LFW faces turned 90°, 180° and 270° stays within 20° of upright), so
# the points cannot tell the turn; its score can: on 300 random LFW photos, upright faces
# score >= 0.916 (5th percentile; 0.7 % below 0.9), the same faces upside down <= 0.888 (95th
# percentile), and the best of the four turns was the upright one for all 300. So when the
# best face scores under UPRIGHT_SCORE, or none is found, the image is looked at turned 180°,
# 90° and 270°, and the turn whose best face scores highest is used: upright photos pay
# nothing but in that 0.7 %, and a photo with no face (or an unsure one) pays three more
# detections.
UPRIGHT_SCORE = 0.9
TURNS_CW = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180,
            270: Image.Transpose.ROTATE_90}  # degrees clockwise → Pillow's transpose


def turned(img: Image.Image, cw: int) -> Image.Image:
    """The image turned `cw` degrees clockwise (0, 90, 180 or 270; lossless)."""
    return img if not cw else img.transpose(TURNS_CW[cw])


def unturn_point(x: float, y: float, cw: int, width: int, height: int) -> tuple[float, float]:
    """A point of the image turned `cw` degrees clockwise, in the `width` x `height` image it
    was turned from (continuous pixel coordinates)."""
    if cw == 90:
        return y, height - x
    if cw == 180:
        return width - x, height - y
    if cw == 270:
        return width - y, x
    return x, y


# The same for YuNet's box and points: `python -m bench.fit_dlib_box --detector yunet`, 1,440
# celeba-extra photos. Held-out residual: 0.034 / 0.039 / 0.075 (x, y, log size), against
# 0.074 / 0.045 / 0.078 for constant offsets.
DLIB_BOX_FROM_YUNET = np.array([
    [0.0631, 0.131, -0.5261], [-0.0678, -0.0968, 0.2708],
    [-0.0727, -0.0974, 0.6765], [-0.0413, -0.0854, 0.238], [0.5584, 0.2262, -0.7336],
    [0.0011, -0.279, 0.2086], [0.0296, 0.1019, 0.1344],
    [-0.0364, 0.2356, 0.2289], [0.0337, 0.168, -0.784], [-0.0114, 0.2813, -0.5383],
    [0.1037, 0.1375, 0.1611], [-0.1964, -0.2609, 0.9223]])

DLIB_BOX_FROM = {"mtcnn": DLIB_BOX_FROM_MTCNN, "yunet": DLIB_BOX_FROM_YUNET}


def dlib_box(box: Sequence[float], landmarks: np.ndarray,
             table: np.ndarray = DLIB_BOX_FROM_MTCNN) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), inclusive integers: where dlib's HOG detector would have
    put this detected face (`table`: DLIB_BOX_FROM[detector])."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    s, cx, cy = np.sqrt(w * h), (x1 + x2) / 2, (y1 + y2) / 2
    lm = np.asarray(landmarks, dtype=np.float64)
    feats = np.concatenate([[1.0, w / s], (lm[:, 0] - cx) / s, (lm[:, 1] - cy) / s])
    dx, dy, log_size = feats @ table
    side = s * np.exp(log_size)
    hcx, hcy = cx + dx * s, cy + dy * s
    left, top = round(hcx - (side - 1) / 2), round(hcy - (side - 1) / 2)
    n = max(round(side), 2)
    return left, top, left + n - 1, top + n - 1


def centred_dlib_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The face box assumed on a face-centred photo (LFW's centre box, scaled)."""
    t, r, b, l_ = CENTRE_BOX_250
    return (round(l_ * width / 250), round(t * height / 250), round(r * width / 250),
            round(b * height / 250))


# Which detected face an image stands for (its other faces are only counted):
# - "largest": the largest box, by its area inside the image (the service's default, as the
#   product contract says); a face cut by the frame's edge counts by what shows of it, so the
#   choice does not change when the photo is pasted into a larger frame;
# - "central": of the faces at least half as large as the largest, the one nearest the image
#   centre. For face-centred photos such as LFW's, where a bystander cut by the frame's edge
#   can still be the larger (about 1 % of LFW's photos); evaluation and training use it there.
# "largest" looks only at the faces the detector is sure of (score >= its `sure_score`; MTCNN:
# 0.98, YuNet: 0.85) when there is one: its less sure finds in a photo with a clear face are
# mostly hands, prints and half-hidden bystanders. `python -m bench.face_choice` counts, on face-centred photos, how
# often a rule picks a face other than the one over the centre (no identity labels used): on
# LFW's 13,233 photos (2,001 with several faces) "largest" did so 66 times with no score
# floor and 49 times with 0.98 (the best of 0.8-0.995); on celeba-extra's 4,133 photos, 2
# either way. "central" gained nothing from a floor (LFW 2 → 2; celeba-extra 0 → 2), so it
# has none.
# The figures above are MTCNN's; YuNet's are on its class (model/face/detect.py). The floor is the
# detector's (FaceDetector.sure_score): their scores differ in scale.
FACE_CHOICES = ("largest", "central")
CENTRAL_MIN_AREA = 0.5


def choose_face(faces: Sequence[Detection], width: int, height: int, rule: str,
                sure_score: float = 0.0) -> Detection:
    """The face an image stands for, by `rule` (`faces` come largest first)."""
    if rule not in FACE_CHOICES:
        raise ValueError(f"unknown face choice {rule!r}; choose from {FACE_CHOICES}")
    if rule == "largest":
        return next((f for f in faces if f.score >= sure_score), faces[0])
    if len(faces) == 1:
        return faces[0]
    cx, cy = width / 2, height / 2
    biggest = faces[0].visible_area(width, height)
    large = [f for f in faces if f.visible_area(width, height) >= CENTRAL_MIN_AREA * biggest]
    return min(large, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2
               + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)


def detector_for(spec: PreprocessSpec, detector: str = "auto") -> str:
    """The detector a pipeline runs. "auto": YuNet (DEFAULT_DETECTOR) where the detector's
    face only seeds dlib's shape predictor (`dlib5` specs), MTCNN where its own points place
    the crop (`mtcnn5` specs: those encoders were trained on MTCNN's points, and YuNet's sit
    2-3 px elsewhere on a 250 px photo)."""
    if detector != "auto":
        return detector
    return DEFAULT_DETECTOR if spec.landmarks == "dlib5" else "mtcnn"


class FacePipeline:
    """Detect and align faces as `spec` says. Detection is batched and runs on `device`;
    `face_choice` says which face of an image counts (see FACE_CHOICES)."""

    def __init__(self, device: str | torch.device = "auto",
                 spec: PreprocessSpec = DEFAULT_SPEC, landmarks_path: str | Path | None = None,
                 face_choice: str = "largest", detector: str = "auto", native: bool = True,
                 orient: bool = True):
        """native: run dlib's landmarks and chip in dlib's compiled code when the dlib
        package is installed (model/face/dlib_native.py: the same numbers, faster); False: always
        the numpy ports. orient: find faces in sideways and upside-down photos (`_upright`);
        False: take every photo as upright."""
        if face_choice not in FACE_CHOICES:
            raise ValueError(f"unknown face choice {face_choice!r}; choose from {FACE_CHOICES}")
        detector = detector_for(spec, detector)
        self.detector = make_detector(detector, device=device)
        self._dlib_box_table = DLIB_BOX_FROM[detector]
        self.spec = spec
        self.face_choice = face_choice
        self.orient = orient
        self.shape_predictor = None
        self.native = None  # model.face.dlib_native.NativeDlib
        if spec.landmarks == "dlib5":
            from model.face.dlib_landmarks import DEFAULT_WEIGHTS, ShapePredictor
            from model.face.dlib_native import NativeDlib, dlib_available
            self.shape_predictor = ShapePredictor.load(landmarks_path or DEFAULT_WEIGHTS)
            if native and dlib_available():
                self.native = NativeDlib(self.shape_predictor.model)

    @property
    def landmarks_code(self) -> str | None:
        """Whose code runs dlib's landmarks and chip: "dlib" (compiled), "numpy" (our ports),
        None when the spec uses no dlib landmarks."""
        if self.shape_predictor is None:
            return None
        return "dlib" if self.native is not None else "numpy"

    def align(self, images: Sequence[Image.Image], detect: bool = True,
              fallback: str = "raise") -> list[AlignedFace]:
        """Align each image's largest face.

        fallback: what to do when no face is found: "raise" (NoFaceError, the service's
        behaviour) or "centre" (assume a face-centred photo, as evaluation does for LFW).
        """
        if not detect:
            return [AlignedFace(resize_crop(img, self.spec.crop_size), None, None, None, 0,
                                "no_detect") for img in images]
        detections = self.detector.detect(images)
        out = []
        for i, (img, faces) in enumerate(zip(images, detections)):
            cw, view, faces = self._upright(img, faces)
            if faces:
                face = self._from_detection(view, self._choose(view, faces), len(faces))
                out.append(face.unturned(cw, img.width, img.height) if cw else face)
            elif fallback == "centre":
                out.append(AlignedFace(self._centred_crop(img), None, None, None, 0,
                                       "centred_fallback"))
            else:
                raise NoFaceError(index=i)
        return out

    def align_every(self, image: Image.Image) -> list[AlignedFace]:
        """Every face the detector finds in one image, aligned, largest first (the turn
        check as in `align`); [] when there is none. For labelling each face of a group photo
        (the CLI's identify, face_recognition's shape)."""
        cw, view, faces = self._upright(image, self.detector.detect([image])[0])
        faces = sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        out = []
        for f in faces:
            face = self._from_detection(view, f, len(faces))
            out.append(face.unturned(cw, image.width, image.height) if cw else face)
        return out

    def _upright(self, img: Image.Image, faces: list[Detection]
                 ) -> tuple[int, Image.Image, list[Detection]]:
        """(degrees clockwise to turn the image so its face is upright, the image so turned,
        the faces found in it): 0, `img` and `faces` when the best face is sure enough (UPRIGHT_SCORE), else the
        turn whose best face scores highest of all four (an upside-down face can score over
        UPRIGHT_SCORE too, so no look stops the search early)."""
        best = max((f.score for f in faces), default=0.0)
        if not self.orient or best >= UPRIGHT_SCORE:
            return 0, img, faces
        looks = [(best, 0, img, faces)]
        for cw in (180, 90, 270):
            view = turned(img, cw)
            found = self.detector.detect([view])[0]
            looks.append((max((f.score for f in found), default=0.0), cw, view, found))
        _, cw, view, found = max(looks, key=lambda look: look[0])  # a tie: the earlier turn
        return cw, view, found

    def _choose(self, img: Image.Image, faces: list[Detection]) -> Detection:
        """The face the image stands for. When it was detected on a downscaled copy, the
        likely choices are refined at full resolution before choosing, and the chosen face
        is refined if it was not among them (a sure face smaller than the unsure ones, a
        fourth central candidate)."""
        sure = self.detector.sure_score
        if not self.detector.needs_refining(img):
            return choose_face(faces, img.width, img.height, self.face_choice, sure)
        faces, refined = self.detector.refine_candidates(img, faces, CENTRAL_MIN_AREA)
        face = choose_face(faces, img.width, img.height, self.face_choice, sure)
        return face if any(face is r for r in refined) else self.detector.refine(img, face)

    def _from_detection(self, img: Image.Image, face: Detection, faces_found: int
                        ) -> AlignedFace:
        extra = {}
        if self.spec.geometry == "template112":
            crop = align_face(img, face.landmarks, self.spec.crop_size)
        elif self.spec.landmarks == "mtcnn5":
            crop = self._chip_from_mtcnn(np.asarray(img), face.landmarks)
        else:
            points, crop = self.landmarks_and_chip(
                np.asarray(img), dlib_box(face.box, face.landmarks, self._dlib_box_table))
            extra["dlib_landmarks"] = points.tolist()
        return AlignedFace(
            crop=crop,
            box=[round(v, 2) for v in face.box],
            landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
            score=round(face.score, 5),
            faces_found=faces_found,
            extra=extra,
        )

    def _centred_crop(self, img: Image.Image) -> np.ndarray:
        if self.spec.geometry == "template112":
            return align_face(img, centred_face_landmarks(*img.size), self.spec.crop_size)
        if self.spec.landmarks == "mtcnn5":
            return self._chip_from_mtcnn(np.asarray(img), centred_face_landmarks(*img.size))
        return self.landmarks_and_chip(np.asarray(img), centred_dlib_box(*img.size))[1]

    def _chip_from_mtcnn(self, pixels: np.ndarray, points: np.ndarray) -> np.ndarray:
        size = self.spec.crop_size  # the template is for padding 0.25 (the spec checks it)
        template = MTCNN5_IN_DLIB_CHIP150 * (size / 150)
        return extract_image_chip(pixels, chip_details_from_points(template, points, size))

    def landmarks_and_chip(self, pixels: np.ndarray, box: Sequence[int]
                           ) -> tuple[np.ndarray, np.ndarray]:
        """dlib's 5 points in `box` (dlib's inclusive (left, top, right, bottom)) and the face
        chip they give: (P, 2) float64 and (S, S, 3) uint8, by dlib's code or our ports."""
        size, padding = self.spec.crop_size, self.spec.padding
        if self.native is not None:
            return self.native.landmarks_and_chip(pixels, box, size, padding)
        points = self.shape_predictor.predict(pixels, box)
        return points, extract_chip(pixels, points, size, padding)
