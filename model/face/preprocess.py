"""The preprocessing spec: how a face becomes the encoder's input tensor.

Each encoder is trained on crops made one particular way (crop size, where the landmarks come
from, the chip geometry, the pixel normalisation). The spec says which; it travels in the
weights' metadata and the model card, and training, evaluation and serving all build their
`FacePipeline` and their normalisation from it. So any encoder our training module produces
is served the way it was trained, and weights whose spec this code cannot reproduce are
refused when they are loaded.

Two families exist:
- `template112`: MTCNN's own 5 points (eye centres, nose tip, mouth corners) → least-squares
  similarity onto the 112x112 5-point template (the v0.1/0.2 students);
- `dlib-chip`: dlib's face chip (150x150, padding 0.25) from dlib's 5-point landmarks (eye
  corners and the base of the nose), which our own port of dlib's shape predictor
  (model/face/dlib_landmarks.py) finds inside the MTCNN box; the geometry and sampling grid of
  `dlib.get_face_chip` (model/face/dlib_chip.py). dlib's face ResNet was trained on these chips.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # imported in to_tensor: the face path uses this module without torch
    import torch

LANDMARK_SOURCES = ("mtcnn5", "dlib5")
GEOMETRIES = ("template112", "dlib-chip")
class SpecError(ValueError):
    """A preprocessing spec this code cannot reproduce."""


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that decides the pixels an encoder sees.

    version: a short name that keys caches of aligned crops; two specs with the same version
    must produce the same bytes.
    """

    version: str
    crop_size: int
    landmarks: str  # "mtcnn5": the detector's points; "dlib5": shape predictor in its box
    geometry: str  # "template112" | "dlib-chip"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    padding: float | None = None  # dlib-chip only
    detector: str = "mtcnn (facenet-pytorch 2.5.3)"
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.landmarks not in LANDMARK_SOURCES:
            problems.append(f"landmark source {self.landmarks!r} (known: {LANDMARK_SOURCES})")
        if self.geometry not in GEOMETRIES:
            problems.append(f"geometry {self.geometry!r} (known: {GEOMETRIES})")
        if self.geometry == "template112" and self.landmarks != "mtcnn5":
            problems.append("the 112 template is defined for MTCNN's points only")
        if self.geometry == "dlib-chip" and self.padding is None:
            problems.append("a dlib chip needs its padding")
        if (self.geometry == "dlib-chip" and self.landmarks == "mtcnn5"
                and self.padding != 0.25):
            problems.append("MTCNN's points have a fitted place in dlib's chip at padding 0.25 "
                            "only")
        if not 16 <= int(self.crop_size) <= 512:
            problems.append(f"crop size {self.crop_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append(f"normalisation mean={self.mean} std={self.std}")
        if problems:
            raise SpecError("this code cannot reproduce the preprocessing spec "
                            f"{self.version!r}: unsupported " + "; ".join(problems))

    # -- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["input_size"] = [self.crop_size, self.crop_size]
        d["channels"] = "RGB"
        return d

    def to_json(self) -> str:
        """The spec as a weights file records it. A version's description is recorded as it
        was when its first weights were written (RECORDED_DESCRIPTIONS), so that our
        converters keep reproducing the shipped files byte for byte; cards take `to_dict`'s
        current text."""
        d = self.to_dict()
        d["description"] = RECORDED_DESCRIPTIONS.get(self.version, self.description)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        known = {f for f in cls.__dataclass_fields__}
        extra = set(d) - known - {"input_size", "channels"}
        if extra:
            raise SpecError(f"preprocessing spec {d.get('version')!r} has fields this code "
                            f"does not know: {sorted(extra)}")
        try:
            kw = {k: v for k, v in d.items() if k in known}
            kw["mean"], kw["std"] = tuple(kw["mean"]), tuple(kw["std"])
            return cls(**kw)
        except (KeyError, TypeError) as exc:
            raise SpecError(f"incomplete preprocessing spec {d!r}: {exc}") from None

    # -- normalisation ------------------------------------------------------------------
    def to_array(self, crops: np.ndarray) -> np.ndarray:
        """`to_tensor` in numpy (the face workers have no torch): (N, S, S, 3) uint8 →
        (N, 3, S, S) float32, the same float32 arithmetic, so the same values."""
        x = np.asarray(crops).transpose(0, 3, 1, 2).astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        return (x - mean) / std

    def to_tensor(self, crops: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
        """(N, S, S, 3) uint8 crops → (N, 3, S, S) float32, (x - mean) / std per channel."""
        import torch
        if isinstance(crops, torch.Tensor):
            t = crops
        else:
            arr = crops if isinstance(crops, np.ndarray) else np.stack(list(crops))
            if not (arr.flags.writeable and arr.flags.c_contiguous):
                arr = np.array(arr)  # e.g. a slice of the read-only memory-mapped crop cache
            t = torch.from_numpy(arr)
        x = t.permute(0, 3, 1, 2).float()
        if len(set(self.mean)) == 1 and len(set(self.std)) == 1:
            return (x - self.mean[0]) / self.std[0]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


# The students (0.1, 0.2): MTCNN points onto the 112 template, [-1, 1].
MTCNN_TEMPLATE112 = PreprocessSpec(
    version="mtcnn5-sim112-v1", crop_size=112, landmarks="mtcnn5", geometry="template112",
    mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5),
    description="EXIF-upright RGB → MTCNN (facenet-pytorch 2.5.3) largest face, 5 landmarks "
                "→ similarity transform onto the 112x112 5-point template → (x - 127.5) / 127.5")

# dlib's face ResNet: dlib's 150x150 chip (padding 0.25) from dlib's 5 landmarks found in the
# MTCNN box, and dlib's input normalisation (its input layer's means; / 256).
DLIB_MEAN = (122.782, 117.001, 104.298)
DLIB_CHIP150 = PreprocessSpec(
    version="mtcnn-box-dlib5-chip150-v2", crop_size=150, landmarks="dlib5",
    geometry="dlib-chip", padding=0.25, mean=DLIB_MEAN, std=(256.0, 256.0, 256.0),
    description="EXIF-upright RGB → the face detector (YuNet by default; MTCNN on request; "
                "its box mapped onto MTCNN's, where dlib's landmarks were fitted) → the chosen "
                "face's box (a face in a frame downscaled for detection is re-detected in a "
                "crop around it) → dlib's "
                "5-point shape predictor (our numpy port) in that box → dlib's face chip, "
                "150x150, padding 0.25 (dlib's geometry and sampling grid) → (x - mean_rgb) / "
                "256 with dlib's means (122.782, 117.001, 104.298)")

# The alternative measured for dlib's net (docs/accuracy.md): MTCNN's own points onto their
# average place in dlib's chip (no shape predictor).
MTCNN5_CHIP150 = PreprocessSpec(
    version="mtcnn5-dlibchip150-v2", crop_size=150, landmarks="mtcnn5", geometry="dlib-chip",
    padding=0.25, mean=DLIB_MEAN, std=(256.0, 256.0, 256.0),
    description="EXIF-upright RGB → MTCNN → the chosen face's 5 points onto their "
                "average place in dlib's 150x150 chip (padding 0.25; fitted on celeba-extra) "
                "→ (x - mean_rgb) / 256")

KNOWN_SPECS = {s.version: s for s in (MTCNN_TEMPLATE112, DLIB_CHIP150, MTCNN5_CHIP150)}
# What weights files of these versions carry (their bytes, sha256-pinned in the model cards, hold
# it): the chip spec's text from before YuNet became the detector.
RECORDED_DESCRIPTIONS = {DLIB_CHIP150.version: (
    "EXIF-upright RGB → MTCNN (facenet-pytorch 2.5.3) → the chosen face's box (a face in a "
    "frame downscaled for detection is re-detected in a crop around it) → dlib's 5-point shape "
    "predictor (our numpy port) in that box → dlib's face chip, 150x150, padding 0.25 (dlib's "
    "geometry and sampling grid) → (x - mean_rgb) / 256 with dlib's means (122.782, 117.001, "
    "104.298)")}
DEFAULT_SPEC = MTCNN_TEMPLATE112  # of architectures that don't name their own


def spec_for_arch(arch: dict[str, Any]) -> PreprocessSpec:
    """The spec an architecture is trained with by default (dlib's net: its own chips)."""
    return DLIB_CHIP150 if arch.get("arch") == "dlib-resnet" else DEFAULT_SPEC


def spec_from_metadata(meta: dict[str, str]) -> PreprocessSpec:
    """The spec recorded in a weights file's metadata (older files carry only a version)."""
    if "preprocessing" in meta:
        spec = PreprocessSpec.from_dict(json.loads(meta["preprocessing"]))
        # a known spec (equal but for its description) reads with this code's description
        return KNOWN_SPECS.get(spec.version) if KNOWN_SPECS.get(spec.version) == spec else spec
    version = meta.get("pipeline_version")
    if version not in KNOWN_SPECS:
        raise SpecError(f"preprocessing {version!r} is not one this code can reproduce "
                        f"(known: {sorted(KNOWN_SPECS)})")
    return KNOWN_SPECS[version]
